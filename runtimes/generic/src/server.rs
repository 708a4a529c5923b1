//! The agent side: the handler trait and the driver of one proxy connection.

use crate::client::write_until_closed;
use crate::{BoxReader, BoxWriter, Notify, Runtime, core_now, to_std};
use agentwire_core::message::*;
use agentwire_core::session::{AgentConfig, AgentEvent, AgentSession, CloseReason};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use futures_util::future::{AbortHandle, AbortRegistration, Abortable};
use futures_util::stream::FuturesUnordered;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An agent's logic: one method per event type, each returning the decision.
///
/// Every method has a sensible default, so an implementation overrides only what it inspects.
/// Unlike the reference server, guardrail inspections and configurations are answered by
/// default (with Allow) instead of being left to time out. One implementation serves every
/// transport (UDS, gRPC, reverse connections) at once.
pub trait AgentHandler: Send + Sync + 'static {
    /// A proxy connected (its handshake has been answered).
    fn on_connect(&self, request: &HandshakeRequest) {
        let _ = request;
    }

    /// Request headers.
    fn on_request_headers(
        &self,
        event: RequestHeaders,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// A request body chunk.
    fn on_request_body_chunk(
        &self,
        event: BodyChunk,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// Response headers.
    fn on_response_headers(
        &self,
        event: ResponseHeaders,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// A response body chunk.
    fn on_response_body_chunk(
        &self,
        event: BodyChunk,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// The request finished.
    fn on_request_complete(
        &self,
        event: RequestComplete,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// A WebSocket frame; the default forwards it.
    fn on_websocket_frame(
        &self,
        event: WebSocketFrame,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async {
            let mut response = AgentResponse::allow();
            response.websocket_decision = Some(WebSocketDecision::Allow);
            response
        }
    }

    /// A guardrail inspection; the default answers Allow (nothing detected).
    fn on_guardrail_inspect(
        &self,
        event: GuardrailInspect,
    ) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// A configuration; Allow accepts it, any other decision rejects it.
    fn on_configure(&self, event: Configure) -> impl Future<Output = AgentResponse> + Send {
        let _ = event;
        async { AgentResponse::allow() }
    }

    /// The proxy cancelled a request. Called after the request's pending handler future (if
    /// one was still running) has been dropped, and also for a Cancel of a request that has
    /// no running handler (already answered, still waiting in the connection's backlog — it
    /// then never runs — or never received).
    fn on_cancel(&self, correlation_id: &str, reason: CancelReason) {
        let _ = (correlation_id, reason);
    }

    /// Dispatches an event to the method for its type.
    fn handle_event(&self, event: Event) -> impl Future<Output = AgentResponse> + Send {
        async move {
            match event {
                Event::RequestHeaders(e) => self.on_request_headers(e).await,
                Event::RequestBodyChunk(e) => self.on_request_body_chunk(e).await,
                Event::ResponseHeaders(e) => self.on_response_headers(e).await,
                Event::ResponseBodyChunk(e) => self.on_response_body_chunk(e).await,
                Event::RequestComplete(e) => self.on_request_complete(e).await,
                Event::WebSocketFrame(e) => self.on_websocket_frame(e).await,
                Event::GuardrailInspect(e) => self.on_guardrail_inspect(e).await,
                Event::Configure(e) => self.on_configure(e).await,
                _ => AgentResponse::allow(),
            }
        }
    }
}

/// Settings of the agent side of a connection.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Session settings: capabilities, encodings, limits.
    pub agent: AgentConfig,
    /// Handlers run concurrently per connection; events beyond this wait in the connection's
    /// backlog (the agent also pauses agentwire proxies through flow control, at
    /// `limits.max_concurrency` in flight). 0 is taken as 1.
    pub max_concurrent_per_connection: usize,
    /// Events that may wait for a handler per connection once
    /// [`Self::max_concurrent_per_connection`] handlers run (default 256). They start in
    /// arrival order as handlers end; a Cancel removes its events from the backlog without
    /// running them. While the backlog has room the connection keeps reading, so Cancels and
    /// Pings are seen at once even from a proxy that ignores flow control; once it is full
    /// the connection stops reading. What a connection holds is then bounded by this many
    /// events plus the running handlers, plus the frames completed by one read (64 KiB, and
    /// the frame it finishes). 0 restores stopping at the handler cap.
    pub max_backlog_per_connection: usize,
    /// How long a shutting-down connection may take to finish its in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            agent: AgentConfig::default(),
            max_concurrent_per_connection: 256,
            max_backlog_per_connection: 256,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A shutdown signal shared by a server and its connections.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    inner: Arc<ShutdownInner>,
}

#[derive(Debug, Default)]
struct ShutdownInner {
    requested: AtomicBool,
    waiters: Mutex<Vec<std::task::Waker>>,
}

impl Shutdown {
    /// A signal not yet raised.
    #[must_use]
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Raises the signal: listeners stop accepting, connections drain and close.
    pub fn trigger(&self) {
        self.inner.requested.store(true, Ordering::Release);
        let waiters =
            std::mem::take(&mut *self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiters {
            w.wake();
        }
    }

    /// True once raised.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        self.inner.requested.load(Ordering::Acquire)
    }

    /// Completes once raised.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.is_triggered() {
                return std::task::Poll::Ready(());
            }
            let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            drop(waiters);
            if self.is_triggered() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
    }
}

/// Counters of a connection's life, returned when it ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionSummary {
    /// Events handed to the handler (a backlogged event cancelled before it started is not).
    pub requests: u64,
    /// Answers written.
    pub responses: u64,
    /// Requests cancelled by the proxy.
    pub cancelled: u64,
    /// Events that could not be decoded (answered with a Block when an id was found).
    pub undecodable: u64,
    /// Why the connection ended.
    pub close_reason: Option<CloseReason>,
}

