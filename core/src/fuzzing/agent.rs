//! The agent session against an adversarial proxy and an erratic handler.

use super::handshake::encodings_from;
use crate::encoding::{WireFormat, decode_message, encode_event, encode_frame_of};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, FrameError, MessageType, encode_frame};
use crate::message::*;
use crate::session::{AgentConfig, AgentEvent, AgentSession, CloseReason, SendError};
use crate::time::Instant;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use core::time::Duration;

/// Operations per input.
const MAX_OPS: usize = 512;

/// The status of the agent's refusal of an undecodable event.
const UNDECODABLE_STATUS: u16 = 500;

#[derive(Arbitrary, Debug)]
struct Setup {
    /// Encodings the agent speaks (see `encodings_from`).
    encodings: u8,
    /// `limits.max_concurrency` = this % 12 (the automatic flow-control mark; 0 = none).
    max_concurrency: u8,
    /// The hard cap: 1 + this % 16.
    max_in_flight: u8,
    auto_flow_control: bool,
    /// `max_buffered_bytes` = 256 + this.
    max_buffered: u16,
    /// `max_frame_len`: the default for 0, else 512 + 64 × this.
    max_frame: u8,
    hello: Hello,
}

/// The proxy's first frame.
#[derive(Arbitrary, Debug)]
enum Hello {
    /// A well-formed HandshakeRequest offering `offer` (see `encodings_from`), in agentwire's
    /// key or only in the reference's, with version 2 or not.
    Valid {
        offer: u8,
        agentwire: bool,
        version_two: bool,
    },
    /// Any payload in a HandshakeRequest frame.
    Raw(Vec<u8>),
    /// Nothing yet: the operations decide.
    Nothing,
}

/// How an event frame is damaged on its way.
#[derive(Arbitrary, Debug)]
enum Damage {
    None,
    /// Only the first `n` payload bytes (the frame's length matches).
    Truncate(u16),
    /// One payload byte XORed.
    Flip {
        at: u16,
        xor: u8,
    },
    /// The payload under another event type.
    Retype(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// The proxy sends an event (in the negotiated encoding, body bytes raw or as base64),
    /// possibly damaged.
    Event {
        kind: u8,
        id: u8,
        body: u8,
        raw_body: bool,
        damage: Damage,
    },
    /// The proxy cancels, in the negotiated encoding or in JSON (as the reference does).
    Cancel {
        id: u8,
        reason: u8,
        json: bool,
    },
    /// The proxy pings with an arbitrary payload.
    Ping(Vec<u8>),
    /// The proxy sends arbitrary bytes.
    Raw(Vec<u8>),
    /// The driver hands over queued proxy bytes (all for 0), when the session wants input.
    Deliver {
        bytes: u16,
        direct: bool,
    },
    /// The handler answers: for `id` below 128 one of the events in flight (if any), else
    /// the id `id` names, in flight or not.
    Respond {
        id: u8,
        decision: u8,
    },
    /// The handler sends flow control.
    Flow {
        action: u8,
    },
    /// The handler sends a health, metrics or configuration-update report.
    Report {
        which: u8,
    },
    /// The driver writes everything out.
    Flush,
    Advance {
        ms: u16,
    },
    Eof,
    Close,
}

fn correlation_id(n: u8) -> String {
    match n {
        0..=243 => format!("e{}", n % 10),
        244..=247 => String::new(),
        _ => "K".repeat(100 * usize::from(n - 247)),
    }
}

fn decision(n: u8) -> Decision {
    match n % 3 {
        0 => Decision::Allow,
        1 => Decision::Block {
            status: 403,
            body: None,
            headers: None,
        },
        _ => Decision::Redirect {
            url: String::from("https://example.com/"),
            status: 302,
        },
    }
}

/// The refusal of an undecodable event is a Block with the configured status and this body.
fn is_refusal(response: &AgentResponse) -> bool {
    matches!(
        &response.decision,
        Decision::Block { status: UNDECODABLE_STATUS, body: Some(body), .. }
            if body == "agentwire: event could not be decoded"
    )
}

struct Harness {
    now: Instant,
    session: AgentSession,
    max_in_flight: usize,
    /// Whether automatic flow control is on (with a non-zero mark) and no manual signal was
    /// sent, so pause and resume must alternate.
    flow_alternates: bool,
    inbound: Vec<u8>,
    fed: usize,
    /// What the session wrote, parsed at each flush.
    written: FrameDecoder,
    /// The encoding of written frames after the handshake answer.
    encoding: Option<Encoding>,
    /// Frames parsed from what the session wrote.
    frames_written: usize,
    /// Events delivered to the handler and not yet answered or cancelled, per id.
    in_flight: BTreeMap<String, u32>,
    /// Refusals owed, per id, with the type of the undecodable event, in order.
    refusals_owed: BTreeMap<String, VecDeque<MessageType>>,
    /// Answers given through `respond`, per id, not yet seen on the wire.
    answers_owed: BTreeMap<String, u32>,
    /// Ping payloads sent, in order; pongs must echo them in order.
    pings: VecDeque<Vec<u8>>,
    paused: bool,
    connected: bool,
    closed: bool,
    close_reason: Option<CloseReason>,
}

impl Harness {
    fn new(setup: &Setup) -> Harness {
        let now = Instant::from_millis(1_000);
        let max_concurrency = u32::from(setup.max_concurrency % 12);
        let config = AgentConfig {
            capabilities: Capabilities {
                agent_id: String::from("fuzz-agent"),
                limits: Limits {
                    max_concurrency,
                    ..Limits::default()
                },
                ..Capabilities::default()
            },
            encodings: encodings_from(setup.encodings),
            handshake_timeout: Duration::from_secs(10),
            max_in_flight: 1 + usize::from(setup.max_in_flight % 16),
            auto_flow_control: setup.auto_flow_control,
            undecodable_status: UNDECODABLE_STATUS,
            max_buffered_bytes: 256 + usize::from(setup.max_buffered),
            max_frame_len: match setup.max_frame {
                0 => DEFAULT_MAX_FRAME_LEN,
                n => 512 + 64 * u32::from(n),
            },
        };
        Harness {
            now,
            max_in_flight: config.max_in_flight,
            flow_alternates: setup.auto_flow_control && max_concurrency > 0,
            session: AgentSession::new(config, now),
            inbound: Vec::new(),
            fed: 0,
            written: FrameDecoder::new(DEFAULT_MAX_FRAME_LEN),
            encoding: None,
            frames_written: 0,
            in_flight: BTreeMap::new(),
            refusals_owed: BTreeMap::new(),
            answers_owed: BTreeMap::new(),
            pings: VecDeque::new(),
            paused: false,
            connected: false,
            closed: false,
            close_reason: None,
        }
    }

