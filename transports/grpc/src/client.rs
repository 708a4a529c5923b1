//! The proxy side: [`GrpcAgentClient`], one `ProcessStream` per connection carrying many
//! requests multiplexed by correlation id.

use crate::endpoint::GrpcEndpoint;
use crate::mapping::{self, CapabilityExtras};
use crate::pb::agent_service_v2_client::AgentServiceV2Client;
use crate::pb::agent_to_proxy::Message as AgentMessage;
use crate::pb::proxy_to_agent::Message as ProxyMessage;
use crate::tls::ClientTls;
use crate::{DEFAULT_MAX_MESSAGE_SIZE, Keepalive, pb, time};
use agentwire_core::encoding::EncodeError;
use agentwire_core::frame::FrameError;
use agentwire_core::message::{
    AgentResponse, AnyValue, BodyChunk, Cancel, CancelReason, Capabilities, Configure, Event,
    FlowAction, GuardrailInspect, HandshakeRequest, PROTOCOL_VERSION, Ping, RequestComplete,
    RequestHeaders, ResponseHeaders, WebSocketFrame,
};
use agentwire_core::session::{CloseReason, SendError};
use agentwire_core::sync::{AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering};
pub use agentwire_runtime::client::{AgentNotice, ClientError, NoticeCallback};
use futures_util::StreamExt;
use prost::Message as _;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Settings of a [`GrpcAgentClient`].
#[derive(Clone, Debug)]
pub struct GrpcClientConfig {
    /// `proxy_id` sent in the handshake.
    pub proxy_id: String,
    /// `proxy_version` sent in the handshake.
    pub proxy_version: String,
    /// The agent's configuration: sent as `config_json` in the handshake and delivered with a
    /// `configure` + `ping` right after it (§10.4).
    pub agent_config: Option<AnyValue>,
    /// Bound on channel connect (TCP, TLS, HTTP/2) **plus** the handshake answer.
    pub connect_timeout: Duration,
    /// Bound on the configuration's acknowledgement; `None` is the reference's
    /// `max(request_timeout, 5 s)`.
    pub configure_timeout: Option<Duration>,
    /// Default deadline of an event (enqueueing included).
    pub request_timeout: Duration,
    /// Most events awaiting an answer (further capped by the agent's `max_concurrency`).
    pub max_in_flight: usize,
    /// Largest protobuf message sent or accepted (default 4 MiB, tonic's and the
    /// reference's limit). A larger outgoing event is refused locally with a typed error and
    /// the connection stays up.
    pub max_message_size: usize,
    /// Send a Cancel (reason timeout) when an event times out (the reference sends none).
    pub cancel_on_timeout: bool,
    /// Capacity of the outgoing message queue.
    pub channel_capacity: usize,
    /// Most pings awaiting their pong.
    pub max_outstanding_pings: usize,
    /// HTTP/2 and TCP keepalive.
    pub keepalive: Keepalive,
    /// TLS settings, required for `https://` endpoints.
    pub tls: Option<ClientTls>,
}

impl Default for GrpcClientConfig {
    fn default() -> Self {
        GrpcClientConfig {
            proxy_id: "agentwire-proxy".into(),
            proxy_version: env!("CARGO_PKG_VERSION").into(),
            agent_config: None,
            connect_timeout: Duration::from_secs(5),
            configure_timeout: None,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 1024,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            cancel_on_timeout: true,
            channel_capacity: 64,
            max_outstanding_pings: 16,
            keepalive: Keepalive::default(),
            tls: None,
        }
    }
}

/// What the handshake established.
#[derive(Clone, Debug)]
pub struct GrpcConnectionInfo {
    /// The agent's capabilities.
    pub capabilities: Capabilities,
    /// The version the agent announced (always 2 on an accepted connection).
    pub protocol_version: u32,
    /// Capability data the core type has no field for (health config, memory and time
    /// limits).
    pub extras: CapabilityExtras,
}

type Reply = Result<AgentResponse, ClientError>;

struct State {
    waiters: HashMap<String, oneshot::Sender<Reply>>,
    pings: HashMap<u64, (oneshot::Sender<Duration>, Instant)>,
    paused: bool,
    in_flight_limit: usize,
    close_reason: Option<CloseReason>,
    close_status: Option<tonic::Status>,
}