struct ConnShared {
    session: Mutex<AgentSession>,
    writer_wake: Notify,
    /// Raised by the writer each time it takes the session's write buffer: a connection that
    /// stopped reading because the buffer was at its bound re-checks and reads again.
    drained: Notify,
    closed: AtomicBool,
}

impl ConnShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, AgentSession> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// One short-lived value per loop turn; boxing the answer would cost an allocation per answer.
#[allow(clippy::large_enum_variant)]
enum Wake {
    Read(std::io::Result<usize>),
    Done(
        Option<(
            Arc<str>,
            Result<AgentResponse, futures_util::future::Aborted>,
        )>,
    ),
    Timer,
    Shutdown,
    WriterGone,
    Drained,
}

/// Serves one proxy connection until it ends: answers the handshake, runs the handler for
/// every event (concurrently, up to [`ServeConfig::max_concurrent_per_connection`], then
/// queued in a backlog of [`ServeConfig::max_backlog_per_connection`]), writes the answers.
/// On `shutdown` it stops reading, lets in-flight handlers (and backlogged events) finish
/// within the drain timeout, flushes their answers and closes.
pub async fn serve_connection<R: Runtime, H: AgentHandler>(
    runtime: R,
    reader: BoxReader,
    writer: BoxWriter,
    config: Arc<ServeConfig>,
    handler: Arc<H>,
    shutdown: Shutdown,
) -> ConnectionSummary {
    let session = AgentSession::new(config.agent.clone(), core_now());
    serve_session(runtime, reader, writer, config, handler, shutdown, session).await
}

