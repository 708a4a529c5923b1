//! # agentwire-async-std
//!
//! agentwire on [async-std]: import this one crate to run an agent or to talk to agents from
//! an async-std based proxy. It implements [`agentwire_runtime::Runtime`] for async-std and
//! re-exports the runtime-generic client, server and handler API with async-std filled in
//! (the same names as `agentwire-tokio` and `agentwire-smol`).
//!
//! **Maintenance status:** async-std 1.13 is no longer maintained upstream
//! ([RUSTSEC-2025-0052](https://rustsec.org/advisories/RUSTSEC-2025-0052.html)); its authors
//! point to smol, which shares its reactor. This crate exists because users still run
//! async-std; new code should prefer `agentwire-smol` or `agentwire-tokio`, which offer the
//! identical API.
//!
//! A minimal agent and a proxy-side client talking to it:
//!
//! ```
//! use agentwire_async_std::{AgentClient, AgentHandler, ClientConfig, Shutdown, UdsServer, UdsServerConfig};
//! use agentwire_async_std::core::message::{AgentResponse, Decision, RequestHeaders, RequestMetadata};
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
//! async_std::task::block_on(async {
//!     let dir = tempfile::tempdir()?;
//!     let path = dir.path().join("agent.sock");
//!     let runtime = agentwire_async_std::runtime();
//!     let server = UdsServer::bind(runtime.clone(), &path, UdsServerConfig::default())?;
//!     let shutdown = Shutdown::new();
//!     let serving = async_std::task::spawn(server.serve(Arc::new(BlockAdmin), shutdown.clone()));
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
//! [async-std]: https://docs.rs/async-std/1.13

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
use async_std::net::{TcpListener, TcpStream};
use async_std::os::unix::net::{UnixListener, UnixStream};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

/// A Unix-socket agent server on async-std.
pub type UdsServer = agentwire_uds::UdsServer<AsyncStdRuntime>;

/// async-std as an agentwire runtime: tasks go to async-std's global executor, timers and
/// sockets to its `async-io` reactor.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStdRuntime;

/// The async-std runtime (it is global; this is a unit value).
#[must_use]
pub fn runtime() -> AsyncStdRuntime {
    AsyncStdRuntime
}

fn split_unix(stream: UnixStream) -> (BoxReader, BoxWriter) {
    reactor::split_cloned(stream, |s, how| s.shutdown(how))
}

fn split_tcp(stream: TcpStream) -> (BoxReader, BoxWriter) {
    let _ = stream.set_nodelay(true);
    reactor::split_cloned(stream, |s, how| s.shutdown(how))
}

impl Runtime for AsyncStdRuntime {
    type Sleep = reactor::Sleep;
    type UnixListener = UnixListener;
    type TcpListener = TcpListener;

    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Dropping the handle detaches the task.
        drop(async_std::task::spawn(future));
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
        // async-std's `bind` is an `async fn` that never waits (it binds synchronously), so it
        // completes on its first poll; this avoids `From<std::os::unix::net::UnixListener>`,
        // which panics if the reactor refuses the descriptor.
        futures_lite::future::block_on(UnixListener::bind(path))
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
