//! # agentwire-tokio
//!
//! agentwire on tokio: import this one crate to run an agent or to talk to agents from a
//! tokio-based proxy. It implements [`agentwire_runtime::Runtime`] for tokio and re-exports the
//! runtime-generic client, server and handler API with tokio filled in.
//!
//! A minimal agent and a proxy-side client talking to it:
//!
//! ```
//! use agentwire_tokio::{AgentClient, AgentHandler, ClientConfig, Shutdown, UdsServer, UdsServerConfig};
//! use agentwire_tokio::core::message::{AgentResponse, Event, RequestHeaders, RequestMetadata};
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
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("agent.sock");
//! let server = UdsServer::bind(agentwire_tokio::runtime(), &path, UdsServerConfig::default())?;
//! let shutdown = Shutdown::new();
//! tokio::spawn(server.serve(Arc::new(BlockAdmin), shutdown.clone()));
//!
//! let client = AgentClient::connect_unix(&agentwire_tokio::runtime(), &path, ClientConfig::default()).await?;
//! let mut request = RequestHeaders { method: "GET".into(), uri: "/admin/users".into(), ..Default::default() };
//! request.metadata = RequestMetadata { correlation_id: "req-1".into(), ..Default::default() };
//! let decision = client.send_request_headers(request).await?;
//! assert!(matches!(decision.decision, agentwire_tokio::core::message::Decision::Block { status: 403, .. }));
//! shutdown.trigger();
//! # Ok(()) }
//! ```
//!
//! The same API runs on async-std (`agentwire-async-std`) and smol (`agentwire-smol`).
//!
//! ## Examples
//!
//! Two programs in `examples/` work together: start the agent, then ask it from the proxy
//! (`cargo run -p agentwire-tokio --example minimal_agent -- /tmp/agent.sock`, then
//! `cargo run -p agentwire-tokio --example minimal_proxy -- /tmp/agent.sock /admin/users`,
//! which prints `GET /admin/users: block with 403`).
//!
//! `examples/minimal_agent.rs` — an agent that blocks `/admin` and drains on Ctrl-C:
//!
#![doc = concat!("```no_run\n", include_str!("../examples/minimal_agent.rs"), "```")]
//!
//! `examples/minimal_proxy.rs` — a proxy-side client that prints the agent's decision:
//!
#![doc = concat!("```no_run\n", include_str!("../examples/minimal_proxy.rs"), "```")]

pub use agentwire_core as core;
pub use agentwire_runtime::client::{
    AgentClient, AgentNotice, ClientConfig, ClientError, ConnectionInfo, NoticeCallback,
};
pub use agentwire_runtime::server::{
    AgentHandler, ConnectionSummary, ServeConfig, Shutdown, serve_connection,
};
pub use agentwire_runtime::{BoxReader, BoxWriter, Runtime};
pub use agentwire_uds::UdsServerConfig;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// A Unix-socket agent server on tokio.
pub type UdsServer = agentwire_uds::UdsServer<TokioRuntime>;

/// tokio as an agentwire runtime. Spawns onto the runtime it was created in.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// The runtime of the calling context.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::runtime::Handle::current` does.
    #[must_use]
    pub fn current() -> Self {
        TokioRuntime {
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// A specific runtime.
    #[must_use]
    pub fn from_handle(handle: tokio::runtime::Handle) -> Self {
        TokioRuntime { handle }
    }
}

/// The runtime of the calling context (see [`TokioRuntime::current`]).
#[must_use]
pub fn runtime() -> TokioRuntime {
    TokioRuntime::current()
}

fn split_unix(stream: tokio::net::UnixStream) -> (BoxReader, BoxWriter) {
    let (r, w) = stream.into_split();
    (Box::pin(r.compat()), Box::pin(w.compat_write()))
}

fn split_tcp(stream: tokio::net::TcpStream) -> (BoxReader, BoxWriter) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    (Box::pin(r.compat()), Box::pin(w.compat_write()))
}

impl Runtime for TokioRuntime {
    type Sleep = tokio::time::Sleep;
    type UnixListener = tokio::net::UnixListener;
    type TcpListener = tokio::net::TcpListener;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(future));
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        let _guard = self.handle.enter();
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }

    fn connect_unix(
        &self,
        path: &Path,
    ) -> impl Future<Output = io::Result<(BoxReader, BoxWriter)>> + Send {
        let path = path.to_path_buf();
        async move { tokio::net::UnixStream::connect(path).await.map(split_unix) }
    }

    fn bind_unix(&self, path: &Path) -> io::Result<Self::UnixListener> {
        let _guard = self.handle.enter();
        tokio::net::UnixListener::bind(path)
    }

    async fn accept_unix(
        &self,
        listener: &Self::UnixListener,
    ) -> io::Result<(BoxReader, BoxWriter)> {
        listener.accept().await.map(|(s, _)| split_unix(s))
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<(BoxReader, BoxWriter)> {
        tokio::net::TcpStream::connect(addr).await.map(split_tcp)
    }

    async fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpListener> {
        tokio::net::TcpListener::bind(addr).await
    }

    fn tcp_local_addr(&self, listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    async fn accept_tcp(
        &self,
        listener: &Self::TcpListener,
    ) -> io::Result<(BoxReader, BoxWriter, SocketAddr)> {
        listener.accept().await.map(|(s, addr)| {
            let (r, w) = split_tcp(s);
            (r, w, addr)
        })
    }
}