    fn format(&self, raw_body_bytes: bool) -> WireFormat {
        WireFormat {
            encoding: self.session.wire_format().encoding,
            raw_body_bytes,
        }
    }

    fn queue_frame(&mut self, kind: MessageType, payload: &[u8]) {
        let mut out = BytesMut::new();
        if encode_frame(kind, payload, DEFAULT_MAX_FRAME_LEN, &mut out).is_ok() {
            self.inbound.extend_from_slice(&out);
        }
    }

    fn queue<T: serde::Serialize>(&mut self, kind: MessageType, value: &T, encoding: Encoding) {
        let mut out = BytesMut::new();
        if encode_frame_of(kind, value, encoding, DEFAULT_MAX_FRAME_LEN, &mut out).is_ok() {
            self.inbound.extend_from_slice(&out);
        }
    }

    fn deliver(&mut self, bytes: usize, direct: bool) {
        if !self.session.wants_input() {
            return;
        }
        let n = if bytes == 0 {
            self.inbound.len()
        } else {
            bytes.min(self.inbound.len())
        };
        let chunk: Vec<u8> = self.inbound.drain(..n).collect();
        if direct {
            self.session.read_buffer().extend_from_slice(&chunk);
            self.session.handle_read(self.now);
        } else {
            self.session.handle_input(self.now, &chunk);
        }
        self.fed += n;
    }

    fn hello(&mut self, hello: &Hello) {
        match hello {
            Hello::Valid {
                offer,
                agentwire,
                version_two,
            } => {
                let offered = encodings_from(*offer);
                let request = HandshakeRequest {
                    supported_versions: if *version_two {
                        alloc::vec![PROTOCOL_VERSION]
                    } else {
                        alloc::vec![1, 3]
                    },
                    proxy_id: String::from("fuzz-proxy"),
                    proxy_version: String::from("0"),
                    config: AnyValue::NULL,
                    supported_encodings: offered
                        .iter()
                        .copied()
                        .filter(|e| *e != Encoding::Postcard)
                        .collect(),
                    agentwire_encodings: if *agentwire { offered } else { Vec::new() },
                };
                self.queue(MessageType::HandshakeRequest, &request, Encoding::Json);
                self.deliver(0, false);
            }
            Hello::Raw(payload) => {
                self.queue_frame(MessageType::HandshakeRequest, payload);
                self.deliver(0, false);
            }
            Hello::Nothing => {}
        }
    }

