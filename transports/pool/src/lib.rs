//! # agentwire-pool
//!
//! The proxy-side agent pool of agentwire: every request a proxy sends to its agents goes
//! through an [`AgentPool`]. It keeps a set of connections per agent, picks one per event
//! without locks or I/O, keeps the events of one request on one connection, applies the
//! agent's flow control, trips circuit breakers on failing connections and agents, replaces
//! dead connections in the background, and exports Prometheus metrics. It is written once
//! against [`agentwire_runtime::Runtime`], so it runs on tokio, async-std and smol alike.
//!
//! ```
//! use agentwire_pool::{AgentOptions, AgentPool, PoolConfig, PoolOutcome};
//! use agentwire_tokio::{AgentHandler, Shutdown, UdsServer, UdsServerConfig};
//! use agentwire_tokio::core::message::{AgentResponse, Decision, RequestHeaders, RequestMetadata};
//! use std::sync::Arc;
//!
//! struct BlockAdmin;
//! impl AgentHandler for BlockAdmin {
//!     async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
//!         if event.uri.starts_with("/admin") { AgentResponse::block(403) } else { AgentResponse::allow() }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An agent on a socket in a private temporary directory.
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("waf.sock");
//! let server = UdsServer::bind(agentwire_tokio::runtime(), &path, UdsServerConfig::default())?;
//! let stop = Shutdown::new();
//! tokio::spawn(server.serve(Arc::new(BlockAdmin), stop.clone()));
//!
//! // The pool: four connections to the agent, opened concurrently.
//! let pool = AgentPool::new(agentwire_tokio::runtime(), PoolConfig::default());
//! pool.add_agent("waf", path.to_str().unwrap(), AgentOptions::default()).await?;
//! assert_eq!(pool.healthy_connections("waf"), 4);
//!
//! let mut request = RequestHeaders { method: "GET".into(), uri: "/admin/users".into(), ..Default::default() };
//! request.metadata = RequestMetadata { correlation_id: "req-1".into(), ..Default::default() };
//! match pool.send_request_headers("waf", request).await? {
//!     PoolOutcome::Answered(response) => {
//!         assert!(matches!(response.decision, Decision::Block { status: 403, .. }));
//!     }
//!     PoolOutcome::Skipped { reason } => panic!("agent skipped: {reason}"),
//! }
//! pool.clear_affinity("req-1"); // the request ended without a RequestComplete
//!
//! pool.shutdown().await;
//! stop.trigger();
//! # Ok(()) }
//! ```
//!
//! ## Which connection an event uses
//!
//! | call | connection | afterwards |
//! |---|---|---|
//! | [`send_request_headers`](AgentPool::send_request_headers) | chosen by the [`Strategy`] | binds correlation id → connection |
//! | [`send_request_body_chunk`](AgentPool::send_request_body_chunk), [`send_response_headers`](AgentPool::send_response_headers), [`send_response_body_chunk`](AgentPool::send_response_body_chunk) | the bound connection while it is usable, else the strategy's choice | binds the fallback, so the rest of the body stays together (responses too: §14 B16) |
//! | [`send_request_complete`](AgentPool::send_request_complete) | the bound connection, else the strategy's | forgets the binding |
//! | [`send_websocket_frame`](AgentPool::send_websocket_frame) | the WebSocket's sticky connection, else the request's, else the strategy's | binds the sticky session |
//! | [`send_guardrail_inspect`](AgentPool::send_guardrail_inspect) | chosen by the strategy | — |
//! | [`cancel_request`](AgentPool::cancel_request) | every connection of the agent | forgets the binding |
//!
//! A bound connection that is closed, unhealthy or circuit-open is abandoned for a fresh
//! choice; one that is **paused or full is not** (the agent keeps the request's state there):
//! the flow-control mode applies instead. Bindings are also dropped on errors, by
//! [`clear_affinity`](AgentPool::clear_affinity), when their connection leaves the pool, and
//! by the idle-time sweep, and the maps are capped ([`PoolConfig::affinity`],
//! [`PoolConfig::sticky_sessions`]).
//!
//! The agent session allows **one outstanding event per correlation id and connection**
//! (§14 B7 is refused locally as `DuplicateCorrelationId`), so send the events of one request
//! in order, each after the previous answer — as a proxy does anyway.
//!
//! ## The hot path: two synchronisation points per event
//!
//! A synchronisation point here is an ordered read-modify-write on state that concurrent
//! requests also write (what makes cores wait for each other). One event costs exactly two,
//! both on the chosen connection's cache-aligned admission word
//! ([`ConnectionState`]):
//!
//! 1. **Admission** — one compare-and-swap that checks "open, not paused, below the limit"
//!    and counts the request in (it also records the last-used time, the `touch`).
//! 2. **Release** — the [`InFlightGuard`]'s
//!    `fetch_sub`, on every path: answer, error, timeout, cancel, or the caller dropping the
//!    future.
//!
//! Everything else is a lock-free read or an unordered counter:
//! * the registry lookup and the agent's connection list are [`arc_swap`] loads: a
//!   thread-local slot, no shared write, no lock (the [`DashMap`] that
//!   holds the registry is touched only by add/remove/iteration, which publish a new
//!   snapshot);
//! * selection is loads of each connection's admission and breaker words; health is the
//!   cached flag maintenance refreshes, never a probe; breakers in their closed state are
//!   loads too (a half-open probe adds one CAS, once per reset timeout);
//! * the balancer ticket, the request/response counters and the duration histogram are
//!   relaxed increments that order nothing; the chosen connection's `Arc` is cloned
//!   (relaxed) at admission and dropped at release, on the same connection.
//!
//! No lock is held across an `.await`, there is no `block_on`, and selection never waits
//! (§14 B14). Affinity adds one sharded lock where the routing table above says so: a
//! shard read lock for each lookup, a shard write lock when a binding is created or
//! dropped. The transport's own hand-off (the client's session lock and answer slot) is
//! per connection and outside this count.
//!
//! ## Flow control
//!
//! An agent pauses, resumes or resizes a connection with FlowControl messages (§5.12); the
//! transport passes them to the pool, which sets the connection's paused flag or in-flight
//! limit at once (§14 B3: the reference ignored them). When every candidate is paused or
//! full, [`PoolConfig::flow_control`] decides: fail-closed →
//! [`PoolError::FlowControlPaused`]; fail-open → [`PoolOutcome::Skipped`]
//! ([`SkipReason::FlowControl`]); wait-and-retry → the request waits (at most
//! [`PoolConfig::channel_buffer_size`] per agent) for a resume, a capacity update or a
//! finishing request, up to its `max_wait`, then fails closed.
//!
//! ## Failures, breakers, reconnection
//!
//! Every connection has a circuit breaker, and so does every agent
//! ([`PoolConfig::breaker`], [`PoolConfig::agent_breaker`]). Failures are transport errors
//! and timeouts (and, for the agent, finding no usable connection); an agent's Block
//! decision is an answer, not a failure. An open breaker admits one probe after its reset
//! timeout; the probe's success closes it (§14 B13: the reference never recovered).
//! A request that finds its connection's transport dead marks it unhealthy and picks
//! another; the maintenance task (spawned by [`AgentPool::new`], woken at once) removes dead
//! connections and dials replacements on the [`PoolConfig::backoff`] schedule with jitter,
//! never on the hot path. Per agent, [`FailurePolicy`] decides whether an unavailable agent
//! fails the request or is skipped.
//!
//! ## Transports
//!
//! Unix-socket endpoints are dialled with [`AgentClient`]. Other transports plug in through
//! [`Connector`] (registered by [`Endpoint::scheme`]) and [`PooledConnection`], without
//! touching the hot path; a gRPC endpoint without a registered connector is refused with
//! `InvalidEndpoint("grpc transport not enabled")`. Agent-initiated (reverse) connections
//! are handed over with [`AgentPool::attach_connection`].

