//! The proxy side: a listener agents dial and register with (spec §9).

use crate::allowlist::Allowlist;
use crate::auth::{Peer, RegistrationAttempt, StaticTokens, TokenValidator};
use crate::wire::{DEFAULT_MAX_REGISTRATION_FRAME, ReadError, decode_json, json_frame, read_frame};
use agentwire_core::encoding::WireFormat;
use agentwire_core::frame::MessageType;
use agentwire_core::message::{
    AnyValue, Capabilities, Encoding, PROTOCOL_VERSION, RegistrationRequest, RegistrationResponse,
};
use agentwire_runtime::client::{AgentClient, ClientConfig, NoticeCallback};
use agentwire_runtime::server::{ConnectionCounter, Shutdown};
use agentwire_runtime::{BoxReader, BoxWriter, Runtime, race, timeout};
use futures_channel::mpsc;
use futures_lite::{AsyncRead, AsyncWriteExt, Stream};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The one error text of every authentication, allowlist and identity failure: a peer
/// cannot tell a wrong token from an id that is not allowed (S2). It is the reference's
/// wrong-token text, so reference agents see nothing new.
pub const REJECTED: &str = "Invalid message format: Registration rejected";

/// Longest agent id accepted (bytes).
pub const MAX_AGENT_ID_LEN: usize = 256;

/// Shortest time allowed for writing a registration answer, even when the handshake
/// deadline has almost passed.
const MIN_ANSWER_TIME: Duration = Duration::from_millis(500);

/// How registrations are authenticated.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No authentication: anyone who can reach the socket and passes the allowlist registers.
    #[default]
    None,
    /// A token from this set is required (constant-time comparison, every token examined).
    Tokens(StaticTokens),
    /// Your own validator (it sees the token, the peer address and any TLS client
    /// certificate chain).
    Custom(Arc<dyn TokenValidator>),
}

impl Auth {
    /// Requires one of `tokens`.
    pub fn tokens<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Auth::Tokens(StaticTokens::new(tokens))
    }

    /// Uses `validator`.
    pub fn custom(validator: impl TokenValidator) -> Self {
        Auth::Custom(Arc::new(validator))
    }

    fn validate(&self, attempt: &RegistrationAttempt<'_>) -> bool {
        match self {
            Auth::None => true,
            Auth::Tokens(t) => t.validate(attempt),
            Auth::Custom(v) => v.validate(attempt),
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Tokens(t) => f.debug_tuple("Tokens").field(t).finish(),
            Auth::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Settings of a [`ReverseListener`].
#[derive(Clone, Debug)]
pub struct ReverseListenerConfig {
    /// `proxy_id` in registration answers.
    pub proxy_id: String,
    /// `proxy_version` in registration answers.
    pub proxy_version: String,
    /// Time from accept (TLS handshake included) to a complete registration frame; a socket
    /// that has not registered by then is closed without an answer (default 10 s).
    pub handshake_timeout: Duration,
    /// Largest length field of the registration frame; a larger prefix is refused before
    /// any payload is read (default 64 KiB).
    pub max_registration_frame: u32,
    /// Authentication (default none). Checked before the allowlist.
    pub auth: Auth,
    /// Agent ids allowed to register: exact names and `*` patterns; empty allows every id.
    pub allowed_agents: Allowlist,
    /// Most live connections one agent id may hold; further registrations are refused with
    /// `success: false` before anything is accepted (default 4).
    pub max_connections_per_agent: usize,
    /// Most live registered connections in total (default 1024).
    pub max_connections: usize,
    /// Most accepted sockets that have not registered yet; beyond it new sockets are closed
    /// at once, so a flood of idle connections stays bounded (default 128).
    pub max_pending: usize,
    /// Encodings the proxy is willing to use after registration, in its preference order.
    /// Offered only to agents that list `agentwire_encodings`; reference agents get JSON.
    pub encodings: Vec<Encoding>,
    /// Settings of each registered connection's [`AgentClient`] (request timeout,
    /// in-flight limits, …). `connect_timeout` and the handshake settings are unused.
    pub client: ClientConfig,
    /// Permission bits of a Unix socket (default `0o600`).
    pub socket_mode: u32,
    /// Capacity of the registration channel: registered connections waiting for the
    /// application. A registration waits (within its handshake timeout) for room and is
    /// refused as busy, never accepted and dropped (default 64).
    pub queue_capacity: usize,
}

impl Default for ReverseListenerConfig {
    fn default() -> Self {
        ReverseListenerConfig {
            proxy_id: String::from("agentwire-proxy"),
            proxy_version: String::from(env!("CARGO_PKG_VERSION")),
            handshake_timeout: Duration::from_secs(10),
            max_registration_frame: DEFAULT_MAX_REGISTRATION_FRAME,
            auth: Auth::None,
            allowed_agents: Allowlist::default(),
            max_connections_per_agent: 4,
            max_connections: 1024,
            max_pending: 128,
            encodings: [Encoding::Postcard, Encoding::Msgpack, Encoding::Json]
                .into_iter()
                .filter(|e| e.is_available())
                .collect(),
            client: ClientConfig::default(),
            socket_mode: 0o600,
            queue_capacity: 64,
        }
    }
}

impl ReverseListenerConfig {
    fn check(&self) -> io::Result<()> {
        let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned()));
        if let Auth::Tokens(t) = &self.auth
            && t.is_empty()
        {
            return invalid("authentication requires at least one non-empty token");
        }
        if self.max_registration_frame < 2 {
            return invalid("max_registration_frame is too small for any registration");
        }
        if self.max_connections_per_agent == 0 || self.max_connections == 0 {
            return invalid("connection limits must be at least 1");
        }
        if self.max_pending == 0 {
            return invalid("max_pending must be at least 1");
        }
        Ok(())
    }
}

