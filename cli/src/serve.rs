//! `agentwire serve`: runs the [demo agent](crate::demo) until Ctrl-C or SIGTERM, then
//! stops accepting, lets requests in flight finish (within the drain timeout) and exits.

use crate::demo::DemoAgent;
use crate::{CliError, TransportKind};
use agentwire_runtime::server::Shutdown;
use agentwire_tokio::{UdsServer, UdsServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Listen on this Unix socket.
    pub uds: Option<PathBuf>,
    /// Listen for gRPC on this address.
    pub grpc: Option<String>,
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
            reverse: None,
            agent_id: crate::demo::DEFAULT_AGENT_ID.into(),
            token: None,
            socket_mode: 0o600,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves until a termination signal, then drains.
pub fn run(config: &ServeConfig) -> Result<(), CliError> {
    if config.uds.is_none() && config.grpc.is_none() && config.reverse.is_none() {
        return Err(CliError::new(
            "nothing to serve: give --uds PATH (and/or --grpc ADDR, --reverse ENDPOINT)",
        ));
    }
    if config.grpc.is_some() {
        return Err(TransportKind::Grpc.unavailable());
    }
    if config.reverse.is_some() {
        return Err(TransportKind::Reverse.unavailable());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(serve(config))
}

async fn serve(config: &ServeConfig) -> Result<(), CliError> {
    let agent = Arc::new(DemoAgent::new(config.agent_id.clone()));
    let shutdown = Shutdown::new();
    let mut servers = Vec::new();
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
        servers.push(tokio::spawn(server.serve(agent.clone(), shutdown.clone())));
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