/// [`serve_connection`] for a session that is already past its handshake (reverse
/// connections, where registration replaces the handshake).
pub async fn serve_session<R: Runtime, H: AgentHandler>(
    runtime: R,
    mut reader: BoxReader,
    writer: BoxWriter,
    config: Arc<ServeConfig>,
    handler: Arc<H>,
    shutdown: Shutdown,
    session: AgentSession,
) -> ConnectionSummary {
    let shared = Arc::new(ConnShared {
        session: Mutex::new(session),
        writer_wake: Notify::new(),
        drained: Notify::new(),
        closed: AtomicBool::new(false),
    });
    let writer_done = Arc::new(WriterDone::default());
    runtime.spawn(agent_writer(
        runtime.clone(),
        shared.clone(),
        writer,
        writer_done.clone(),
        config.drain_timeout,
    ));
    shared.writer_wake.notify();
    // If this future is dropped mid-connection (the task aborted, a crash simulation, a
    // `select!` that lost), the spawned writer must not keep the socket open forever.
    let _close_on_drop = CloseOnDrop { shared: &shared };

    let handler: &H = &handler;
    // Keyed by the id the handler future also holds (one allocation per request), usually
    // with one handle, kept inline.
    let mut aborts: HashMap<Arc<str>, AbortHandles> = HashMap::new();
    let mut running = FuturesUnordered::new();
    // Starts a handler. One definition for both places that start one (the read and the
    // backlog), so `running` holds one future type.
    macro_rules! start {
        ($event:ident) => {{
            let id: Arc<str> = Arc::from($event.correlation_id());
            let (abort, registration) = AbortHandle::new_pair();
            aborts.entry(id.clone()).or_default().push(abort);
            running.push(run_handler(handler, $event, id, registration));
        }};
    }
    // With no handler at all, backlogged events would never start.
    let cap = config.max_concurrent_per_connection.max(1);
    // Events received while `cap` handlers run, in arrival order. Invariant between loop
    // turns: non-empty only while `running` is at the cap (refilled at the end of each turn).
    // It may exceed its bound by the events of the read that filled it; no read follows
    // until it is back under.
    let mut backlog: VecDeque<Event> = VecDeque::new();
    // Cancelled requests whose aborted handlers have not been dropped yet: reason and count.
    let mut cancelling: HashMap<String, (CancelReason, usize)> = HashMap::new();
    let mut summary = ConnectionSummary::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut draining_since: Option<Instant> = None;

    loop {
        let (deadline, wants_input) = {
            let s = shared.lock();
            (s.poll_timeout(), s.wants_input())
        };
        let draining = draining_since.is_some();
        // Short-circuits on the usual path (handlers under the cap, backlog unused).
        let can_read = !draining
            && wants_input
            && (running.len() < cap || backlog.len() < config.max_backlog_per_connection);
        // Not reading because the peer does not read its answers (or pongs, a ping burst):
        // nothing else would wake this loop once the writer has drained the buffer.
        let write_blocked = !draining && !wants_input;
        let drain_deadline = draining_since.map(|t| t + config.drain_timeout);
        let deadline = match (deadline.map(to_std), drain_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wake: Wake = {
            let read = async {
                if can_read {
                    Wake::Read(reader.read(&mut buf).await)
                } else if write_blocked {
                    shared.drained.wait().await;
                    Wake::Drained
                } else {
                    std::future::pending().await
                }
            };
            let done = async {
                if running.is_empty() {
                    std::future::pending().await
                } else {
                    Wake::Done(running.next().await)
                }
            };
            let timer = async {
                match deadline {
                    Some(d) => runtime.sleep_until(d).await,
                    None => std::future::pending().await,
                }
                Wake::Timer
            };
            let stop = async {
                if draining {
                    std::future::pending().await
                } else {
                    shutdown.wait().await;
                    Wake::Shutdown
                }
            };
            let writer_gone = async {
                writer_done.wait().await;
                Wake::WriterGone
            };
            futures_lite::future::or(
                done,
                futures_lite::future::or(
                    read,
                    futures_lite::future::or(timer, futures_lite::future::or(stop, writer_gone)),
                ),
            )
            .await
        };
        let now = core_now();
        let mut session = shared.lock();
        match wake {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) | Wake::WriterGone => {
                session.handle_eof(now);
            }
            Wake::Read(Ok(n)) => session.handle_input(now, &buf[..n]),
            Wake::Done(Some((id, Ok(response)))) => {
                remove_abort(&mut aborts, &id);
                if session.respond(&id, response).is_ok() {
                    summary.responses += 1;
                }
            }
            Wake::Done(Some((id, Err(_aborted)))) => {
                // The aborted handler future has been dropped by now: report the cancel.
                if let Some((reason, left)) = cancelling.get_mut(&*id) {
                    *left -= 1;
                    if *left == 0 {
                        let reason = *reason;
                        cancelling.remove(&*id);
                        handler.on_cancel(&id, reason);
                    }
                }
            }
            Wake::Done(None) | Wake::Drained => {}
            Wake::Timer => {
                session.handle_timeout(now);
                if draining_since.is_some_and(|t| Instant::now() >= t + config.drain_timeout) {
                    session.close();
                }
            }
            Wake::Shutdown => {
                draining_since = Some(Instant::now());
                if !session.is_ready() || running.is_empty() {
                    session.close();
                }
            }
        }
        while let Some(event) = session.poll_event() {
            match event {
                AgentEvent::Connected { request, encoding } => {
                    tracing::debug!(proxy = %request.proxy_id, encoding = encoding.as_str(), "proxy connected");
                    handler.on_connect(&request);
                }
                AgentEvent::Request(event) => {
                    if running.len() < cap && backlog.is_empty() {
                        summary.requests += 1;
                        start!(event);
                    } else {
                        // Past the handler cap; started in arrival order as handlers end.
                        backlog.push_back(event);
                    }
                }
                AgentEvent::Cancelled {
                    correlation_id,
                    reason,
                } => {
                    summary.cancelled += 1;
                    // The session has already counted every event of this id out of flight
                    // (no answer is sent for a cancelled request): the backlogged ones are
                    // dropped unstarted. A scan of the backlog per Cancel, only while one exists.
                    if !backlog.is_empty() {
                        backlog.retain(|e| e.correlation_id() != correlation_id);
                    }
                    match aborts.remove(correlation_id.as_str()) {
                        Some(handles) if !handles.is_empty() => {
                            // `on_cancel` runs once the aborted handlers have been dropped.
                            let entry = cancelling.entry(correlation_id).or_insert((reason, 0));
                            entry.1 += handles.len();
                            for h in handles {
                                h.abort();
                            }
                        }
                        _ => handler.on_cancel(&correlation_id, reason),
                    }
                }
                AgentEvent::Undecodable {
                    correlation_id,
                    error,
                } => {
                    summary.undecodable += 1;
                    tracing::warn!(?correlation_id, %error, "undecodable event refused");
                }
                AgentEvent::Closed(reason) => {
                    tracing::debug!(%reason, "proxy connection closed");
                    summary.close_reason = Some(reason);
                }
                _ => {}
            }
        }
        // Handlers that ended (or were aborted) this turn make room for backlogged events,
        // oldest first. While draining they still run: they were received before the
        // shutdown, like the running ones, and the drain timeout bounds them all.
        if !backlog.is_empty() {
            while running.len() < cap
                && !session.is_closed()
                && let Some(event) = backlog.pop_front()
            {
                summary.requests += 1;
                start!(event);
            }
        }
        if draining_since.is_some() && running.is_empty() && !session.is_closed() {
            session.close();
        }
        let closed = session.is_closed();
        drop(session);
        if closed {
            // Dropping the handlers that still run; cancels still waiting for their handler
            // to go are reported now that it has.
            drop(running);
            for (id, (reason, _)) in cancelling {
                handler.on_cancel(&id, reason);
            }
            shared.closed.store(true, Ordering::Release);
            shared.writer_wake.notify();
            return summary;
        }
        shared.writer_wake.notify();
    }
}

