//! The proxy side of one agent connection.

use super::{CloseReason, SendError};
use crate::encoding::{WireFormat, decode_message, decode_response, encode_event, encode_frame_of};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, Frame, FrameDecoder, MessageType};
use crate::message::*;
use crate::time::Instant;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::time::Duration;

/// Settings of a [`ProxySession`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// `proxy_id` sent in the handshake.
    pub proxy_id: String,
    /// `proxy_version` sent in the handshake.
    pub proxy_version: String,
    /// Encodings to offer, in preference order. `json` and `msgpack` go in the reference's
    /// `supported_encodings`; the whole list (with `postcard`) in agentwire's own key.
    pub encodings: Vec<Encoding>,
    /// Configuration delivered in the handshake and by a Configure frame right after it.
    pub agent_config: Option<AnyValue>,
    /// Time from session start to a completed handshake.
    pub handshake_timeout: Duration,
    /// Time the agent has to acknowledge the configuration.
    pub configure_timeout: Duration,
    /// Default deadline of an event.
    pub request_timeout: Duration,
    /// Largest frame length field accepted and produced.
    pub max_frame_len: u32,
    /// Most events in flight at once (further capped by the agent's `max_concurrency`).
    pub max_in_flight: usize,
    /// Bytes that may wait in the write buffer before sends are refused.
    pub max_buffered_bytes: usize,
    /// Send a Cancel (reason `timeout`) when an event times out, so the agent can stop work
    /// (the reference sends nothing).
    pub cancel_on_timeout: bool,
    /// Most pings awaiting their pong.
    pub max_outstanding_pings: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            proxy_id: String::from("agentwire-proxy"),
            proxy_version: String::from(env!("CARGO_PKG_VERSION")),
            encodings: [Encoding::Postcard, Encoding::Msgpack, Encoding::Json]
                .into_iter()
                .filter(|e| e.is_available())
                .collect(),
            agent_config: None,
            handshake_timeout: Duration::from_secs(5),
            configure_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_in_flight: 1024,
            max_buffered_bytes: 8 * 1024 * 1024,
            cancel_on_timeout: true,
            max_outstanding_pings: 16,
        }
    }
}

/// Why an event ended without an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// Its deadline passed.
    Timeout,
    /// It was cancelled locally.
    Cancelled,
    /// The connection ended first.
    ConnectionClosed(CloseReason),
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::Timeout => f.write_str("timed out"),
            RequestError::Cancelled => f.write_str("cancelled"),
            RequestError::ConnectionClosed(r) => write!(f, "connection closed: {r}"),
        }
    }
}

impl core::error::Error for RequestError {}

/// What a [`ProxySession`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyEvent {
    /// Handshake (and configuration) done: events may be sent.
    Connected {
        /// The agent's capabilities.
        capabilities: Capabilities,
        /// The negotiated encoding.
        encoding: Encoding,
        /// The version the agent announced.
        protocol_version: u32,
    },
    /// The agent answered an event.
    Response {
        /// The event's correlation id.
        correlation_id: String,
        /// The answer.
        response: AgentResponse,
    },
    /// An event ended without an answer; reported exactly once per event.
    Failed {
        /// The event's correlation id.
        correlation_id: String,
        /// Why.
        error: RequestError,
    },
    /// A ping was answered.
    Pong {
        /// The ping's sequence number.
        sequence: u64,
        /// Round-trip time.
        rtt: Duration,
    },
    /// The agent's flow-control signal, already applied to the session.
    FlowControl(FlowControlSignal),
    /// The agent's health report.
    Health(HealthStatus),
    /// The agent's metrics report.
    Metrics(MetricsReport),
    /// The agent asks for a configuration change.
    ConfigUpdate(ConfigUpdateRequest),
    /// The connection ended; the last event of a session.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking { deadline: Instant },
    Configuring { deadline: Instant },
    Ready,
    Closed,
}

#[derive(Debug)]
struct InFlight {
    deadline: Instant,
    serial: u64,
}

/// Counters a driver may export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Events sent.
    pub events_sent: u64,
    /// Responses matched to an event.
    pub responses: u64,
    /// Responses whose id matched nothing (late, after a timeout or cancel).
    pub unmatched_responses: u64,
    /// Events that timed out.
    pub timeouts: u64,
}

