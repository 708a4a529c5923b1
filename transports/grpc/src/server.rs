//! The agent side: [`GrpcAgentServer`], a tonic service that serves any
//! [`AgentHandler`], and [`GrpcServer`], a ready-made listener for it.

use crate::mapping::{self, CapabilityExtras, HealthReporting};
use crate::pb::agent_control::Message as ControlIn;
use crate::pb::agent_service_v2_server::{AgentServiceV2, AgentServiceV2Server};
use crate::pb::agent_to_proxy::Message as AgentMessage;
use crate::pb::proxy_control::Message as ControlOut;
use crate::pb::proxy_to_agent::Message as ProxyMessage;
use crate::tls::ServerTls;
use crate::{DEFAULT_MAX_MESSAGE_SIZE, Keepalive, pb, time};
use agentwire_core::message::{
    AgentResponse, Capabilities, Decision, Event, FlowAction, FlowControlSignal, PROTOCOL_VERSION,
};
pub use agentwire_runtime::server::{AgentHandler, Shutdown};
use futures_util::StreamExt;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use prost::Message as _;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Settings of the agent side.
#[derive(Clone, Debug)]
pub struct GrpcServerConfig {
    /// What the agent declares in the handshake. `limits.max_concurrency` is also where
    /// automatic flow control pauses the proxy.
    pub capabilities: Capabilities,
    /// Capability data beyond the core type: memory and time limits and the health
    /// reporting config (which also paces the ControlStream heartbeat).
    pub extras: CapabilityExtras,
    /// Handlers run concurrently per stream; beyond this the stream stops reading (HTTP/2
    /// flow control then holds the proxy back).
    pub max_concurrent_per_stream: usize,
    /// Send FlowControl pause at `limits.max_concurrency` handlers in flight on a stream,
    /// resume at half of it.
    pub auto_flow_control: bool,
    /// A stream must handshake within this time.
    pub handshake_timeout: Duration,
    /// How long a shutting-down stream may take to finish its in-flight handlers.
    pub drain_timeout: Duration,
    /// A proxy that does not take an answer within this time is disconnected.
    pub write_timeout: Duration,
    /// Largest protobuf message accepted or sent (default 4 MiB). An answer that would be
    /// larger is replaced by a Block (fail closed) with reason code
    /// `agentwire.response_too_large`.
    pub max_message_size: usize,
    /// Status of the Block sent in place of an answer that cannot be sent.
    pub fail_closed_status: u16,
    /// Capacity of each stream's outgoing queue.
    pub channel_capacity: usize,
    /// HTTP/2 and TCP keepalive ([`GrpcServer`] only).
    pub keepalive: Keepalive,
    /// TLS ([`GrpcServer`] only); `None` serves h2c.
    pub tls: Option<ServerTls>,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        GrpcServerConfig {
            capabilities: Capabilities::default(),
            extras: CapabilityExtras::default(),
            max_concurrent_per_stream: 256,
            auto_flow_control: true,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            fail_closed_status: 500,
            channel_capacity: 64,
            keepalive: Keepalive::default(),
            tls: None,
        }
    }
}

/// The reason code of the Block sent in place of an answer larger than the message limit.
pub const RESPONSE_TOO_LARGE: &str = "agentwire.response_too_large";

/// A tonic `AgentServiceV2` that dispatches every event to an [`AgentHandler`] — the same
/// trait the UDS server uses, so one handler serves both transports.
///
/// Per `ProcessStream`: the handshake is answered first (events before it end the stream
/// with `FAILED_PRECONDITION` instead of being dropped, B20; a refused handshake ends it
/// too); events run concurrently (bounded); `ping` is answered with `pong`; `cancel` aborts
/// the handler's future; guardrail inspections and WebSocket frames are answered (B2); a
/// configuration is applied before any later message is read, accepted silently or — when
/// the handler does not Allow it — rejected by ending the stream (§10.4).
///
/// Unary `ProcessEvent` needs no handshake and answers a handshake, a ping and every event
/// (a configure with the handler's verdict as the response; the reference answers only
/// handshake, request headers and ping); a cancel or an empty message is
/// `INVALID_ARGUMENT`. `ControlStream` behaves as the reference's (§10.6).
pub struct GrpcAgentServer<H> {
    handler: Arc<H>,
    config: Arc<GrpcServerConfig>,
    shutdown: Shutdown,
}

