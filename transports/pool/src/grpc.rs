//! gRPC agents in the pool (feature `grpc`; tokio only, as `agentwire-grpc` is).
//!
//! ```no_run
//! # async fn demo() -> Result<(), agentwire_pool::PoolError> {
//! use agentwire_pool::{AgentOptions, AgentPool, PoolConfig};
//! use agentwire_pool::grpc::GrpcClientConfig;
//!
//! let pool = AgentPool::new(agentwire_tokio::runtime(), PoolConfig::default());
//! pool.enable_grpc(GrpcClientConfig::default());
//! pool.add_agent("waf", "http://127.0.0.1:50051", AgentOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use agentwire_core::message::{AgentResponse, CancelReason, Capabilities, Event};
use agentwire_runtime::Runtime;
use agentwire_runtime::client::ClientError;

pub use agentwire_grpc::{ClientTls, GrpcAgentClient, GrpcClientConfig};

use crate::{
    AgentConnection, AgentPool, BoxFuture, ConnectSettings, Connector, Endpoint, PooledConnection,
};

/// Opens [`GrpcAgentClient`] connections for `http://`, `https://` and scheme-less
/// `host:port` endpoints.
///
/// The base configuration supplies what the pool does not set: TLS (required for
/// `https://`), keepalive, the message size limit. Per connection, the pool sets the proxy
/// id and version, the agent's configuration, the connect and request timeouts, the in-flight
/// limit and the outgoing queue's capacity ([`PoolConfig::channel_buffer_size`]).
///
/// [`PoolConfig::channel_buffer_size`]: crate::PoolConfig::channel_buffer_size
#[derive(Clone, Debug, Default)]
pub struct GrpcConnector {
    base: GrpcClientConfig,
}

impl GrpcConnector {
    /// A connector with `base` settings.
    #[must_use]
    pub fn new(base: GrpcClientConfig) -> Self {
        GrpcConnector { base }
    }
}

impl Connector for GrpcConnector {
    fn connect(
        &self,
        endpoint: &Endpoint,
        settings: ConnectSettings,
    ) -> BoxFuture<'static, Result<AgentConnection, ClientError>> {
        let uri = endpoint.to_string();
        let mut config = self.base.clone();
        let session = &settings.client.session;
        config.proxy_id.clone_from(&session.proxy_id);
        config.proxy_version.clone_from(&session.proxy_version);
        config.agent_config.clone_from(&session.agent_config);
        config.connect_timeout = settings.client.connect_timeout;
        config.request_timeout = session.request_timeout;
        config.max_in_flight = session.max_in_flight;
        config.channel_capacity = settings.channel_buffer_size.max(1);
        let notices = settings.notices;
        Box::pin(async move {
            let client = GrpcAgentClient::connect_with_notices(&uri, config, Some(notices)).await?;
            let connection: Arc<dyn PooledConnection> = Arc::new(GrpcConnection(client));
            Ok(AgentConnection::Custom(connection))
        })
    }
}

/// A [`GrpcAgentClient`] as a pooled connection.
#[derive(Debug)]
struct GrpcConnection(GrpcAgentClient);

impl PooledConnection for GrpcConnection {
    fn send(
        &self,
        event: Event,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<AgentResponse, ClientError>> {
        Box::pin(self.0.send_event_with_timeout(event, timeout))
    }

    fn cancel(&self, correlation_id: &str, reason: CancelReason) {
        let _ = self.0.cancel(correlation_id, reason);
    }

    fn cancel_all(&self, reason: CancelReason) {
        let _ = self.0.cancel_all(reason);
    }

    fn is_connected(&self) -> bool {
        self.0.is_connected()
    }

    fn is_paused(&self) -> bool {
        self.0.is_paused()
    }

    fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    fn capabilities(&self) -> Option<Capabilities> {
        Some(self.0.info().capabilities.clone())
    }

    fn enforces_deadline(&self) -> bool {
        true
    }

    fn close(&self) {
        self.0.close();
    }
}

impl<R: Runtime> AgentPool<R> {
    /// Enables gRPC endpoints with a [`GrpcConnector`] built on `base` (call it before adding
    /// gRPC agents; the pool must run on tokio).
    pub fn enable_grpc(&self, base: GrpcClientConfig) {
        self.register_connector("grpc", Arc::new(GrpcConnector::new(base)));
    }
}