/// The proxy side of one connection: see the [module docs](super).
#[derive(Debug)]
pub struct ProxySession {
    config: ProxyConfig,
    state: State,
    format: WireFormat,
    decoder: FrameDecoder,
    out: BytesMut,
    events: VecDeque<ProxyEvent>,
    in_flight: BTreeMap<String, InFlight>,
    deadlines: BTreeMap<(Instant, u64), String>,
    next_serial: u64,
    in_flight_limit: usize,
    paused: bool,
    agent_id: String,
    configure_id: Option<String>,
    pending_connected: Option<ProxyEvent>,
    pings: VecDeque<(u64, Instant)>,
    next_ping: u64,
    stats: ProxyStats,
}

impl ProxySession {
    /// A new session that has queued its handshake; `now` starts the handshake deadline.
    #[must_use]
    pub fn new(config: ProxyConfig, now: Instant) -> Self {
        let encodings: Vec<Encoding> = config
            .encodings
            .iter()
            .copied()
            .filter(|e| e.is_available())
            .collect();
        let request = HandshakeRequest {
            supported_versions: alloc::vec![PROTOCOL_VERSION],
            proxy_id: config.proxy_id.clone(),
            proxy_version: config.proxy_version.clone(),
            config: config.agent_config.clone().unwrap_or_default(),
            // Reference agents drop the connection on a name they do not know (B11).
            supported_encodings: encodings
                .iter()
                .copied()
                .filter(|e| matches!(e, Encoding::Json | Encoding::Msgpack))
                .collect(),
            agentwire_encodings: encodings,
        };
        let mut session = ProxySession {
            state: State::Handshaking {
                deadline: now.saturating_add(config.handshake_timeout),
            },
            format: WireFormat::JSON,
            decoder: FrameDecoder::new(config.max_frame_len),
            out: BytesMut::new(),
            events: VecDeque::new(),
            in_flight: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            next_serial: 0,
            in_flight_limit: config.max_in_flight,
            paused: false,
            agent_id: String::new(),
            configure_id: None,
            pending_connected: None,
            pings: VecDeque::new(),
            next_ping: 0,
            stats: ProxyStats::default(),
            config,
        };
        let max = session.config.max_frame_len;
        if let Err(e) = encode_frame_of(
            MessageType::HandshakeRequest,
            &request,
            Encoding::Json,
            max,
            &mut session.out,
        ) {
            // Only an absurdly small `max_frame_len` gets here.
            let _ = e;
            session.close_with(CloseReason::Frame(
                crate::frame::FrameError::FrameTooLarge { len: u64::MAX, max },
            ));
        }
        session
    }

    /// A session over a connection whose peer was already identified another way (a reverse
    /// connection's registration, spec §9): no handshake is sent, the session is ready at once
    /// and reports `Connected` with the registered capabilities.
    #[must_use]
    pub fn new_established(
        config: ProxyConfig,
        format: WireFormat,
        capabilities: Capabilities,
    ) -> Self {
        let in_flight_limit = match capabilities.limits.max_concurrency as usize {
            0 => config.max_in_flight,
            declared => config.max_in_flight.min(declared),
        };
        let mut events = VecDeque::new();
        events.push_back(ProxyEvent::Connected {
            capabilities: capabilities.clone(),
            encoding: format.encoding,
            protocol_version: PROTOCOL_VERSION,
        });
        ProxySession {
            state: State::Ready,
            format,
            decoder: FrameDecoder::new(config.max_frame_len),
            out: BytesMut::new(),
            events,
            in_flight: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            next_serial: 0,
            in_flight_limit,
            paused: false,
            agent_id: capabilities.agent_id,
            configure_id: None,
            pending_connected: None,
            pings: VecDeque::new(),
            next_ping: 0,
            stats: ProxyStats::default(),
            config,
        }
    }

    /// True once the handshake (and configuration) completed and until the connection ends.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// True once the connection ended (the `Closed` event may still be queued).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while the agent asked the proxy to pause.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Events awaiting an answer.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The current in-flight limit (configuration, agent's declared concurrency and its
    /// capacity updates).
    #[must_use]
    pub fn in_flight_limit(&self) -> usize {
        self.in_flight_limit
    }