mod agent;
mod config;
mod connection;
mod endpoint;
mod error;
mod flow;
#[cfg(feature = "grpc")]
pub mod grpc;
mod maintenance;

pub use config::{AgentOptions, CHANNEL_BUFFER_SIZE, FailurePolicy, PoolConfig};
pub use connection::{AgentConnection, BoxFuture, ConnectSettings, Connector, PooledConnection};
pub use endpoint::Endpoint;
pub use error::{PoolError, PoolOutcome, SkipReason};

pub use agentwire_core::metrics::ProtocolMetrics;
pub use agentwire_core::pool::{AffinityConfig, Backoff, BreakerConfig, FlowControlMode, Strategy};
pub use agentwire_runtime::client::{AgentClient, ClientConfig, ClientError};

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;

use agentwire_core::message::{
    BodyChunk, CancelReason, Event, FlowAction, GuardrailInspect, HealthState, RequestComplete,
    RequestHeaders, ResponseHeaders, WebSocketFrame,
};
use agentwire_core::metrics::is_valid_metric_name;
use agentwire_core::pool::{
    AffinityMap, Balancer, BindOutcome, CircuitBreaker, CircuitPermit, CircuitTransition,
    ConnectionConfig, ConnectionId, ConnectionState, ConnectionTally, FlowBlock, FlowDecision,
    InFlightGuard, MAX_IN_FLIGHT_LIMIT, RequestOutcome, Selection, select_preferring,
};
use agentwire_core::sync::{AtomicBool, AtomicU64, Mutex, Ordering, RwLock};
use agentwire_core::time::Instant;
use agentwire_runtime::client::{AgentNotice, NoticeCallback};
use agentwire_runtime::{Notify, Runtime, core_now, to_std};

use crate::agent::{Agent, AgentCore};
use crate::config::DEFAULT_METRICS_PREFIX;
use crate::connection::{Conn, ConnCore, PooledConn};
use crate::flow::{FlowSignal, RECHECK, WaitTicket};

/// Extra time a custom transport gets beyond the request timeout before the pool gives up on
/// it (the generic client enforces its deadline itself).
const CUSTOM_DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// Selections that lost their admission race (or found a dead transport) before the request
/// is treated as blocked. Each loss means the state changed under it; the bound keeps a
/// pathological interleaving from spinning.
const MAX_PICKS: usize = 16;

/// How long a retiring connection waits after cancelling its requests before it closes, so
/// the Cancel frames reach the agent.
const CANCEL_FLUSH_GRACE: Duration = Duration::from_millis(20);

/// How often drains re-check the in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// The proxy-side pool of agent connections (see the crate docs). Cheap to clone: clones
/// share one pool, whose maintenance task stops at [`shutdown`](Self::shutdown) or when the
/// last clone is dropped.
pub struct AgentPool<R: Runtime> {
    inner: Arc<PoolInner<R>>,
}

impl<R: Runtime> Clone for AgentPool<R> {
    fn clone(&self) -> Self {
        AgentPool {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: Runtime> fmt::Debug for AgentPool<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentPool")
            .field("agents", &self.agent_ids())
            .field(
                "shutting_down",
                &self.inner.shutting_down.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// Wake-up and stop flags of the maintenance task, shared with the connections' notice
/// callbacks (which must not keep the pool alive).
#[derive(Debug, Default)]
pub(crate) struct Control {
    pub(crate) wake: Notify,
    pub(crate) stop: AtomicBool,
}

impl Control {
    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify();
    }
}

/// The hot path hashes the agent id once per event: foldhash (seeded per map) rather than
/// SipHash. Agent ids come from configuration, not from clients.
type Registry = HashMap<String, Arc<Agent>, foldhash::fast::RandomState>;

pub(crate) struct PoolInner<R: Runtime> {
    pub(crate) runtime: R,
    pub(crate) config: PoolConfig,
    /// The registry of record: add, remove and replace go through its per-key entries.
    agents: DashMap<String, Arc<Agent>>,
    /// What the hot path reads: a snapshot of `agents`, republished after every change.
    published: ArcSwap<Registry>,
    publish_lock: Mutex<()>,
    connectors: RwLock<HashMap<String, Arc<dyn Connector>>>,
    pub(crate) metrics: Arc<ProtocolMetrics>,
    next_connection: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) ctl: Arc<Control>,
    prefix: String,
    pub(crate) seed: u64,
}

impl<R: Runtime> Drop for PoolInner<R> {
    fn drop(&mut self) {
        self.ctl.stop();
        for entry in self.agents.iter() {
            entry.value().removed.store(true, Ordering::Release);
            for conn in entry.value().take_connections() {
                conn.state().close();
                conn.transport.close();
            }
        }
    }
}

/// How an event is routed (see the table in the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Strategy's choice; bind the correlation id to it.
    Bind,
    /// Prefer the correlation id's connection; bind a fallback.
    Affine,
    /// Prefer the correlation id's connection; forget the binding afterwards.
    Complete,
    /// Prefer the sticky session (then the correlation binding); bind the sticky session.
    Sticky,
    /// Strategy's choice, no affinity.
    Free,
}

/// Why no connection could be picked, for the failure policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unavailable {
    NoHealthy,
    CircuitOpen,
}

