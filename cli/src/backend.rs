//! What `agentwire bench` drives: an [`AgentPool`] with one agent, behind the small
//! [`Backend`] interface the load generator is written against.

use agentwire_core::message::{AgentResponse, BodyChunk, Encoding, RequestHeaders};
use agentwire_pool::grpc::{ClientTls, GrpcAgentClient, GrpcClientConfig};
use agentwire_pool::{AgentOptions, AgentPool, PoolConfig, PoolError, PoolOutcome};
use agentwire_reverse::Registrations;
use agentwire_runtime::Runtime;
use agentwire_runtime::client::{AgentClient, ClientConfig};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::{CliError, Endpoint};

/// A short stable name of why an event failed (`ClientError::kind`, `PoolError::kind`).
pub(crate) type ErrorKind = &'static str;

/// Sends a request's events to one agent.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Sends request headers; the request's later events go where these went.
    fn request_headers(
        &self,
        event: RequestHeaders,
    ) -> impl Future<Output = Result<AgentResponse, ErrorKind>> + Send;

    /// Sends one request body chunk.
    fn request_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> impl Future<Output = Result<AgentResponse, ErrorKind>> + Send;

    /// The request is over: forget where it went.
    fn finish(&self, correlation_id: &str);

    /// Closes every connection, letting requests in flight finish briefly.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// The agent id the bench registers its target under.
const AGENT: &str = "bench";

/// The proxy's real path: an [`AgentPool`] holding `connections` connections to the agent
/// (round robin, a request's events pinned to one connection by correlation affinity).
#[derive(Debug)]
pub(crate) struct Pool<R: Runtime> {
    pool: AgentPool<R>,
}

/// Settings the bench gives the pool.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) connections: usize,
    pub(crate) concurrency: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// The one encoding offered on Unix sockets.
    pub(crate) encoding: Encoding,
    /// Authorities trusted for `https://` agents.
    pub(crate) tls_ca: Option<PathBuf>,
}

impl<R: Runtime> Pool<R> {
    /// Checks with one connection of its own that the agent at `endpoint` answers a
    /// handshake (for a precise error, and the negotiated encoding, which the pool does not
    /// report: `None` on gRPC), then opens the pool. gRPC needs `runtime` to be tokio.
    pub(crate) async fn connect(
        runtime: R,
        endpoint: &Endpoint,
        settings: &PoolSettings,
    ) -> Result<(Self, Option<Encoding>), CliError> {
        let unreachable =
            |e: &dyn std::fmt::Display| CliError::new(format!("cannot connect to {endpoint}: {e}"));
        let mut client = ClientConfig {
            connect_timeout: settings.connect_timeout,
            ..ClientConfig::default()
        };
        client.session.encodings = vec![settings.encoding];
        let config = pool_config(settings, client.clone());
        let (pool, encoding) = match endpoint {
            Endpoint::Uds(path) => {
                let first = AgentClient::connect_unix(&runtime, path, client)
                    .await
                    .map_err(|e| unreachable(&e))?;
                let encoding = first.info().map_or(Encoding::Json, |i| i.encoding);
                first.close();
                (AgentPool::new(runtime, config), Some(encoding))
            }
            Endpoint::Grpc(url) => {
                let tls = match &settings.tls_ca {
                    Some(path) => Some(ClientTls::with_ca(std::fs::read(path).map_err(|e| {
                        CliError::new(format!("cannot read {}: {e}", path.display()))
                    })?)),
                    None => None,
                };
                let base = GrpcClientConfig {
                    connect_timeout: settings.connect_timeout,
                    tls,
                    ..GrpcClientConfig::default()
                };
                let first = GrpcAgentClient::connect(url, base.clone())
                    .await
                    .map_err(|e| unreachable(&e))?;
                first.close();
                let pool = AgentPool::new(runtime, config);
                pool.enable_grpc(base);
                (pool, None)
            }
        };
        let added = pool
            .add_agent(AGENT, &endpoint.to_string(), AgentOptions::default())
            .await;
        if let Err(e) = added {
            pool.shutdown().await;
            return Err(CliError::new(format!(
                "cannot add {endpoint} to the pool: {e}"
            )));
        }
        let healthy = pool.healthy_connections(AGENT);
        if healthy < settings.connections {
            pool.shutdown().await;
            return Err(CliError::new(format!(
                "only {healthy} of {} connections to {endpoint} could be opened",
                settings.connections
            )));
        }
        Ok((Pool { pool }, encoding))
    }
}

impl<R: Runtime> Pool<R> {
    /// A pool over reverse connections: waits (bounded) for `connections` registrations
    /// and attaches each to the pool's agent.
    pub(crate) async fn attach(
        runtime: R,
        mut registrations: Registrations,
        settings: &PoolSettings,
    ) -> Result<(Self, Option<Encoding>), CliError> {
        let config = pool_config(settings, ClientConfig::default());
        let pool = AgentPool::new(runtime.clone(), config);
        let options = AgentOptions {
            connections: Some(0),
            ..AgentOptions::default()
        };
        let mut encoding = None;
        let result = async {
            pool.register_agent(AGENT, options)
                .map_err(|e| CliError::new(format!("cannot register the agent: {e}")))?;
            for _ in 0..settings.connections {
                let registered = agentwire_runtime::timeout(
                    &runtime,
                    settings.connect_timeout,
                    registrations.recv(),
                )
                .await
                .flatten()
                .ok_or_else(|| CliError::new("the agent did not register its connections"))?;
                encoding = Some(registered.encoding);
                pool.attach_connection(AGENT, registered.client)
                    .map_err(|e| CliError::new(format!("cannot attach a connection: {e}")))?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok((Pool { pool }, encoding)),
            Err(e) => {
                pool.shutdown().await;
                Err(e)
            }
        }
    }
}

fn pool_config(settings: &PoolSettings, client: ClientConfig) -> PoolConfig {
    let in_flight = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
    PoolConfig {
        connections_per_agent: settings.connections,
        request_timeout: settings.request_timeout,
        connect_timeout: settings.connect_timeout,
        max_in_flight_per_connection: in_flight.max(100),
        drain_timeout: Duration::from_secs(2),
        client,
        ..PoolConfig::default()
    }
}

fn answer(outcome: Result<PoolOutcome, PoolError>) -> Result<AgentResponse, ErrorKind> {
    match outcome {
        Ok(PoolOutcome::Answered(r)) => Ok(r),
        Ok(PoolOutcome::Skipped { .. }) => Err("skipped"),
        Err(e) => Err(e.kind()),
    }
}

impl<R: Runtime> Backend for Pool<R> {
    async fn request_headers(&self, event: RequestHeaders) -> Result<AgentResponse, ErrorKind> {
        answer(self.pool.send_request_headers(AGENT, event).await)
    }

    async fn request_body_chunk(&self, chunk: BodyChunk) -> Result<AgentResponse, ErrorKind> {
        answer(self.pool.send_request_body_chunk(AGENT, chunk).await)
    }

    fn finish(&self, correlation_id: &str) {
        self.pool.clear_affinity(correlation_id);
    }

    async fn shutdown(&self) {
        self.pool.shutdown().await;
    }
}
