//! # agentwire-smol
//!
//! agentwire on [smol]: import this one crate to run an agent or to talk to agents from a
//! smol-based proxy. It implements [`agentwire_runtime::Runtime`] for smol and re-exports the
//! runtime-generic client, server and handler API with smol filled in (the same names as
//! `agentwire-tokio` and `agentwire-async-std`).
//!
//! Tasks go to smol's global executor ([`runtime`]) or to an executor of your own
//! ([`SmolRuntime::with_executor`]); timers and sockets use the `async-io` reactor, which
//! runs by itself, so `smol::block_on` is all a program needs.
//!
//! A minimal agent and a proxy-side client talking to it:
//!
//! ```
//! use agentwire_smol::{AgentClient, AgentHandler, ClientConfig, Shutdown, UdsServer, UdsServerConfig};
//! use agentwire_smol::core::message::{AgentResponse, Decision, RequestHeaders, RequestMetadata};
//! use std::sync::Arc;
//!
//! struct BlockAdmin;
//! impl AgentHandler for BlockAdmin {
//!     async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
//!         if event.uri.starts_with("/admin") { AgentResponse::block(403) } else { AgentResponse::allow() }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let dir = tempfile::tempdir()?;
//!     let path = dir.path().join("agent.sock");
//!     let runtime = agentwire_smol::runtime();
//!     let server = UdsServer::bind(runtime.clone(), &path, UdsServerConfig::default())?;
//!     let shutdown = Shutdown::new();
//!     let serving = smol::spawn(server.serve(Arc::new(BlockAdmin), shutdown.clone()));
//!
//!     let client = AgentClient::connect_unix(&runtime, &path, ClientConfig::default()).await?;
//!     let mut request = RequestHeaders { method: "GET".into(), uri: "/admin/users".into(), ..Default::default() };
//!     request.metadata = RequestMetadata { correlation_id: "req-1".into(), ..Default::default() };
//!     let decision = client.send_request_headers(request).await?;
//!     assert!(matches!(decision.decision, Decision::Block { status: 403, .. }));
//!
//!     drop(client);
//!     shutdown.trigger();
//!     serving.await?;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! [smol]: https://docs.rs/smol/2

pub use agentwire_core as core;
pub use agentwire_runtime::client::{
    AgentClient, AgentNotice, ClientConfig, ClientError, ConnectionInfo, NoticeCallback,
};
pub use agentwire_runtime::server::{
    AgentHandler, ConnectionSummary, ServeConfig, Shutdown, serve_connection,
};
pub use agentwire_runtime::{BoxReader, BoxWriter, Runtime};
pub use agentwire_uds::UdsServerConfig;

use agentwire_runtime::reactor;
use smol::net::unix::{UnixListener, UnixStream};
use smol::net::{TcpListener, TcpStream};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A Unix-socket agent server on smol.
pub type UdsServer = agentwire_uds::UdsServer<SmolRuntime>;

/// smol as an agentwire runtime.
#[derive(Clone, Default)]
pub struct SmolRuntime {
    executor: Option<Arc<smol::Executor<'static>>>,
}

impl fmt::Debug for SmolRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmolRuntime")
            .field(
                "executor",
                &if self.executor.is_some() {
                    "own"
                } else {
                    "global"
                },
            )
            .finish()
    }
}

impl SmolRuntime {
    /// Spawns onto smol's global executor (`smol::spawn`).
    #[must_use]
    pub fn global() -> Self {
        SmolRuntime { executor: None }
    }

    /// Spawns onto `executor`; the application must keep running it (for example with
    /// `executor.run(..)` on a few threads).
    #[must_use]
    pub fn with_executor(executor: Arc<smol::Executor<'static>>) -> Self {
        SmolRuntime {
            executor: Some(executor),
        }
    }
}

/// smol with its global executor (see [`SmolRuntime::global`]).
#[must_use]
pub fn runtime() -> SmolRuntime {
    SmolRuntime::global()
}

fn split_unix(stream: UnixStream) -> (BoxReader, BoxWriter) {
    reactor::split_cloned(stream, |s, how| s.shutdown(how))
}

fn split_tcp(stream: TcpStream) -> (BoxReader, BoxWriter) {
    let _ = stream.set_nodelay(true);
    reactor::split_cloned(stream, |s, how| s.shutdown(how))
}

impl Runtime for SmolRuntime {
    type Sleep = reactor::Sleep;
    type UnixListener = UnixListener;
    type TcpListener = TcpListener;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.executor {
            Some(executor) => executor.spawn(future).detach(),
            None => smol::spawn(future).detach(),
        }
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        reactor::sleep_until(deadline)
    }

    fn connect_unix(
        &self,
        path: &Path,
    ) -> impl Future<Output = io::Result<(BoxReader, BoxWriter)>> + Send {
        let path = path.to_path_buf();
        async move { UnixStream::connect(path).await.map(split_unix) }
    }

    fn bind_unix(&self, path: &Path) -> io::Result<Self::UnixListener> {
        UnixListener::bind(path)
    }

    async fn accept_unix(
        &self,
        listener: &Self::UnixListener,
    ) -> io::Result<(BoxReader, BoxWriter)> {
        listener.accept().await.map(|(s, _)| split_unix(s))
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> io::Result<(BoxReader, BoxWriter)> {
        TcpStream::connect(addr).await.map(split_tcp)
    }

    async fn bind_tcp(&self, addr: SocketAddr) -> io::Result<Self::TcpListener> {
        TcpListener::bind(addr).await
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