/// The synchronous half of one admission attempt.
enum Pick {
    Unknown,
    Conn {
        conn: Conn,
        permit: CircuitPermit,
        /// The route's own map already points at this connection.
        bound: bool,
    },
    Blocked {
        block: FlowBlock,
        agent: Arc<AgentCore>,
        epoch: u64,
    },
    Unavailable {
        why: Unavailable,
        agent: Arc<AgentCore>,
    },
}

/// The agent-level breaker permit of one request; handed back if the request ends without
/// a verdict (including the future being dropped).
struct AgentPermit<'a> {
    breaker: &'a CircuitBreaker,
    permit: Option<CircuitPermit>,
}

impl AgentPermit<'_> {
    fn success(&mut self) -> Option<CircuitTransition> {
        self.permit
            .take()
            .and_then(|p| self.breaker.record_success(p))
    }

    fn failure(&mut self, now: Instant) -> Option<CircuitTransition> {
        self.permit
            .take()
            .and_then(|p| self.breaker.record_failure(p, now))
    }

    fn abandon(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.abandon(p);
        }
    }
}

impl Drop for AgentPermit<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

impl<R: Runtime> AgentPool<R> {
    /// A pool with no agents; spawns its maintenance task on `runtime`.
    #[must_use]
    pub fn new(runtime: R, config: PoolConfig) -> Self {
        let prefix = if is_valid_metric_name(&config.metrics_prefix) {
            config.metrics_prefix.clone()
        } else {
            tracing::warn!(prefix = %config.metrics_prefix, "invalid metrics prefix, using the default");
            String::from(DEFAULT_METRICS_PREFIX)
        };
        let connectors = config
            .connectors
            .iter()
            .map(|(scheme, c)| (scheme.clone(), Arc::clone(c)))
            .collect();
        let inner = Arc::new(PoolInner {
            runtime: runtime.clone(),
            metrics: Arc::new(ProtocolMetrics::new(config.metrics)),
            config,
            agents: DashMap::new(),
            published: ArcSwap::from_pointee(Registry::default()),
            publish_lock: Mutex::new(()),
            connectors: RwLock::new(connectors),
            next_connection: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            ctl: Arc::new(Control::default()),
            prefix,
            seed: RandomState::new().hash_one(0x5eed_u64),
        });
        runtime.spawn(maintenance::run(
            runtime.clone(),
            Arc::downgrade(&inner),
            Arc::clone(&inner.ctl),
        ));
        AgentPool { inner }
    }

    /// Registers agent `agent_id` at `endpoint` (see [`Endpoint::parse`]) and opens its
    /// connections concurrently, each bounded by the connect timeout. Connections that fail
    /// are left to maintenance: an agent with no live connection is still registered (its
    /// requests fail or skip per its [`FailurePolicy`] until one is up). Registering an id
    /// again replaces the agent: the new connections are opened first, then the old ones
    /// drain and close in the background.
    ///
    /// # Errors
    /// [`PoolError::InvalidEndpoint`] for an unparsable endpoint or a transport without a
    /// connector (gRPC until one is registered); [`PoolError::ShuttingDown`].
    pub async fn add_agent(
        &self,
        agent_id: &str,
        endpoint: &str,
        options: AgentOptions,
    ) -> Result<(), PoolError> {
        let endpoint = Endpoint::parse(endpoint)?;
        if let Endpoint::Grpc { .. } = endpoint
            && self.inner.connector(endpoint.scheme()).is_none()
        {
            return Err(PoolError::InvalidEndpoint(String::from(
                "grpc transport not enabled",
            )));
        }
        self.inner.check_running()?;
        let agent = Arc::new(self.inner.build_agent(agent_id, Some(endpoint), options));
        let wanted = agent.target;
        if wanted > 0 {
            let attempts = (0..wanted).map(|_| self.inner.open_connection(&agent));
            let results = futures_util::future::join_all(attempts).await;
            let mut opened = Vec::with_capacity(wanted);
            for result in results {
                match result {
                    Ok(conn) => opened.push(conn),
                    Err(error) => {
                        tracing::warn!(agent = agent_id, %error, "agent connection failed");
                    }
                }
            }
            let now = core_now();
            {
                let mut schedule = agent.reconnect_state();
                if opened.is_empty() {
                    schedule.failures = 1;
                    schedule.next_attempt =
                        now.saturating_add(self.inner.backoff_delay(1, agent_id));
                } else {
                    schedule.next_attempt = now;
                }
            }
            agent.push_connections(opened);
        }
        self.inner.register(agent);
        Ok(())
    }

    /// Registers an agent the pool never dials: its connections arrive through
    /// [`attach_connection`](Self::attach_connection) (reverse connections, §9). Dead ones are
    /// removed by maintenance and never "reconnected" (§14 B5). Registering an id again
    /// replaces the agent.
    ///
    /// # Errors
    /// [`PoolError::ShuttingDown`].
    pub fn register_agent(&self, agent_id: &str, options: AgentOptions) -> Result<(), PoolError> {
        self.inner.check_running()?;
        let agent = Arc::new(self.inner.build_agent(agent_id, None, options));
        self.inner.register(agent);
        Ok(())
    }

    /// Removes an agent: new requests for it fail with [`PoolError::UnknownAgent`] at once,
    /// requests in flight get up to [`PoolConfig::drain_timeout`] to finish, then its
    /// connections close. Returns whether the agent was registered.
    pub async fn remove_agent(&self, agent_id: &str) -> bool {
        let Some((_, agent)) = self.inner.agents.remove(agent_id) else {
            return false;
        };
        agent.removed.store(true, Ordering::Release);
        self.inner.publish();
        self.inner.metrics.remove_agent(agent_id);
        retire(
            &self.inner.runtime,
            &agent,
            self.inner.config.drain_timeout,
            CancelReason::Manual,
        )
        .await;
        true
    }