    fn event_frame(&mut self, kind: u8, id: u8, body: u8, raw_body: bool, damage: Damage) {
        let id = correlation_id(id);
        let data = Bytes::from(alloc::vec![body; usize::from(body % 48)]);
        let event = match kind % 6 {
            0 => Event::RequestHeaders(RequestHeaders {
                metadata: RequestMetadata {
                    correlation_id: id,
                    ..RequestMetadata::default()
                },
                method: String::from("POST"),
                uri: String::from("/x"),
                headers: Headers::new(),
            }),
            1 => Event::RequestBodyChunk(BodyChunk {
                correlation_id: id,
                data,
                is_last: body.is_multiple_of(2),
                ..BodyChunk::default()
            }),
            2 => Event::ResponseHeaders(ResponseHeaders {
                correlation_id: id,
                status: 200,
                headers: Headers::new(),
            }),
            3 => Event::WebSocketFrame(WebSocketFrame {
                correlation_id: id,
                opcode: String::from("text"),
                data,
                fin: true,
                ..WebSocketFrame::default()
            }),
            4 => Event::GuardrailInspect(GuardrailInspect {
                correlation_id: id,
                content: String::from("hi"),
                ..GuardrailInspect::default()
            }),
            _ => Event::Configure(Configure {
                correlation_id: id,
                ..Configure::default()
            }),
        };
        let mut out = BytesMut::new();
        if encode_event(
            &event,
            self.format(raw_body),
            DEFAULT_MAX_FRAME_LEN,
            &mut out,
        )
        .is_err()
        {
            return;
        }
        let mut payload = out.split_off(crate::frame::HEADER_LEN).to_vec();
        let mut kind = event.message_type();
        match damage {
            Damage::None => {}
            Damage::Truncate(n) => payload.truncate(usize::from(n)),
            Damage::Flip { at, xor } => {
                if !payload.is_empty() {
                    let at = usize::from(at) % payload.len();
                    payload[at] ^= xor;
                }
            }
            Damage::Retype(n) => {
                const EVENTS: [MessageType; 8] = [
                    MessageType::RequestHeaders,
                    MessageType::RequestBodyChunk,
                    MessageType::ResponseHeaders,
                    MessageType::ResponseBodyChunk,
                    MessageType::RequestComplete,
                    MessageType::WebSocketFrame,
                    MessageType::GuardrailInspect,
                    MessageType::Configure,
                ];
                kind = EVENTS[usize::from(n) % EVENTS.len()];
            }
        }
        self.queue_frame(kind, &payload);
    }

