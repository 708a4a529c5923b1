//! # agentwire-runtime
//!
//! The runtime-generic half of agentwire: everything that drives [`agentwire_core`]'s sans-IO
//! sessions over real byte streams, written once against the small [`Runtime`] trait. The
//! runtime crates (`agentwire-tokio`, `agentwire-async-std`, `agentwire-smol`) implement the
//! trait and re-export these types ready to use; applications depend on one of those.
//!
//! * [`client::AgentClient`]: the proxy side of one agent connection — many concurrent
//!   requests over one stream, matched by correlation id, each with its deadline.
//! * [`server::AgentHandler`] and [`server::serve_connection`]: the agent side — one handler
//!   implementation serves every transport.
//!
//! ```
//! use agentwire_runtime::server::AgentHandler;
//! use agentwire_core::message::{AgentResponse, RequestHeaders};
//!
//! struct DenyAdmin;
//! impl AgentHandler for DenyAdmin {
//!     async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
//!         if event.uri.starts_with("/admin") {
//!             AgentResponse::block(403)
//!         } else {
//!             AgentResponse::allow()
//!         }
//!     }
//! }
//! ```

pub mod client;
mod notify;
#[cfg(feature = "async-io")]
pub mod reactor;
pub mod server;

pub use notify::Notify;

use futures_lite::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The read half of a connection.
pub type BoxReader = Pin<Box<dyn AsyncRead + Send + 'static>>;
/// The write half of a connection.
pub type BoxWriter = Pin<Box<dyn AsyncWrite + Send + 'static>>;

/// What a driver needs from an async runtime: spawning, timers and sockets.
///
/// Streams come back already split into halves so the reader and the writer of a connection
/// can run as separate tasks (a peer that stops reading never blocks deadlines or reads).
pub trait Runtime: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A timer future.
    type Sleep: Future<Output = ()> + Send + 'static;
    /// A bound Unix listener.
    type UnixListener: Send + Sync + 'static;
    /// A bound TCP listener.
    type TcpListener: Send + Sync + 'static;

    /// Runs `future` in the background.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// Connects to a Unix socket.
    fn connect_unix(
        &self,
        path: &Path,
    ) -> impl Future<Output = io::Result<(BoxReader, BoxWriter)>> + Send;

    /// Binds a Unix listener (the caller prepares the path and its permissions).
    fn bind_unix(&self, path: &Path) -> io::Result<Self::UnixListener>;

    /// Accepts one Unix connection.
    fn accept_unix(
        &self,
        listener: &Self::UnixListener,
    ) -> impl Future<Output = io::Result<(BoxReader, BoxWriter)>> + Send;

    /// Connects to a TCP address.
    fn connect_tcp(
        &self,
        addr: std::net::SocketAddr,
    ) -> impl Future<Output = io::Result<(BoxReader, BoxWriter)>> + Send;

    /// Binds a TCP listener.
    fn bind_tcp(
        &self,
        addr: std::net::SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpListener>> + Send;

    /// The address a TCP listener is bound to.
    fn tcp_local_addr(&self, listener: &Self::TcpListener) -> io::Result<std::net::SocketAddr>;

    /// Accepts one TCP connection.
    fn accept_tcp(
        &self,
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(BoxReader, BoxWriter, std::net::SocketAddr)>> + Send;
}

/// Runs both futures, returning the output of whichever completes first (the other is
/// dropped).
pub async fn race<T>(a: impl Future<Output = T>, b: impl Future<Output = T>) -> T {
    futures_lite::future::or(a, b).await
}

/// Runs `future` with a deadline: `None` when the deadline came first.
pub async fn timeout<R: Runtime, T>(
    runtime: &R,
    duration: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let sleep = runtime.sleep_until(Instant::now() + duration);
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep.await;
        None
    })
    .await
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The core's clock value for `now`: nanoseconds since the first call in this process.
#[must_use]
pub fn core_now() -> agentwire_core::time::Instant {
    to_core(Instant::now())
}

/// Converts a std instant to the core's clock (instants before the epoch read as the epoch).
#[must_use]
pub fn to_core(instant: Instant) -> agentwire_core::time::Instant {
    let nanos = instant.saturating_duration_since(epoch()).as_nanos();
    agentwire_core::time::Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Converts a core instant back to a std instant.
#[must_use]
pub fn to_std(instant: agentwire_core::time::Instant) -> Instant {
    epoch() + Duration::from_nanos(instant.as_nanos())
}
