//! The interop matrix: agentwire against the reference crate `zentinel-agent-protocol` 0.6.45
//! (issue #10). One module per cell; each test drives every event type the path supports and
//! checks that every decision, header mutation and body chunk arrives intact, under a hard
//! deadline. Sockets live in temporary directories or on 127.0.0.1.
//!
//! | module | proxy side | agent side |
//! |---|---|---|
//! | [`uds_reference_client`] | reference `AgentClientV2Uds` | agentwire `UdsServer` |
//! | [`uds_reference_pool`] | reference `AgentPool` | agentwire `UdsServer` |
//! | [`uds_agentwire_client`] | agentwire `AgentClient` | reference `UdsAgentServerV2` |
//! | [`uds_agentwire_pool`] | agentwire `AgentPool` | reference `UdsAgentServerV2` |
//! | [`configuration`] | both directions: configuration delivered on connect and on demand | |
//! | [`grpc_reference_proxy`] | reference `AgentClientV2` / `AgentPool` (gRPC) | agentwire `GrpcServer` |
//! | [`grpc_agentwire_proxy`] | agentwire `GrpcAgentClient` / `AgentPool` (gRPC) | reference `GrpcAgentServerV2` |
//! | [`reverse_reference_agent`] | agentwire `ReverseListener` | an agent built from the reference's registration types and framing |
//! | [`reverse_agentwire_agent`] | reference `ReverseConnectionListener` + `AgentPool` | agentwire `ReverseConnector` |
//! | [`conform`] | `agentwire conform` | reference `UdsAgentServerV2` |
//! | [`wire_bytes`] | reference and agentwire proxies, frames recorded and compared byte for byte | reference and agentwire agents, answers compared byte for byte |
//! | [`frame_limits`] | the largest frame (B10), both directions | |

mod support;

mod configuration;
mod conform;
mod frame_limits;
mod grpc_agentwire_proxy;
mod grpc_reference_proxy;
mod reverse_agentwire_agent;
mod reverse_reference_agent;
mod uds_agentwire_client;
mod uds_agentwire_pool;
mod uds_reference_client;
mod uds_reference_pool;
mod wire_bytes;
