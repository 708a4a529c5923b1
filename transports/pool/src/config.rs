//! Pool-wide and per-agent settings.

use std::sync::Arc;
use std::time::Duration;

use agentwire_core::message::AnyValue;
use agentwire_core::metrics::MetricsConfig;
use agentwire_core::pool::{AffinityConfig, Backoff, BreakerConfig, FlowControlMode, Strategy};
use agentwire_runtime::client::ClientConfig;

use crate::Connector;

/// The bound of every queue the pool owns, unless [`PoolConfig::channel_buffer_size`] says
/// otherwise (the reference's constant; its own setting of the same name had no effect,
/// §14 B15).
///
/// The pool owns one kind of queue: requests of one agent waiting for flow control
/// ([`FlowControlMode::WaitAndRetry`]); a request that finds that queue full is refused at
/// once. [`Connector`]s receive the value in [`ConnectSettings`](crate::ConnectSettings) to
/// size their own per-connection queues (a gRPC request stream, for example).
pub const CHANNEL_BUFFER_SIZE: usize = 64;

/// Settings of an [`AgentPool`](crate::AgentPool). Defaults follow the reference (spec
/// §11.7) where it has the setting.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Connections opened per agent (default 4; [`AgentOptions::connections`] overrides).
    pub connections_per_agent: usize,
    /// Load-balancing strategy among an agent's connections (default round robin).
    pub strategy: Strategy,
    /// Deadline of one event unless the agent has its own (default 30 s).
    pub request_timeout: Duration,
    /// Bound on connecting **and** completing the handshake and configuration (default 5 s).
    pub connect_timeout: Duration,
    /// Period of the maintenance pass: health refresh, dead-connection removal, affinity
    /// expiry (default 10 s). Reconnects are scheduled by [`backoff`](Self::backoff), not
    /// quantised by this period, and a connection found dead on the hot path wakes the
    /// maintenance task at once.
    pub health_check_interval: Duration,
    /// Bound of every queue the pool owns (default [`CHANNEL_BUFFER_SIZE`]).
    pub channel_buffer_size: usize,
    /// What a request does when the agent cannot take it (default fail-closed).
    pub flow_control: FlowControlMode,
    /// Correlation affinity: bound and idle expiry of the correlation id → connection map
    /// that keeps every event of a request (and of its response, B16) on one connection.
    pub affinity: AffinityConfig,
    /// Sticky sessions: the WebSocket correlation id → connection map (frames of one
    /// WebSocket stay on one connection).
    pub sticky_sessions: AffinityConfig,
    /// Circuit breaker of each connection (3 consecutive failures, 5 s reset).
    pub breaker: BreakerConfig,
    /// Circuit breaker of each agent as a whole (5 consecutive failures, 5 s reset). Failures
    /// are transport errors, timeouts and "no usable connection"; agent decisions (a Block)
    /// and flow control never count.
    pub agent_breaker: BreakerConfig,
    /// Reconnect schedule of an agent whose connections are missing (5 s doubling to 120 s,
    /// 20 % jitter; the first attempt is immediate).
    pub backoff: Backoff,
    /// How long [`shutdown`](crate::AgentPool::shutdown) and
    /// [`remove_agent`](crate::AgentPool::remove_agent) wait for in-flight requests before
    /// cancelling them (default 30 s).
    pub drain_timeout: Duration,
    /// Requests in flight per connection unless the agent declares fewer
    /// (`limits.max_concurrency`) or [`AgentOptions::max_concurrency`] says otherwise
    /// (default 100, the reference's `max_concurrent_per_connection`).
    pub max_in_flight_per_connection: u32,
    /// Session settings of every connection (encodings, frame limits, proxy id). The pool
    /// sets the agent's configuration, request timeout, in-flight limit and connect timeout
    /// per agent.
    pub client: ClientConfig,
    /// Prefix of the Prometheus metric names (default `agent_protocol`, as the reference's
    /// docs). An invalid prefix falls back to the default.
    pub metrics_prefix: String,
    /// Limits of the metrics registry.
    pub metrics: MetricsConfig,
    /// Transports for endpoint kinds the pool does not dial itself, keyed by
    /// [`Endpoint::scheme`](crate::Endpoint::scheme) (`"grpc"`; a `"unix"` entry replaces the
    /// built-in Unix-socket dialler). More can be added with
    /// [`AgentPool::register_connector`](crate::AgentPool::register_connector).
    pub connectors: Vec<(String, Arc<dyn Connector>)>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connections_per_agent: 4,
            strategy: Strategy::RoundRobin,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(10),
            channel_buffer_size: CHANNEL_BUFFER_SIZE,
            flow_control: FlowControlMode::FailClosed,
            affinity: AffinityConfig::default(),
            sticky_sessions: AffinityConfig::sticky_sessions(Some(Duration::from_secs(300))),
            breaker: BreakerConfig::default(),
            agent_breaker: BreakerConfig {
                failure_threshold: 5,
                reset_timeout: Duration::from_secs(5),
            },
            backoff: Backoff::default(),
            drain_timeout: Duration::from_secs(30),
            max_in_flight_per_connection: 100,
            client: ClientConfig::default(),
            metrics_prefix: String::from(DEFAULT_METRICS_PREFIX),
            metrics: MetricsConfig::default(),
            connectors: Vec::new(),
        }
    }
}

/// The metrics prefix used when none (or an invalid one) is configured.
pub(crate) const DEFAULT_METRICS_PREFIX: &str = "agent_protocol";

/// What the proxy does when an agent cannot be asked or does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailurePolicy {
    /// Fail the request: the pool call returns the error and the proxy answers the client
    /// with `status` (read it back with
    /// [`AgentPool::failure_policy`](crate::AgentPool::failure_policy)).
    FailClosed {
        /// HTTP status for the client.
        status: u16,
    },
    /// Carry on without the agent: the pool call returns
    /// [`PoolOutcome::Skipped`](crate::PoolOutcome::Skipped) with the reason.
    FailOpen,
}

impl Default for FailurePolicy {
    /// Fail closed with 503 Service Unavailable.
    fn default() -> Self {
        FailurePolicy::FailClosed { status: 503 }
    }
}

/// Per-agent settings for [`AgentPool::add_agent`](crate::AgentPool::add_agent).
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Configuration delivered to the agent on every connection (in the handshake and by a
    /// Configure frame right after it).
    pub config: Option<AnyValue>,
    /// Deadline of one event (default: [`PoolConfig::request_timeout`]).
    pub request_timeout: Option<Duration>,
    /// Fail open or closed when the agent cannot be asked.
    pub failure_policy: FailurePolicy,
    /// Requests in flight per connection (default:
    /// [`PoolConfig::max_in_flight_per_connection`]); the agent's declared
    /// `limits.max_concurrency` lowers it further.
    pub max_concurrency: Option<u32>,
    /// Connections to keep open (default: [`PoolConfig::connections_per_agent`]). `Some(0)`
    /// registers an agent the pool never dials (reverse connections only).
    pub connections: Option<usize>,
}
