//! # agentwire-reverse
//!
//! Reverse connections (spec §9): the **agent dials the proxy**, registers, and then serves
//! the proxy's events over the connection it opened. Runtime-generic: everything is written
//! against [`agentwire_runtime::Runtime`], so it runs on tokio, async-std and smol alike.
//!
//! * Proxy side — [`ReverseListener`]: listens on a Unix socket (bound safely: private
//!   directory, `0600`, atomic rename) or on TCP, optionally with TLS or mutual TLS
//!   (`tls` feature, rustls over futures-io). Each registered connection is handed to the
//!   application as an [`AgentClient`](agentwire_runtime::client::AgentClient) on the
//!   [`Registrations`] stream.
//! * Agent side — [`ReverseConnector`]: dials (Unix, TCP or TLS), registers, serves with the
//!   same [`AgentHandler`](agentwire_runtime::server::AgentHandler) as every other transport,
//!   keeps N connections open and reconnects with jittered exponential backoff.
//!
//! ## Wire compatibility and what differs from the reference
//!
//! Registration frames are the reference's: a `0x01` frame with a JSON
//! `RegistrationRequest`, answered by a `0x02` frame with `success`, `error`, `proxy_id`,
//! `proxy_version`, `connection_id` in that order. Reference agents therefore register with
//! this listener, and this connector registers with the reference proxy. Differences, all
//! on the safe side:
//!
//! * Credentials are checked **before** the allowlist and every authentication, allowlist
//!   or identity failure gets the same answer ([`REJECTED`]), so ids cannot be probed (S2).
//! * The allowlist takes `*` patterns (`waf-*`, `*-edge`, `*`), not only exact ids.
//! * `capabilities.agent_id` must match the registered id (B18); connection ids carry a
//!   counter and are unique (B18).
//! * `max_connections_per_agent` is enforced **before** answering, so an agent is never
//!   told `success: true` and then dropped (B6, B15); a connection that ends (EOF, error)
//!   fails its waiters at once and frees its slot (B5).
//! * The registration must arrive within the handshake timeout in a frame of at most 64 KiB
//!   (a larger length prefix is refused before reading the payload), and unregistered
//!   sockets are capped, so idle or hostile connections cannot pile up.
//! * An agentwire agent lists `agentwire_encodings` in its registration; the listener may
//!   then choose MessagePack or postcard (with raw body bytes) and says so in an extra
//!   `encoding` key. Without that key everything after registration is JSON, as in the
//!   reference.
//!
//! ## Example
//!
//! ```
//! use agentwire_reverse::{
//!     Auth, ConnectorConfig, ReverseConnector, ReverseEndpoint, ReverseListener,
//!     ReverseListenerConfig,
//! };
//! use agentwire_runtime::server::{AgentHandler, Shutdown};
//! use agentwire_core::message::{AgentResponse, Decision, RequestHeaders};
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
//! let runtime = agentwire_tokio::runtime();
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("proxy.sock");
//! let shutdown = Shutdown::new();
//!
//! // Proxy side: listen, require a token, allow the `waf-*` agents.
//! let config = ReverseListenerConfig {
//!     auth: Auth::tokens(["s3cret"]),
//!     allowed_agents: ["waf-*"].into_iter().collect(),
//!     ..Default::default()
//! };
//! let listener = ReverseListener::bind_unix(runtime.clone(), &path, config)?;
//! let (accept_loop, mut registrations) = listener.serve(shutdown.clone());
//! tokio::spawn(accept_loop);
//!
//! // Agent side: dial, register, serve, reconnect if dropped.
//! let connector = ReverseConnector::new(
//!     runtime.clone(),
//!     ReverseEndpoint::Unix(path.clone()),
//!     ConnectorConfig::new("waf-1").with_token("s3cret"),
//! );
//! tokio::spawn(connector.run(Arc::new(BlockAdmin), shutdown.clone()));
//!
//! // The proxy gets a ready client for each registered connection.
//! let agent = registrations.recv().await.expect("an agent registers");
//! assert_eq!(agent.agent_id, "waf-1");
//! let mut request = RequestHeaders { method: "GET".into(), uri: "/admin".into(), ..Default::default() };
//! request.metadata.correlation_id = "req-1".into();
//! let answer = agent.client.send_request_headers(request).await?;
//! assert!(matches!(answer.decision, Decision::Block { status: 403, .. }));
//! shutdown.trigger();
//! # Ok(()) }
//! ```

mod allowlist;
mod auth;
mod connector;
mod listener;
#[cfg(feature = "tls")]
mod tls;
mod wire;

pub use allowlist::{AgentPattern, Allowlist};
pub use auth::{Peer, RegistrationAttempt, StaticTokens, TokenValidator};
pub use connector::{
    ConnectorConfig, ConnectorStats, RegisterError, Registration, ReverseConnector, ReverseEndpoint,
};
pub use listener::{
    Auth, ConnectionClosed, ListenerHandle, ListenerStats, MAX_AGENT_ID_LEN, REJECTED,
    RegisteredAgent, Registrations, ReverseListener, ReverseListenerConfig,
};
#[cfg(feature = "tls")]
pub use tls::rustls;
pub use wire::DEFAULT_MAX_REGISTRATION_FRAME;