    /// Adds an established connection to a registered agent (a reverse connection after its
    /// registration, or any client the caller opened). The client keeps the notice callback
    /// it was created with; the pool mirrors its flow-control state from the client's own
    /// refusals and on every maintenance pass.
    ///
    /// # Errors
    /// [`PoolError::UnknownAgent`], [`PoolError::ShuttingDown`], or
    /// [`PoolError::Client`] with `ConnectionClosed` if the client is already closed.
    pub fn attach_connection(&self, agent_id: &str, client: AgentClient) -> Result<(), PoolError> {
        self.inner.check_running()?;
        let agent = self
            .inner
            .agent(agent_id)
            .ok_or_else(|| PoolError::UnknownAgent(agent_id.to_owned()))?;
        if !client.is_connected() {
            return Err(PoolError::Client(ClientError::ConnectionClosed(
                client.close_reason(),
            )));
        }
        let transport = AgentConnection::Client(client);
        let conn = self.inner.new_conn_core(&agent, true);
        let limit = declared_limit(&transport, conn.base_limit());
        conn.set_base_limit(limit);
        if transport.is_paused() {
            conn.state.pause();
        }
        agent.push_connections(vec![Conn(Arc::new(PooledConn {
            core: conn,
            transport,
            agent: Arc::clone(&agent.core),
        }))]);
        agent.core.flow.notify();
        Ok(())
    }

    /// Makes connections of kind `scheme` (see [`Endpoint::scheme`]) with `connector` from
    /// now on: `"grpc"` enables gRPC endpoints; `"unix"` replaces the built-in Unix-socket
    /// dialler.
    pub fn register_connector(&self, scheme: &str, connector: Arc<dyn Connector>) {
        self.inner
            .connectors
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(scheme.to_owned(), connector);
    }

