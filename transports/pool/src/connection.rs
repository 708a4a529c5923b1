//! Pooled connections: the transport-neutral connection type, the plug-in traits for other
//! transports, and the pool's per-connection record.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentwire_core::message::{AgentResponse, CancelReason, Capabilities, Event};
use agentwire_core::pool::{ConnectionId, ConnectionState};
use agentwire_core::sync::{AtomicBool, AtomicU32, Ordering};
use agentwire_runtime::client::NoticeCallback;
use agentwire_runtime::client::{AgentClient, ClientConfig, ClientError};

use crate::Endpoint;
use crate::agent::AgentCore;

/// A boxed, `Send` future (the object-safe return type of [`PooledConnection`] and
/// [`Connector`]).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One connection to an agent over a transport other than [`AgentClient`] (gRPC, an
/// in-process test double, …), object-safe so the pool can hold any of them.
///
/// Contract, which the pool relies on:
/// * [`send`](Self::send) answers, fails or times out within `timeout` (unless
///   [`enforces_deadline`](Self::enforces_deadline) says so, the pool adds a timer of its
///   own as a safety net); dropping the future cancels the request.
/// * [`is_connected`](Self::is_connected) turns false once the transport is dead; the pool
///   then stops selecting the connection and maintenance replaces it.
/// * Flow-control, health and metrics messages from the agent are passed to the
///   [`ConnectSettings::notices`] callback the connector was given.
pub trait PooledConnection: Send + Sync + fmt::Debug + 'static {
    /// Sends an event and waits for the agent's answer.
    fn send(
        &self,
        event: Event,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<AgentResponse, ClientError>>;

    /// Cancels one request (the agent is told if the transport can).
    fn cancel(&self, correlation_id: &str, reason: CancelReason);

    /// Cancels every pending request.
    fn cancel_all(&self, reason: CancelReason);

    /// False once the transport is closed or broken.
    fn is_connected(&self) -> bool;

    /// True while the agent asked the proxy to pause this connection. Informational: the
    /// pool follows the flow-control notices the transport delivers.
    fn is_paused(&self) -> bool {
        false
    }

    /// Requests awaiting an answer.
    fn in_flight(&self) -> usize;

    /// The capabilities the agent declared in its handshake (the pool reads
    /// `limits.max_concurrency` to bound the connection's in-flight count).
    fn capabilities(&self) -> Option<Capabilities>;

    /// Whether [`send`](Self::send) enforces its `timeout` itself. When false (the default),
    /// the pool races each send against a timer of its own, one second longer.
    fn enforces_deadline(&self) -> bool {
        false
    }

    /// Closes the connection; pending requests fail.
    fn close(&self);
}

/// A connection the pool holds: the runtime-generic [`AgentClient`] (Unix sockets, and any
/// stream handed to [`AgentPool::attach_connection`](crate::AgentPool::attach_connection)),
/// or any other transport behind [`PooledConnection`].
///
/// The `Client` arm is dispatched statically, so the common case pays no boxing.
#[derive(Clone, Debug)]
pub enum AgentConnection {
    /// The generic client (UDS, reverse connections, any byte stream).
    Client(AgentClient),
    /// Another transport.
    Custom(Arc<dyn PooledConnection>),
}

impl AgentConnection {
    /// Sends `event` with deadline `timeout` and waits for the answer.
    pub async fn send(
        &self,
        event: Event,
        timeout: Duration,
    ) -> Result<AgentResponse, ClientError> {
        match self {
            AgentConnection::Client(client) => client.send_event_with_timeout(event, timeout).await,
            AgentConnection::Custom(conn) => conn.send(event, timeout).await,
        }
    }

    /// Cancels one request; errors (unknown id, closed connection) are ignored.
    pub fn cancel(&self, correlation_id: &str, reason: CancelReason) {
        match self {
            AgentConnection::Client(client) => {
                let _ = client.cancel(correlation_id, reason);
            }
            AgentConnection::Custom(conn) => conn.cancel(correlation_id, reason),
        }
    }

    /// Cancels every pending request; errors are ignored.
    pub fn cancel_all(&self, reason: CancelReason) {
        match self {
            AgentConnection::Client(client) => {
                let _ = client.cancel_all(reason);
            }
            AgentConnection::Custom(conn) => conn.cancel_all(reason),
        }
    }

    /// False once the transport is closed or broken (one atomic load for the client).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        match self {
            AgentConnection::Client(client) => client.is_connected(),
            AgentConnection::Custom(conn) => conn.is_connected(),
        }
    }

    /// Whether the transport itself is paused by the agent (takes the client's session lock:
    /// cold paths only).
    #[must_use]
    pub fn is_paused(&self) -> bool {
        match self {
            AgentConnection::Client(client) => client.is_paused(),
            AgentConnection::Custom(conn) => conn.is_paused(),
        }
    }

    /// Requests awaiting an answer on the transport.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        match self {
            AgentConnection::Client(client) => client.in_flight(),
            AgentConnection::Custom(conn) => conn.in_flight(),
        }
    }

    /// The capabilities the agent declared in its handshake.
    #[must_use]
    pub fn capabilities(&self) -> Option<Capabilities> {
        match self {
            AgentConnection::Client(client) => client.info().map(|i| i.capabilities.clone()),
            AgentConnection::Custom(conn) => conn.capabilities(),
        }
    }

    /// Closes the connection; pending requests fail.
    pub fn close(&self) {
        match self {
            AgentConnection::Client(client) => client.close(),
            AgentConnection::Custom(conn) => conn.close(),
        }
    }

    /// Whether the transport enforces each send's deadline itself.
    fn enforces_deadline(&self) -> bool {
        match self {
            AgentConnection::Client(_) => true,
            AgentConnection::Custom(conn) => conn.enforces_deadline(),
        }
    }
}