/// Signals the end of one registered connection.
#[derive(Clone, Debug)]
pub struct ConnectionClosed {
    signal: Shutdown,
}

impl ConnectionClosed {
    /// True once the connection ended (its slot is already free by then).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.signal.is_triggered()
    }

    /// Completes when the connection ends: the agent went away (EOF or error), the client
    /// was closed, or its last clone was dropped.
    pub async fn wait(&self) {
        self.signal.wait().await;
    }
}

/// An agent connection that registered successfully, handed to the application.
#[derive(Debug)]
#[non_exhaustive]
pub struct RegisteredAgent {
    /// The id it registered under.
    pub agent_id: String,
    /// The id given to this connection (`<agent_id>-<hex ms>-<hex counter>`, unique per
    /// listener).
    pub connection_id: String,
    /// The proxy side of the connection, ready for events. Dropping its last clone closes
    /// the connection.
    pub client: AgentClient,
    /// The capabilities the agent registered with.
    pub capabilities: Capabilities,
    /// The free-form metadata of the registration.
    pub metadata: AnyValue,
    /// The encoding of every later frame.
    pub encoding: Encoding,
    /// Where the agent connected from.
    pub peer: Peer,
    /// Completes when the connection ends.
    pub closed: ConnectionClosed,
}

/// The stream of registered connections of a listener; ends when the listener stopped and
/// every registration in progress finished.
#[derive(Debug)]
pub struct Registrations {
    rx: mpsc::Receiver<RegisteredAgent>,
}

impl Registrations {
    /// The next registered connection, `None` once the listener is gone.
    pub async fn recv(&mut self) -> Option<RegisteredAgent> {
        futures_lite::StreamExt::next(&mut self.rx).await
    }
}

impl Stream for Registrations {
    type Item = RegisteredAgent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

/// Counters of a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Sockets accepted.
    pub accepted: u64,
    /// Sockets closed at once because `max_pending` unregistered sockets were open.
    pub refused_pending: u64,
    /// Registrations accepted.
    pub registered: u64,
    /// Registrations answered with `success: false`.
    pub rejected: u64,
    /// Sockets closed because no registration arrived in time.
    pub timed_out: u64,
    /// Sockets closed without an answer for a malformed first frame (oversize, wrong type,
    /// bad JSON) or a failed TLS handshake.
    pub malformed: u64,
    /// Sockets accepted and not yet registered, now.
    pub pending: usize,
    /// Registered connections alive, now.
    pub live: usize,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused_pending: AtomicU64,
    registered: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    malformed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct Registry {
    per_agent: HashMap<String, usize>,
    total: usize,
}

#[derive(Debug, Default)]
struct State {
    pending: Arc<ConnectionCounter>,
    registry: Mutex<Registry>,
    next_connection: AtomicU64,
    counters: Counters,
}

impl State {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn acquire(
        self: &Arc<Self>,
        agent_id: &str,
        per_agent: usize,
        total: usize,
    ) -> Result<AgentSlot, Rejection> {
        let mut registry = self.registry();
        if registry.total >= total {
            return Err(Rejection::Busy);
        }
        let live = registry.per_agent.get(agent_id).copied().unwrap_or(0);
        if live >= per_agent {
            return Err(Rejection::TooManyConnections);
        }
        registry.per_agent.insert(agent_id.to_owned(), live + 1);
        registry.total += 1;
        Ok(AgentSlot {
            state: self.clone(),
            agent_id: agent_id.to_owned(),
        })
    }