    /// Sends request headers on a connection chosen by the strategy and binds the request's
    /// correlation id to it.
    ///
    /// # Errors
    /// See [`PoolError`]; a fail-open agent turns unavailability into
    /// [`PoolOutcome::Skipped`].
    pub async fn send_request_headers(
        &self,
        agent_id: &str,
        event: RequestHeaders,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Bind, Event::RequestHeaders(event))
            .await
    }

    /// Sends a request body chunk on the connection that saw the request's headers.
    ///
    /// # Errors
    /// See [`send_request_headers`](Self::send_request_headers).
    pub async fn send_request_body_chunk(
        &self,
        agent_id: &str,
        chunk: BodyChunk,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Affine, Event::RequestBodyChunk(chunk))
            .await
    }

    /// Sends response headers on the request's connection (§14 B16).
    ///
    /// # Errors
    /// See [`send_request_headers`](Self::send_request_headers).
    pub async fn send_response_headers(
        &self,
        agent_id: &str,
        event: ResponseHeaders,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Affine, Event::ResponseHeaders(event))
            .await
    }

    /// Sends a response body chunk on the request's connection (§14 B16).
    ///
    /// # Errors
    /// See [`send_request_headers`](Self::send_request_headers).
    pub async fn send_response_body_chunk(
        &self,
        agent_id: &str,
        chunk: BodyChunk,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Affine, Event::ResponseBodyChunk(chunk))
            .await
    }

    /// Sends request complete on the request's connection, then forgets its binding.
    ///
    /// # Errors
    /// See [`send_request_headers`](Self::send_request_headers).
    pub async fn send_request_complete(
        &self,
        agent_id: &str,
        event: RequestComplete,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Complete, Event::RequestComplete(event))
            .await
    }

    /// Sends a WebSocket frame; every frame of one correlation id goes to the same
    /// connection while it is usable (a sticky session).
    ///
    /// # Errors
    /// See [`send_request_headers`](Self::send_request_headers).
    pub async fn send_websocket_frame(
        &self,
        agent_id: &str,
        event: WebSocketFrame,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Sticky, Event::WebSocketFrame(event))
            .await
    }

    /// Sends a guardrail inspection on a connection chosen by the strategy.
    ///
    /// # Errors
    /// See [`send_request_headers`](Self::send_request_headers).
    pub async fn send_guardrail_inspect(
        &self,
        agent_id: &str,
        event: GuardrailInspect,
    ) -> Result<PoolOutcome, PoolError> {
        self.dispatch(agent_id, Route::Free, Event::GuardrailInspect(event))
            .await
    }

    /// Cancels a request on every connection of the agent (the agent is told; a pending
    /// pool call for it returns `Client(Cancelled)`) and forgets its bindings.
    pub fn cancel_request(&self, agent_id: &str, correlation_id: &str, reason: CancelReason) {
        if let Some(agent) = self.inner.agent(agent_id) {
            for conn in agent.connections.load().iter() {
                conn.transport.cancel(correlation_id, reason);
            }
            agent.core.clear_affinity(correlation_id);
        }
    }

    /// Forgets the correlation and sticky bindings of `correlation_id` on agent `agent_id`
    /// (one registry lookup; see [`clear_affinity`](Self::clear_affinity) when the agents
    /// are not known).
    pub fn clear_affinity_of(&self, agent_id: &str, correlation_id: &str) {
        if let Some(agent) = self.inner.published.load().get(agent_id) {
            agent.core.clear_affinity(correlation_id);
        }
    }

    /// Forgets the correlation and sticky bindings of `correlation_id` on every agent (call it
    /// when a request ends without a RequestComplete). Visits every agent — O(agents), though
    /// an agent whose maps are empty costs one load — so a caller that knows which agents saw
    /// the request should prefer [`clear_affinity_of`](Self::clear_affinity_of).
    pub fn clear_affinity(&self, correlation_id: &str) {
        for agent in self.inner.published.load().values() {
            agent.core.clear_affinity(correlation_id);
        }
    }

    /// The registered agents, sorted.
    #[must_use]
    pub fn agent_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.published.load().keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Open connections of the agent whose cached health is good (0 for an unknown agent).
    #[must_use]
    pub fn healthy_connections(&self, agent_id: &str) -> usize {
        self.inner
            .agent(agent_id)
            .map_or(0, |agent| agent.tally().healthy as usize)
    }

    /// Requests in flight to the agent, counted by the pool (0 for an unknown agent).
    #[must_use]
    pub fn in_flight(&self, agent_id: &str) -> usize {
        self.inner
            .agent(agent_id)
            .map_or(0, |agent| agent.in_flight())
    }

    /// Requests of the agent waiting for flow control (wait-and-retry mode; at most
    /// [`PoolConfig::channel_buffer_size`]).
    #[must_use]
    pub fn waiting_for_flow_control(&self, agent_id: &str) -> usize {
        self.inner
            .agent(agent_id)
            .map_or(0, |agent| agent.core.flow.waiting())
    }

    /// The agent's failure policy (how the proxy answers when the agent cannot be asked).
    #[must_use]
    pub fn failure_policy(&self, agent_id: &str) -> Option<FailurePolicy> {
        self.inner
            .agent(agent_id)
            .map(|agent| agent.core.failure_policy)
    }

    /// The agent's deadline for one event (its [`AgentOptions::request_timeout`], else
    /// [`PoolConfig::request_timeout`]); callers use it to bound their own waits.
    #[must_use]
    pub fn request_timeout(&self, agent_id: &str) -> Option<Duration> {
        self.inner
            .agent(agent_id)
            .map(|agent| agent.core.request_timeout)
    }

    /// Wakes the maintenance task now (health refresh, dead-connection removal, reconnects
    /// whose backoff has passed) instead of at its next tick.
    pub fn wake_maintenance(&self) {
        self.inner.ctl.wake.notify();
    }

    /// The pool's protocol metrics, with the connection and affinity gauges refreshed from
    /// the connections themselves (so they cannot drift or leak).
    #[must_use]
    pub fn metrics(&self) -> &ProtocolMetrics {
        self.inner.refresh_gauges();
        &self.inner.metrics
    }

    /// The metrics as Prometheus text, gauges refreshed ([`PoolConfig::metrics_prefix`]).
    #[must_use]
    pub fn prometheus(&self) -> String {
        self.inner.refresh_gauges();
        self.inner
            .metrics
            .to_prometheus(&self.inner.prefix)
            .unwrap_or_default()
    }

    /// Stops taking requests (new calls fail with [`PoolError::ShuttingDown`]), lets requests
    /// in flight finish for up to [`PoolConfig::drain_timeout`], cancels what is left
    /// (reason `ProxyShutdown`), closes every connection and stops maintenance.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        inner.shutting_down.store(true, Ordering::Release);
        let agents: Vec<Arc<Agent>> = inner.agents.iter().map(|e| Arc::clone(e.value())).collect();
        inner.agents.clear();
        inner.publish();
        let drain = inner.config.drain_timeout;
        let retiring = agents.iter().map(|agent| {
            agent.removed.store(true, Ordering::Release);
            retire(&inner.runtime, agent, drain, CancelReason::ProxyShutdown)
        });
        futures_util::future::join_all(retiring).await;
        inner.ctl.stop();
    }

    /// One event through the pool: pick, admit, send, account.
    async fn dispatch(
        &self,
        agent_id: &str,
        route: Route,
        event: Event,
    ) -> Result<PoolOutcome, PoolError> {
        let inner = &*self.inner;
        let mut picks = 0;
        let mut blocked_since: Option<Instant> = None;
        let mut wait: Option<WaitTicket> = None;
        loop {
            if inner.shutting_down.load(Ordering::Acquire) {
                return Err(PoolError::ShuttingDown);
            }
            let now = core_now();
            let pick = if picks < MAX_PICKS {
                inner.pick(agent_id, route, event.correlation_id(), now)
            } else {
                // Admission kept losing races: the connections are as good as full.
                match inner.agent(agent_id) {
                    Some(agent) => Pick::Blocked {
                        block: FlowBlock::AtCapacity,
                        epoch: agent.core.flow.epoch(),
                        agent: Arc::clone(&agent.core),
                    },
                    None => Pick::Unknown,
                }
            };
            match pick {
                Pick::Unknown => return Err(PoolError::UnknownAgent(agent_id.to_owned())),
                Pick::Conn {
                    conn,
                    permit,
                    bound,
                } => {
                    picks += 1;
                    let Ok(guard) = conn.state().try_acquire(now) else {
                        // Lost the race to a concurrent admission, pause or close.
                        conn.agent.breaker.abandon(permit);
                        continue;
                    };
                    if !conn.transport.is_connected() {
                        drop(guard);
                        conn.agent.breaker.abandon(permit);
                        inner.mark_dead(&conn);
                        continue;
                    }
                    // Leave the flow-control wait queue before the request runs: the place is
                    // for waiting requests only.
                    drop(wait.take());
                    return self.run(&conn, guard, permit, bound, route, event).await;
                }
                Pick::Unavailable { why, agent } => {
                    let (reason, error) = match why {
                        Unavailable::NoHealthy => (
                            SkipReason::NoHealthyConnection,
                            PoolError::NoHealthyConnection {
                                agent_id: agent_id.to_owned(),
                            },
                        ),
                        Unavailable::CircuitOpen => (
                            SkipReason::CircuitOpen,
                            PoolError::CircuitOpen {
                                agent_id: agent_id.to_owned(),
                            },
                        ),
                    };
                    return apply_policy(&agent, reason, error);
                }
                Pick::Blocked {
                    block,
                    agent,
                    epoch,
                } => {
                    let since = *blocked_since.get_or_insert(now);
                    match inner.config.flow_control.decide(block, since, now) {
                        FlowDecision::Reject => {
                            inner.metrics.flow_control_rejections.inc();
                            return Err(PoolError::FlowControlPaused {
                                agent_id: agent_id.to_owned(),
                            });
                        }
                        FlowDecision::AllowWithoutAgent => {
                            inner.metrics.flow_control_rejections.inc();
                            return Ok(PoolOutcome::Skipped {
                                reason: SkipReason::FlowControl,
                            });
                        }
                        FlowDecision::Wait { deadline } => {
                            if wait.is_none() {
                                wait = agent.flow.try_enter(inner.config.channel_buffer_size);
                                if wait.is_none() {
                                    // The wait queue is full: refuse rather than pile up.
                                    inner.metrics.flow_control_rejections.inc();
                                    return Err(PoolError::FlowControlPaused {
                                        agent_id: agent_id.to_owned(),
                                    });
                                }
                            }
                            inner.resync_paused(agent_id);
                            let wake_at = deadline.min(now.saturating_add(RECHECK));
                            let sleep = inner.runtime.sleep_until(to_std(wake_at));
                            if let Some(ticket) = &wait {
                                agentwire_runtime::race(ticket.changed(epoch), sleep).await;
                            }
                            picks = 0;
                        }
                    }
                }
            }
        }
    }

    /// The admitted half of [`dispatch`](Self::dispatch): affinity, send, outcome.
    async fn run(
        &self,
        conn: &PooledConn,
        guard: InFlightGuard<&ConnectionState>,
        permit: CircuitPermit,
        bound: bool,
        route: Route,
        event: Event,
    ) -> Result<PoolOutcome, PoolError> {
        let inner = &*self.inner;
        let agent = &*conn.agent;
        let metrics = &*inner.metrics;
        let mut agent_permit = AgentPermit {
            breaker: &agent.breaker,
            permit: Some(permit),
        };
        if guard.is_probe() {
            metrics.record_circuit_transition(CircuitTransition::HalfOpened);
        }
        if permit.is_probe() {
            metrics.record_circuit_transition(CircuitTransition::HalfOpened);
        }
        let correlation_id = match route {
            Route::Free => None,
            _ => Some(event.correlation_id().to_owned()),
        };
        if let Some(id) = &correlation_id
            && !bound
        {
            let now = core_now();
            let outcome = match route {
                Route::Bind | Route::Affine => agent.affinity.bind(id, conn.id(), now),
                Route::Sticky => agent.sticky.bind(id, conn.id(), now),
                Route::Complete | Route::Free => BindOutcome::Updated,
            };
            if outcome == BindOutcome::Rejected {
                metrics.affinity_rejections.inc();
            }
        }
        metrics.requests.inc();
        if let Some(m) = &agent.metrics {
            m.requests.inc();
        }
        let started = std::time::Instant::now();
        let timeout = agent.request_timeout;
        let result = if conn.needs_pool_deadline() {
            agentwire_runtime::timeout(
                &inner.runtime,
                timeout + CUSTOM_DEADLINE_GRACE,
                conn.transport.send(event, timeout),
            )
            .await
            .unwrap_or(Err(ClientError::Timeout))
        } else {
            conn.transport.send(event, timeout).await
        };
        let now = core_now();
        let record = |t: Option<CircuitTransition>| {
            if let Some(t) = t {
                metrics.record_circuit_transition(t);
            }
        };
        let outcome = match result {
            Ok(response) => {
                record(guard.finish(RequestOutcome::Success, now));
                record(agent_permit.success());
                metrics.responses.inc();
                metrics.request_duration.record(started.elapsed());
                if route == Route::Complete
                    && let Some(id) = &correlation_id
                {
                    agent.clear_affinity(id);
                }
                Ok(PoolOutcome::Answered(response))
            }
            Err(error) => {
                let outcome = match &error {
                    ClientError::Timeout => RequestOutcome::Timeout,
                    ClientError::Cancelled
                    | ClientError::Protocol(_)
                    | ClientError::FlowControlPaused { .. }
                    | ClientError::TooManyInFlight { .. } => RequestOutcome::Cancelled,
                    _ => RequestOutcome::Failure,
                };
                match outcome {
                    RequestOutcome::Cancelled => agent_permit.abandon(),
                    _ => record(agent_permit.failure(now)),
                }
                record(guard.finish(outcome, now));
                if let Some(id) = &correlation_id {
                    agent.clear_affinity(id);
                }
                self.settle_error(conn, outcome, error)
            }
        };
        agent.flow.notify_if_waiting();
        outcome
    }

    /// Accounts for a failed send and applies the flow-control mode or failure policy.
    fn settle_error(
        &self,
        conn: &PooledConn,
        outcome: RequestOutcome,
        error: ClientError,
    ) -> Result<PoolOutcome, PoolError> {
        let inner = &*self.inner;
        let agent = &*conn.agent;
        let metrics = &*inner.metrics;
        match (&error, outcome) {
            (ClientError::FlowControlPaused { .. } | ClientError::TooManyInFlight { .. }, _) => {
                // The transport refused before sending: our cached state lagged its own.
                if matches!(error, ClientError::FlowControlPaused { .. }) {
                    conn.state().pause();
                    if !conn.transport.is_paused() {
                        // A resume raced in; do not leave the connection paused.
                        conn.state().resume();
                    }
                }
                metrics.flow_control_rejections.inc();
                if inner.config.flow_control == FlowControlMode::FailOpen {
                    Ok(PoolOutcome::Skipped {
                        reason: SkipReason::FlowControl,
                    })
                } else {
                    Err(PoolError::FlowControlPaused {
                        agent_id: agent.id.to_string(),
                    })
                }
            }
            (_, RequestOutcome::Cancelled) => Err(PoolError::Client(error)),
            (_, RequestOutcome::Timeout) => {
                metrics.timeouts.inc();
                if let Some(m) = &agent.metrics {
                    m.timeouts.inc();
                    m.errors.inc();
                }
                apply_policy(agent, SkipReason::Timeout, PoolError::Client(error))
            }
            _ => {
                metrics.connection_errors.inc();
                if let Some(m) = &agent.metrics {
                    m.errors.inc();
                }
                if !conn.transport.is_connected() {
                    inner.mark_dead(conn);
                }
                apply_policy(agent, SkipReason::ConnectionError, PoolError::Client(error))
            }
        }
    }
}

