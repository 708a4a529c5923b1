//! What `agentwire bench` drives: an [`AgentPool`] with one agent, behind the small
//! [`Backend`] interface the load generator is written against.

use agentwire_core::message::{AgentResponse, BodyChunk, Encoding, RequestHeaders};
use agentwire_pool::{AgentOptions, AgentPool, PoolConfig, PoolOutcome};
use agentwire_runtime::Runtime;
use agentwire_runtime::client::{AgentClient, ClientConfig};
use std::future::Future;
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
    pub(crate) encoding: Encoding,
}

impl<R: Runtime> Pool<R> {
    /// Checks that the agent at `endpoint` answers a handshake (for a precise error and the
    /// negotiated encoding, which the pool does not report), then opens the pool.
    pub(crate) async fn connect(
        runtime: R,
        endpoint: &Endpoint,
        settings: &PoolSettings,
    ) -> Result<(Self, Encoding), CliError> {
        let mut client = ClientConfig {
            connect_timeout: settings.connect_timeout,
            ..ClientConfig::default()
        };
        client.session.encodings = vec![settings.encoding];
        let path = endpoint.uds_path()?;
        let first = AgentClient::connect_unix(&runtime, path, client.clone())
            .await
            .map_err(|e| CliError::new(format!("cannot connect to {endpoint}: {e}")))?;
        let encoding = first.info().map_or(Encoding::Json, |i| i.encoding);
        first.close();

        let in_flight = u32::try_from(settings.concurrency).unwrap_or(u32::MAX);
        let config = PoolConfig {
            connections_per_agent: settings.connections,
            request_timeout: settings.request_timeout,
            connect_timeout: settings.connect_timeout,
            max_in_flight_per_connection: in_flight.max(100),
            drain_timeout: Duration::from_secs(2),
            client,
            ..PoolConfig::default()
        };
        let pool = AgentPool::new(runtime, config);
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

fn answer(
    outcome: Result<PoolOutcome, agentwire_pool::PoolError>,
) -> Result<AgentResponse, ErrorKind> {
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