    fn stats(&self) -> ListenerStats {
        let c = &self.counters;
        ListenerStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            refused_pending: c.refused_pending.load(Ordering::Relaxed),
            registered: c.registered.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            pending: self.pending.live(),
            live: self.registry().total,
        }
    }
}

/// A live connection's place in the per-agent and total counts; freed on drop.
#[derive(Debug)]
struct AgentSlot {
    state: Arc<State>,
    agent_id: String,
}

impl Drop for AgentSlot {
    fn drop(&mut self) {
        let mut registry = self.state.registry();
        registry.total = registry.total.saturating_sub(1);
        if let Some(n) = registry.per_agent.get_mut(&self.agent_id) {
            *n -= 1;
            if *n == 0 {
                registry.per_agent.remove(&self.agent_id);
            }
        }
    }
}

/// Frees the slot, then raises the closed signal (so a watcher that sees the signal can
/// register the agent again at once).
#[derive(Debug)]
struct ConnectionGuard {
    slot: Option<AgentSlot>,
    closed: Shutdown,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        drop(self.slot.take());
        self.closed.trigger();
    }
}

/// The read half of a registered connection. The client's reader task owns it and ends
/// (dropping it) as soon as the connection is dead — EOF, read or write error, local close —
/// after failing every waiter; the guard then frees the agent's slot (B5, B6).
struct WatchedReader {
    inner: BoxReader,
    _guard: ConnectionGuard,
}

impl AsyncRead for WatchedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

/// A cheap, clonable view of a listener's counters and per-agent connection counts.
#[derive(Clone, Debug)]
pub struct ListenerHandle {
    state: Arc<State>,
}

impl ListenerHandle {
    /// The counters now.
    #[must_use]
    pub fn stats(&self) -> ListenerStats {
        self.state.stats()
    }

    /// Live registered connections of `agent_id`.
    #[must_use]
    pub fn connections_of(&self, agent_id: &str) -> usize {
        self.state
            .registry()
            .per_agent
            .get(agent_id)
            .copied()
            .unwrap_or(0)
    }
}

/// Removes the socket file when the listener goes away.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum Socket<R: Runtime> {
    Unix {
        listener: R::UnixListener,
        file: SocketFile,
    },
    Tcp {
        listener: R::TcpListener,
        addr: SocketAddr,
        #[cfg(feature = "tls")]
        tls: Option<Arc<rustls::ServerConfig>>,
    },
}

/// The proxy-side listener of reverse connections: agents dial it, register, and each
/// accepted connection is handed to the application as an [`AgentClient`] (a
/// [`RegisteredAgent`] on the [`Registrations`] stream).
///
/// Per connection: the registration must arrive within
/// [`ReverseListenerConfig::handshake_timeout`] in one frame of at most
/// [`ReverseListenerConfig::max_registration_frame`]; then, in this order: protocol version
/// 2, a non-empty id, authentication, the allowlist, `capabilities.agent_id` matching the id
/// (every failure of those three answered with the same [`REJECTED`] text), the per-agent
/// and total connection limits, room in the registration queue. Only then is the agent told
/// `success: true`.
pub struct ReverseListener<R: Runtime> {
    runtime: R,
    socket: Socket<R>,
    config: Arc<ReverseListenerConfig>,
    state: Arc<State>,
    notices: Option<NoticeCallback>,
}

impl<R: Runtime> fmt::Debug for ReverseListener<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReverseListener");
        match &self.socket {
            Socket::Unix { file, .. } => d.field("path", &file.0),
            Socket::Tcp { addr, .. } => d.field("addr", addr),
        };
        d.field("config", &self.config).finish_non_exhaustive()
    }
}

