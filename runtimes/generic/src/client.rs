//! The proxy side of one agent connection over any byte stream.

use crate::{BoxReader, BoxWriter, Notify, Runtime, core_now, timeout, to_std};
use agentwire_core::message::*;
use agentwire_core::session::{
    CloseReason, ProxyConfig, ProxyEvent, ProxySession, RequestError, SendError,
};
use bytes::Bytes;
use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Settings of an [`AgentClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The session settings (encodings, configuration, timeouts, limits).
    pub session: ProxyConfig,
    /// Bound on connecting **and** completing the handshake (and configuration), so an agent
    /// that accepts and never answers cannot hang the caller.
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            session: ProxyConfig::default(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a client operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting plus handshaking took longer than the connect timeout.
    ConnectTimeout,
    /// The socket could not be connected.
    Connect(io::Error),
    /// The handshake or configuration failed.
    Handshake(CloseReason),
    /// The agent did not answer before the request's deadline.
    Timeout,
    /// The request was cancelled.
    Cancelled,
    /// The connection ended before the answer; carries the reason when known.
    ConnectionClosed(Option<CloseReason>),
    /// The agent asked the proxy to pause.
    FlowControlPaused {
        /// The agent.
        agent_id: String,
    },
    /// The connection's in-flight limit is reached.
    TooManyInFlight {
        /// The limit.
        limit: usize,
    },
    /// The agent is not reading: too many bytes wait to be written.
    Backpressure,
    /// The request was refused locally (duplicate or empty correlation id, encoding error).
    Protocol(SendError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::ConnectTimeout => f.write_str("connect timed out"),
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Handshake(r) => write!(f, "handshake failed: {r}"),
            ClientError::Timeout => f.write_str("agent did not answer in time"),
            ClientError::Cancelled => f.write_str("request cancelled"),
            ClientError::ConnectionClosed(Some(r)) => write!(f, "connection closed: {r}"),
            ClientError::ConnectionClosed(None) => f.write_str("connection closed"),
            ClientError::FlowControlPaused { agent_id } => write!(
                f,
                "Flow control paused: agent '{agent_id}' requested backpressure"
            ),
            ClientError::TooManyInFlight { limit } => {
                write!(f, "in-flight limit of {limit} reached")
            }
            ClientError::Backpressure => f.write_str("agent is not reading"),
            ClientError::Protocol(e) => write!(f, "request refused: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// A short stable name of the error kind (for metrics and reports).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::ConnectTimeout => "connect_timeout",
            ClientError::Connect(_) => "connect",
            ClientError::Handshake(_) => "handshake",
            ClientError::Timeout => "timeout",
            ClientError::Cancelled => "cancelled",
            ClientError::ConnectionClosed(_) => "connection_closed",
            ClientError::FlowControlPaused { .. } => "flow_control_paused",
            ClientError::TooManyInFlight { .. } => "too_many_in_flight",
            ClientError::Backpressure => "backpressure",
            ClientError::Protocol(_) => "protocol",
        }
    }
}

/// Agent-to-proxy messages that are not answers, passed to a notice callback.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentNotice {
    /// Flow control (already enforced by the client).
    FlowControl(FlowControlSignal),
    /// Health report.
    Health(HealthStatus),
    /// Metrics report.
    Metrics(MetricsReport),
    /// Configuration update request.
    ConfigUpdate(ConfigUpdateRequest),
}

/// Receives [`AgentNotice`]s; called from the connection's reader task, so keep it short.
pub type NoticeCallback = Arc<dyn Fn(AgentNotice) + Send + Sync>;

/// What the handshake established.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The agent's capabilities.
    pub capabilities: Capabilities,
    /// The negotiated encoding.
    pub encoding: Encoding,
    /// The version the agent announced.
    pub protocol_version: u32,
}

type Reply = Result<AgentResponse, ClientError>;

struct Inner {
    session: ProxySession,
    waiters: HashMap<String, oneshot::Sender<Reply>>,
    pings: HashMap<u64, oneshot::Sender<Duration>>,
    ready: Option<oneshot::Sender<Result<(), CloseReason>>>,
    armed: Option<agentwire_core::time::Instant>,
    close_reason: Option<CloseReason>,
}

struct Shared {
    inner: Mutex<Inner>,
    writer_wake: Notify,
    reader_wake: Notify,
    closed: AtomicBool,
    info: OnceLock<ConnectionInfo>,
    notices: Option<NoticeCallback>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the session half-updated in a way that
        // matters more than losing the connection; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers every queued session event; returns notices to pass on after unlocking.
    fn dispatch(&self, inner: &mut Inner) -> Vec<AgentNotice> {
        let mut notices = Vec::new();
        if inner.session.is_closed() {
            // Before any waiter is failed: a caller that sees `ConnectionClosed` must also
            // see `is_connected() == false` (the `Closed` event comes after the failures).
            self.closed.store(true, Ordering::Release);
        }
        while let Some(event) = inner.session.poll_event() {
            match event {
                ProxyEvent::Connected {
                    capabilities,
                    encoding,
                    protocol_version,
                } => {
                    let _ = self.info.set(ConnectionInfo {
                        capabilities,
                        encoding,
                        protocol_version,
                    });
                    if let Some(tx) = inner.ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                ProxyEvent::Response {
                    correlation_id,
                    response,
                } => {
                    if let Some(tx) = inner.waiters.remove(&correlation_id) {
                        let _ = tx.send(Ok(response));
                    }
                }
                ProxyEvent::Failed {
                    correlation_id,
                    error,
                } => {
                    if let Some(tx) = inner.waiters.remove(&correlation_id) {
                        let _ = tx.send(Err(match error {
                            RequestError::Timeout => ClientError::Timeout,
                            RequestError::Cancelled => ClientError::Cancelled,
                            RequestError::ConnectionClosed(r) => {
                                ClientError::ConnectionClosed(Some(r))
                            }
                            _ => ClientError::ConnectionClosed(None),
                        }));
                    }
                }
                ProxyEvent::Pong { sequence, rtt } => {
                    if let Some(tx) = inner.pings.remove(&sequence) {
                        let _ = tx.send(rtt);
                    }
                }
                ProxyEvent::FlowControl(s) => notices.push(AgentNotice::FlowControl(s)),
                ProxyEvent::Health(h) => notices.push(AgentNotice::Health(h)),
                ProxyEvent::Metrics(m) => notices.push(AgentNotice::Metrics(m)),
                ProxyEvent::ConfigUpdate(c) => notices.push(AgentNotice::ConfigUpdate(c)),
                ProxyEvent::Closed(reason) => {
                    self.closed.store(true, Ordering::Release);
                    tracing::debug!(%reason, "agent connection closed");
                    for (_, tx) in inner.waiters.drain() {
                        let _ = tx.send(Err(ClientError::ConnectionClosed(Some(reason.clone()))));
                    }
                    inner.pings.clear();
                    if let Some(tx) = inner.ready.take() {
                        let _ = tx.send(Err(reason.clone()));
                    }
                    inner.close_reason = Some(reason);
                }
                _ => {}
            }
        }
        notices
    }

    fn deliver(&self, notices: Vec<AgentNotice>) {
        if let Some(cb) = &self.notices {
            for n in notices {
                cb(n);
            }
        }
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.session.close();
        let notices = self.dispatch(&mut inner);
        drop(inner);
        self.deliver(notices);
        self.writer_wake.notify();
        self.reader_wake.notify();
    }
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The last user handle is gone: nobody can await an answer any more.
        self.shared.close();
    }
}

/// The proxy side of one agent connection: many concurrent requests over one stream, one
/// reader task and one writer task, answers matched by correlation id.
///
/// Clones share the connection; it closes when the last clone is dropped.
#[derive(Clone)]
pub struct AgentClient {
    handle: Arc<Handle>,
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("agent_id", &self.agent_id())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl AgentClient {
    /// Connects to an agent's Unix socket and completes the handshake (and configuration)
    /// within `config.connect_timeout`.
    pub async fn connect_unix<R: Runtime>(
        runtime: &R,
        path: impl AsRef<Path>,
        config: ClientConfig,
    ) -> Result<AgentClient, ClientError> {
        AgentClient::connect_unix_with_notices(runtime, path, config, None).await
    }

    /// [`AgentClient::connect_unix`] with a callback for health, metrics, config-update and
    /// flow-control messages.
    pub async fn connect_unix_with_notices<R: Runtime>(
        runtime: &R,
        path: impl AsRef<Path>,
        config: ClientConfig,
        notices: Option<NoticeCallback>,
    ) -> Result<AgentClient, ClientError> {
        let started = Instant::now();
        let (reader, writer) = timeout(
            runtime,
            config.connect_timeout,
            runtime.connect_unix(path.as_ref()),
        )
        .await
        .ok_or(ClientError::ConnectTimeout)?
        .map_err(ClientError::Connect)?;
        let remaining = config.connect_timeout.saturating_sub(started.elapsed());
        AgentClient::handshake(runtime, reader, writer, config, remaining, notices).await
    }

    /// Runs the handshake over an already connected stream (TCP, a test pipe, …).
    pub async fn over_stream<R: Runtime>(
        runtime: &R,
        reader: BoxReader,
        writer: BoxWriter,
        config: ClientConfig,
        notices: Option<NoticeCallback>,
    ) -> Result<AgentClient, ClientError> {
        let limit = config.connect_timeout;
        AgentClient::handshake(runtime, reader, writer, config, limit, notices).await
    }

    async fn handshake<R: Runtime>(
        runtime: &R,
        reader: BoxReader,
        writer: BoxWriter,
        mut config: ClientConfig,
        remaining: Duration,
        notices: Option<NoticeCallback>,
    ) -> Result<AgentClient, ClientError> {
        config.session.handshake_timeout = config.session.handshake_timeout.min(remaining);
        let (ready_tx, ready_rx) = oneshot::channel();
        let session = ProxySession::new(config.session, core_now());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                session,
                waiters: HashMap::new(),
                pings: HashMap::new(),
                ready: Some(ready_tx),
                armed: None,
                close_reason: None,
            }),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            closed: AtomicBool::new(false),
            info: OnceLock::new(),
            notices,
        });
        runtime.spawn(reader_loop(runtime.clone(), shared.clone(), reader));
        runtime.spawn(writer_loop(runtime.clone(), shared.clone(), writer));
        shared.writer_wake.notify();
        let client = AgentClient {
            handle: Arc::new(Handle {
                shared: shared.clone(),
            }),
        };
        // The session bounds the handshake itself; this bounds the configuration round trip
        // too, which the session times with its own (longer) configure timeout.
        match timeout(runtime, remaining, ready_rx).await {
            None => Err(ClientError::ConnectTimeout),
            Some(Ok(Ok(()))) => Ok(client),
            Some(Ok(Err(CloseReason::HandshakeTimeout | CloseReason::ConfigurationTimeout))) => {
                Err(ClientError::ConnectTimeout)
            }
            Some(Ok(Err(reason))) => Err(ClientError::Handshake(reason)),
            Some(Err(_)) => Err(ClientError::ConnectionClosed(None)),
        }
    }

    /// A client over a stream whose agent was already identified another way (a reverse
    /// connection's registration, spec §9): no handshake is sent, the client is ready at once
    /// and speaks `format`. `config.connect_timeout` is unused; the session's request
    /// timeout and limits apply (the in-flight limit is capped by
    /// `capabilities.limits.max_concurrency`).
    pub fn established<R: Runtime>(
        runtime: &R,
        reader: BoxReader,
        writer: BoxWriter,
        config: ClientConfig,
        format: agentwire_core::encoding::WireFormat,
        capabilities: Capabilities,
        notices: Option<NoticeCallback>,
    ) -> AgentClient {
        let session = ProxySession::new_established(config.session, format, capabilities);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                session,
                waiters: HashMap::new(),
                pings: HashMap::new(),
                ready: None,
                armed: None,
                close_reason: None,
            }),
            writer_wake: Notify::new(),
            reader_wake: Notify::new(),
            closed: AtomicBool::new(false),
            info: OnceLock::new(),
            notices,
        });
        // Deliver the session's `Connected` now, so `info` and `agent_id` are set on return.
        let notices = {
            let mut inner = shared.lock();
            shared.dispatch(&mut inner)
        };
        shared.deliver(notices);
        runtime.spawn(reader_loop(runtime.clone(), shared.clone(), reader));
        runtime.spawn(writer_loop(runtime.clone(), shared.clone(), writer));
        AgentClient {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The agent's id from the handshake.
    #[must_use]
    pub fn agent_id(&self) -> &str {
        self.shared()
            .info
            .get()
            .map_or("", |i| i.capabilities.agent_id.as_str())
    }

    /// What the handshake established.
    #[must_use]
    pub fn info(&self) -> Option<&ConnectionInfo> {
        self.shared().info.get()
    }

    /// False once the connection ended (waiters have all been failed by then).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        !self.shared().closed.load(Ordering::Acquire)
    }

    /// Why the connection ended, once it has.
    #[must_use]
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared().lock().close_reason.clone()
    }

    /// Requests awaiting an answer.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared().lock().session.in_flight()
    }

    /// True while the agent asked the proxy to pause.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.shared().lock().session.is_paused()
    }

    /// Sends an event and waits for the agent's answer, its deadline, or the connection's end.
    /// Dropping the returned future cancels the request (a Cancel goes to the agent).
    pub async fn send_event(&self, event: Event) -> Result<AgentResponse, ClientError> {
        self.send_event_inner(event, None).await
    }

    /// [`AgentClient::send_event`] with a deadline other than the configured one.
    pub async fn send_event_with_timeout(
        &self,
        event: Event,
        timeout: Duration,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event_inner(event, Some(timeout)).await
    }

    async fn send_event_inner(
        &self,
        event: Event,
        timeout: Option<Duration>,
    ) -> Result<AgentResponse, ClientError> {
        let shared = self.shared();
        let mut event = event;
        let (rx, rearm) = {
            let mut inner = shared.lock();
            let now = core_now();
            let sent = match timeout {
                Some(t) => inner.session.send_event_with_timeout(now, &event, t),
                None => inner.session.send_event(now, &event),
            };
            if let Err(e) = sent {
                return Err(self.map_send_error(e, &inner));
            }
            let (tx, rx) = oneshot::channel();
            inner.waiters.insert(event.correlation_id().to_owned(), tx);
            let next = inner.session.poll_timeout();
            let rearm = match (next, inner.armed) {
                (Some(n), Some(a)) => n < a,
                (Some(_), None) => true,
                _ => false,
            };
            (rx, rearm)
        };
        // The event is encoded: keep only its id (moved out, not copied) for a cancel.
        let id = take_correlation_id(&mut event);
        drop(event);
        shared.writer_wake.notify();
        if rearm {
            shared.reader_wake.notify();
        }
        let mut guard = CancelOnDrop {
            client: self,
            id: Some(id),
        };
        let reply = rx.await;
        guard.id = None;
        match reply {
            Ok(r) => r,
            Err(_) => Err(ClientError::ConnectionClosed(self.close_reason())),
        }
    }

    fn map_send_error(&self, e: SendError, inner: &Inner) -> ClientError {
        match e {
            SendError::Closed => ClientError::ConnectionClosed(inner.close_reason.clone()),
            SendError::Paused => ClientError::FlowControlPaused {
                agent_id: self.agent_id().to_owned(),
            },
            SendError::TooManyInFlight { limit } => ClientError::TooManyInFlight { limit },
            SendError::Backpressure { .. } => ClientError::Backpressure,
            other => ClientError::Protocol(other),
        }
    }

    /// Sends request headers.
    pub async fn send_request_headers(
        &self,
        event: RequestHeaders,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::RequestHeaders(event)).await
    }

    /// Sends a request body chunk (raw bytes on binary encodings toward agentwire agents).
    pub async fn send_request_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::RequestBodyChunk(chunk)).await
    }

    /// Sends response headers.
    pub async fn send_response_headers(
        &self,
        event: ResponseHeaders,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::ResponseHeaders(event)).await
    }

    /// Sends a response body chunk.
    pub async fn send_response_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::ResponseBodyChunk(chunk)).await
    }

    /// Sends request complete.
    pub async fn send_request_complete(
        &self,
        event: RequestComplete,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::RequestComplete(event)).await
    }

    /// Sends a WebSocket frame.
    pub async fn send_websocket_frame(
        &self,
        event: WebSocketFrame,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::WebSocketFrame(event)).await
    }

    /// Sends a guardrail inspection.
    pub async fn send_guardrail_inspect(
        &self,
        event: GuardrailInspect,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::GuardrailInspect(event)).await
    }

    /// Sends a configuration and waits for the agent's verdict.
    pub async fn send_configure(&self, event: Configure) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::Configure(event)).await
    }

    /// Cancels a request: the agent is told, a local waiter fails with `Cancelled`.
    pub fn cancel(&self, correlation_id: &str, reason: CancelReason) -> Result<(), ClientError> {
        let shared = self.shared();
        let mut inner = shared.lock();
        let result = inner.session.cancel(core_now(), correlation_id, reason);
        let notices = shared.dispatch(&mut inner);
        let result = result.map_err(|e| self.map_send_error(e, &inner));
        drop(inner);
        shared.deliver(notices);
        shared.writer_wake.notify();
        result
    }

    /// Cancels every pending request (one Cancel frame each).
    pub fn cancel_all(&self, reason: CancelReason) -> Result<(), ClientError> {
        let shared = self.shared();
        let mut inner = shared.lock();
        let result = inner.session.cancel_all(core_now(), reason);
        let notices = shared.dispatch(&mut inner);
        let result = result.map_err(|e| self.map_send_error(e, &inner));
        drop(inner);
        shared.deliver(notices);
        shared.writer_wake.notify();
        result
    }

    /// Pings the agent and returns the round-trip time, or `Timeout` after `limit`.
    pub async fn ping<R: Runtime>(
        &self,
        runtime: &R,
        limit: Duration,
    ) -> Result<Duration, ClientError> {
        let shared = self.shared();
        let rx = {
            let mut inner = shared.lock();
            let seq = inner
                .session
                .ping(core_now())
                .map_err(|e| self.map_send_error(e, &inner))?;
            let (tx, rx) = oneshot::channel();
            inner.pings.insert(seq, tx);
            rx
        };
        shared.writer_wake.notify();
        match timeout(runtime, limit, rx).await {
            None => Err(ClientError::Timeout),
            Some(Ok(rtt)) => Ok(rtt),
            Some(Err(_)) => Err(ClientError::ConnectionClosed(self.close_reason())),
        }
    }

    /// Closes the connection now; pending requests fail with `ConnectionClosed`.
    pub fn close(&self) {
        self.shared().close();
    }

    /// Stops accepting nothing new on its own, waits up to `drain` for pending requests to
    /// finish, then closes.
    pub async fn shutdown<R: Runtime>(&self, runtime: &R, drain: Duration) {
        let deadline = Instant::now() + drain;
        while self.in_flight() > 0 && Instant::now() < deadline {
            runtime
                .sleep_until((Instant::now() + Duration::from_millis(5)).min(deadline))
                .await;
        }
        self.close();
    }
}

/// Moves the correlation id out of an event that is no longer needed.
fn take_correlation_id(event: &mut Event) -> String {
    match event {
        Event::RequestHeaders(e) => std::mem::take(&mut e.metadata.correlation_id),
        Event::RequestBodyChunk(e) | Event::ResponseBodyChunk(e) => {
            std::mem::take(&mut e.correlation_id)
        }
        Event::ResponseHeaders(e) => std::mem::take(&mut e.correlation_id),
        Event::RequestComplete(e) => std::mem::take(&mut e.correlation_id),
        Event::WebSocketFrame(e) => std::mem::take(&mut e.correlation_id),
        Event::GuardrailInspect(e) => std::mem::take(&mut e.correlation_id),
        Event::Configure(e) => std::mem::take(&mut e.correlation_id),
        other => other.correlation_id().to_owned(),
    }
}

struct CancelOnDrop<'a> {
    client: &'a AgentClient,
    id: Option<String>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // The caller stopped waiting: free the slot and tell the agent.
            let _ = self.client.cancel(&id, CancelReason::ClientDisconnect);
        }
    }
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Notified,
}

async fn reader_loop<R: Runtime>(runtime: R, shared: Arc<Shared>, mut reader: BoxReader) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let deadline = {
            let mut inner = shared.lock();
            let next = inner.session.poll_timeout();
            inner.armed = next;
            next
        };
        let wake = {
            let read = async { Wake::Read(reader.read(&mut buf).await) };
            let timer = async {
                match deadline {
                    Some(d) => runtime.sleep_until(to_std(d)).await,
                    None => std::future::pending::<()>().await,
                }
                Wake::Timer
            };
            let notified = async {
                shared.reader_wake.wait().await;
                Wake::Notified
            };
            futures_lite::future::or(read, futures_lite::future::or(timer, notified)).await
        };
        let mut inner = shared.lock();
        let now = core_now();
        match wake {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => inner.session.handle_eof(now),
            Wake::Read(Ok(n)) => inner.session.handle_input(now, &buf[..n]),
            Wake::Timer | Wake::Notified => inner.session.handle_timeout(now),
        }
        let notices = shared.dispatch(&mut inner);
        let transmit = inner.session.buffered_bytes() > 0;
        let closed = inner.session.is_closed();
        drop(inner);
        shared.deliver(notices);
        if transmit || closed {
            shared.writer_wake.notify();
        }
        if closed {
            return;
        }
    }
}

/// How long a locally closed connection may spend flushing frames queued before the close.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

async fn writer_loop<R: Runtime>(runtime: R, shared: Arc<Shared>, mut writer: BoxWriter) {
    let result = write_until_closed(&mut writer, &shared.writer_wake, &shared.closed, || {
        shared.lock().session.poll_transmit()
    })
    .await;
    if let Ok(rest) = &result {
        // After a local close the session keeps what was queued (Cancels sent just before
        // closing); deliver it, bounded, so a peer that stopped reading cannot pin the task.
        let rest = rest.clone();
        let flush = async {
            if let Some(bytes) = rest {
                writer.write_all(&bytes).await?;
            }
            loop {
                let pending = shared.lock().session.poll_transmit();
                let Some(bytes) = pending else { break };
                writer.write_all(&bytes).await?;
            }
            writer.flush().await
        };
        let _ = timeout(&runtime, CLOSE_FLUSH, flush).await;
    }
    if result.is_err() {
        let mut inner = shared.lock();
        inner.session.handle_eof(core_now());
        let notices = shared.dispatch(&mut inner);
        drop(inner);
        shared.deliver(notices);
        shared.reader_wake.notify();
    }
    let _ = writer.close().await;
}

/// Writes whatever `poll_transmit` yields until `closed` is set; a write that blocks (the
/// peer stopped reading) is abandoned as soon as the connection closes.
///
/// Returns the bytes of a buffer that were not written when the close interrupted a write, so
/// a caller that still drains (the agent's graceful shutdown) can finish the frame instead of
/// leaving a torn frame on the wire.
pub(crate) async fn write_until_closed(
    writer: &mut BoxWriter,
    wake: &Notify,
    closed: &AtomicBool,
    mut poll_transmit: impl FnMut() -> Option<Bytes>,
) -> io::Result<Option<Bytes>> {
    loop {
        match poll_transmit() {
            Some(mut bytes) => {
                while !bytes.is_empty() {
                    let write = async { Some(writer.write(&bytes).await) };
                    let close = async {
                        loop {
                            wake.wait().await;
                            if closed.load(Ordering::Acquire) {
                                return None;
                            }
                        }
                    };
                    // Anything queued meanwhile is picked up by the next poll.
                    match futures_lite::future::or(write, close).await {
                        Some(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Some(Ok(n)) => bytes = bytes.slice(n..),
                        Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(Some(bytes)),
                    }
                }
            }
            None => {
                if closed.load(Ordering::Acquire) {
                    return Ok(None);
                }
                writer.flush().await?;
                wake.wait().await;
            }
        }
    }
}