/// Fail open (skip) or closed (the error) per the agent's policy.
fn apply_policy(
    agent: &AgentCore,
    reason: SkipReason,
    error: PoolError,
) -> Result<PoolOutcome, PoolError> {
    match agent.failure_policy {
        FailurePolicy::FailOpen => Ok(PoolOutcome::Skipped { reason }),
        FailurePolicy::FailClosed { .. } => Err(error),
    }
}

/// The in-flight limit of a connection: the configured one, lowered to what the agent
/// declared in its handshake.
fn declared_limit(transport: &AgentConnection, configured: u32) -> u32 {
    transport
        .capabilities()
        .map(|capabilities| capabilities.limits.max_concurrency)
        .filter(|&declared| declared > 0)
        .map_or(configured, |declared| declared.min(configured))
}

/// Stops new admissions on the agent's connections, waits up to `drain` for requests in
/// flight, cancels what is left (the agent is told, with `reason`), then closes them.
async fn retire<R: Runtime>(runtime: &R, agent: &Agent, drain: Duration, reason: CancelReason) {
    for conn in agent.connections.load().iter() {
        conn.state().close();
    }
    // Flow-control waiters re-check and see the agent gone.
    agent.core.flow.notify();
    let deadline = std::time::Instant::now() + drain;
    while agent.in_flight() > 0 && std::time::Instant::now() < deadline {
        let next = (std::time::Instant::now() + DRAIN_POLL).min(deadline);
        runtime.sleep_until(next).await;
    }
    let conns = agent.take_connections();
    let mut cancelled = false;
    for conn in &conns {
        if conn.state().in_flight() > 0 || conn.transport.in_flight() > 0 {
            conn.transport.cancel_all(reason);
            cancelled = true;
        }
    }
    if cancelled {
        // Closing drops whatever the writer has not sent yet: give the Cancel frames a
        // moment to go out first.
        runtime
            .sleep_until(std::time::Instant::now() + CANCEL_FLUSH_GRACE)
            .await;
    }
    for conn in conns {
        conn.transport.close();
    }
}