struct Shared {
    state: Mutex<State>,
    tx: mpsc::Sender<pb::ProxyToAgent>,
    /// Cancelled once the connection is over (stream ended or closed locally).
    closed: CancellationToken,
    is_closed: AtomicBool,
    info: GrpcConnectionInfo,
    notices: Option<NoticeCallback>,
    config: GrpcClientConfig,
    next_ping: AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the connection: every waiter fails at once with `ConnectionClosed(reason)`.
    fn finish(&self, reason: CloseReason, status: Option<tonic::Status>) {
        let waiters = {
            let mut s = self.lock();
            if s.close_reason.is_some() {
                return;
            }
            s.close_reason = Some(reason.clone());
            s.close_status = status;
            s.pings.clear();
            std::mem::take(&mut s.waiters)
        };
        self.is_closed.store(true, Ordering::Release);
        self.closed.cancel();
        tracing::debug!(%reason, "gRPC agent connection closed");
        for (_, tx) in waiters {
            let _ = tx.send(Err(ClientError::ConnectionClosed(Some(reason.clone()))));
        }
    }

    fn close_reason(&self) -> Option<CloseReason> {
        self.lock().close_reason.clone()
    }

    /// Queues a message without waiting; a full queue hands it to a task bounded by the
    /// request timeout (cancels must not be lost, nor block a synchronous caller).
    fn send_detached(&self, message: ProxyMessage) {
        let message = pb::ProxyToAgent {
            message: Some(message),
        };
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                let tx = self.tx.clone();
                let closed = self.closed.clone();
                let limit = self.config.request_timeout;
                self.runtime.spawn(async move {
                    tokio::select! {
                        _ = tx.send(message) => {}
                        () = closed.cancelled() => {}
                        () = tokio::time::sleep(limit) => {}
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn deliver(&self, notice: AgentNotice) {
        if let Some(cb) = &self.notices {
            cb(notice);
        }
    }

    /// Handles one message from the agent.
    fn dispatch(&self, message: AgentMessage) {
        match message {
            AgentMessage::Response(r) => {
                let (id, mut response, _processing_time) = mapping::response_from_pb(r);
                if response.correlation_id().is_none() {
                    // Same shape as UDS answers, so callers can route by it either way.
                    response.set_correlation_id(&id);
                }
                let waiter = self.lock().waiters.remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(Ok(response));
                    }
                    None => tracing::debug!(correlation_id = %id, "answer for no waiting request"),
                }
            }
            AgentMessage::Pong(p) => {
                let waiter = self.lock().pings.remove(&p.sequence);
                if let Some((tx, sent)) = waiter {
                    let _ = tx.send(sent.elapsed());
                }
            }
            AgentMessage::FlowControl(f) => {
                let signal = mapping::flow_control_from_pb(f);
                {
                    let mut s = self.lock();
                    match signal.action {
                        FlowAction::Pause => s.paused = true,
                        FlowAction::Resume => s.paused = false,
                        FlowAction::UpdateCapacity { buffer_available } => {
                            let available = usize::try_from(buffer_available).unwrap_or(usize::MAX);
                            s.in_flight_limit = self
                                .config
                                .max_in_flight
                                .min(s.waiters.len().saturating_add(available));
                        }
                        FlowAction::Unspecified => {}
                    }
                }
                self.deliver(AgentNotice::FlowControl(signal));
            }
            AgentMessage::Health(h) => {
                self.deliver(AgentNotice::Health(mapping::health_from_pb(h)))
            }
            AgentMessage::Metrics(m) => {
                self.deliver(AgentNotice::Metrics(mapping::metrics_from_pb(m)));
            }
            AgentMessage::ConfigUpdate(c) => {
                self.deliver(AgentNotice::ConfigUpdate(mapping::config_update_from_pb(c)));
            }
            AgentMessage::Log(l) => log_agent_message(&self.info.capabilities.agent_id, &l),
            AgentMessage::Handshake(_) => {
                tracing::debug!("handshake answer after the handshake ignored");
            }
        }
    }
}

fn log_agent_message(agent_id: &str, l: &pb::LogMessage) {
    let id = l.correlation_id.as_deref().unwrap_or("");
    match l.level {
        4 => {
            tracing::error!(agent = agent_id, correlation_id = id, fields = ?l.fields, "{}", l.message)
        }
        3 => {
            tracing::warn!(agent = agent_id, correlation_id = id, fields = ?l.fields, "{}", l.message)
        }
        2 => {
            tracing::info!(agent = agent_id, correlation_id = id, fields = ?l.fields, "{}", l.message)
        }
        _ => {
            tracing::debug!(agent = agent_id, correlation_id = id, fields = ?l.fields, "{}", l.message)
        }
    }
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The last user handle is gone: nobody can await an answer any more.
        self.shared.finish(CloseReason::Local, None);
    }
}

/// The proxy side of one gRPC agent connection: its own HTTP/2 connection carrying one
/// long-lived `ProcessStream`, many concurrent requests matched by correlation id.
///
/// The API mirrors [`agentwire_runtime::client::AgentClient`] (same method names, same
/// [`ClientError`]) so a pool can treat both transports alike. Clones share the connection;
/// it closes when the last clone is dropped.
#[derive(Clone)]
pub struct GrpcAgentClient {
    handle: Arc<Handle>,
}

impl fmt::Debug for GrpcAgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcAgentClient")
            .field("agent_id", &self.agent_id())
            .field("connected", &self.is_connected())
            .finish()
    }
}

