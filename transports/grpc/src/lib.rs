//! # agentwire-grpc
//!
//! The gRPC transport of agentwire (tokio + tonic): both ends of the Zentinel agent protocol
//! v2 service `zentinel.agent.v2.AgentServiceV2`, wire-compatible with the reference crate
//! `zentinel-agent-protocol` (spec §10).
//!
//! * [`GrpcAgentClient`] — the proxy side: its own HTTP/2 connection with one long-lived
//!   `ProcessStream` carrying many requests multiplexed by correlation id; handshake and
//!   configuration delivery as §10.4; per-request deadlines; the agent's flow control
//!   honoured. Same method names and the same [`ClientError`] as the UDS
//!   [`agentwire_runtime::client::AgentClient`], so a pool can treat both alike.
//! * [`GrpcAgentServer`] — the agent side: a tonic service dispatching every event type to
//!   any [`AgentHandler`] (the trait the UDS server uses), plus [`GrpcServer`], a listener
//!   for it with graceful drain.
//! * TLS and mTLS on both ends with rustls ([`ClientTls`], [`ServerTls`]), h2c for local
//!   use, HTTP/2 keepalive ([`Keepalive`]), a configurable message limit (4 MiB default both
//!   ways; a larger outgoing event is refused with a typed error and the connection stays
//!   up).
//! * [`GrpcEndpoint`] — endpoint strings for the pool: `http://host:port` (h2c),
//!   `https://host:port` (TLS), `host:port` (h2c).
//! * [`mapping`] — core types ⇄ protobuf types, both directions; [`pb`] — the generated
//!   messages (from `proto/agent_v2.proto`, compiled by protox: no system `protoc`).
//!
//! ```
//! use agentwire_core::message::{AgentResponse, Decision, RequestHeaders, RequestMetadata};
//! use agentwire_grpc::{
//!     AgentHandler, GrpcAgentClient, GrpcClientConfig, GrpcServer, GrpcServerConfig, Shutdown,
//! };
//! use std::sync::Arc;
//!
//! struct BlockAdmin;
//! impl AgentHandler for BlockAdmin {
//!     async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
//!         if event.uri.starts_with("/admin") { AgentResponse::block(403) } else { AgentResponse::allow() }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = GrpcServer::bind(
//!     "127.0.0.1:0".parse()?,
//!     Arc::new(BlockAdmin),
//!     GrpcServerConfig::default(),
//! )
//! .await?;
//! let endpoint = format!("http://{}", server.local_addr());
//! let shutdown = Shutdown::new();
//! let serving = tokio::spawn(server.serve(shutdown.clone()));
//!
//! let client = GrpcAgentClient::connect(&endpoint, GrpcClientConfig::default()).await?;
//! let request = RequestHeaders {
//!     metadata: RequestMetadata { correlation_id: "req-1".into(), ..Default::default() },
//!     method: "GET".into(),
//!     uri: "/admin/users".into(),
//!     ..Default::default()
//! };
//! let answer = client.send_request_headers(request).await?;
//! assert!(matches!(answer.decision, Decision::Block { status: 403, .. }));
//!
//! client.close();
//! shutdown.trigger();
//! serving.await??;
//! # Ok(()) }
//! ```
//!
//! ## What the proto cannot carry, and what this crate does about it
//!
//! Agent → proxy (`AgentResponse`): the message has no field for `version`,
//! `routing_metadata`, `request_body_mutation`, `response_body_mutation` or
//! `websocket_decision` (the reference drops them, B2). agentwire carries each, as JSON text,
//! in `audit.custom` under reserved keys ([`mapping::VERSION_KEY`] — only when not 2 —,
//! [`mapping::ROUTING_METADATA_KEY`], [`mapping::REQUEST_BODY_MUTATION_KEY`],
//! [`mapping::RESPONSE_BODY_MUTATION_KEY`], [`mapping::WEBSOCKET_DECISION_KEY`]) and moves
//! them back into their fields on receipt, so agentwire ↔ agentwire round trips keep them;
//! reference proxies see extra opaque audit strings and otherwise ignore them.
//! `audit.custom` values keep their JSON type through [`mapping::JSON_KEYS_KEY`] (B9 fixed:
//! strings travel unquoted). `processing_time_ms` has no core field and is dropped on
//! receipt. Block headers `Some(empty)` read back as `None`.
//!
//! Proxy → agent (events): the proto has no free-form slot on most events, so these are
//! lost on gRPC and read back as shown:
//!
//! | core field | on the agent |
//! |---|---|
//! | `RequestMetadata.tls_cipher` | `None` |
//! | `RequestMetadata.timestamp` text | RFC 3339 UTC with milliseconds, rebuilt from `timestamp_ms` (the instant survives, the spelling does not; text that is no timestamp is replaced by the send time, as the reference does for all) |
//! | `RequestComplete.upstream_attempts` | `1` |
//! | `WebSocketFrame.frame_index`, `fin`, `route_id`, `client_ip` | `0`, `true`, `None`, `""` |
//! | `Configure.correlation_id` | `""` (the answer is the pong; [`GrpcAgentClient::send_configure`] restores the id in its result) |
//! | a `continuation` opcode | carried as frame type 0 (unspecified) and read back as `continuation` |
//!
//! And the other way: the proto's `CancelRequest.blocking_agent_id` / `manual_reason`,
//! `RequestCompleteEvent.upstream` / `from_cache` and `BodyChunkEvent.proxy_buffer_available`
//! have no core field; agentwire sends them unset (0) and ignores them on receipt.
//!
//! `GuardrailInspect`'s `inspection_type`, `categories`, `route_id` and `metadata` travel in
//! the proto's free-form `context_json` (only what differs from the defaults, so a plain
//! inspection sends `{}` as the reference does) and survive; a `metadata["content_type"]`
//! of `prompt`/`response`/`system`/`tool_call`/`tool_result` travels in the proto's
//! `content_type` field instead, and a non-zero `content_type` from any proxy reads back as
//! that metadata entry. `http_version` is sent as the metadata's `protocol` (the reference
//! hard-codes `HTTP/1.1`). Log messages from agents have no core type: the client writes
//! them to `tracing`.

pub mod client;
pub mod endpoint;
pub mod mapping;
pub mod server;
mod time;
pub mod tls;

/// The protobuf messages and the tonic client and server, generated from
/// `proto/agent_v2.proto` (package `zentinel.agent.v2`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("zentinel.agent.v2");
}

pub use client::{
    AgentNotice, ClientError, GrpcAgentClient, GrpcClientConfig, GrpcConnectionInfo, NoticeCallback,
};
pub use endpoint::{EndpointError, GrpcEndpoint};
pub use server::{
    AgentHandler, GrpcAgentServer, GrpcServer, GrpcServerConfig, RESPONSE_TOO_LARGE, ServeError,
    Shutdown,
};
pub use tls::{ClientTls, ServerTls, TlsIdentity};

use std::time::Duration;

/// The default message limit both ways: 4 MiB, tonic's default decode limit and what the
/// reference runs with.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// HTTP/2 PING keepalive and TCP keepalive (the reference configures neither).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Interval of HTTP/2 PINGs; `None` disables them.
    pub interval: Option<Duration>,
    /// A PING unanswered this long closes the connection.
    pub timeout: Duration,
    /// Client only: ping also while no stream is open.
    pub while_idle: bool,
    /// TCP keepalive idle time; `None` disables it.
    pub tcp: Option<Duration>,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            interval: Some(Duration::from_secs(30)),
            timeout: Duration::from_secs(10),
            while_idle: true,
            tcp: Some(Duration::from_secs(60)),
        }
    }
}