impl<R: Runtime> PoolInner<R> {
    fn check_running(&self) -> Result<(), PoolError> {
        if self.shutting_down.load(Ordering::Acquire) {
            Err(PoolError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// The published agent `id` (one lock-free load and an `Arc` clone: cold paths only —
    /// the hot path borrows from the snapshot instead).
    fn agent(&self, id: &str) -> Option<Arc<Agent>> {
        self.published.load().get(id).cloned()
    }

    fn connector(&self, scheme: &str) -> Option<Arc<dyn Connector>> {
        self.connectors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(scheme)
            .cloned()
    }

    /// Republishes the hot path's snapshot from the registry. Serialised, so the last
    /// publisher always copies the latest registry.
    fn publish(&self) {
        let _publisher = self
            .publish_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshot: Registry = self
            .agents
            .iter()
            .map(|entry| (entry.key().clone(), Arc::clone(entry.value())))
            .collect();
        self.published.store(Arc::new(snapshot));
    }

    fn backoff_delay(&self, failures: u32, agent_id: &str) -> Duration {
        let seed = self.seed ^ RandomState::new().hash_one(agent_id) ^ u64::from(failures);
        self.config.backoff.next_delay(failures, seed)
    }

    fn build_agent(&self, id: &str, endpoint: Option<Endpoint>, options: AgentOptions) -> Agent {
        let target = match endpoint {
            Some(_) => options
                .connections
                .unwrap_or(self.config.connections_per_agent),
            None => 0,
        };
        let core = Arc::new(AgentCore {
            id: Arc::from(id),
            breaker: CircuitBreaker::new(self.config.agent_breaker),
            affinity: AffinityMap::new(self.config.affinity),
            sticky: AffinityMap::new(self.config.sticky_sessions),
            flow: Arc::new(FlowSignal::default()),
            metrics: self.metrics.agent(id),
            request_timeout: options
                .request_timeout
                .unwrap_or(self.config.request_timeout),
            failure_policy: options.failure_policy,
        });
        let seed = self.seed ^ RandomState::new().hash_one(id);
        let balancer = Balancer::new(self.config.strategy, seed);
        Agent::new(core, endpoint, options, target, balancer)
    }

    /// Puts `agent` in the registry (replacing and retiring any agent of the same id) and
    /// publishes it.
    fn register(self: &Arc<Self>, agent: Arc<Agent>) {
        let previous = self
            .agents
            .insert(agent.id().to_owned(), Arc::clone(&agent));
        self.publish();
        if let Some(old) = previous {
            old.removed.store(true, Ordering::Release);
            let runtime = self.runtime.clone();
            let drain = self.config.drain_timeout;
            self.runtime.spawn(async move {
                retire(&runtime, &old, drain, CancelReason::Manual).await;
            });
        }
        if self.shutting_down.load(Ordering::Acquire) {
            // Raced with shutdown: do not leave connections behind it.
            if let Some((_, agent)) = self.agents.remove(agent.id()) {
                agent.removed.store(true, Ordering::Release);
                for conn in agent.take_connections() {
                    conn.state().close();
                    conn.transport.close();
                }
            }
            self.publish();
        }
        self.ctl.wake.notify();
    }

    /// The configured in-flight limit of the agent's connections.
    fn configured_limit(&self, agent: &Agent) -> u32 {
        agent
            .options
            .max_concurrency
            .unwrap_or(self.config.max_in_flight_per_connection)
            .clamp(1, MAX_IN_FLIGHT_LIMIT)
    }

    fn new_conn_core(&self, agent: &Agent, mirror_pause: bool) -> Arc<ConnCore> {
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let limit = self.configured_limit(agent);
        let state = ConnectionState::new(
            id,
            core_now(),
            ConnectionConfig {
                max_in_flight: limit,
                breaker: self.config.breaker,
            },
        );
        Arc::new(ConnCore::new(state, limit, mirror_pause))
    }

    /// Opens one connection of `agent` (bounded by the connect timeout).
    pub(crate) async fn open_connection(&self, agent: &Agent) -> Result<Conn, ClientError> {
        let Some(endpoint) = agent.endpoint.as_ref() else {
            return Err(ClientError::Connect(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "agent has no endpoint (reverse connections only)",
            )));
        };
        let core = self.new_conn_core(agent, false);
        let configured = core.base_limit();
        let mut client = self.config.client.clone();
        client.connect_timeout = self.config.connect_timeout;
        client.session.agent_config = agent.options.config.clone();
        client.session.request_timeout = agent.core.request_timeout;
        client.session.max_in_flight = configured as usize;
        let settings = ConnectSettings {
            agent_id: agent.id().to_owned(),
            client,
            channel_buffer_size: self.config.channel_buffer_size,
            notices: notice_callback(
                Arc::clone(&core),
                Arc::clone(&agent.core),
                Arc::clone(&self.metrics),
                Arc::clone(&self.ctl),
            ),
        };
        let transport = match (self.connector(endpoint.scheme()), endpoint) {
            (Some(connector), _) => agentwire_runtime::timeout(
                &self.runtime,
                self.config.connect_timeout,
                connector.connect(endpoint, settings),
            )
            .await
            .unwrap_or(Err(ClientError::ConnectTimeout))?,
            (None, Endpoint::Uds(path)) => AgentConnection::Client(
                AgentClient::connect_unix_with_notices(
                    &self.runtime,
                    path,
                    settings.client,
                    Some(settings.notices),
                )
                .await?,
            ),
            (None, Endpoint::Grpc { .. }) => {
                return Err(ClientError::Connect(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "grpc transport not enabled",
                )));
            }
        };
        core.set_base_limit(declared_limit(&transport, configured));
        Ok(Conn(Arc::new(PooledConn {
            core,
            transport,
            agent: Arc::clone(&agent.core),
        })))
    }

    /// The synchronous half of one admission attempt: find the agent, check its breaker,
    /// select a connection. Holds the registry and list snapshots only for its duration.
    fn pick(&self, agent_id: &str, route: Route, correlation_id: &str, now: Instant) -> Pick {
        let registry = self.published.load();
        let Some(agent) = registry.get(agent_id) else {
            return Pick::Unknown;
        };
        let core = &agent.core;
        let epoch = core.flow.epoch();
        let Ok(permit) = core.breaker.try_admit(now) else {
            return Pick::Unavailable {
                why: Unavailable::CircuitOpen,
                agent: Arc::clone(core),
            };
        };
        let (preferred, own_map_hit) = match route {
            Route::Affine | Route::Complete => {
                let hit = core.affinity.get(correlation_id, now);
                (hit, hit)
            }
            Route::Sticky => match core.sticky.get(correlation_id, now) {
                Some(hit) => (Some(hit), Some(hit)),
                None => (core.affinity.get(correlation_id, now), None),
            },
            Route::Bind | Route::Free => (None, None),
        };
        let conns = agent.connections.load();
        let selection = select_preferring(
            agent.balancer.strategy(),
            &conns,
            preferred,
            now,
            agent.balancer.next_ticket(),
        );
        let block = match selection {
            Selection::Selected(index) => {
                let conn = conns[index].clone();
                let bound = own_map_hit == Some(conn.id());
                return Pick::Conn {
                    conn,
                    permit,
                    bound,
                };
            }
            Selection::AllPaused => FlowBlock::Paused,
            Selection::AtCapacity => FlowBlock::AtCapacity,
            Selection::NoConnections | Selection::NoneHealthy => {
                // Cold path: no connection can serve the agent. That is an agent failure.
                if let Some(t) = core.breaker.record_failure(permit, now) {
                    self.metrics.record_circuit_transition(t);
                }
                let circuit_open = conns.iter().any(|c| {
                    let s = c.state();
                    !s.is_closed() && s.is_healthy() && !s.circuit().would_admit(now)
                });
                return Pick::Unavailable {
                    why: if circuit_open {
                        Unavailable::CircuitOpen
                    } else {
                        Unavailable::NoHealthy
                    },
                    agent: Arc::clone(core),
                };
            }
        };
        core.breaker.abandon(permit);
        Pick::Blocked {
            block,
            agent: Arc::clone(core),
            epoch,
        }
    }

    /// A request found `conn`'s transport dead: stop selecting it and let maintenance
    /// replace it now.
    fn mark_dead(&self, conn: &PooledConn) {
        if conn.state().set_healthy(false) {
            self.ctl.wake.notify();
        }
    }

    /// For clients attached without the pool's notice callback: clears pauses their session
    /// no longer has (cold path, flow-control waits only; connections the pool dialled get
    /// every resume through their notices).
    fn resync_paused(&self, agent_id: &str) {
        if let Some(agent) = self.published.load().get(agent_id) {
            let mut resumed = false;
            for conn in agent.connections.load().iter() {
                if conn.core.mirror_pause && conn.state().is_paused() && !conn.transport.is_paused()
                {
                    resumed |= conn.state().resume();
                }
            }
            if resumed {
                agent.core.flow.notify();
            }
        }
    }

    fn refresh_gauges(&self) {
        let mut tally = ConnectionTally::default();
        let mut affinities = 0usize;
        for agent in self.published.load().values() {
            for conn in agent.connections.load().iter() {
                tally.add(&conn.state().snapshot());
            }
            affinities += agent.core.affinity.len() + agent.core.sticky.len();
        }
        self.metrics.set_connection_gauges(&tally);
        self.metrics
            .correlation_affinities
            .set(i64::try_from(affinities).unwrap_or(i64::MAX));
    }
}

/// The callback a connection's transport calls with the agent's notices: flow control
/// becomes the connection's paused flag or in-flight limit, health reports its cached
/// health (maintenance folds them in).
fn notice_callback(
    conn: Arc<ConnCore>,
    agent: Arc<AgentCore>,
    metrics: Arc<ProtocolMetrics>,
    ctl: Arc<Control>,
) -> NoticeCallback {
    Arc::new(move |notice| match notice {
        AgentNotice::FlowControl(signal) => match signal.action {
            FlowAction::Pause => {
                if conn.state.pause() {
                    metrics.flow_control_pauses.inc();
                }
            }
            FlowAction::Resume => {
                if conn.state.resume() {
                    metrics.flow_control_resumes.inc();
                }
                agent.flow.notify();
            }
            FlowAction::UpdateCapacity { buffer_available } => {
                conn.apply_capacity(buffer_available);
                agent.flow.notify();
            }
            FlowAction::Unspecified => {}
        },
        AgentNotice::Health(report) => {
            let unhealthy = matches!(
                report.state,
                HealthState::Unhealthy { .. } | HealthState::Draining { .. }
            );
            let was = conn.reported_unhealthy.swap(unhealthy, Ordering::AcqRel);
            if unhealthy {
                conn.state.set_healthy(false);
            }
            if was != unhealthy {
                ctl.wake.notify();
            }
        }
        _ => {}
    })
}