fn connect_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ClientError {
    ClientError::Connect(io::Error::other(e))
}

fn too_large(len: usize, max: usize) -> ClientError {
    ClientError::Protocol(SendError::Encode(EncodeError::Frame(
        FrameError::FrameTooLarge {
            len: len as u64,
            max: u32::try_from(max).unwrap_or(u32::MAX),
        },
    )))
}

impl GrpcAgentClient {
    /// Connects to `endpoint` (`http://host:port`, `https://host:port` or `host:port`, see
    /// [`GrpcEndpoint`]), opens the stream and completes the handshake within
    /// `config.connect_timeout`, then delivers the configuration if there is one.
    ///
    /// # Errors
    /// [`ClientError::Connect`] (bad endpoint, refused, TLS failure, no such service),
    /// [`ClientError::ConnectTimeout`], [`ClientError::Handshake`].
    pub async fn connect(
        endpoint: &str,
        config: GrpcClientConfig,
    ) -> Result<GrpcAgentClient, ClientError> {
        GrpcAgentClient::connect_with_notices(endpoint, config, None).await
    }

    /// [`GrpcAgentClient::connect`] with a callback for health, metrics, config-update and
    /// flow-control messages (called from the connection's reader task: keep it short).
    ///
    /// # Errors
    /// As [`GrpcAgentClient::connect`].
    pub async fn connect_with_notices(
        endpoint: &str,
        config: GrpcClientConfig,
        notices: Option<NoticeCallback>,
    ) -> Result<GrpcAgentClient, ClientError> {
        let endpoint = GrpcEndpoint::parse(endpoint)
            .map_err(|e| ClientError::Connect(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let started = Instant::now();
        let deadline = started + config.connect_timeout;
        let mut ep = Endpoint::from(endpoint.uri().clone())
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(config.keepalive.tcp);
        if let Some(interval) = config.keepalive.interval {
            ep = ep
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(config.keepalive.timeout)
                .keep_alive_while_idle(config.keepalive.while_idle);
        }
        if endpoint.is_tls() {
            let tls = config.tls.as_ref().ok_or_else(|| {
                ClientError::Connect(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "https endpoint without TLS settings (GrpcClientConfig::tls)",
                ))
            })?;
            ep = ep.tls_config(tls.to_tonic()).map_err(connect_error)?;
        } else if config.tls.is_some() {
            return Err(ClientError::Connect(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS settings given for a cleartext (http://) endpoint",
            )));
        }
        let channel = tokio::time::timeout_at(deadline, ep.connect())
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
            .map_err(connect_error)?;
        GrpcAgentClient::over_channel_until(channel, config, notices, deadline).await
    }

    /// Opens the stream and handshakes over an already connected channel (custom
    /// connectors, in-process transports), within `config.connect_timeout`.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::connect`].
    pub async fn over_channel(
        channel: Channel,
        config: GrpcClientConfig,
        notices: Option<NoticeCallback>,
    ) -> Result<GrpcAgentClient, ClientError> {
        let deadline = Instant::now() + config.connect_timeout;
        GrpcAgentClient::over_channel_until(channel, config, notices, deadline).await
    }

    async fn over_channel_until(
        channel: Channel,
        config: GrpcClientConfig,
        notices: Option<NoticeCallback>,
        deadline: Instant,
    ) -> Result<GrpcAgentClient, ClientError> {
        let mut grpc = AgentServiceV2Client::new(channel)
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size);
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let closed = CancellationToken::new();
        let handshake = HandshakeRequest {
            supported_versions: vec![PROTOCOL_VERSION],
            proxy_id: config.proxy_id.clone(),
            proxy_version: config.proxy_version.clone(),
            config: config.agent_config.clone().unwrap_or_default(),
            ..HandshakeRequest::default()
        };
        tx.try_send(pb::ProxyToAgent {
            message: Some(ProxyMessage::Handshake(mapping::handshake_request_to_pb(
                &handshake,
            ))),
        })
        .map_err(|_| ClientError::ConnectionClosed(None))?;
        // The request stream ends when the connection is closed locally, so the agent sees
        // the end of its input even while clones of the sender are still alive.
        let outbound = ReceiverStream::new(rx).take_until(closed.clone().cancelled_owned());

        let opened = tokio::time::timeout_at(deadline, grpc.process_stream(outbound))
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
            .map_err(connect_error)?;
        let mut inbound = opened.into_inner();
        let first = tokio::time::timeout_at(deadline, inbound.message())
            .await
            .map_err(|_| ClientError::ConnectTimeout)?;
        let answer = match first {
            Ok(Some(pb::AgentToProxy {
                message: Some(AgentMessage::Handshake(h)),
            })) => h,
            Ok(Some(_)) => {
                return Err(ClientError::Handshake(CloseReason::UnexpectedMessage(
                    agentwire_core::frame::MessageType::AgentResponse,
                )));
            }
            Ok(None) => return Err(ClientError::Handshake(CloseReason::PeerClosed)),
            Err(status) => {
                return Err(ClientError::Handshake(CloseReason::HandshakeRejected {
                    error: Some(format!("{:?}: {}", status.code(), status.message())),
                }));
            }
        };
        if !answer.success {
            return Err(ClientError::Handshake(CloseReason::HandshakeRejected {
                error: answer.error,
            }));
        }
        if answer.protocol_version != PROTOCOL_VERSION {
            return Err(ClientError::Handshake(CloseReason::UnsupportedVersion));
        }
        let (capabilities, extras) =
            mapping::capabilities_from_pb(answer.capabilities.unwrap_or_default());
        let declared = capabilities.limits.max_concurrency as usize;
        let in_flight_limit = if declared == 0 {
            config.max_in_flight
        } else {
            config.max_in_flight.min(declared)
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiters: HashMap::new(),
                pings: HashMap::new(),
                paused: false,
                in_flight_limit,
                close_reason: None,
                close_status: None,
            }),
            tx,
            closed,
            is_closed: AtomicBool::new(false),
            info: GrpcConnectionInfo {
                capabilities,
                protocol_version: answer.protocol_version,
                extras,
            },
            notices,
            next_ping: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            config,
        });
        tokio::spawn(reader(
            Arc::downgrade(&shared),
            shared.closed.clone(),
            inbound,
        ));
        let client = GrpcAgentClient {
            handle: Arc::new(Handle { shared }),
        };
        if let Some(agent_config) = client.shared().config.agent_config.clone() {
            let limit = client.configure_timeout();
            let configure = Configure {
                config: agent_config,
                ..Configure::default()
            };
            match client.configure_and_confirm(configure, true, limit).await {
                Ok(()) => {}
                Err(ClientError::Timeout) => return Err(ClientError::ConnectTimeout),
                Err(ClientError::ConnectionClosed(_)) => {
                    return Err(ClientError::Handshake(CloseReason::ConfigurationRejected));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(client)
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn configure_timeout(&self) -> Duration {
        let c = &self.shared().config;
        c.configure_timeout
            .unwrap_or_else(|| c.request_timeout.max(Duration::from_secs(5)))
    }

    /// The agent's id from the handshake.
    #[must_use]
    pub fn agent_id(&self) -> &str {
        &self.shared().info.capabilities.agent_id
    }

    /// What the handshake established.
    #[must_use]
    pub fn info(&self) -> &GrpcConnectionInfo {
        &self.shared().info
    }

    /// False once the connection ended (waiters have all been failed by then).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        !self.shared().is_closed.load(Ordering::Acquire)
    }

    /// Why the connection ended, once it has.
    #[must_use]
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared().close_reason()
    }

    /// The gRPC status the stream ended with, when it ended with an error status (e.g.
    /// `FAILED_PRECONDITION` from an agent that refused an event).
    #[must_use]
    pub fn close_status(&self) -> Option<tonic::Status> {
        self.shared().lock().close_status.clone()
    }

    /// Requests awaiting an answer.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.shared().lock().waiters.len()
    }

    /// The current in-flight limit (configured, agent-declared and flow-control capped).
    #[must_use]
    pub fn in_flight_limit(&self) -> usize {
        self.shared().lock().in_flight_limit
    }

    /// True while the agent asked the proxy to pause.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.shared().lock().paused
    }

    /// Sends an event and waits for the agent's answer, its deadline, or the connection's end.
    /// Dropping the returned future cancels the request (a Cancel goes to the agent).
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::ConnectionClosed`],
    /// [`ClientError::FlowControlPaused`], [`ClientError::TooManyInFlight`],
    /// [`ClientError::Cancelled`], [`ClientError::Protocol`] (empty or duplicate id, message
    /// over `max_message_size`).
    pub async fn send_event(&self, event: Event) -> Result<AgentResponse, ClientError> {
        self.send_event_inner(event, None).await
    }

    /// [`GrpcAgentClient::send_event`] with a deadline other than the configured one.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_event_with_timeout(
        &self,
        event: Event,
        timeout: Duration,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event_inner(event, Some(timeout)).await
    }

    fn check_open(&self, s: &State) -> Result<(), ClientError> {
        match &s.close_reason {
            Some(r) => Err(ClientError::ConnectionClosed(Some(r.clone()))),
            None => Ok(()),
        }
    }

    async fn send_event_inner(
        &self,
        event: Event,
        timeout: Option<Duration>,
    ) -> Result<AgentResponse, ClientError> {
        if let Event::Configure(c) = event {
            return self.send_configure(c).await;
        }
        let shared = self.shared();
        let deadline = Instant::now() + timeout.unwrap_or(shared.config.request_timeout);
        let id = event.correlation_id().to_owned();
        if id.is_empty() {
            return Err(ClientError::Protocol(SendError::EmptyCorrelationId));
        }
        let kind = event.message_type();
        let message = pb::ProxyToAgent {
            message: Some(
                mapping::event_to_pb(event, time::now_ms(), false).map_err(|e| {
                    ClientError::Protocol(SendError::Encode(EncodeError::Serialize {
                        kind,
                        detail: e.to_string(),
                    }))
                })?,
            ),
        };
        let len = message.encoded_len();
        if len > shared.config.max_message_size {
            return Err(too_large(len, shared.config.max_message_size));
        }
        let rx = {
            let mut s = shared.lock();
            self.check_open(&s)?;
            if s.paused {
                return Err(ClientError::FlowControlPaused {
                    agent_id: self.agent_id().to_owned(),
                });
            }
            if s.waiters.len() >= s.in_flight_limit {
                return Err(ClientError::TooManyInFlight {
                    limit: s.in_flight_limit,
                });
            }
            if s.waiters.contains_key(&id) {
                return Err(ClientError::Protocol(SendError::DuplicateCorrelationId));
            }
            let (tx, rx) = oneshot::channel();
            s.waiters.insert(id.clone(), tx);
            rx
        };
        // From here on the waiter is registered: every exit removes it (no B12 leak).
        let mut guard = WaiterGuard {
            shared,
            id: &id,
            sent: false,
            armed: true,
        };
        tokio::select! {
            biased;
            sent = shared.tx.send(message) => {
                if sent.is_err() {
                    guard.armed = false;
                    shared.lock().waiters.remove(&id);
                    return Err(ClientError::ConnectionClosed(shared.close_reason()));
                }
            }
            () = shared.closed.cancelled() => {
                guard.armed = false;
                return Err(ClientError::ConnectionClosed(shared.close_reason()));
            }
            () = tokio::time::sleep_until(deadline) => {
                guard.armed = false;
                shared.lock().waiters.remove(&id);
                return Err(ClientError::Timeout);
            }
        }
        guard.sent = true;
        let reply = tokio::time::timeout_at(deadline, rx).await;
        guard.armed = false;
        match reply {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ClientError::ConnectionClosed(shared.close_reason())),
            Err(_) => {
                let removed = shared.lock().waiters.remove(&id).is_some();
                if removed && shared.config.cancel_on_timeout {
                    shared.send_detached(cancel_message(&id, CancelReason::Timeout));
                }
                Err(ClientError::Timeout)
            }
        }
    }

    /// Sends request headers.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_request_headers(
        &self,
        event: RequestHeaders,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::RequestHeaders(event)).await
    }

    /// Sends a request body chunk (raw bytes: protobuf `bytes`, no base64).
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_request_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::RequestBodyChunk(chunk)).await
    }

    /// Sends response headers.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_response_headers(
        &self,
        event: ResponseHeaders,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::ResponseHeaders(event)).await
    }

    /// Sends a response body chunk.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_response_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::ResponseBodyChunk(chunk)).await
    }

    /// Sends request complete.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_request_complete(
        &self,
        event: RequestComplete,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::RequestComplete(event)).await
    }

    /// Sends a WebSocket frame.
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_websocket_frame(
        &self,
        event: WebSocketFrame,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::WebSocketFrame(event)).await
    }

    /// Sends a guardrail inspection (answered by agentwire agents; reference agents never
    /// answer it, B2, so it times out against them).
    ///
    /// # Errors
    /// As [`GrpcAgentClient::send_event`].
    pub async fn send_guardrail_inspect(
        &self,
        event: GuardrailInspect,
    ) -> Result<AgentResponse, ClientError> {
        self.send_event(Event::GuardrailInspect(event)).await
    }

    /// Sends a configuration (`configure` followed by a `ping`, §10.4): accepted when the
    /// pong arrives (the answer is then an Allow carrying the configure's correlation id);
    /// an agent that rejects it ends the stream, which fails with
    /// `ConnectionClosed(Some(ConfigurationRejected))`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] after the request timeout, [`ClientError::ConnectionClosed`],
    /// [`ClientError::Protocol`] for an oversized configuration.
    pub async fn send_configure(&self, event: Configure) -> Result<AgentResponse, ClientError> {
        let id = event.correlation_id.clone();
        let limit = self.shared().config.request_timeout;
        match self.configure_and_confirm(event, false, limit).await {
            Ok(()) => {
                let mut response = AgentResponse::allow();
                if !id.is_empty() {
                    response.set_correlation_id(&id);
                }
                Ok(response)
            }
            Err(ClientError::ConnectionClosed(_)) => Err(ClientError::ConnectionClosed(Some(
                CloseReason::ConfigurationRejected,
            ))),
            Err(e) => Err(e),
        }
    }

    async fn configure_and_confirm(
        &self,
        configure: Configure,
        is_initial: bool,
        limit: Duration,
    ) -> Result<(), ClientError> {
        let shared = self.shared();
        let deadline = Instant::now() + limit;
        let message = pb::ProxyToAgent {
            message: Some(
                mapping::event_to_pb(Event::Configure(configure), time::now_ms(), is_initial)
                    .map_err(|_| ClientError::Protocol(SendError::NotReady))?,
            ),
        };
        let len = message.encoded_len();
        if len > shared.config.max_message_size {
            return Err(too_large(len, shared.config.max_message_size));
        }
        self.check_open(&shared.lock())?;
        self.enqueue(message, deadline).await?;
        let rtt = self.ping_until(deadline).await?;
        tracing::debug!(?rtt, "configuration acknowledged");
        Ok(())
    }

    async fn enqueue(
        &self,
        message: pb::ProxyToAgent,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let shared = self.shared();
        tokio::select! {
            biased;
            sent = shared.tx.send(message) => sent
                .map_err(|_| ClientError::ConnectionClosed(shared.close_reason())),
            () = shared.closed.cancelled() => {
                Err(ClientError::ConnectionClosed(shared.close_reason()))
            }
            () = tokio::time::sleep_until(deadline) => Err(ClientError::Timeout),
        }
    }

    /// Cancels a request: the agent is told (its handler is aborted by agentwire agents), a
    /// local waiter fails with `Cancelled`.
    ///
    /// # Errors
    /// [`ClientError::ConnectionClosed`] when the connection is over.
    pub fn cancel(&self, correlation_id: &str, reason: CancelReason) -> Result<(), ClientError> {
        let shared = self.shared();
        let waiter = {
            let mut s = shared.lock();
            self.check_open(&s)?;
            s.waiters.remove(correlation_id)
        };
        if let Some(tx) = waiter {
            let _ = tx.send(Err(ClientError::Cancelled));
        }
        shared.send_detached(cancel_message(correlation_id, reason));
        Ok(())
    }

    /// Cancels every pending request (one Cancel message each; there is no cancel-all
    /// message).
    ///
    /// # Errors
    /// [`ClientError::ConnectionClosed`] when the connection is over.
    pub fn cancel_all(&self, reason: CancelReason) -> Result<(), ClientError> {
        let shared = self.shared();
        let waiters = {
            let mut s = shared.lock();
            self.check_open(&s)?;
            std::mem::take(&mut s.waiters)
        };
        for (id, tx) in waiters {
            let _ = tx.send(Err(ClientError::Cancelled));
            shared.send_detached(cancel_message(&id, reason));
        }
        Ok(())
    }

    /// Pings the agent and returns the round-trip time, or `Timeout` after `limit`.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::ConnectionClosed`],
    /// [`ClientError::Protocol`] with `TooManyPings`.
    pub async fn ping(&self, limit: Duration) -> Result<Duration, ClientError> {
        self.ping_until(Instant::now() + limit).await
    }

    async fn ping_until(&self, deadline: Instant) -> Result<Duration, ClientError> {
        let shared = self.shared();
        let sequence = shared.next_ping.fetch_add(1, Ordering::Relaxed);
        let rx = {
            let mut s = shared.lock();
            self.check_open(&s)?;
            if s.pings.len() >= shared.config.max_outstanding_pings {
                return Err(ClientError::Protocol(SendError::TooManyPings));
            }
            let (tx, rx) = oneshot::channel();
            s.pings.insert(sequence, (tx, Instant::now()));
            rx
        };
        let message = pb::ProxyToAgent {
            message: Some(ProxyMessage::Ping(mapping::ping_to_pb(Ping {
                sequence,
                timestamp_ms: time::now_ms(),
            }))),
        };
        let result = match self.enqueue(message, deadline).await {
            Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(rtt)) => Ok(rtt),
                Ok(Err(_)) => Err(ClientError::ConnectionClosed(shared.close_reason())),
                Err(_) => Err(ClientError::Timeout),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            shared.lock().pings.remove(&sequence);
        }
        result
    }

    /// Closes the connection now; pending requests fail with `ConnectionClosed`.
    pub fn close(&self) {
        self.shared().finish(CloseReason::Local, None);
    }

    /// Waits up to `drain` for pending requests to finish, then closes.
    pub async fn shutdown(&self, drain: Duration) {
        let deadline = Instant::now() + drain;
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep_until((Instant::now() + Duration::from_millis(5)).min(deadline))
                .await;
        }
        self.close();
    }
}