impl<R: Runtime> ReverseListener<R> {
    /// Binds a Unix socket at `path` safely (private directory, `socket_mode`, atomic
    /// rename; an existing live socket or non-socket file is never replaced). The file is
    /// removed when the listener stops.
    pub fn bind_unix(
        runtime: R,
        path: impl AsRef<Path>,
        config: ReverseListenerConfig,
    ) -> io::Result<Self> {
        config.check()?;
        let path = path.as_ref().to_path_buf();
        let listener = agentwire_uds::bind_private_socket(&runtime, &path, config.socket_mode)?;
        Ok(ReverseListener::new(
            runtime,
            Socket::Unix {
                listener,
                file: SocketFile(path),
            },
            config,
        ))
    }

    /// Binds a plain TCP listener (use port 0 for an ephemeral port, see
    /// [`Self::local_addr`]). Prefer [`Self::bind_tls`] beyond loopback.
    pub async fn bind_tcp(
        runtime: R,
        addr: SocketAddr,
        config: ReverseListenerConfig,
    ) -> io::Result<Self> {
        config.check()?;
        let listener = runtime.bind_tcp(addr).await?;
        let addr = runtime.tcp_local_addr(&listener)?;
        Ok(ReverseListener::new(
            runtime,
            Socket::Tcp {
                listener,
                addr,
                #[cfg(feature = "tls")]
                tls: None,
            },
            config,
        ))
    }

    /// Binds a TCP listener that speaks TLS. For mutual TLS build `tls` with a client
    /// certificate verifier; the verified chain is shown to a custom [`TokenValidator`]. The
    /// TLS handshake counts against the handshake timeout.
    #[cfg(feature = "tls")]
    pub async fn bind_tls(
        runtime: R,
        addr: SocketAddr,
        config: ReverseListenerConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> io::Result<Self> {
        config.check()?;
        let listener = runtime.bind_tcp(addr).await?;
        let addr = runtime.tcp_local_addr(&listener)?;
        Ok(ReverseListener::new(
            runtime,
            Socket::Tcp {
                listener,
                addr,
                tls: Some(tls),
            },
            config,
        ))
    }

    fn new(runtime: R, socket: Socket<R>, config: ReverseListenerConfig) -> Self {
        ReverseListener {
            runtime,
            socket,
            config: Arc::new(config),
            state: Arc::new(State::default()),
            notices: None,
        }
    }

    /// Passes health, metrics, config-update and flow-control messages of every registered
    /// connection to `notices`.
    #[must_use]
    pub fn with_notices(mut self, notices: NoticeCallback) -> Self {
        self.notices = Some(notices);
        self
    }

    /// The TCP address, for TCP listeners.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.socket {
            Socket::Tcp { addr, .. } => Some(*addr),
            Socket::Unix { .. } => None,
        }
    }

    /// The socket path, for Unix listeners.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        match &self.socket {
            Socket::Unix { file, .. } => Some(&file.0),
            Socket::Tcp { .. } => None,
        }
    }

    /// A handle to the listener's counters, usable after [`Self::serve`] consumed it.
    #[must_use]
    pub fn handle(&self) -> ListenerHandle {
        ListenerHandle {
            state: self.state.clone(),
        }
    }

    /// Starts serving: returns the accept loop (run it, e.g. spawn it) and the stream of
    /// registered connections. The loop ends when `shutdown` is triggered; registrations in
    /// progress are abandoned, connections already handed over stay up (they belong to the
    /// application). A Unix socket file is removed when the loop ends.
    pub fn serve(
        self,
        shutdown: Shutdown,
    ) -> (
        impl Future<Output = io::Result<()>> + Send + 'static,
        Registrations,
    ) {
        let (tx, rx) = mpsc::channel(self.config.queue_capacity.max(1) - 1);
        (self.accept_loop(tx, shutdown), Registrations { rx })
    }

    async fn accept(&self) -> io::Result<(BoxReader, BoxWriter, Peer, TlsSide)> {
        match &self.socket {
            Socket::Unix { listener, .. } => {
                let (r, w) = self.runtime.accept_unix(listener).await?;
                Ok((r, w, Peer::Unix, TlsSide::default()))
            }
            Socket::Tcp {
                listener,
                #[cfg(feature = "tls")]
                tls,
                ..
            } => {
                let (r, w, addr) = self.runtime.accept_tcp(listener).await?;
                #[cfg(feature = "tls")]
                let side = TlsSide(tls.clone());
                #[cfg(not(feature = "tls"))]
                let side = TlsSide::default();
                Ok((r, w, Peer::Tcp(addr), side))
            }
        }
    }

    async fn accept_loop(
        self,
        tx: mpsc::Sender<RegisteredAgent>,
        shutdown: Shutdown,
    ) -> io::Result<()> {
        let ctx = Arc::new(Ctx {
            runtime: self.runtime.clone(),
            config: self.config.clone(),
            state: self.state.clone(),
            notices: self.notices.clone(),
        });
        loop {
            let accepted = race(async { Some(self.accept().await) }, async {
                shutdown.wait().await;
                None
            })
            .await;
            let Some(accepted) = accepted else { break };
            let (reader, writer, peer, tls) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "reverse listener: accept failed");
                    // Out of descriptors or similar: back off instead of spinning.
                    self.runtime
                        .sleep_until(Instant::now() + Duration::from_millis(20))
                        .await;
                    continue;
                }
            };
            bump(&self.state.counters.accepted);
            let Some(pending) = self.state.pending.try_acquire(self.config.max_pending) else {
                bump(&self.state.counters.refused_pending);
                tracing::debug!(
                    max = self.config.max_pending,
                    "too many unregistered sockets; closing"
                );
                drop((reader, writer));
                continue;
            };
            let ctx = ctx.clone();
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            self.runtime.spawn(async move {
                let work = register(&ctx, reader, writer, peer, tls, tx);
                race(work, shutdown.wait()).await;
                drop(pending);
            });
        }
        Ok(())
    }
}