    fn respond(&mut self, id: u8, decision_byte: u8) {
        let id = match self
            .in_flight
            .keys()
            .nth(usize::from(id) % self.in_flight.len().max(1))
        {
            Some(held) if id < 128 => held.clone(),
            _ => correlation_id(id),
        };
        let ready = self.session.is_ready();
        let before = self.session.in_flight();
        let result = self
            .session
            .respond(&id, AgentResponse::with_decision(decision(decision_byte)));
        let held = self.in_flight.get(&id).copied().unwrap_or(0);
        match result {
            Ok(()) => {
                assert!(held > 0, "answered {id:?}, which is not in flight");
                assert_eq!(self.session.in_flight(), before - 1);
                if held == 1 {
                    self.in_flight.remove(&id);
                } else {
                    self.in_flight.insert(id.clone(), held - 1);
                }
                *self.answers_owed.entry(id).or_default() += 1;
            }
            Err(SendError::NotInFlight) => assert_eq!(held, 0, "{id:?} is in flight"),
            Err(SendError::Closed) => assert!(self.session.is_closed()),
            Err(SendError::NotReady) => assert!(!ready),
            Err(SendError::Encode(_)) => {
                // Nothing was answered, so the request must still be waiting for an answer.
                assert!(held > 0, "{id:?} not in flight, yet not NotInFlight");
                assert_eq!(
                    self.session.in_flight(),
                    before,
                    "a failed answer took {id:?} out of flight"
                );
            }
            Err(e) => panic!("respond failed: {e}"),
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Event {
                kind,
                id,
                body,
                raw_body,
                damage,
            } => self.event_frame(kind, id, body, raw_body, damage),
            Op::Cancel { id, reason, json } => {
                let cancel = Cancel {
                    correlation_id: correlation_id(id),
                    reason: CancelReason::from_wire(u64::from(reason % 6)),
                    timestamp_ms: 0,
                };
                let encoding = if json {
                    Encoding::Json
                } else {
                    self.session.wire_format().encoding
                };
                self.queue(MessageType::Cancel, &cancel, encoding);
            }
            Op::Ping(payload) => {
                self.queue_frame(MessageType::Ping, &payload);
                self.pings.push_back(payload);
            }
            Op::Raw(bytes) => self.inbound.extend_from_slice(&bytes),
            Op::Deliver { bytes, direct } => self.deliver(usize::from(bytes), direct),
            Op::Respond { id, decision } => self.respond(id, decision),
            Op::Flow { action } => {
                let action = match action % 3 {
                    0 => FlowAction::Pause,
                    1 => FlowAction::Resume,
                    _ => FlowAction::UpdateCapacity {
                        buffer_available: u64::from(action),
                    },
                };
                if self.session.send_flow_control(action, self.now).is_ok() {
                    self.flow_alternates = false;
                }
            }
            Op::Report { which } => {
                let _ = match which % 3 {
                    0 => self.session.send_health(&HealthStatus::default()),
                    1 => self.session.send_metrics(&MetricsReport::default()),
                    _ => self.session.send_config_update(&ConfigUpdateRequest {
                        update_type: ConfigUpdateType::RequestReload,
                        request_id: String::from("u"),
                        timestamp_ms: 0,
                    }),
                };
            }
            Op::Flush => self.flush(),
            Op::Advance { ms } => {
                self.now = self
                    .now
                    .saturating_add(Duration::from_millis(u64::from(ms)));
                self.session.handle_timeout(self.now);
            }
            Op::Eof => self.session.handle_eof(self.now),
            Op::Close => self.session.close(),
        }
    }

