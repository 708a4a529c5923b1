//! The agent side of one proxy connection.

use super::{CloseReason, SendError};
use crate::encoding::{
    EncodeError, WireFormat, decode_event, decode_message, encode_frame_of, encode_response,
    salvage_correlation_id,
};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, Frame, FrameDecoder, MessageType, encode_frame};
use crate::message::*;
use crate::time::Instant;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::time::Duration;

/// Settings of an [`AgentSession`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// What the agent declares in the handshake (`limits.max_concurrency` is also the point
    /// where automatic flow control pauses the proxy).
    pub capabilities: Capabilities,
    /// Encodings the agent accepts, in its own preference order (used only to filter the
    /// proxy's list: the proxy's order decides, as in the reference).
    pub encodings: Vec<Encoding>,
    /// Time from connection to a handshake.
    pub handshake_timeout: Duration,
    /// Largest frame length field accepted and produced.
    pub max_frame_len: u32,
    /// Hard cap of events in flight; a proxy that goes beyond it is disconnected.
    pub max_in_flight: usize,
    /// Send FlowControl pause at `limits.max_concurrency` in flight, resume at half of it.
    pub auto_flow_control: bool,
    /// Status of the Block sent for an event that cannot be decoded (never an Allow, unlike
    /// the reference's S1).
    pub undecodable_status: u16,
    /// Bytes that may wait in the write buffer before the session stops asking for input.
    pub max_buffered_bytes: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            capabilities: Capabilities::default(),
            encodings: [Encoding::Postcard, Encoding::Msgpack, Encoding::Json]
                .into_iter()
                .filter(|e| e.is_available())
                .collect(),
            handshake_timeout: Duration::from_secs(10),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_in_flight: 4096,
            auto_flow_control: true,
            undecodable_status: 500,
            max_buffered_bytes: 8 * 1024 * 1024,
        }
    }
}

/// What an [`AgentSession`] reports.
// `Request` carries an [`Event`] by value, on purpose (see the note on `Event`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentEvent {
    /// The handshake was answered; events follow.
    Connected {
        /// The proxy's handshake.
        request: Box<HandshakeRequest>,
        /// The encoding chosen.
        encoding: Encoding,
    },
    /// An event to decide on; answer with [`AgentSession::respond`].
    Request(Event),
    /// The proxy cancelled a request.
    Cancelled {
        /// The request.
        correlation_id: String,
        /// Why.
        reason: CancelReason,
    },
    /// An event could not be decoded; when its id could be salvaged it was answered with a
    /// Block of [`AgentConfig::undecodable_status`] (or, when even that answer would exceed the
    /// frame limit, the connection is closed: the event could never be answered).
    Undecodable {
        /// The salvaged id.
        correlation_id: Option<String>,
        /// The decoder's error.
        error: crate::encoding::DecodeError,
    },
    /// The connection ended; the last event of a session.
    Closed(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshaking { deadline: Instant },
    Ready,
    Closed,
}

/// The agent side of one connection: see the [module docs](super).
#[derive(Debug)]
pub struct AgentSession {
    config: AgentConfig,
    state: State,
    format: WireFormat,
    decoder: FrameDecoder,
    out: BytesMut,
    events: VecDeque<AgentEvent>,
    /// Outstanding events per correlation id; a count because the reference proxy may send a
    /// second event for an id whose first one it gave up on (B7).
    in_flight: BTreeMap<String, u32>,
    in_flight_total: usize,
    paused_proxy: bool,
}

impl AgentSession {
    /// A session waiting for the proxy's handshake; `now` starts its deadline.
    #[must_use]
    pub fn new(config: AgentConfig, now: Instant) -> Self {
        AgentSession {
            state: State::Handshaking {
                deadline: now.saturating_add(config.handshake_timeout),
            },
            format: WireFormat::JSON,
            decoder: FrameDecoder::new(config.max_frame_len),
            out: BytesMut::new(),
            events: VecDeque::new(),
            in_flight: BTreeMap::new(),
            in_flight_total: 0,
            paused_proxy: false,
            config,
        }
    }

    /// A session whose proxy was already identified another way (after a reverse
    /// registration, spec §9): ready at once, speaking `format`.
    #[must_use]
    pub fn new_established(config: AgentConfig, format: WireFormat) -> Self {
        AgentSession {
            state: State::Ready,
            format,
            decoder: FrameDecoder::new(config.max_frame_len),
            out: BytesMut::new(),
            events: VecDeque::new(),
            in_flight: BTreeMap::new(),
            in_flight_total: 0,
            paused_proxy: false,
            config,
        }
    }