/// The TLS configuration of a TCP listener, if any.
#[derive(Default)]
struct TlsSide(#[cfg(feature = "tls")] Option<Arc<rustls::ServerConfig>>);

struct Ctx<R: Runtime> {
    runtime: R,
    config: Arc<ReverseListenerConfig>,
    state: Arc<State>,
    notices: Option<NoticeCallback>,
}

/// Why a registration was answered with `success: false`.
#[derive(Debug)]
enum Rejection {
    Version(u32),
    EmptyId,
    InvalidId,
    /// Authentication, allowlist or identity failure: one uniform answer.
    Denied(&'static str),
    TooManyConnections,
    Busy,
    Closing,
}

impl Rejection {
    /// The real reason, for the proxy's log only.
    fn detail(&self) -> &'static str {
        match self {
            Rejection::Version(_) => "protocol version mismatch",
            Rejection::EmptyId => "empty agent id",
            Rejection::InvalidId => "agent id too long or with control characters",
            Rejection::Denied(why) => why,
            Rejection::TooManyConnections => "per-agent connection limit reached",
            Rejection::Busy => "connection limit reached or registration queue full",
            Rejection::Closing => "registration stream closed",
        }
    }

    fn wire_text(&self) -> String {
        match self {
            Rejection::Version(v) => {
                format!("Protocol version mismatch: expected {PROTOCOL_VERSION}, got {v}")
            }
            Rejection::EmptyId => String::from("Invalid message format: Agent ID cannot be empty"),
            Rejection::InvalidId => String::from("Invalid message format: Invalid agent ID"),
            Rejection::Denied(_) => String::from(REJECTED),
            Rejection::TooManyConnections => {
                String::from("Invalid message format: Too many connections for this agent")
            }
            Rejection::Busy => String::from("Invalid message format: Proxy busy, retry later"),
            Rejection::Closing => String::from("Invalid message format: Proxy shutting down"),
        }
    }
}

enum Malformed {
    Read(ReadError),
    UnexpectedFrame(MessageType),
    Decode(agentwire_core::encoding::DecodeError),
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Tls(io::Error),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Read(e) => write!(f, "{e}"),
            Malformed::UnexpectedFrame(k) => write!(f, "expected a registration, got {k}"),
            Malformed::Decode(e) => write!(f, "{e}"),
            Malformed::Tls(e) => write!(f, "TLS handshake failed: {e}"),
        }
    }
}

type FirstFrame = (
    BoxReader,
    BoxWriter,
    Option<Vec<Vec<u8>>>,
    RegistrationRequest,
);