/// What a [`Connector`] needs to open one connection for an agent.
#[derive(Clone)]
pub struct ConnectSettings {
    /// The agent the connection is for (as registered in the pool).
    pub agent_id: String,
    /// Session settings: the agent's configuration, request timeout, in-flight limit, and
    /// `connect_timeout`, which bounds connecting **and** the handshake.
    pub client: ClientConfig,
    /// Bound for any queue the transport keeps per connection ([`crate::CHANNEL_BUFFER_SIZE`]
    /// unless configured).
    pub channel_buffer_size: usize,
    /// Where the transport must deliver the agent's flow-control, health and metrics
    /// messages: the pool turns them into the connection's paused / capacity / health state.
    pub notices: NoticeCallback,
}

impl fmt::Debug for ConnectSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectSettings")
            .field("agent_id", &self.agent_id)
            .field("client", &self.client)
            .field("channel_buffer_size", &self.channel_buffer_size)
            .finish_non_exhaustive()
    }
}

/// Opens connections for one kind of [`Endpoint`] (registered under
/// [`Endpoint::scheme`]). The gRPC transport plugs in here; so can test doubles.
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Opens one connection to `endpoint`, handshake included. The pool bounds the whole
    /// future by the connect timeout.
    fn connect(
        &self,
        endpoint: &Endpoint,
        settings: ConnectSettings,
    ) -> BoxFuture<'static, Result<AgentConnection, ClientError>>;
}

/// The part of a pooled connection that exists before its transport does, so the transport's
/// notice callback can point at it: the atomic state selection reads, plus the agent's
/// advertised limits.
#[derive(Debug)]
pub(crate) struct ConnCore {
    pub(crate) state: ConnectionState,
    /// The in-flight limit before agent capacity signals (configured ∧ declared).
    pub(crate) base_limit: AtomicU32,
    /// The agent's own last health report said unhealthy or draining.
    pub(crate) reported_unhealthy: AtomicBool,
    /// The transport's notices do not reach this record (a client attached with its own
    /// callback): its pause flag is copied from the transport on cold paths instead.
    pub(crate) mirror_pause: bool,
}

impl ConnCore {
    pub(crate) fn new(state: ConnectionState, base_limit: u32, mirror_pause: bool) -> Self {
        ConnCore {
            state,
            base_limit: AtomicU32::new(base_limit),
            reported_unhealthy: AtomicBool::new(false),
            mirror_pause,
        }
    }

    /// The limit before agent capacity signals.
    pub(crate) fn base_limit(&self) -> u32 {
        self.base_limit.load(Ordering::Relaxed)
    }

    /// Sets the limit from the handshake (configured ∧ declared).
    pub(crate) fn set_base_limit(&self, limit: u32) {
        self.base_limit.store(limit, Ordering::Relaxed);
        self.state.set_max_in_flight(limit);
    }

    /// The agent's `UpdateCapacity`: it can take `available` more requests now.
    pub(crate) fn apply_capacity(&self, available: u64) {
        let base = self.base_limit.load(Ordering::Relaxed);
        let window = u64::from(self.state.in_flight()).saturating_add(available);
        let limit = u32::try_from(window).unwrap_or(u32::MAX).min(base);
        self.state.set_max_in_flight(limit);
    }
}

/// One connection in an agent's list.
#[derive(Debug)]
pub(crate) struct PooledConn {
    pub(crate) core: Arc<ConnCore>,
    pub(crate) transport: AgentConnection,
    /// The agent this connection serves: what a request needs after its `.await` (breaker,
    /// affinity, flow signal, metrics) is reached through here, so the request holds no
    /// reference to the registry.
    pub(crate) agent: Arc<AgentCore>,
}

impl PooledConn {
    pub(crate) fn id(&self) -> ConnectionId {
        self.core.state.id()
    }

    pub(crate) fn state(&self) -> &ConnectionState {
        &self.core.state
    }

    /// Transports that do not enforce their deadline get a pool-side one as a safety net;
    /// the generic client enforces its own (its session timer sends the agent a Cancel, too).
    pub(crate) fn needs_pool_deadline(&self) -> bool {
        !self.transport.enforces_deadline()
    }
}

/// An element of a connection list: a newtype so selection can borrow the
/// [`ConnectionState`] out of it.
#[derive(Clone, Debug)]
pub(crate) struct Conn(pub(crate) Arc<PooledConn>);

impl Borrow<ConnectionState> for Conn {
    fn borrow(&self) -> &ConnectionState {
        &self.0.core.state
    }
}

impl Deref for Conn {
    type Target = PooledConn;

    fn deref(&self) -> &PooledConn {
        &self.0
    }
}