impl<H> Clone for GrpcAgentServer<H> {
    fn clone(&self) -> Self {
        GrpcAgentServer {
            handler: self.handler.clone(),
            config: self.config.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<H> fmt::Debug for GrpcAgentServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcAgentServer")
            .field("agent_id", &self.config.capabilities.agent_id)
            .finish_non_exhaustive()
    }
}

impl<H: AgentHandler> GrpcAgentServer<H> {
    /// A service for `handler`; its streams drain when `shutdown` is raised.
    #[must_use]
    pub fn new(handler: Arc<H>, config: GrpcServerConfig, shutdown: Shutdown) -> Self {
        GrpcAgentServer {
            handler,
            config: Arc::new(config),
            shutdown,
        }
    }

    /// The tonic service with the configured message limits, to add to a tonic `Server`
    /// of your own.
    #[must_use]
    pub fn into_service(self) -> AgentServiceV2Server<Self> {
        let limit = self.config.max_message_size;
        AgentServiceV2Server::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn handshake_answer(&self, request: &pb::HandshakeRequest) -> pb::HandshakeResponse {
        let caps = |version| {
            Some(mapping::capabilities_to_pb(
                &self.config.capabilities,
                version,
                &self.config.extras,
            ))
        };
        if !request.supported_versions.contains(&PROTOCOL_VERSION) {
            return pb::HandshakeResponse {
                protocol_version: 0,
                capabilities: caps(0),
                success: false,
                error: Some(format!(
                    "no supported protocol version in {:?} (this agent speaks {PROTOCOL_VERSION})",
                    request.supported_versions
                )),
            };
        }
        pb::HandshakeResponse {
            protocol_version: PROTOCOL_VERSION,
            capabilities: caps(PROTOCOL_VERSION),
            success: true,
            error: None,
        }
    }
}

type OutStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<H: AgentHandler> AgentServiceV2 for GrpcAgentServer<H> {
    type ProcessStreamStream = OutStream<pb::AgentToProxy>;

    async fn process_stream(
        &self,
        request: Request<Streaming<pb::ProxyToAgent>>,
    ) -> Result<Response<Self::ProcessStreamStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.config.channel_capacity.max(1));
        tokio::spawn(drive_stream(self.clone(), inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ControlStreamStream = OutStream<pb::ProxyControl>;

    async fn control_stream(
        &self,
        request: Request<Streaming<pb::AgentControl>>,
    ) -> Result<Response<Self::ControlStreamStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.config.channel_capacity.max(1));
        tokio::spawn(drive_control(self.clone(), inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn process_event(
        &self,
        request: Request<pb::ProxyToAgent>,
    ) -> Result<Response<pb::AgentToProxy>, Status> {
        let message = match request.into_inner().message {
            Some(ProxyMessage::Handshake(h)) => AgentMessage::Handshake(self.handshake_answer(&h)),
            Some(ProxyMessage::Ping(p)) => AgentMessage::Pong(pong_for(&p)),
            Some(ProxyMessage::Cancel(_)) | None => {
                return Err(Status::invalid_argument("Unsupported event type"));
            }
            Some(other) => {
                let event = mapping::event_from_pb(other)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let id = event.correlation_id().to_owned();
                let started = Instant::now();
                let response = self.handler.handle_event(event).await;
                AgentMessage::Response(self.answer(id, response, started))
            }
        };
        Ok(Response::new(pb::AgentToProxy {
            message: Some(message),
        }))
    }
}

fn pong_for(p: &pb::Ping) -> pb::Pong {
    pb::Pong {
        sequence: p.sequence,
        ping_timestamp_ms: p.timestamp_ms,
        timestamp_ms: time::now_ms(),
    }
}

impl<H: AgentHandler> GrpcAgentServer<H> {
    /// The wire answer, or a fail-closed Block when it would exceed the message limit.
    fn answer(&self, id: String, response: AgentResponse, started: Instant) -> pb::AgentResponse {
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let answer = mapping::response_to_pb(id.clone(), response, Some(elapsed));
        // Envelope overhead: tag + length varint of the oneof field.
        if answer.encoded_len() + 16 <= self.config.max_message_size {
            return answer;
        }
        tracing::warn!(correlation_id = %id, "answer exceeds the message limit; blocking instead");
        let mut block = AgentResponse::block(self.config.fail_closed_status);
        block.audit.reason_codes.push(RESPONSE_TOO_LARGE.into());
        mapping::response_to_pb(id, block, Some(elapsed))
    }
}

enum Outcome {
    /// An event's answer.
    Answer(String, AgentResponse, Instant),
    /// A configuration's verdict.
    Configured(AgentResponse),
}

/// Sends on the stream; `false` when the proxy is gone or does not read within the write
/// timeout (the stream must end).
async fn send_out<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    item: Result<T, Status>,
    limit: Duration,
) -> bool {
    matches!(tokio::time::timeout(limit, tx.send(item)).await, Ok(Ok(())))
}

fn event_kind(m: &ProxyMessage) -> &'static str {
    match m {
        ProxyMessage::Handshake(_) => "handshake",
        ProxyMessage::RequestHeaders(_) => "request_headers",
        ProxyMessage::RequestBodyChunk(_) => "request_body_chunk",
        ProxyMessage::ResponseHeaders(_) => "response_headers",
        ProxyMessage::ResponseBodyChunk(_) => "response_body_chunk",
        ProxyMessage::WebsocketFrame(_) => "websocket_frame",
        ProxyMessage::Guardrail(_) => "guardrail",
        ProxyMessage::RequestComplete(_) => "request_complete",
        ProxyMessage::Cancel(_) => "cancel",
        ProxyMessage::Configure(_) => "configure",
        ProxyMessage::Ping(_) => "ping",
    }
}

/// Serves one `ProcessStream` until the proxy ends it, the agent shuts down, or a protocol
/// violation ends it with an error status.
async fn drive_stream<H: AgentHandler>(
    server: GrpcAgentServer<H>,
    mut inbound: Streaming<pb::ProxyToAgent>,
    tx: mpsc::Sender<Result<pb::AgentToProxy, Status>>,
) {
    let config = server.config.clone();
    let handler: &H = &server.handler;
    let write_timeout = config.write_timeout;
    let send = |message: AgentMessage| {
        let tx = &tx;
        async move {
            send_out(
                tx,
                Ok(pb::AgentToProxy {
                    message: Some(message),
                }),
                write_timeout,
            )
            .await
        }
    };
    let fail = |status: Status| {
        let tx = &tx;
        async move {
            let _ = send_out(tx, Err(status), write_timeout).await;
        }
    };

    let mut running = FuturesUnordered::new();
    let mut aborts: HashMap<String, Vec<AbortHandle>> = HashMap::new();
    let mut handshaken = false;
    let handshake_deadline = Instant::now() + config.handshake_timeout;
    let mut configuring = false;
    let mut inbound_done = false;
    let mut draining_until: Option<Instant> = None;
    let mut paused = false;
    let pause_at = match config.capabilities.limits.max_concurrency as usize {
        0 => usize::MAX,
        n => n,
    };

    let abort_all = |aborts: &mut HashMap<String, Vec<AbortHandle>>| {
        for h in aborts.drain().flat_map(|(_, v)| v) {
            h.abort();
        }
    };

    loop {
        if (inbound_done || draining_until.is_some()) && running.is_empty() {
            if draining_until.is_some() && !inbound_done {
                fail(Status::unavailable("agent shutting down")).await;
            }
            return;
        }
        let can_read = !inbound_done
            && draining_until.is_none()
            && !configuring
            && running.len() < config.max_concurrent_per_stream;
        let drain_deadline =
            draining_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            () = tx.closed() => {
                abort_all(&mut aborts);
                return;
            }
            Some(done) = running.next(), if !running.is_empty() => {
                let Ok(outcome) = done else { continue };
                match outcome {
                    Outcome::Answer(id, response, started) => {
                        remove_abort(&mut aborts, &id);
                        let answer = server.answer(id, response, started);
                        if !send(AgentMessage::Response(answer)).await {
                            abort_all(&mut aborts);
                            return;
                        }
                    }
                    Outcome::Configured(verdict) => {
                        configuring = false;
                        if !matches!(verdict.decision, Decision::Allow) {
                            abort_all(&mut aborts);
                            fail(Status::failed_precondition("configuration rejected")).await;
                            return;
                        }
                    }
                }
                if paused && running.len() <= pause_at / 2 {
                    paused = false;
                    if !send(flow(FlowAction::Resume)).await {
                        abort_all(&mut aborts);
                        return;
                    }
                }
            }
            next = inbound.message(), if can_read => {
                let message = match next {
                    Ok(Some(pb::ProxyToAgent { message: Some(m) })) => m,
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        inbound_done = true;
                        continue;
                    }
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), message = status.message(), "proxy stream failed");
                        abort_all(&mut aborts);
                        return;
                    }
                };
                if !handshaken {
                    let ProxyMessage::Handshake(h) = message else {
                        // B20: refuse instead of dropping silently.
                        fail(Status::failed_precondition(format!(
                            "{} before handshake: the first message must be a handshake",
                            event_kind(&message)
                        )))
                        .await;
                        return;
                    };
                    let answer = server.handshake_answer(&h);
                    let accepted = answer.success;
                    let error = answer.error.clone();
                    let request = match mapping::handshake_request_from_pb(h) {
                        Ok(r) => Some(r),
                        Err(_) if !accepted => None,
                        Err(e) => {
                            let refusal = pb::HandshakeResponse {
                                success: false,
                                protocol_version: 0,
                                error: Some(e.to_string()),
                                ..answer
                            };
                            let _ = send(AgentMessage::Handshake(refusal)).await;
                            fail(Status::invalid_argument(e.to_string())).await;
                            return;
                        }
                    };
                    if !send(AgentMessage::Handshake(answer)).await {
                        return;
                    }
                    if !accepted {
                        fail(Status::failed_precondition(format!(
                            "handshake rejected: {}",
                            error.unwrap_or_default()
                        )))
                        .await;
                        return;
                    }
                    handshaken = true;
                    if let Some(request) = request {
                        handler.on_connect(&request);
                    }
                    continue;
                }
                match message {
                    ProxyMessage::Handshake(_) => {
                        abort_all(&mut aborts);
                        fail(Status::failed_precondition("handshake already completed")).await;
                        return;
                    }
                    ProxyMessage::Ping(p) => {
                        if !send(AgentMessage::Pong(pong_for(&p))).await {
                            abort_all(&mut aborts);
                            return;
                        }
                    }
                    ProxyMessage::Cancel(c) => {
                        if let Some(handles) = aborts.remove(&c.correlation_id) {
                            for h in handles {
                                h.abort();
                            }
                        }
                        handler.on_cancel(&c.correlation_id, mapping::cancel_reason_from_pb(c.reason));
                    }
                    other => {
                        let event = match mapping::event_from_pb(other) {
                            Ok(e) => e,
                            Err(e) => {
                                // Only a configure with invalid JSON gets here: reject it the
                                // way the reference does, by ending the stream.
                                abort_all(&mut aborts);
                                fail(Status::invalid_argument(e.to_string())).await;
                                return;
                            }
                        };
                        let id = event.correlation_id().to_owned();
                        let (abort, registration) = AbortHandle::new_pair();
                        if let Event::Configure(c) = event {
                            configuring = true;
                            running.push(Abortable::new(
                                futures_util::future::Either::Left(async move {
                                    Outcome::Configured(handler.on_configure(c).await)
                                }),
                                registration,
                            ));
                            // A configure cannot be cancelled by id (it has none on gRPC).
                            drop(abort);
                        } else {
                            aborts.entry(id.clone()).or_default().push(abort);
                            let started = Instant::now();
                            running.push(Abortable::new(
                                futures_util::future::Either::Right(async move {
                                    let response = handler.handle_event(event).await;
                                    Outcome::Answer(id, response, started)
                                }),
                                registration,
                            ));
                        }
                        if config.auto_flow_control && !paused && running.len() >= pause_at {
                            paused = true;
                            if !send(flow(FlowAction::Pause)).await {
                                abort_all(&mut aborts);
                                return;
                            }
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(handshake_deadline), if !handshaken => {
                fail(Status::deadline_exceeded("no handshake in time")).await;
                return;
            }
            () = server.shutdown.wait(), if draining_until.is_none() => {
                draining_until = Some(Instant::now() + config.drain_timeout);
            }
            () = tokio::time::sleep_until(drain_deadline), if draining_until.is_some() => {
                abort_all(&mut aborts);
                fail(Status::unavailable("agent shutting down")).await;
                return;
            }
        }
    }
}

fn flow(action: FlowAction) -> AgentMessage {
    AgentMessage::FlowControl(mapping::flow_control_to_pb(&FlowControlSignal {
        correlation_id: None,
        action,
        timestamp_ms: time::now_ms(),
    }))
}

fn remove_abort(aborts: &mut HashMap<String, Vec<AbortHandle>>, id: &str) {
    if let Some(handles) = aborts.get_mut(id) {
        handles.retain(|h| !h.is_aborted());
        handles.pop();
        if handles.is_empty() {
            aborts.remove(id);
        }
    }
}

/// The shortest heartbeat period accepted (a tiny configured interval would flood).
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// ControlStream (§10.6), roles as the reference implements them: the agent receives
/// `AgentControl` (health, metrics and logs are logged; a config update is answered
/// accepted) and sends a `ProxyControl.configure{"{}"}` heartbeat at once and then every
/// `health.report_interval_ms`, when that interval is non-zero or metrics export is on —
/// with a zero interval the default 10 s is used instead of the reference's panic (B17).
async fn drive_control<H: AgentHandler>(
    server: GrpcAgentServer<H>,
    mut inbound: Streaming<pb::AgentControl>,
    tx: mpsc::Sender<Result<pb::ProxyControl, Status>>,
) {
    let config = &server.config;
    let health = config.extras.health.clone().unwrap_or_default();
    let period = match health.report_interval_ms {
        0 if config.capabilities.features.metrics_export => Some(Duration::from_millis(u64::from(
            HealthReporting::default().report_interval_ms,
        ))),
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms)).max(MIN_HEARTBEAT)),
    };
    let write_timeout = config.write_timeout;
    let heartbeat = || pb::ProxyControl {
        message: Some(ControlOut::Configure(pb::ConfigureEvent {
            config_json: "{}".into(),
            config_version: None,
            is_initial: false,
            timestamp_ms: time::now_ms(),
        })),
    };
    let mut ticker = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => return,
            () = server.shutdown.wait() => {
                let _ = send_out(&tx, Err(Status::unavailable("agent shutting down")), write_timeout).await;
                return;
            }
            _ = async {
                match ticker.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => {
                // A heartbeat the proxy has no room for is skipped, not queued.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(heartbeat())) {
                    return;
                }
            }
            next = inbound.message() => {
                let message = match next {
                    Ok(Some(pb::AgentControl { message: Some(m) })) => m,
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                };
                match message {
                    ControlIn::ConfigUpdate(c) => {
                        let answer = pb::ProxyControl {
                            message: Some(ControlOut::ConfigResponse(pb::ConfigUpdateResponse {
                                request_id: c.request_id,
                                accepted: true,
                                error: None,
                                timestamp_ms: time::now_ms(),
                            })),
                        };
                        if !send_out(&tx, Ok(answer), write_timeout).await {
                            return;
                        }
                    }
                    ControlIn::Health(h) => tracing::debug!(agent = %h.agent_id, state = h.state, "control stream health"),
                    ControlIn::Metrics(m) => tracing::debug!(agent = %m.agent_id, "control stream metrics"),
                    ControlIn::Log(l) => tracing::debug!(level = l.level, "control stream log: {}", l.message),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Listener

/// Why [`GrpcServer`] could not start or stopped.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding or accepting failed.
    Io(io::Error),
    /// tonic refused the configuration (e.g. an unusable certificate or key) or the server
    /// failed.
    Transport(tonic::transport::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Io(e) => write!(f, "gRPC listener: {e}"),
            ServeError::Transport(e) => write!(f, "gRPC server: {e}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Io(e) => Some(e),
            ServeError::Transport(e) => Some(e),
        }
    }
}

/// A bound gRPC agent listener (h2c, or TLS / mTLS per [`GrpcServerConfig::tls`]).
pub struct GrpcServer<H> {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    handler: Arc<H>,
    config: GrpcServerConfig,
}

impl<H> fmt::Debug for GrpcServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcServer")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.config.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl<H: AgentHandler> GrpcServer<H> {
    /// Binds `addr` (port 0 picks a free port; see [`GrpcServer::local_addr`]).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        handler: Arc<H>,
        config: GrpcServerConfig,
    ) -> Result<Self, ServeError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(ServeError::Io)?;
        let local_addr = listener.local_addr().map_err(ServeError::Io)?;
        Ok(GrpcServer {
            listener,
            local_addr,
            handler,
            config,
        })
    }

    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is raised: then stops accepting, lets streams finish their
    /// in-flight handlers within the drain timeout, ends them and returns (at most a second
    /// after the drain timeout, whatever the peers do).
    ///
    /// # Errors
    /// The TLS configuration is unusable, or the server failed.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let config = self.config;
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .tcp_keepalive(config.keepalive.tcp)
            .http2_keepalive_interval(config.keepalive.interval)
            .http2_keepalive_timeout(Some(config.keepalive.timeout));
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.to_tonic())
                .map_err(ServeError::Transport)?;
        }
        let drain = config.drain_timeout;
        let incoming = tonic::transport::server::TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(config.keepalive.tcp);
        let service = GrpcAgentServer::new(self.handler, config, shutdown.clone()).into_service();
        let signal = shutdown.clone();
        let serve = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { signal.wait().await });
        tokio::select! {
            result = serve => result.map_err(ServeError::Transport),
            () = async {
                shutdown.wait().await;
                tokio::time::sleep(drain + Duration::from_secs(1)).await;
            } => Ok(()),
        }
    }
}