async fn read_registration(
    ctx_max: u32,
    reader: BoxReader,
    writer: BoxWriter,
    tls: TlsSide,
) -> Result<FirstFrame, Malformed> {
    #[cfg(feature = "tls")]
    let (mut reader, writer, certs) = match tls.0 {
        Some(config) => crate::tls::accept(config, reader, writer)
            .await
            .map_err(Malformed::Tls)?,
        None => (reader, writer, None),
    };
    #[cfg(not(feature = "tls"))]
    let (mut reader, writer, certs) = {
        let _ = tls;
        (reader, writer, None)
    };
    let (kind, payload) = read_frame(&mut reader, ctx_max)
        .await
        .map_err(Malformed::Read)?;
    if kind != MessageType::HandshakeRequest {
        return Err(Malformed::UnexpectedFrame(kind));
    }
    let request = decode_json(kind, &payload).map_err(Malformed::Decode)?;
    Ok((reader, writer, certs, request))
}

fn validate(
    config: &ReverseListenerConfig,
    request: &RegistrationRequest,
    peer: &Peer,
    certs: Option<&[Vec<u8>]>,
) -> Result<(), Rejection> {
    if request.protocol_version != PROTOCOL_VERSION {
        return Err(Rejection::Version(request.protocol_version));
    }
    let id = request.agent_id.as_str();
    if id.is_empty() {
        return Err(Rejection::EmptyId);
    }
    if id.len() > MAX_AGENT_ID_LEN || id.chars().any(char::is_control) {
        return Err(Rejection::InvalidId);
    }
    // Credentials first: without them a peer learns nothing about the allowlist (S2).
    let attempt = RegistrationAttempt {
        agent_id: id,
        auth_token: request.auth_token.as_deref(),
        peer,
        peer_certificates: certs,
    };
    if !config.auth.validate(&attempt) {
        return Err(Rejection::Denied("authentication failed"));
    }
    if !config.allowed_agents.allows(id) {
        return Err(Rejection::Denied("agent id not allowed"));
    }
    // B18: the capabilities must describe the agent that registers (empty means "same").
    let declared = request.capabilities.agent_id.as_str();
    if !declared.is_empty() && declared != id {
        return Err(Rejection::Denied(
            "capabilities.agent_id differs from agent_id",
        ));
    }
    Ok(())
}

fn choose_encoding(preferred: &[Encoding], offered: &[Encoding]) -> Encoding {
    preferred
        .iter()
        .copied()
        .find(|e| e.is_available() && offered.contains(e))
        .unwrap_or(Encoding::Json)
}

fn connection_id(agent_id: &str, serial: u64) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{agent_id}-{millis:x}-{serial:x}")
}

/// Writes one answer within `limit`; false when it could not be written.
async fn answer<R: Runtime>(
    runtime: &R,
    writer: &mut BoxWriter,
    response: &RegistrationResponse,
    limit: Duration,
) -> bool {
    let Ok(frame) = json_frame(MessageType::HandshakeResponse, response, u32::MAX) else {
        return false;
    };
    matches!(
        timeout(runtime, limit, crate::wire::write_all(writer, &frame)).await,
        Some(Ok(()))
    )
}

async fn reject<R: Runtime>(
    ctx: &Ctx<R>,
    mut writer: BoxWriter,
    agent_id: &str,
    rejection: &Rejection,
    deadline: Instant,
) {
    bump(&ctx.state.counters.rejected);
    // Debug-formatted: the id is not validated yet and may hold control characters.
    tracing::info!(
        agent_id = ?agent_id,
        reason = rejection.detail(),
        "reverse registration rejected"
    );
    let response = RegistrationResponse {
        success: false,
        error: Some(rejection.wire_text()),
        proxy_id: ctx.config.proxy_id.clone(),
        proxy_version: ctx.config.proxy_version.clone(),
        connection_id: String::new(),
        encoding: None,
    };
    let limit = deadline
        .saturating_duration_since(Instant::now())
        .max(MIN_ANSWER_TIME);
    if answer(&ctx.runtime, &mut writer, &response, limit).await {
        let _ = timeout(&ctx.runtime, MIN_ANSWER_TIME, writer.close()).await;
    }
}