    /// The negotiated wire format.
    #[must_use]
    pub fn wire_format(&self) -> WireFormat {
        self.format
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> ProxyStats {
        self.stats
    }

    /// Bytes waiting in the write buffer.
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.out.len()
    }

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.decoder.extend(data);
        self.process_frames(now);
    }

    /// The decoder's buffer, to read into directly (then call [`Self::handle_read`]).
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        self.decoder.read_buffer()
    }

    /// Processes bytes read straight into [`Self::read_buffer`].
    pub fn handle_read(&mut self, now: Instant) {
        if self.state != State::Closed {
            self.process_frames(now);
        }
    }

    /// The stream ended (EOF or a read/write error): every waiter fails now.
    pub fn handle_eof(&mut self, _now: Instant) {
        self.close_with(CloseReason::PeerClosed);
    }

    /// Closes the connection locally; every waiter fails with `ConnectionClosed(Local)`.
    pub fn close(&mut self) {
        self.close_with(CloseReason::Local);
    }

    /// Fires every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Handshaking { deadline } if now >= deadline => {
                return self.close_with(CloseReason::HandshakeTimeout);
            }
            State::Configuring { deadline } if now >= deadline => {
                return self.close_with(CloseReason::ConfigurationTimeout);
            }
            _ => {}
        }
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.in_flight.remove(&id);
            self.stats.timeouts += 1;
            // Best effort: an encoding failure here only loses the courtesy Cancel. Like any
            // send, it is skipped once the write buffer is over its bound: an agent that is not
            // reading would otherwise get one Cancel per expired request queued past
            // `max_buffered_bytes` (fuzz target `proxy_session`).
            if self.config.cancel_on_timeout
                && self.state == State::Ready
                && self.out.len() < self.config.max_buffered_bytes
            {
                let _ = self.encode_cancel(&id, CancelReason::Timeout, now);
            }
            self.events.push_back(ProxyEvent::Failed {
                correlation_id: id,
                error: RequestError::Timeout,
            });
        }
    }

    /// The next instant [`Self::handle_timeout`] has work, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state_deadline = match self.state {
            State::Handshaking { deadline } | State::Configuring { deadline } => Some(deadline),
            State::Ready => None,
            State::Closed => return None,
        };
        let request = self.deadlines.first_key_value().map(|(k, _)| k.0);
        match (state_deadline, request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// All bytes to write now, if any (frames are coalesced into one buffer).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ProxyEvent> {
        self.events.pop_front()
    }

    /// Sends `event` with the default deadline.
    pub fn send_event(&mut self, now: Instant, event: &Event) -> Result<(), SendError> {
        let timeout = self.config.request_timeout;
        self.send_event_with_timeout(now, event, timeout)
    }

    /// Sends `event`; its answer or failure is reported as an event.
    pub fn send_event_with_timeout(
        &mut self,
        now: Instant,
        event: &Event,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.check_can_send()?;
        if self.paused {
            return Err(SendError::Paused);
        }
        if self.in_flight.len() >= self.in_flight_limit {
            return Err(SendError::TooManyInFlight {
                limit: self.in_flight_limit,
            });
        }
        let id = event.correlation_id();
        if id.is_empty() {
            return Err(SendError::EmptyCorrelationId);
        }
        if self.in_flight.contains_key(id) {
            return Err(SendError::DuplicateCorrelationId);
        }
        encode_event(event, self.format, self.config.max_frame_len, &mut self.out)?;
        self.register(String::from(id), now.saturating_add(timeout));
        self.stats.events_sent += 1;
        Ok(())
    }

    fn register(&mut self, id: String, deadline: Instant) {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.deadlines.insert((deadline, serial), id.clone());
        self.in_flight.insert(id, InFlight { deadline, serial });
    }

    fn unregister(&mut self, id: &str) -> Option<String> {
        let (key, entry) = self.in_flight.remove_entry(id)?;
        self.deadlines.remove(&(entry.deadline, entry.serial));
        Some(key)
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        match self.state {
            State::Ready => {}
            State::Closed => return Err(SendError::Closed),
            _ => return Err(SendError::NotReady),
        }
        if self.out.len() >= self.config.max_buffered_bytes {
            return Err(SendError::Backpressure {
                buffered: self.out.len(),
            });
        }
        Ok(())
    }

    fn encode_cancel(
        &mut self,
        id: &str,
        reason: CancelReason,
        now: Instant,
    ) -> Result<(), SendError> {
        let cancel = Cancel {
            correlation_id: String::from(id),
            reason,
            timestamp_ms: now.as_millis(),
        };
        encode_frame_of(
            MessageType::Cancel,
            &cancel,
            self.format.encoding,
            self.config.max_frame_len,
            &mut self.out,
        )?;
        Ok(())
    }

    /// Cancels `correlation_id`: sends a Cancel (even when nothing is pending, as the reference
    /// does) and fails a pending event with [`RequestError::Cancelled`].
    pub fn cancel(
        &mut self,
        now: Instant,
        correlation_id: &str,
        reason: CancelReason,
    ) -> Result<(), SendError> {
        match self.check_can_send() {
            Ok(()) => self.encode_cancel(correlation_id, reason, now)?,
            // The agent is not reading: the Cancel frame cannot be queued, but the local slot
            // must still be freed now rather than at the deadline.
            Err(SendError::Backpressure { .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(id) = self.unregister(correlation_id) {
            self.events.push_back(ProxyEvent::Failed {
                correlation_id: id,
                error: RequestError::Cancelled,
            });
        }
        Ok(())
    }

    /// Cancels every pending event, one Cancel frame each (there is no cancel-all message).
    pub fn cancel_all(&mut self, now: Instant, reason: CancelReason) -> Result<(), SendError> {
        let ids: Vec<String> = self.in_flight.keys().cloned().collect();
        for id in ids {
            self.cancel(now, &id, reason)?;
        }
        Ok(())
    }

    /// Sends a ping; the answer arrives as [`ProxyEvent::Pong`] with the round-trip time.
    pub fn ping(&mut self, now: Instant) -> Result<u64, SendError> {
        self.check_can_send()?;
        if self.pings.len() >= self.config.max_outstanding_pings {
            return Err(SendError::TooManyPings);
        }
        let sequence = self.next_ping;
        let ping = Ping {
            sequence,
            timestamp_ms: now.as_millis(),
        };
        encode_frame_of(
            MessageType::Ping,
            &ping,
            self.format.encoding,
            self.config.max_frame_len,
            &mut self.out,
        )?;
        self.next_ping += 1;
        self.pings.push_back((sequence, now));
        Ok(sequence)
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        // A local close keeps what is already queued (Cancels, typically) so the driver can
        // still flush it; after a peer or protocol failure nothing more should be written.
        if reason != CloseReason::Local {
            self.out.clear();
        }
        self.pending_connected = None;
        let in_flight = core::mem::take(&mut self.in_flight);
        self.deadlines.clear();
        for (id, _) in in_flight {
            self.events.push_back(ProxyEvent::Failed {
                correlation_id: id,
                error: RequestError::ConnectionClosed(reason.clone()),
            });
        }
        self.events.push_back(ProxyEvent::Closed(reason));
    }

    fn process_frames(&mut self, now: Instant) {
        while self.state != State::Closed {
            match self.decoder.decode() {
                Ok(Some(frame)) => self.handle_frame(now, frame),
                Ok(None) => break,
                Err(e) => self.close_with(CloseReason::Frame(e)),
            }
        }
    }

    fn handle_frame(&mut self, now: Instant, frame: Frame) {
        match (self.state, frame.kind) {
            (State::Handshaking { .. }, MessageType::HandshakeResponse) => {
                self.handle_handshake(now, &frame.payload);
            }
            (State::Handshaking { .. }, other) => {
                self.close_with(CloseReason::UnexpectedMessage(other));
            }
            (_, MessageType::AgentResponse) => self.handle_response(&frame.payload),
            (State::Ready, MessageType::Pong) => self.handle_pong(now, &frame.payload),
            // Agent-initiated control frames are valid as soon as the handshake is accepted,
            // not only once the configuration is: an agent may report health right after the
            // handshake, and automatic flow control with `max_concurrency: 1` pauses on the
            // Configure event itself, before acknowledging it. (Closing here broke every
            // agentwire agent of concurrency 1 behind a configuring proxy; fuzz target
            // `handshake`.)
            (State::Ready | State::Configuring { .. }, MessageType::FlowControl) => {
                if let Some(signal) = self.decode_control::<FlowControlSignal>(&frame) {
                    self.apply_flow_control(&signal);
                    self.events.push_back(ProxyEvent::FlowControl(signal));
                }
            }
            (State::Ready | State::Configuring { .. }, MessageType::HealthStatus) => {
                if let Some(h) = self.decode_control(&frame) {
                    self.events.push_back(ProxyEvent::Health(h));
                }
            }
            (State::Ready | State::Configuring { .. }, MessageType::MetricsReport) => {
                if let Some(m) = self.decode_control(&frame) {
                    self.events.push_back(ProxyEvent::Metrics(m));
                }
            }
            (State::Ready | State::Configuring { .. }, MessageType::ConfigUpdateRequest) => {
                if let Some(c) = self.decode_control(&frame) {
                    self.events.push_back(ProxyEvent::ConfigUpdate(c));
                }
            }
            (_, other) => self.close_with(CloseReason::UnexpectedMessage(other)),
        }
    }

    fn decode_control<T: serde::de::DeserializeOwned>(&mut self, frame: &Frame) -> Option<T> {
        match decode_message(frame.kind, &frame.payload, self.format.encoding) {
            Ok(v) => Some(v),
            Err(e) => {
                self.close_with(CloseReason::Decode(e));
                None
            }
        }
    }

    fn handle_handshake(&mut self, now: Instant, payload: &[u8]) {
        let response: HandshakeResponse =
            match decode_message(MessageType::HandshakeResponse, payload, Encoding::Json) {
                Ok(r) => r,
                Err(e) => return self.close_with(CloseReason::Decode(e)),
            };
        if !response.success {
            return self.close_with(CloseReason::HandshakeRejected {
                error: response.error,
            });
        }
        let offered = response.encoding == Encoding::Json
            || self.config.encodings.contains(&response.encoding);
        if !offered || !response.encoding.is_available() {
            return self.close_with(CloseReason::UnsupportedEncoding(String::from(
                response.encoding.as_str(),
            )));
        }
        self.format = WireFormat {
            encoding: response.encoding,
            raw_body_bytes: response.agentwire.is_some_and(|a| a.raw_body_bytes),
        };
        let declared = response.capabilities.limits.max_concurrency as usize;
        if declared > 0 {
            self.in_flight_limit = self.config.max_in_flight.min(declared);
        }
        self.agent_id = response.capabilities.agent_id.clone();
        let connected = ProxyEvent::Connected {
            capabilities: response.capabilities,
            encoding: response.encoding,
            protocol_version: response.protocol_version,
        };
        let Some(config) = self.config.agent_config.clone() else {
            self.state = State::Ready;
            self.events.push_back(connected);
            return;
        };
        let id = format!("zentinel-configure-{}-0", self.agent_id);
        let configure = Event::Configure(Configure {
            config,
            config_version: None,
            correlation_id: id.clone(),
        });
        if let Err(e) = encode_event(
            &configure,
            self.format,
            self.config.max_frame_len,
            &mut self.out,
        ) {
            let _ = e;
            return self.close_with(CloseReason::ConfigurationRejected);
        }
        self.configure_id = Some(id);
        self.pending_connected = Some(connected);
        self.state = State::Configuring {
            deadline: now.saturating_add(self.config.configure_timeout),
        };
    }

    fn handle_response(&mut self, payload: &[u8]) {
        let response: AgentResponse = match decode_response(payload, self.format.encoding) {
            Ok(r) => r,
            // A response that cannot be read cannot be matched: the waiter would only time
            // out, so end the connection and fail everyone now.
            Err(e) => return self.close_with(CloseReason::Decode(e)),
        };
        let id = response.correlation_id().unwrap_or("");
        if let State::Configuring { .. } = self.state
            && self.configure_id.as_deref() == Some(id)
        {
            if response.decision != Decision::Allow {
                return self.close_with(CloseReason::ConfigurationRejected);
            }
            self.configure_id = None;
            self.state = State::Ready;
            if let Some(connected) = self.pending_connected.take() {
                self.events.push_back(connected);
            }
            return;
        }
        match self.unregister(id) {
            Some(correlation_id) => {
                self.stats.responses += 1;
                self.events.push_back(ProxyEvent::Response {
                    correlation_id,
                    response,
                });
            }
            None => self.stats.unmatched_responses += 1,
        }
    }

    fn handle_pong(&mut self, now: Instant, payload: &[u8]) {
        // The reference agent echoes the ping bytes, so the pong is in the ping's encoding.
        let pong: Ping = match decode_message(MessageType::Pong, payload, self.format.encoding)
            .or_else(|_| decode_message(MessageType::Pong, payload, Encoding::Json))
        {
            Ok(p) => p,
            Err(e) => return self.close_with(CloseReason::Decode(e)),
        };
        if let Some(pos) = self.pings.iter().position(|(s, _)| *s == pong.sequence) {
            let (sequence, sent) = self.pings.remove(pos).unwrap_or((pong.sequence, now));
            self.events.push_back(ProxyEvent::Pong {
                sequence,
                rtt: now.saturating_duration_since(sent),
            });
        }
    }

    fn apply_flow_control(&mut self, signal: &FlowControlSignal) {
        match signal.action {
            FlowAction::Pause => self.paused = true,
            FlowAction::Resume => self.paused = false,
            FlowAction::UpdateCapacity { buffer_available } => {
                let available = usize::try_from(buffer_available).unwrap_or(usize::MAX);
                self.in_flight_limit = self
                    .config
                    .max_in_flight
                    .min(self.in_flight.len().saturating_add(available));
            }
            FlowAction::Unspecified => {}
        }
    }
}