    /// Drains the events into the model.
    fn drain_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            assert!(!self.closed, "event after Closed: {event:?}");
            match event {
                AgentEvent::Connected { encoding, .. } => {
                    assert!(!self.connected, "connected twice");
                    self.connected = true;
                    self.encoding = Some(encoding);
                }
                AgentEvent::Request(event) => {
                    assert!(self.connected);
                    *self
                        .in_flight
                        .entry(String::from(event.correlation_id()))
                        .or_default() += 1;
                }
                AgentEvent::Cancelled { correlation_id, .. } => {
                    self.in_flight.remove(&correlation_id);
                }
                AgentEvent::Undecodable {
                    correlation_id,
                    error,
                } => {
                    if let Some(id) = correlation_id {
                        assert!(!id.is_empty(), "salvaged an empty id");
                        self.refusals_owed
                            .entry(id)
                            .or_default()
                            .push_back(error.kind);
                    }
                }
                AgentEvent::Closed(reason) => {
                    assert!(self.session.is_closed());
                    self.closed = true;
                    self.close_reason = Some(reason);
                    self.in_flight.clear();
                }
            }
        }
    }

    /// Takes everything written and checks it: the handshake answer, then only answers the
    /// handler gave, refusals owed for undecodable events (never Allow), pongs echoing pings in
    /// order, alternating automatic flow control and the handler's reports.
    fn flush(&mut self) {
        self.drain_events();
        while let Some(bytes) = self.session.poll_transmit() {
            self.written.extend(&bytes);
        }
        loop {
            let frame = match self.written.decode() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => panic!("the agent wrote a bad frame: {e}"),
            };
            self.frames_written += 1;
            if frame.kind == MessageType::HandshakeResponse {
                assert_eq!(self.frames_written, 1, "a second handshake answer");
                continue;
            }
            let encoding = self
                .encoding
                .unwrap_or_else(|| panic!("{} before the handshake", frame.kind));
            match frame.kind {
                MessageType::AgentResponse => {
                    let response: AgentResponse =
                        decode_message(frame.kind, &frame.payload, encoding)
                            .unwrap_or_else(|e| panic!("unreadable answer: {e}"));
                    let id = String::from(response.correlation_id().unwrap_or_else(|| {
                        panic!("answer without a correlation id: {response:?}")
                    }));
                    if is_refusal(&response) {
                        let kind = self
                            .refusals_owed
                            .get_mut(&id)
                            .and_then(VecDeque::pop_front)
                            .unwrap_or_else(|| panic!("refusal of {id:?} nobody owed"));
                        assert_eq!(
                            response.websocket_decision.is_some(),
                            kind == MessageType::WebSocketFrame,
                            "WebSocket refusals close the socket, others have no verdict"
                        );
                    } else {
                        let owed = self.answers_owed.entry(id.clone()).or_default();
                        assert!(*owed > 0, "answer for {id:?} the handler never gave");
                        *owed -= 1;
                    }
                }
                MessageType::Pong => {
                    let ping = self.pings.iter().position(|p| p[..] == frame.payload[..]);
                    let at = ping.unwrap_or_else(|| panic!("pong echoes no ping"));
                    // Pings before the echoed one were lost to damage or a close.
                    self.pings.drain(..=at);
                }
                MessageType::FlowControl => {
                    let signal: FlowControlSignal =
                        decode_message(frame.kind, &frame.payload, encoding)
                            .unwrap_or_else(|e| panic!("unreadable flow control: {e}"));
                    if self.flow_alternates {
                        match signal.action {
                            FlowAction::Pause => assert!(!self.paused, "paused twice"),
                            FlowAction::Resume => assert!(self.paused, "resumed twice"),
                            other => panic!("automatic flow control sent {other:?}"),
                        }
                        self.paused = signal.action == FlowAction::Pause;
                    }
                }
                MessageType::HealthStatus
                | MessageType::MetricsReport
                | MessageType::ConfigUpdateRequest => {}
                other => panic!("the agent wrote {other}"),
            }
        }
        assert_eq!(
            self.written.buffered(),
            0,
            "the agent wrote a partial frame"
        );
        // Everything owed was written: nothing is held back, nothing is lost. A refusal too
        // large for a frame is replaced by closing the connection (the proxy then fails the
        // request at once instead of waiting for its deadline).
        let unframable = matches!(
            self.close_reason,
            Some(CloseReason::Frame(FrameError::FrameTooLarge { .. }))
        );
        for (id, kinds) in &self.refusals_owed {
            assert!(
                kinds.is_empty() || unframable,
                "undecodable {kinds:?} of {id:?} not answered"
            );
        }
        for (id, n) in &self.answers_owed {
            assert_eq!(*n, 0, "{n} answers to {id:?} not written");
        }
    }

    fn check(&mut self) {
        self.drain_events();
        let total: u32 = self.in_flight.values().sum();
        assert_eq!(
            self.session.in_flight(),
            total as usize,
            "in flight ≠ delivered − answered − cancelled"
        );
        assert!(
            self.session.in_flight() <= self.max_in_flight,
            "over the hard cap"
        );
        let retained = self.session.read_buffer().len();
        assert!(
            retained <= self.fed,
            "decoder holds {retained} > {} fed",
            self.fed
        );
        if self.session.is_closed() {
            assert!(self.closed, "closed without a Closed event");
            assert!(!self.session.wants_input());
        }
    }

    fn finish(mut self) {
        self.session.close();
        self.flush();
        self.check();
        assert!(self.closed);
        assert_eq!(self.session.in_flight(), 0);
    }
}

/// Target `agent_session`: an `arbitrary`-built set-up (encodings, flow-control mark, hard
/// cap, the proxy's handshake) and up to 512 operations interleaving the proxy's events
/// (well-formed, truncated, bit-flipped or under the wrong type), cancels, pings and raw
/// bytes, delivered in arbitrary splits while the session wants input, with the handler's
/// answers, flow control, reports, flushes and clock ticks.
///
/// After every operation: the in-flight count is exactly the events delivered and not yet
/// answered or cancelled, never above the hard cap; `Closed` comes once and last; the decoder
/// holds at most what it was fed; an answer that fails leaves its event in flight. On the
/// wire: every undecodable event whose id was salvaged is answered exactly once with a Block
/// (WebSocket frames also with a close verdict), never an Allow — or, when that Block cannot
/// be framed, the connection closes; every other answer is one the handler gave; pongs echo
/// pings byte for byte, in order; automatic pause and resume alternate.
pub fn agent_session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut harness = Harness::new(&setup);
    harness.hello(&setup.hello);
    harness.check();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        harness.apply(op);
        harness.check();
    }
    harness.finish();
}