/// One handler run, as held by a connection's `running` set: the outcome with its id.
// An `async fn` rather than a closure returning an async block: a closure taking the event
// by value cost one more copy of the (large) event per request, ~110 instructions measured.
async fn run_handler<H: AgentHandler>(
    handler: &H,
    event: Event,
    id: Arc<str>,
    registration: AbortRegistration,
) -> (
    Arc<str>,
    Result<AgentResponse, futures_util::future::Aborted>,
) {
    // The handler future is dropped when `Abortable` completes, before this one yields: an
    // abort is reported only after the drop.
    let outcome = Abortable::new(handler.handle_event(event), registration).await;
    (id, outcome)
}

/// Closes the connection's session and releases its writer when `serve_session` ends in any
/// way, including by being dropped.
struct CloseOnDrop<'a> {
    shared: &'a ConnShared,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if !self.shared.closed.load(Ordering::Acquire) {
            self.shared.lock().close();
            self.shared.closed.store(true, Ordering::Release);
        }
        self.shared.writer_wake.notify();
    }
}

/// The abort handles of the running handlers of one correlation id.
type AbortHandles = smallvec::SmallVec<[AbortHandle; 1]>;

fn remove_abort(aborts: &mut HashMap<Arc<str>, AbortHandles>, id: &str) {
    if let Some(handles) = aborts.get_mut(id) {
        handles.retain(|h| !h.is_aborted());
        handles.pop();
        if handles.is_empty() {
            aborts.remove(id);
        }
    }
}

#[derive(Debug, Default)]
struct WriterDone {
    done: AtomicBool,
    notify: Notify,
}

impl WriterDone {
    async fn wait(&self) {
        while !self.done.load(Ordering::Acquire) {
            self.notify.wait().await;
        }
    }
}

async fn agent_writer<R: Runtime>(
    runtime: R,
    shared: Arc<ConnShared>,
    mut writer: BoxWriter,
    done: Arc<WriterDone>,
    drain: Duration,
) {
    let written = write_until_closed(&mut writer, &shared.writer_wake, &shared.closed, || {
        let bytes = shared.lock().poll_transmit();
        if bytes.is_some() {
            shared.drained.notify();
        }
        bytes
    })
    .await;
    // Answers produced before the close are still delivered (the session keeps its buffer
    // on close), starting with the rest of a frame the close interrupted, within the drain
    // time: a proxy that stopped reading cannot pin the task.
    let flush = async {
        let mut pending = match written {
            Ok(leftover) => leftover.or_else(|| shared.lock().poll_transmit()),
            // The stream is broken: nothing more can be delivered.
            Err(_) => None,
        };
        while let Some(bytes) = pending {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
            pending = shared.lock().poll_transmit();
        }
        let _ = writer.flush().await;
        let _ = writer.close().await;
    };
    let _ = crate::timeout(&runtime, drain, flush).await;
    done.done.store(true, Ordering::Release);
    done.notify.notify();
}

/// Counts live connections against a cap.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    live: AtomicUsize,
}

impl ConnectionCounter {
    /// Takes a slot if fewer than `max` are taken.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<ConnectionSlot> {
        let mut current = self.live.load(Ordering::Relaxed);
        loop {
            if current >= max {
                return None;
            }
            match self.live.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(ConnectionSlot {
                        counter: self.clone(),
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// Live connections.
    #[must_use]
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

/// A taken connection slot, freed on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counter.live.fetch_sub(1, Ordering::AcqRel);
    }
}