    /// True after the handshake and until the connection ends.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// True once the connection ended.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Events received and not yet answered or cancelled.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight_total
    }

    /// The negotiated wire format.
    #[must_use]
    pub fn wire_format(&self) -> WireFormat {
        self.format
    }

    /// False while the write buffer is over its bound: stop reading until it drains, so a
    /// proxy that never reads cannot grow it.
    #[must_use]
    pub fn wants_input(&self) -> bool {
        self.state != State::Closed && self.out.len() < self.config.max_buffered_bytes
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

    /// The stream ended.
    pub fn handle_eof(&mut self, _now: Instant) {
        self.close_with(CloseReason::PeerClosed);
    }

    /// Closes the connection locally.
    pub fn close(&mut self) {
        self.close_with(CloseReason::Local);
    }

    /// Fires the handshake deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Handshaking { deadline } = self.state
            && now >= deadline
        {
            self.close_with(CloseReason::HandshakeTimeout);
        }
    }

    /// The handshake deadline while handshaking.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshaking { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// All bytes to write now, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// Answers the event `correlation_id`; the session writes the id into
    /// `audit.custom["correlation_id"]`, where the proxy routes by it. When the answer cannot
    /// be encoded (larger than the frame limit), nothing is written and the event stays in
    /// flight, to be answered otherwise.
    pub fn respond(
        &mut self,
        correlation_id: &str,
        response: AgentResponse,
    ) -> Result<(), SendError> {
        match self.state {
            State::Ready => {}
            State::Closed => return Err(SendError::Closed),
            State::Handshaking { .. } => return Err(SendError::NotReady),
        }
        if !self.in_flight.contains_key(correlation_id) {
            return Err(SendError::NotInFlight);
        }
        // Encode before counting the event out: an answer that cannot be written (larger than
        // the frame limit) used to take the event out of flight anyway, so no other answer was
        // accepted and the proxy waited for its deadline (fuzz target `agent_session`). The id
        // goes into `audit.custom` as the response is encoded, not into the map.
        encode_response(
            &response,
            correlation_id,
            self.format.encoding,
            self.config.max_frame_len,
            &mut self.out,
        )?;
        match self.in_flight.get_mut(correlation_id) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.in_flight.remove(correlation_id);
            }
        }
        self.in_flight_total -= 1;
        self.update_flow_control();
        Ok(())
    }

    /// Sends a flow-control signal.
    pub fn send_flow_control(&mut self, action: FlowAction, now: Instant) -> Result<(), SendError> {
        self.check_ready()?;
        let signal = FlowControlSignal {
            correlation_id: None,
            action,
            timestamp_ms: now.as_millis(),
        };
        self.encode(MessageType::FlowControl, &signal)
    }

    /// Sends a health report.
    pub fn send_health(&mut self, health: &HealthStatus) -> Result<(), SendError> {
        self.check_ready()?;
        self.encode(MessageType::HealthStatus, health)
    }

    /// Sends a metrics report.
    pub fn send_metrics(&mut self, metrics: &MetricsReport) -> Result<(), SendError> {
        self.check_ready()?;
        self.encode(MessageType::MetricsReport, metrics)
    }

    /// Sends a configuration update request.
    pub fn send_config_update(&mut self, request: &ConfigUpdateRequest) -> Result<(), SendError> {
        self.check_ready()?;
        self.encode(MessageType::ConfigUpdateRequest, request)
    }

    fn check_ready(&self) -> Result<(), SendError> {
        match self.state {
            State::Ready => Ok(()),
            State::Closed => Err(SendError::Closed),
            State::Handshaking { .. } => Err(SendError::NotReady),
        }
    }

    fn encode<T: serde::Serialize>(
        &mut self,
        kind: MessageType,
        value: &T,
    ) -> Result<(), SendError> {
        encode_frame_of(
            kind,
            value,
            self.format.encoding,
            self.config.max_frame_len,
            &mut self.out,
        )?;
        Ok(())
    }

    fn update_flow_control(&mut self) {
        if !self.config.auto_flow_control || self.state != State::Ready {
            return;
        }
        let high = self.config.capabilities.limits.max_concurrency as usize;
        if high == 0 {
            return;
        }
        let action = if !self.paused_proxy && self.in_flight_total >= high {
            FlowAction::Pause
        } else if self.paused_proxy && self.in_flight_total <= high / 2 {
            FlowAction::Resume
        } else {
            return;
        };
        self.paused_proxy = action == FlowAction::Pause;
        let signal = FlowControlSignal {
            correlation_id: None,
            action,
            timestamp_ms: 0,
        };
        // A failure to encode a three-field message is not possible in practice; if it were,
        // the proxy would simply not be paused.
        let _ = self.encode(MessageType::FlowControl, &signal);
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.in_flight.clear();
        self.in_flight_total = 0;
        self.events.push_back(AgentEvent::Closed(reason));
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

    fn handle_frame(&mut self, _now: Instant, frame: Frame) {
        match (self.state, frame.kind) {
            (State::Handshaking { .. }, MessageType::HandshakeRequest) => {
                self.handle_handshake(&frame.payload);
            }
            (State::Ready, MessageType::Ping) => {
                // The pong is the ping's payload byte for byte, whatever its encoding.
                if let Err(e) = encode_frame(
                    MessageType::Pong,
                    &frame.payload,
                    self.config.max_frame_len,
                    &mut self.out,
                ) {
                    self.close_with(CloseReason::Frame(e));
                }
            }
            (State::Ready, MessageType::Cancel) => self.handle_cancel(&frame.payload),
            (
                State::Ready,
                MessageType::RequestHeaders
                | MessageType::RequestBodyChunk
                | MessageType::ResponseHeaders
                | MessageType::ResponseBodyChunk
                | MessageType::RequestComplete
                | MessageType::WebSocketFrame
                | MessageType::GuardrailInspect
                | MessageType::Configure,
            ) => self.handle_event(frame),
            (_, other) => self.close_with(CloseReason::UnexpectedMessage(other)),
        }
    }

    fn handle_handshake(&mut self, payload: &[u8]) {
        let request: HandshakeRequest =
            match decode_message(MessageType::HandshakeRequest, payload, Encoding::Json) {
                Ok(r) => r,
                Err(e) => return self.close_with(CloseReason::Decode(e)),
            };
        let version_ok = request.supported_versions.is_empty()
            || request.supported_versions.contains(&PROTOCOL_VERSION);
        // agentwire proxies list every encoding in their own key; reference proxies only in
        // `supported_encodings`. The proxy's order decides; json is the fallback.
        let offered = if request.agentwire_encodings.is_empty() {
            &request.supported_encodings
        } else {
            &request.agentwire_encodings
        };
        let encoding = offered
            .iter()
            .copied()
            .find(|e| e.is_available() && self.config.encodings.contains(e))
            .unwrap_or(Encoding::Json);
        let response = HandshakeResponse {
            protocol_version: if version_ok { PROTOCOL_VERSION } else { 0 },
            capabilities: self.config.capabilities.clone(),
            success: version_ok,
            error: (!version_ok)
                .then(|| String::from("no common protocol version (agent speaks 2)")),
            encoding,
            agentwire: Some(AgentwireExtensions {
                raw_body_bytes: true,
            }),
        };
        if let Err(e) = encode_frame_of(
            MessageType::HandshakeResponse,
            &response,
            Encoding::Json,
            self.config.max_frame_len,
            &mut self.out,
        ) {
            let _ = e;
            return self.close_with(CloseReason::UnsupportedVersion);
        }
        if !version_ok {
            return self.close_with(CloseReason::UnsupportedVersion);
        }
        self.state = State::Ready;
        self.format = WireFormat {
            encoding,
            raw_body_bytes: true,
        };
        self.events.push_back(AgentEvent::Connected {
            request: Box::new(request),
            encoding,
        });
    }

    fn handle_cancel(&mut self, payload: &[u8]) {
        // The reference proxy writes Cancel in JSON whatever was negotiated (§3.3).
        let cancel: Cancel =
            match decode_message(MessageType::Cancel, payload, self.format.encoding)
                .or_else(|_| decode_message(MessageType::Cancel, payload, Encoding::Json))
            {
                Ok(c) => c,
                Err(e) => return self.close_with(CloseReason::Decode(e)),
            };
        if let Some(n) = self.in_flight.remove(&cancel.correlation_id) {
            self.in_flight_total -= n as usize;
            self.update_flow_control();
        }
        self.events.push_back(AgentEvent::Cancelled {
            correlation_id: cancel.correlation_id,
            reason: cancel.reason,
        });
    }

    fn handle_event(&mut self, frame: Frame) {
        if self.in_flight_total >= self.config.max_in_flight {
            return self.close_with(CloseReason::TooManyInFlight {
                limit: self.config.max_in_flight,
            });
        }
        match decode_event(frame.kind, &frame.payload, self.format.encoding) {
            Ok(event) => {
                self.track(event.correlation_id());
                self.events.push_back(AgentEvent::Request(event));
            }
            Err(error) => {
                let correlation_id = salvage_correlation_id(&frame.payload, self.format.encoding);
                if let Some(id) = &correlation_id {
                    let mut refusal = AgentResponse::with_decision(Decision::Block {
                        status: self.config.undecodable_status,
                        body: Some(String::from("agentwire: event could not be decoded")),
                        headers: None,
                    });
                    if frame.kind == MessageType::WebSocketFrame {
                        refusal.websocket_decision = Some(WebSocketDecision::Close {
                            code: 1008,
                            reason: String::from("undecodable frame"),
                        });
                    }
                    refusal.set_correlation_id(id);
                    if let Err(SendError::Encode(EncodeError::Frame(e))) =
                        self.encode(MessageType::AgentResponse, &refusal)
                    {
                        // The refusal does not fit in a frame (an id nearly as long as the
                        // frame limit): the event can never be answered, so end the connection
                        // instead of leaving the proxy to wait for its deadline (fuzz target
                        // `agent_session`).
                        self.events.push_back(AgentEvent::Undecodable {
                            correlation_id,
                            error,
                        });
                        return self.close_with(CloseReason::Frame(e));
                    }
                }
                self.events.push_back(AgentEvent::Undecodable {
                    correlation_id,
                    error,
                });
            }
        }
    }

    fn track(&mut self, id: &str) {
        match self.in_flight.get_mut(id) {
            Some(n) => *n += 1,
            None => {
                self.in_flight.insert(String::from(id), 1);
            }
        }
        self.in_flight_total += 1;
        self.update_flow_control();
    }
}
