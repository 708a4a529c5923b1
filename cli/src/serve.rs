//! `agentwire serve`: runs the [demo agent](crate::demo) on a Unix socket and/or over gRPC
//! until Ctrl-C or SIGTERM, then stops accepting, lets requests in flight finish (within the
//! drain timeout) and exits.

use crate::demo::DemoAgent;
use crate::{CliError, TransportKind};
use agentwire_grpc::{GrpcServer, GrpcServerConfig, ServerTls, TlsIdentity};
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
    /// Dial this proxy's reverse-connection socket.
    pub reverse: Option<String>,
    /// The agent's id (also the value of the `x-agentwire-agent` header it sets).
    pub agent_id: String,
    /// Token presented when registering over a reverse connection.
    pub token: Option<String>,
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
            socket_mode: 0o600,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves until a termination signal, then drains. Prints one line per listener on stdout
/// (`uds PATH`, `grpc http://ADDR` or `grpc https://ADDR`) once it accepts connections.
pub fn run(config: &ServeConfig) -> Result<(), CliError> {
    if config.uds.is_none() && config.grpc.is_none() && config.reverse.is_none() {
        return Err(CliError::new(
            "nothing to serve: give --uds PATH, --grpc ADDR and/or --reverse ENDPOINT",
        ));
    }
    if config.reverse.is_some() {
        return Err(TransportKind::Reverse.unavailable());
    }
    let tls = config.tls.as_ref().map(read_tls).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(serve(config, tls))
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

async fn serve(config: &ServeConfig, tls: Option<ServerTls>) -> Result<(), CliError> {
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
        println!("uds {}", path.display());
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
        println!("grpc {scheme}://{bound}");
        let stop = shutdown.clone();
        servers.push(tokio::spawn(async move {
            server.serve(stop).await.map_err(|e| e.to_string())
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
