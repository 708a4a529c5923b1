//! Running a gateway: a Pingora server with an [`AgentGateway`] in front of one upstream
//! (what `agentwire gateway` runs).

use crate::{AgentGateway, CallMode, GatewayAgent, GatewayConfig, Route};
use agentwire_pool::{AgentOptions, AgentPool, FailurePolicy, PoolConfig};
use agentwire_tokio::TokioRuntime;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Stops a gateway started by [`serve`] or [`run`] (a fast shutdown: connections are closed).
#[derive(Clone, Debug, Default)]
pub struct GatewayStop {
    notify: Arc<Notify>,
}

impl GatewayStop {
    /// A new, untriggered stop.
    #[must_use]
    pub fn new() -> Self {
        GatewayStop::default()
    }

    /// Stops the gateway (also if it has not started waiting yet).
    pub fn trigger(&self) {
        self.notify.notify_one();
    }
}

struct StopWatch(GatewayStop);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notify.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// Why a gateway could not run.
#[derive(Debug)]
pub struct GatewayError(String);

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GatewayError {}

/// Serves `gateway` on `listen` (e.g. `127.0.0.1:8080`) with `threads` worker threads until
/// `stop` is triggered, or without one until SIGTERM / SIGINT / SIGQUIT. Blocks.
///
/// # Errors
/// The Pingora server could not be created.
pub fn serve(
    gateway: AgentGateway,
    listen: &str,
    threads: usize,
    stop: Option<GatewayStop>,
) -> Result<(), GatewayError> {
    let conf = ServerConf {
        threads: threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(listen);
    server.add_service(proxy);
    let args = match stop {
        Some(stop) => RunArgs {
            shutdown_signal: Box::new(StopWatch(stop)),
        },
        None => RunArgs::default(),
    };
    server.run(args);
    Ok(())
}

/// Everything `agentwire gateway` needs.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// Listen address of the gateway.
    pub listen: String,
    /// The upstream HTTP/1.1 server.
    pub upstream: SocketAddr,
    /// `(agent id, endpoint)` in the order they are asked.
    pub agents: Vec<(String, String)>,
    /// Ask the agents in parallel instead of in order.
    pub mode: CallMode,
    /// Deadline of one agent call.
    pub timeout: Duration,
    /// What an unavailable or late agent means.
    pub failure_policy: FailurePolicy,
    /// Body bytes each agent sees at most (request and response body each).
    pub max_body_bytes: u64,
    /// Send response body chunks to the agents too (streamed; see the crate doc).
    pub inspect_response_body: bool,
    /// Pingora worker threads.
    pub threads: usize,
    /// Connections per agent.
    pub connections_per_agent: usize,
}

impl GatewayOptions {
    /// Defaults: no agents, in order, 100 ms, fail-closed 503, 1 MiB, response bodies not
    /// inspected, 2 threads, 4 connections.
    #[must_use]
    pub fn new(listen: impl Into<String>, upstream: SocketAddr) -> Self {
        GatewayOptions {
            listen: listen.into(),
            upstream,
            agents: Vec::new(),
            mode: CallMode::Sequential,
            timeout: Duration::from_millis(100),
            failure_policy: FailurePolicy::default(),
            max_body_bytes: crate::DEFAULT_MAX_BODY_BYTES,
            inspect_response_body: false,
            threads: 2,
            connections_per_agent: 4,
        }
    }
}

/// Connects the agents (on a runtime of their own), then [`serve`]s until `stop` or a
/// signal, then shuts the pool down. Blocks.
///
/// # Errors
/// The pool's runtime could not start, an endpoint is invalid, or the server failed.
pub fn run(options: &GatewayOptions, stop: Option<GatewayStop>) -> Result<(), GatewayError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agentwire-pool")
        .enable_all()
        .build()
        .map_err(|e| GatewayError(format!("cannot start the agent runtime: {e}")))?;
    let pool_config = PoolConfig {
        connections_per_agent: options.connections_per_agent.max(1),
        request_timeout: options.timeout,
        ..PoolConfig::default()
    };
    let pool = rt.block_on(async {
        let pool = AgentPool::new(TokioRuntime::current(), pool_config);
        for (id, endpoint) in &options.agents {
            let agent_options = AgentOptions {
                request_timeout: Some(options.timeout),
                failure_policy: options.failure_policy,
                ..AgentOptions::default()
            };
            pool.add_agent(id, endpoint, agent_options)
                .await
                .map_err(|e| GatewayError(format!("agent {id}: {e}")))?;
            if pool.healthy_connections(id) == 0 {
                tracing::warn!(agent = id.as_str(), "agent not reachable yet");
            }
        }
        Ok::<_, GatewayError>(pool)
    })?;
    let mut route = Route::new("/", options.mode);
    for (id, _) in &options.agents {
        route = route.agent(
            GatewayAgent::new(id.clone())
                .max_body_bytes(options.max_body_bytes)
                .inspect_response_body(options.inspect_response_body),
        );
    }
    let config = GatewayConfig::new(options.upstream).route(route);
    let result = serve(
        AgentGateway::new(pool.clone(), config),
        &options.listen,
        options.threads,
        stop,
    );
    rt.block_on(pool.shutdown());
    result
}
