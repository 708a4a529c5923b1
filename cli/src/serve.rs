//! `agentwire serve`: runs the [demo agent](crate::demo) on a Unix socket and/or over gRPC
//! until Ctrl-C or SIGTERM, then stops accepting, lets requests in flight finish (within the
//! drain timeout) and exits.

use crate::CliError;
use crate::demo::DemoAgent;
use agentwire_grpc::{GrpcServer, GrpcServerConfig, ServerTls, TlsIdentity};
use agentwire_reverse::{ConnectorConfig, ReverseConnector, ReverseEndpoint};
use agentwire_runtime::server::Shutdown;
use agentwire_tokio::{UdsServer, UdsServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// TLS for the gRPC listener.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The agent's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Require client certificates signed by these authorities (PEM): mTLS.
    pub client_ca: Option<PathBuf>,
}

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Listen on this Unix socket.
    pub uds: Option<PathBuf>,
    /// Listen for gRPC on this address (port 0: any free port).
    pub grpc: Option<SocketAddr>,
    /// Serve gRPC over TLS with these files (otherwise h2c).
    pub tls: Option<TlsFiles>,
    /// Dial this proxy's reverse-connection listener (`tcp://IP:PORT` or a Unix socket
    /// path) and serve the connections it opens.
    pub reverse: Option<String>,
    /// The agent's id (also the value of the `x-agentwire-agent` header it sets).
    pub agent_id: String,
    /// Token presented when registering over a reverse connection.
    pub token: Option<String>,
    /// Reverse connections to keep open.
    pub reverse_connections: usize,
    /// Permission bits of the Unix socket.
    pub socket_mode: u32,
    /// How long requests in flight may take to finish on shutdown.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            uds: None,
            grpc: None,
            tls: None,
            reverse: None,
            agent_id: crate::demo::DEFAULT_AGENT_ID.into(),
            token: None,
            reverse_connections: 1,
            socket_mode: 0o600,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves until a termination signal, then drains. Prints one line per listener on stdout
/// (`uds PATH`, `grpc http://ADDR` or `grpc https://ADDR`, `reverse ENDPOINT`) once it
/// accepts connections (or, for reverse connections, starts dialling).
pub fn run(config: &ServeConfig) -> Result<(), CliError> {
    if config.uds.is_none() && config.grpc.is_none() && config.reverse.is_none() {
        return Err(CliError::new(
            "nothing to serve: give --uds PATH, --grpc ADDR and/or --reverse ENDPOINT",
        ));
    }
    let reverse = config
        .reverse
        .as_deref()
        .map(reverse_endpoint)
        .transpose()?;
    let tls = config.tls.as_ref().map(read_tls).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(serve(config, tls, reverse))
}

/// Reads a reverse-connection endpoint: `tcp://HOST:PORT`, or a Unix socket path (`unix:`
/// prefix accepted).
pub fn reverse_endpoint(text: &str) -> Result<ReverseEndpoint, CliError> {
    if let Some(addr) = text.strip_prefix("tcp://") {
        return addr.parse().map(ReverseEndpoint::Tcp).map_err(|e| {
            CliError::new(format!(
                "bad reverse endpoint {text:?}: {e} (expected tcp://IP:PORT)"
            ))
        });
    }
    Ok(ReverseEndpoint::Unix(PathBuf::from(
        text.strip_prefix("unix:").unwrap_or(text),
    )))
}

fn read_tls(files: &TlsFiles) -> Result<ServerTls, CliError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))
    };
    let tls = ServerTls::new(TlsIdentity::from_pem(read(&files.cert)?, read(&files.key)?));
    Ok(match &files.client_ca {
        Some(ca) => tls.require_client_cert(read(ca)?),
        None => tls,
    })
}

type Task = tokio::task::JoinHandle<Result<(), String>>;

async fn serve(
    config: &ServeConfig,
    tls: Option<ServerTls>,
    reverse: Option<ReverseEndpoint>,
) -> Result<(), CliError> {
    let agent = Arc::new(DemoAgent::new(config.agent_id.clone()));
    let shutdown = Shutdown::new();
    let mut servers: Vec<Task> = Vec::new();
    if let Some(path) = &config.uds {
        let server_config = UdsServerConfig {
            serve: agentwire_runtime::server::ServeConfig {
                drain_timeout: config.drain_timeout,
                ..agent.serve_config()
            },
            socket_mode: config.socket_mode,
            ..UdsServerConfig::default()
        };
        let server = UdsServer::bind(agentwire_tokio::runtime(), path, server_config)
            .map_err(|e| CliError::new(format!("cannot listen on {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), agent_id = %config.agent_id, "serving the demo agent on a Unix socket");
        announce(&format!("uds {}", path.display()));
        let (agent, stop) = (agent.clone(), shutdown.clone());
        servers.push(tokio::spawn(async move {
            server.serve(agent, stop).await.map_err(|e| e.to_string())
        }));
    }
    if let Some(addr) = config.grpc {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let grpc_config = GrpcServerConfig {
            capabilities: agent.capabilities(),
            max_concurrent_per_stream: 1024,
            drain_timeout: config.drain_timeout,
            tls,
            ..GrpcServerConfig::default()
        };
        let server = GrpcServer::bind(addr, agent.clone(), grpc_config)
            .await
            .map_err(|e| CliError::new(format!("cannot listen on {addr}: {e}")))?;
        let bound = server.local_addr();
        tracing::info!(%bound, agent_id = %config.agent_id, tls = scheme == "https", "serving the demo agent over gRPC");
        announce(&format!("grpc {scheme}://{bound}"));
        let stop = shutdown.clone();
        servers.push(tokio::spawn(async move {
            server.serve(stop).await.map_err(|e| e.to_string())
        }));
    }
    if let Some(endpoint) = reverse {
        let mut connector_config = ConnectorConfig::new(config.agent_id.clone());
        connector_config.auth_token.clone_from(&config.token);
        connector_config.capabilities = agent.capabilities();
        connector_config.connections = config.reverse_connections.max(1);
        connector_config.serve = agentwire_runtime::server::ServeConfig {
            drain_timeout: config.drain_timeout,
            ..agent.serve_config()
        };
        tracing::info!(?endpoint, agent_id = %config.agent_id, "dialling the proxy (reverse connections)");
        announce(&format!(
            "reverse {}",
            config.reverse.as_deref().unwrap_or_default()
        ));
        let connector =
            ReverseConnector::new(agentwire_tokio::runtime(), endpoint, connector_config);
        let (agent, stop) = (agent.clone(), shutdown.clone());
        servers.push(tokio::spawn(async move {
            connector.run(agent, stop).await;
            Ok(())
        }));
    }
    let signal = wait_for_signal().await;
    tracing::info!(signal, "shutting down: finishing requests in flight");
    shutdown.trigger();
    let limit = config.drain_timeout + Duration::from_secs(2);
    for server in servers {
        match tokio::time::timeout(limit, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
            Err(_) => tracing::warn!("drain did not finish in time"),
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Prints a listener line on stdout; a closed stdout is not a reason to stop serving.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM, naming which.
async fn wait_for_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            None
        }
    };
    let sigterm = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = sigterm => "SIGTERM",
    }
}
