//! # agentwire-uds
//!
//! The Unix-socket transport ("binary UDS", spec §2): an agent server that binds its socket
//! safely and serves every connection with an [`AgentHandler`], and the proxy-side client
//! ([`AgentClient::connect_unix`]). Both are generic over the [`Runtime`]; the runtime crates
//! (`agentwire-tokio`, `agentwire-async-std`, `agentwire-smol`) fix it for you.
//!
//! Socket safety (the reference's S3): the server refuses to delete a path that is not a
//! socket or whose socket still has a live listener, and the socket is created with
//! owner-only permissions (configurable) inside a private directory, then renamed into place,
//! so it is never reachable with looser permissions.
//!
//! ```no_run
//! # async fn demo<R: agentwire_runtime::Runtime>(runtime: R) -> std::io::Result<()> {
//! use agentwire_uds::{UdsServer, UdsServerConfig};
//! use agentwire_runtime::server::{AgentHandler, Shutdown};
//! use std::sync::Arc;
//!
//! struct AllowAll;
//! impl AgentHandler for AllowAll {}
//!
//! let server = UdsServer::bind(runtime, "/tmp/agent.sock", UdsServerConfig::default())?;
//! server.serve(Arc::new(AllowAll), Shutdown::new()).await
//! # }
//! ```

use agentwire_runtime::Runtime;
pub use agentwire_runtime::client::{AgentClient, ClientConfig, ClientError};
use agentwire_runtime::server::{
    AgentHandler, ConnectionCounter, ServeConfig, Shutdown, serve_connection,
};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Settings of a [`UdsServer`].
#[derive(Clone, Debug)]
pub struct UdsServerConfig {
    /// Per-connection settings (capabilities, encodings, concurrency, drain time).
    pub serve: ServeConfig,
    /// Permission bits of the socket file (default owner-only, `0o600`).
    pub socket_mode: u32,
    /// Most connections served at once; further ones are closed right after accept.
    pub max_connections: usize,
}

impl Default for UdsServerConfig {
    fn default() -> Self {
        UdsServerConfig {
            serve: ServeConfig::default(),
            socket_mode: 0o600,
            max_connections: 1024,
        }
    }
}

/// An agent listening on a Unix socket.
pub struct UdsServer<R: Runtime> {
    runtime: R,
    listener: R::UnixListener,
    path: PathBuf,
    config: Arc<UdsServerConfig>,
}

// By hand: a derive would require the runtime's listener type to be `Debug`, which the
// `Runtime` trait does not ask for, so generic code could not debug-print a server.
impl<R: Runtime> std::fmt::Debug for UdsServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdsServer")
            .field("runtime", &self.runtime)
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Makes `path` available for a new socket: refuses anything that is not a stale socket.
fn clear_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if !meta.file_type().is_socket() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        )),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is a live socket (another agent is listening)",
                    path.display()
                ),
            )),
            Err(_) => std::fs::remove_file(path),
        },
    }
}

/// Binds a Unix listener at `path` safely (the rules of the crate docs): refuses to replace
/// anything but a stale socket, creates the socket with permission bits `mode` inside a
/// private (`0700`) directory next to `path` and renames it into place, so it is never
/// reachable with looser permissions. Shared by every agentwire Unix-socket listener.
pub fn bind_private_socket<R: Runtime>(
    runtime: &R,
    path: &Path,
    mode: u32,
) -> io::Result<R::UnixListener> {
    clear_stale_socket(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
    })?;
    // A private directory next to the target: the socket is never visible with the
    // process umask's permissions, and the rename is atomic on one filesystem.
    let private = parent.join(format!(
        ".{}.agentwire-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        unique()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let result = (|| -> io::Result<R::UnixListener> {
        let listener = runtime.bind_unix(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

impl<R: Runtime> UdsServer<R> {
    /// Binds `path` (see the crate docs for the safety rules).
    pub fn bind(runtime: R, path: impl AsRef<Path>, config: UdsServerConfig) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener = bind_private_socket(&runtime, &path, config.socket_mode)?;
        Ok(UdsServer {
            listener,
            runtime,
            path,
            config: Arc::new(config),
        })
    }

    /// The socket path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts and serves connections until `shutdown` is triggered, then stops listening —
    /// the socket file is removed at once, so new connections are refused instead of queueing
    /// unanswered — and waits for every connection to drain (each within the drain timeout).
    pub async fn serve<H: AgentHandler>(
        self,
        handler: Arc<H>,
        shutdown: Shutdown,
    ) -> io::Result<()> {
        let UdsServer {
            runtime,
            listener,
            path,
            config,
        } = self;
        let serve_config = Arc::new(config.serve.clone());
        let counter = Arc::new(ConnectionCounter::default());
        loop {
            let accepted = futures_or(
                async { Some(runtime.accept_unix(&listener).await) },
                async {
                    shutdown.wait().await;
                    None
                },
            )
            .await;
            let Some(accepted) = accepted else { break };
            if shutdown.is_triggered() {
                // Accepted in the same turn as the shutdown: refuse it like later ones.
                drop(accepted);
                break;
            }
            let (reader, writer) = match accepted {
                Ok(halves) => halves,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of descriptors or similar: back off instead of spinning.
                    runtime
                        .sleep_until(
                            std::time::Instant::now() + std::time::Duration::from_millis(20),
                        )
                        .await;
                    continue;
                }
            };
            let Some(slot) = counter.try_acquire(config.max_connections) else {
                tracing::warn!(
                    max = config.max_connections,
                    "connection limit reached; closing new connection"
                );
                drop((reader, writer));
                continue;
            };
            let conn_runtime = runtime.clone();
            let handler = handler.clone();
            let conn_config = serve_config.clone();
            let shutdown = shutdown.clone();
            runtime.spawn(async move {
                let _slot = slot;
                let summary =
                    serve_connection(conn_runtime, reader, writer, conn_config, handler, shutdown)
                        .await;
                tracing::debug!(?summary, "connection done");
            });
        }
        // Stop listening before draining: connections still in the kernel's backlog are
        // closed, and new ones fail at once instead of waiting for a handshake answer.
        drop(listener);
        let _ = std::fs::remove_file(&path);
        // Drain: connections see the same shutdown signal and finish within their drain time.
        let deadline = std::time::Instant::now()
            + config.serve.drain_timeout
            + std::time::Duration::from_secs(1);
        while counter.live() > 0 && std::time::Instant::now() < deadline {
            runtime
                .sleep_until(std::time::Instant::now() + std::time::Duration::from_millis(5))
                .await;
        }
        Ok(())
    }
}

async fn futures_or<T>(
    a: impl std::future::Future<Output = T>,
    b: impl std::future::Future<Output = T>,
) -> T {
    agentwire_runtime::race(a, b).await
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("agentwire-uds-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("not-a-socket");
        std::fs::write(&file, b"precious").unwrap();
        let err = clear_stale_socket(&file).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn removes_a_stale_socket_but_not_a_live_one() {
        let dir = std::env::temp_dir().join(format!("agentwire-uds-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(
            clear_stale_socket(&path).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(live);
        clear_stale_socket(&path).unwrap();
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