async fn register<R: Runtime>(
    ctx: &Ctx<R>,
    reader: BoxReader,
    writer: BoxWriter,
    peer: Peer,
    tls: TlsSide,
    mut tx: mpsc::Sender<RegisteredAgent>,
) {
    let config = &ctx.config;
    let deadline = Instant::now() + config.handshake_timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let first = timeout(
        &ctx.runtime,
        remaining(),
        read_registration(config.max_registration_frame, reader, writer, tls),
    )
    .await;
    let (reader, mut writer, certs, request) = match first {
        None => {
            bump(&ctx.state.counters.timed_out);
            tracing::debug!(?peer, "no registration in time; closing");
            return;
        }
        Some(Err(e)) => {
            bump(&ctx.state.counters.malformed);
            tracing::debug!(?peer, error = %e, "malformed registration; closing without answer");
            return;
        }
        Some(Ok(v)) => v,
    };
    let agent_id = request.agent_id.clone();
    if let Err(rejection) = validate(config, &request, &peer, certs.as_deref()) {
        return reject(ctx, writer, &agent_id, &rejection, deadline).await;
    }
    // The limit is checked (and the slot taken) before the answer: an agent is never told
    // `success: true` and then dropped (B6).
    let slot = match ctx.state.acquire(
        &agent_id,
        config.max_connections_per_agent,
        config.max_connections,
    ) {
        Ok(slot) => slot,
        Err(rejection) => return reject(ctx, writer, &agent_id, &rejection, deadline).await,
    };
    // Room for the hand-over, also before the answer.
    let room = timeout(
        &ctx.runtime,
        remaining(),
        std::future::poll_fn(|cx| tx.poll_ready(cx)),
    )
    .await;
    match room {
        Some(Ok(())) => {}
        Some(Err(_)) => {
            drop(slot);
            return reject(ctx, writer, &agent_id, &Rejection::Closing, deadline).await;
        }
        None => {
            drop(slot);
            return reject(ctx, writer, &agent_id, &Rejection::Busy, deadline).await;
        }
    }
    let encoding = choose_encoding(&config.encodings, &request.agentwire_encodings);
    let serial = ctx.state.next_connection.fetch_add(1, Ordering::Relaxed);
    let connection_id = connection_id(&agent_id, serial);
    let response = RegistrationResponse {
        success: true,
        error: None,
        proxy_id: config.proxy_id.clone(),
        proxy_version: config.proxy_version.clone(),
        connection_id: connection_id.clone(),
        // Our key only for agents that spoke our extension; reference agents see the
        // reference's five keys.
        encoding: (!request.agentwire_encodings.is_empty()).then_some(encoding),
    };
    let limit = remaining().max(MIN_ANSWER_TIME);
    if !answer(&ctx.runtime, &mut writer, &response, limit).await {
        tracing::debug!(agent_id, "registration answer could not be written");
        return;
    }
    let mut capabilities = request.capabilities;
    if capabilities.agent_id.is_empty() {
        capabilities.agent_id = agent_id.clone();
    }
    let format = WireFormat {
        encoding,
        // Agents that negotiated a binary encoding are agentwire agents: raw body bytes.
        raw_body_bytes: encoding != Encoding::Json,
    };
    let closed = Shutdown::new();
    let reader: BoxReader = Box::pin(WatchedReader {
        inner: reader,
        _guard: ConnectionGuard {
            slot: Some(slot),
            closed: closed.clone(),
        },
    });
    let client = AgentClient::established(
        &ctx.runtime,
        reader,
        writer,
        config.client.clone(),
        format,
        capabilities.clone(),
        ctx.notices.clone(),
    );
    bump(&ctx.state.counters.registered);
    tracing::info!(
        agent_id,
        connection_id,
        encoding = encoding.as_str(),
        ?peer,
        "reverse agent registered"
    );
    let registered = RegisteredAgent {
        agent_id,
        connection_id,
        client,
        capabilities,
        metadata: request.metadata,
        encoding,
        peer,
        closed: ConnectionClosed { signal: closed },
    };
    // Room was reserved above; this fails only if the application dropped the stream since,
    // and then nobody could use the connection anyway.
    if tx.start_send(registered).is_err() {
        tracing::debug!("registration stream dropped; closing the new connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str) -> RegistrationRequest {
        let mut r = RegistrationRequest {
            protocol_version: 2,
            agent_id: id.into(),
            auth_token: Some("t".into()),
            ..Default::default()
        };
        r.capabilities.agent_id = id.into();
        r
    }

    fn config() -> ReverseListenerConfig {
        ReverseListenerConfig {
            auth: Auth::tokens(["t"]),
            allowed_agents: Allowlist::new(["waf-*"]),
            ..Default::default()
        }
    }

    #[test]
    fn validation_order_and_uniform_texts() {
        let c = config();
        let peer = Peer::Unix;
        let text =
            |r: &RegistrationRequest| validate(&c, r, &peer, None).map_err(|e| e.wire_text());
        assert_eq!(text(&request("waf-1")), Ok(()));
        let mut v = request("waf-1");
        v.protocol_version = 1;
        assert_eq!(
            text(&v).unwrap_err(),
            "Protocol version mismatch: expected 2, got 1"
        );
        assert_eq!(
            text(&request("")).unwrap_err(),
            "Invalid message format: Agent ID cannot be empty"
        );
        let mut bad_token = request("waf-1");
        bad_token.auth_token = Some("nope".into());
        let mut no_token = request("waf-1");
        no_token.auth_token = None;
        let not_allowed = request("other");
        let mut mismatch = request("waf-1");
        mismatch.capabilities.agent_id = "waf-2".into();
        // Not allowed and a wrong token at once: still the same text (auth runs first).
        let mut both = request("other");
        both.auth_token = Some("nope".into());
        for r in [&bad_token, &no_token, &not_allowed, &mismatch, &both] {
            assert_eq!(text(r).unwrap_err(), REJECTED, "{r:?}");
        }
        let mut empty_caps = request("waf-1");
        empty_caps.capabilities.agent_id.clear();
        assert_eq!(text(&empty_caps), Ok(()));
        assert!(text(&request(&"w".repeat(MAX_AGENT_ID_LEN + 1))).is_err());
        assert!(text(&request("waf-\n1")).is_err());
    }

    #[test]
    fn custom_validator_sees_peer_and_token() {
        let c = ReverseListenerConfig {
            auth: Auth::custom(|a: &RegistrationAttempt<'_>| {
                matches!(a.peer, Peer::Tcp(addr) if addr.ip().is_loopback())
                    && a.auth_token == Some(a.agent_id)
            }),
            ..Default::default()
        };
        let local = Peer::Tcp("127.0.0.1:9".parse().unwrap());
        let mut r = request("x");
        r.auth_token = Some("x".into());
        assert!(validate(&c, &r, &local, None).is_ok());
        assert!(validate(&c, &r, &Peer::Unix, None).is_err());
    }

    #[test]
    fn config_check_refuses_auth_without_tokens() {
        let c = ReverseListenerConfig {
            auth: Auth::tokens([""]),
            ..Default::default()
        };
        assert_eq!(c.check().unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(ReverseListenerConfig::default().check().is_ok());
    }

    #[test]
    fn encoding_follows_the_proxy_preference_among_offered() {
        let prefs = [Encoding::Postcard, Encoding::Msgpack, Encoding::Json];
        assert_eq!(choose_encoding(&prefs, &[]), Encoding::Json);
        assert_eq!(
            choose_encoding(&prefs, &[Encoding::Msgpack, Encoding::Postcard]),
            Encoding::Postcard
        );
        assert_eq!(
            choose_encoding(&[Encoding::Json], &[Encoding::Msgpack]),
            Encoding::Json
        );
    }

    #[test]
    fn connection_ids_are_unique_within_one_millisecond() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|n| connection_id("a", n)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.starts_with("a-")));
    }

    #[test]
    fn slots_enforce_per_agent_and_total_limits_and_free_on_drop() {
        let state = Arc::new(State::default());
        let a1 = state.acquire("a", 2, 3).unwrap();
        let _a2 = state.acquire("a", 2, 3).unwrap();
        assert!(matches!(
            state.acquire("a", 2, 3),
            Err(Rejection::TooManyConnections)
        ));
        let _b = state.acquire("b", 2, 3).unwrap();
        assert!(matches!(state.acquire("c", 2, 3), Err(Rejection::Busy)));
        drop(a1);
        assert_eq!(state.stats().live, 2);
        let _a3 = state.acquire("a", 2, 3).unwrap();
        assert_eq!(state.registry().per_agent.get("a"), Some(&2));
    }
}