fn cancel_message(correlation_id: &str, reason: CancelReason) -> ProxyMessage {
    ProxyMessage::Cancel(mapping::cancel_to_pb(&Cancel {
        correlation_id: correlation_id.to_owned(),
        reason,
        timestamp_ms: time::now_ms(),
    }))
}

/// Removes a registered waiter when the caller stops waiting (future dropped); tells the
/// agent when the event had already been sent.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: &'a str,
    sent: bool,
    armed: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let removed = self.shared.lock().waiters.remove(self.id).is_some();
        if removed && self.sent {
            self.shared
                .send_detached(cancel_message(self.id, CancelReason::ClientDisconnect));
        }
    }
}

/// Reads the agent's messages until the stream ends or the connection is closed locally;
/// holds only a weak reference so dropping every client handle ends it.
async fn reader(
    shared: std::sync::Weak<Shared>,
    closed: CancellationToken,
    mut inbound: tonic::Streaming<pb::AgentToProxy>,
) {
    let (reason, status) = loop {
        let next = tokio::select! {
            biased;
            () = closed.cancelled() => break (CloseReason::Local, None),
            next = inbound.message() => next,
        };
        let Some(shared) = shared.upgrade() else {
            break (CloseReason::Local, None);
        };
        match next {
            Ok(Some(pb::AgentToProxy {
                message: Some(message),
            })) => shared.dispatch(message),
            Ok(Some(_)) => tracing::debug!("empty message from agent ignored"),
            Ok(None) => break (CloseReason::PeerClosed, None),
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "agent stream failed");
                break (CloseReason::PeerClosed, Some(status));
            }
        }
    };
    if let Some(shared) = shared.upgrade() {
        shared.finish(reason, status);
    }
}
