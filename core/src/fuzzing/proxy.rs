//! The proxy session against an adversarial agent and an erratic driver.

use super::handshake::encodings_from;
use crate::encoding::encode_frame_of;
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, MessageType, encode_frame};
use crate::message::*;
use crate::session::{CloseReason, ProxyConfig, ProxyEvent, ProxySession, RequestError, SendError};
use crate::time::Instant;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use core::time::Duration;

/// Operations per input, so one input cannot run for long.
const MAX_OPS: usize = 512;

/// The agent id every scripted handshake announces.
const AGENT_ID: &str = "fuzz-agent";

#[derive(Arbitrary, Debug)]
struct Setup {
    /// Encodings offered (see `encodings_from`).
    encodings: u8,
    /// Deliver a configuration (the session then waits for its acknowledgement).
    configure: bool,
    /// `max_in_flight` = 1 + this % 16.
    max_in_flight: u8,
    /// `max_buffered_bytes` = 1024 + this.
    max_buffered: u16,
    /// `max_frame_len`: the default for 0, else 384 + 32 × this (a scripted handshake
    /// answer needs about 450 bytes).
    max_frame: u8,
    cancel_on_timeout: bool,
    /// `max_outstanding_pings` = this % 8.
    max_pings: u8,
    /// Timeouts in milliseconds (+1).
    request_timeout_ms: u16,
    handshake_timeout_ms: u16,
    configure_timeout_ms: u16,
    hello: Hello,
}

/// The agent's first frame.
#[derive(Arbitrary, Debug)]
enum Hello {
    /// A well-formed acceptance choosing the `encoding`-th offered encoding (or JSON), then,
    /// with `ack`, the configuration's acknowledgement.
    Valid {
        encoding: u8,
        max_concurrency: u8,
        raw_body_bytes: bool,
        ack: bool,
    },
    /// A well-formed refusal.
    Rejected,
    /// Any payload in a HandshakeResponse frame.
    Raw(Vec<u8>),
    /// Nothing yet: the operations decide.
    Nothing,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `send_event` (default timeout) or `send_event_with_timeout`.
    Send {
        id: u8,
        kind: u8,
        body: u8,
        timeout_ms: Option<u16>,
    },
    Cancel {
        id: u8,
        reason: u8,
    },
    CancelAll {
        reason: u8,
    },
    Ping,
    /// The agent answers (queued, delivered by `Deliver`): the configuration when
    /// `id % 13 == 12`, else for `id` below 128 one of the requests in flight (if any), else
    /// the id `id` names.
    Respond {
        id: u8,
        decision: u8,
    },
    /// The agent sends flow control: pause, resume, capacity, unspecified.
    Flow {
        action: u8,
        capacity: u8,
    },
    /// The agent sends a health, metrics or configuration-update report.
    Report {
        which: u8,
    },
    /// The agent sends a pong, in the negotiated encoding or in JSON.
    Pong {
        sequence: u8,
        json: bool,
    },
    /// The agent sends arbitrary bytes.
    Raw(Vec<u8>),
    /// The driver hands over the first `bytes` queued agent bytes (all for 0), through
    /// `handle_input` or `read_buffer` + `handle_read`.
    Deliver {
        bytes: u16,
        direct: bool,
    },
    /// The driver writes everything out.
    Flush,
    /// Time passes; the driver calls `handle_timeout`.
    Advance {
        ms: u16,
    },
    /// The driver sleeps until `poll_timeout` and calls `handle_timeout`.
    Deadline,
    Eof,
    Close,
}

fn correlation_id(n: u8) -> String {
    match n {
        0..=239 => format!("r{}", n % 12),
        240..=247 => String::new(),
        // Long ids, up to 512 bytes, to meet the frame limit.
        _ => "L".repeat(64 * usize::from(n - 247)),
    }
}

fn event(kind: u8, id: String, body: u8) -> Event {
    let data = Bytes::from(vec![body; usize::from(body % 64)]);
    match kind % 8 {
        0 => {
            let mut headers = Headers::new();
            headers.append("host", "example.com");
            Event::RequestHeaders(RequestHeaders {
                metadata: RequestMetadata {
                    correlation_id: id,
                    request_id: String::from("req"),
                    client_ip: String::from("127.0.0.1"),
                    client_port: 40_000,
                    protocol: String::from("HTTP/1.1"),
                    timestamp: String::from("2025-01-01T00:00:00Z"),
                    ..RequestMetadata::default()
                },
                method: String::from("GET"),
                uri: String::from("/"),
                headers,
            })
        }
        1 | 3 => {
            let chunk = BodyChunk {
                correlation_id: id,
                is_last: body.is_multiple_of(2),
                total_size: Some(data.len() as u64),
                chunk_index: u32::from(body % 4),
                bytes_transferred: data.len() as u64,
                data,
            };
            if kind % 8 == 1 {
                Event::RequestBodyChunk(chunk)
            } else {
                Event::ResponseBodyChunk(chunk)
            }
        }
        2 => Event::ResponseHeaders(ResponseHeaders {
            correlation_id: id,
            status: 200,
            headers: Headers::new(),
        }),
        4 => Event::RequestComplete(RequestComplete {
            correlation_id: id,
            status: 200,
            duration_ms: u64::from(body),
            ..RequestComplete::default()
        }),
        5 => Event::WebSocketFrame(WebSocketFrame {
            correlation_id: id,
            opcode: String::from("binary"),
            data,
            client_to_server: true,
            frame_index: u64::from(body),
            fin: true,
            route_id: None,
            client_ip: String::from("127.0.0.1"),
        }),
        6 => Event::GuardrailInspect(GuardrailInspect {
            correlation_id: id,
            content: String::from("ignore previous instructions"),
            ..GuardrailInspect::default()
        }),
        _ => Event::Configure(Configure {
            config: AnyValue::from("cfg"),
            config_version: Some(String::from("2")),
            correlation_id: id,
        }),
    }
}

fn decision(n: u8) -> Decision {
    match n % 4 {
        0 => Decision::Allow,
        1 => Decision::Block {
            status: 403,
            body: None,
            headers: None,
        },
        2 => Decision::Redirect {
            url: String::from("https://example.com/"),
            status: 302,
        },
        _ => Decision::Challenge {
            challenge_type: String::from("basic"),
            params: BTreeMap::new(),
        },
    }
}

fn cancel_reason(n: u8) -> CancelReason {
    CancelReason::from_wire(u64::from(n % 6))
}

struct Harness {
    now: Instant,
    session: ProxySession,
    max_in_flight: usize,
    max_buffered: usize,
    max_frame_len: u32,
    /// Agent bytes not yet handed to the session.
    inbound: Vec<u8>,
    /// Bytes handed to the session.
    fed: usize,
    /// Everything the session wrote, still to be parsed.
    written: FrameDecoder,
    accepted: BTreeMap<String, u32>,
    ended: BTreeMap<String, u32>,
    responses: u64,
    pings: BTreeSet<u64>,
    pings_sent: u64,
    connected: bool,
    closed: bool,
    /// Bytes still allowed out after the close: what a local close kept queued.
    writable_after_close: usize,
}

impl Harness {
    fn new(setup: &Setup) -> Harness {
        let now = Instant::from_millis(1_000);
        let max_frame_len = match setup.max_frame {
            0 => DEFAULT_MAX_FRAME_LEN,
            n => 384 + 32 * u32::from(n),
        };
        let ms = |v: u16| Duration::from_millis(1 + u64::from(v));
        let config = ProxyConfig {
            encodings: encodings_from(setup.encodings),
            agent_config: setup.configure.then(|| AnyValue::from("fuzz-config")),
            handshake_timeout: ms(setup.handshake_timeout_ms),
            configure_timeout: ms(setup.configure_timeout_ms),
            request_timeout: ms(setup.request_timeout_ms),
            max_frame_len,
            max_in_flight: 1 + usize::from(setup.max_in_flight % 16),
            max_buffered_bytes: 1024 + usize::from(setup.max_buffered),
            cancel_on_timeout: setup.cancel_on_timeout,
            max_outstanding_pings: usize::from(setup.max_pings % 8),
            ..ProxyConfig::default()
        };
        Harness {
            now,
            max_in_flight: config.max_in_flight,
            max_buffered: config.max_buffered_bytes,
            max_frame_len,
            session: ProxySession::new(config, now),
            inbound: Vec::new(),
            fed: 0,
            written: FrameDecoder::new(max_frame_len),
            accepted: BTreeMap::new(),
            ended: BTreeMap::new(),
            responses: 0,
            pings: BTreeSet::new(),
            pings_sent: 0,
            connected: false,
            closed: false,
            writable_after_close: 0,
        }
    }

    /// The encoding the agent writes in now.
    fn encoding(&self) -> Encoding {
        self.session.wire_format().encoding
    }

    fn queue<T: serde::Serialize>(&mut self, kind: MessageType, value: &T, encoding: Encoding) {
        let mut out = BytesMut::new();
        // A scripted message that does not encode (an absurdly small frame limit) is skipped.
        if encode_frame_of(kind, value, encoding, DEFAULT_MAX_FRAME_LEN, &mut out).is_ok() {
            self.inbound.extend_from_slice(&out);
        }
    }

    fn deliver(&mut self, bytes: usize, direct: bool) {
        let n = if bytes == 0 {
            self.inbound.len()
        } else {
            bytes.min(self.inbound.len())
        };
        let chunk: Vec<u8> = self.inbound.drain(..n).collect();
        if direct && !self.session.is_closed() {
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
                encoding,
                max_concurrency,
                raw_body_bytes,
                ack,
            } => {
                let offered: Vec<Encoding> = encodings_from(0xff)
                    .into_iter()
                    .filter(|e| e.is_available())
                    .collect();
                let encoding = offered[usize::from(*encoding) % offered.len()];
                let response = HandshakeResponse {
                    protocol_version: PROTOCOL_VERSION,
                    capabilities: Capabilities {
                        agent_id: String::from(AGENT_ID),
                        limits: Limits {
                            max_concurrency: u32::from(*max_concurrency),
                            ..Limits::default()
                        },
                        ..Capabilities::default()
                    },
                    success: true,
                    error: None,
                    encoding,
                    agentwire: Some(AgentwireExtensions {
                        raw_body_bytes: *raw_body_bytes,
                    }),
                };
                self.queue(MessageType::HandshakeResponse, &response, Encoding::Json);
                self.deliver(0, false);
                if *ack {
                    self.respond(CONFIGURE_SLOT, 0);
                    self.deliver(0, false);
                }
            }
            Hello::Rejected => {
                let response = HandshakeResponse {
                    error: Some(String::from("no")),
                    ..HandshakeResponse::default()
                };
                self.queue(MessageType::HandshakeResponse, &response, Encoding::Json);
                self.deliver(0, false);
            }
            Hello::Raw(payload) => {
                let mut out = BytesMut::new();
                if encode_frame(
                    MessageType::HandshakeResponse,
                    payload,
                    DEFAULT_MAX_FRAME_LEN,
                    &mut out,
                )
                .is_ok()
                {
                    self.inbound.extend_from_slice(&out);
                }
                self.deliver(0, false);
            }
            Hello::Nothing => {}
        }
    }

    fn outstanding(&self, id: &str) -> u32 {
        let accepted = self.accepted.get(id).copied().unwrap_or(0);
        let ended = self.ended.get(id).copied().unwrap_or(0);
        accepted - ended
    }

    fn respond(&mut self, id: u8, decision_byte: u8) {
        let mut response = AgentResponse::with_decision(decision(decision_byte));
        match decision_byte >> 4 {
            // No id at all, or a number where the id belongs: matches nothing.
            1 => {}
            2 => {
                response.audit.custom.insert(
                    String::from(CORRELATION_ID_KEY),
                    AnyValue(serde_json::Value::from(42)),
                );
            }
            _ if id % 13 == CONFIGURE_SLOT => {
                response.set_correlation_id(&format!("zentinel-configure-{AGENT_ID}-0"));
            }
            _ => {
                let outstanding: Vec<&String> = self
                    .accepted
                    .keys()
                    .filter(|k| self.outstanding(k) > 0)
                    .collect();
                match outstanding.get(usize::from(id) % outstanding.len().max(1)) {
                    Some(held) if id < 128 => {
                        let held = String::clone(held);
                        response.set_correlation_id(&held);
                    }
                    _ => response.set_correlation_id(&correlation_id(id)),
                }
            }
        }
        let encoding = self.encoding();
        self.queue(MessageType::AgentResponse, &response, encoding);
    }

    fn send(&mut self, id: u8, kind: u8, body: u8, timeout_ms: Option<u16>) {
        let id = correlation_id(id);
        let event = event(kind, id.clone(), body);
        let before = (self.session.buffered_bytes(), self.session.in_flight());
        let (ready, paused) = (self.session.is_ready(), self.session.is_paused());
        let limit = self.session.in_flight_limit();
        let result = match timeout_ms {
            None => self.session.send_event(self.now, &event),
            Some(ms) => self.session.send_event_with_timeout(
                self.now,
                &event,
                Duration::from_millis(u64::from(ms)),
            ),
        };
        match result {
            Ok(()) => {
                assert!(ready && !paused, "accepted while not ready or paused");
                assert!(!id.is_empty() && self.outstanding(&id) == 0);
                assert!(before.1 < limit, "accepted beyond the in-flight limit");
                assert!(before.0 < self.max_buffered, "accepted under backpressure");
                *self.accepted.entry(id).or_default() += 1;
                assert_eq!(self.session.in_flight(), before.1 + 1);
            }
            Err(e) => {
                match &e {
                    SendError::Closed => assert!(self.session.is_closed()),
                    SendError::NotReady => assert!(!ready && !self.session.is_closed()),
                    SendError::Paused => assert!(paused),
                    SendError::TooManyInFlight { limit: l } => {
                        assert_eq!(*l, limit);
                        assert!(before.1 >= limit);
                    }
                    SendError::DuplicateCorrelationId => assert_eq!(self.outstanding(&id), 1),
                    SendError::EmptyCorrelationId => assert!(id.is_empty()),
                    SendError::Backpressure { buffered } => {
                        assert!(*buffered >= self.max_buffered);
                    }
                    // Only an event larger than the frame limit.
                    SendError::Encode(_) => assert!(self.max_frame_len < DEFAULT_MAX_FRAME_LEN),
                    other => panic!("unexpected send error {other:?}"),
                }
                assert_eq!(
                    (self.session.buffered_bytes(), self.session.in_flight()),
                    before,
                    "a refused send changed the session ({e:?})"
                );
            }
        }
    }

    fn timeout(&mut self) {
        self.session.handle_timeout(self.now);
        if let Some(next) = self.session.poll_timeout() {
            assert!(
                next > self.now,
                "handle_timeout left a deadline in the past"
            );
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Send {
                id,
                kind,
                body,
                timeout_ms,
            } => self.send(id, kind, body, timeout_ms),
            Op::Cancel { id, reason } => {
                let id = correlation_id(id);
                let _ = self.session.cancel(self.now, &id, cancel_reason(reason));
            }
            Op::CancelAll { reason } => {
                if self
                    .session
                    .cancel_all(self.now, cancel_reason(reason))
                    .is_ok()
                {
                    assert_eq!(self.session.in_flight(), 0, "cancel_all left requests");
                }
            }
            Op::Ping => {
                if let Ok(sequence) = self.session.ping(self.now) {
                    assert_eq!(sequence, self.pings_sent, "ping sequence skipped");
                    self.pings_sent += 1;
                    self.pings.insert(sequence);
                }
            }
            Op::Respond { id, decision } => self.respond(id, decision),
            Op::Flow { action, capacity } => {
                let action = match action % 4 {
                    0 => FlowAction::Pause,
                    1 => FlowAction::Resume,
                    2 => FlowAction::UpdateCapacity {
                        buffer_available: u64::from(capacity),
                    },
                    _ => FlowAction::Unspecified,
                };
                let signal = FlowControlSignal {
                    correlation_id: None,
                    action,
                    timestamp_ms: 0,
                };
                let encoding = self.encoding();
                self.queue(MessageType::FlowControl, &signal, encoding);
            }
            Op::Report { which } => {
                let encoding = self.encoding();
                match which % 3 {
                    0 => self.queue(
                        MessageType::HealthStatus,
                        &HealthStatus {
                            agent_id: String::from(AGENT_ID),
                            state: HealthState::Healthy,
                            ..HealthStatus::default()
                        },
                        encoding,
                    ),
                    1 => self.queue(
                        MessageType::MetricsReport,
                        &MetricsReport {
                            agent_id: String::from(AGENT_ID),
                            ..MetricsReport::default()
                        },
                        encoding,
                    ),
                    _ => self.queue(
                        MessageType::ConfigUpdateRequest,
                        &ConfigUpdateRequest {
                            update_type: ConfigUpdateType::RequestReload,
                            request_id: String::from("u1"),
                            timestamp_ms: 0,
                        },
                        encoding,
                    ),
                }
            }
            Op::Pong { sequence, json } => {
                let encoding = if json {
                    Encoding::Json
                } else {
                    self.encoding()
                };
                let ping = Ping {
                    sequence: u64::from(sequence),
                    timestamp_ms: 0,
                };
                self.queue(MessageType::Pong, &ping, encoding);
            }
            Op::Raw(bytes) => self.inbound.extend_from_slice(&bytes),
            Op::Deliver { bytes, direct } => self.deliver(usize::from(bytes), direct),
            Op::Flush => self.flush(),
            Op::Advance { ms } => {
                self.now = self
                    .now
                    .saturating_add(Duration::from_millis(u64::from(ms)));
                self.timeout();
            }
            Op::Deadline => {
                if let Some(at) = self.session.poll_timeout() {
                    self.now = self.now.max(at);
                    self.timeout();
                }
            }
            Op::Eof => self.session.handle_eof(self.now),
            Op::Close => self.session.close(),
        }
    }

    /// Writes everything out; every frame the session writes is well formed and within its
    /// own limit.
    fn flush(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.written.extend(&bytes);
        }
        if self.closed {
            self.writable_after_close = 0;
        }
        loop {
            match self.written.decode() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the proxy wrote a frame it would refuse: {e}"),
            }
        }
    }

    /// Drains the events and checks every invariant.
    fn check(&mut self) {
        while let Some(event) = self.session.poll_event() {
            assert!(!self.closed, "event after Closed: {event:?}");
            match event {
                ProxyEvent::Connected { .. } => {
                    assert!(!self.connected, "connected twice");
                    self.connected = true;
                }
                ProxyEvent::Response { correlation_id, .. } => {
                    self.responses += 1;
                    self.end(correlation_id);
                }
                ProxyEvent::Failed {
                    correlation_id,
                    error,
                } => {
                    if matches!(error, RequestError::ConnectionClosed(_)) {
                        assert!(self.session.is_closed());
                    }
                    self.end(correlation_id);
                }
                ProxyEvent::Pong { sequence, .. } => {
                    assert!(self.pings.remove(&sequence), "pong for no ping {sequence}");
                }
                // Valid from the handshake's acceptance on, so possibly before `Connected`
                // when a configuration is being delivered.
                ProxyEvent::FlowControl(_)
                | ProxyEvent::Health(_)
                | ProxyEvent::Metrics(_)
                | ProxyEvent::ConfigUpdate(_) => {}
                ProxyEvent::Closed(reason) => {
                    assert!(self.session.is_closed());
                    self.closed = true;
                    // Only a local close keeps what was queued before it, for the driver to
                    // flush; after a failure nothing more is written.
                    self.writable_after_close = if reason == CloseReason::Local {
                        self.session.buffered_bytes()
                    } else {
                        0
                    };
                }
            }
        }
        let outstanding: u32 = self.accepted.keys().map(|id| self.outstanding(id)).sum();
        assert_eq!(
            self.session.in_flight(),
            outstanding as usize,
            "in flight ≠ accepted − ended"
        );
        assert!(self.session.in_flight() <= self.max_in_flight);
        let stats = self.session.stats();
        assert_eq!(
            stats.events_sent,
            self.accepted.values().map(|n| u64::from(*n)).sum::<u64>()
        );
        assert_eq!(stats.responses, self.responses);
        // One maximal frame (length prefix + `max_frame_len`) past the backpressure mark.
        let bound = self.max_buffered + 4 + self.max_frame_len as usize;
        assert!(
            self.session.buffered_bytes() < bound,
            "write buffer {} ≥ {bound}",
            self.session.buffered_bytes()
        );
        let retained = self.session.read_buffer().len();
        assert!(
            retained <= self.fed,
            "decoder holds {retained} > {} fed",
            self.fed
        );
        if self.session.is_closed() {
            assert!(self.closed, "closed without a Closed event");
            assert!(
                self.session.buffered_bytes() <= self.writable_after_close,
                "wrote after the close"
            );
            assert_eq!(self.session.poll_timeout(), None);
        }
    }

    fn end(&mut self, id: String) {
        assert!(
            self.outstanding(&id) == 1,
            "{id:?} ended without being in flight"
        );
        *self.ended.entry(id).or_default() += 1;
    }

    /// Closes the session: every accepted request has ended exactly once.
    fn finish(mut self) {
        self.session.close();
        self.check();
        assert!(self.closed);
        for (id, accepted) in &self.accepted {
            assert_eq!(
                self.ended.get(id),
                Some(accepted),
                "{id:?}: accepted {accepted} times"
            );
        }
        assert_eq!(
            self.session
                .send_event(self.now, &event(0, String::from("z"), 0)),
            Err(SendError::Closed)
        );
    }
}

/// The `id` whose answer acknowledges the configuration.
const CONFIGURE_SLOT: u8 = 12;

/// Target `proxy_session`: an `arbitrary`-built set-up (encodings, limits, timeouts, the
/// agent's handshake) and up to 512 operations interleaving the driver's sends, cancels,
/// pings, flushes, clock ticks and deadlines with the agent's frames (well-formed answers,
/// flow control, reports, pongs, or raw bytes) delivered in arbitrary splits.
///
/// After every operation: the in-flight count is exactly the accepted requests not yet
/// ended, and never above `max_in_flight`; a request ends (`Response` or `Failed`) only while
/// in flight; a refused send changes nothing; `Closed` comes once and last; the write buffer
/// stays below `max_buffered_bytes` plus one maximal frame; every written frame is within
/// the frame limit; the decoder holds at most what it was fed; `handle_timeout` leaves no
/// deadline in the past. At the end every accepted request has ended exactly once.
pub fn proxy_session(data: &[u8]) {
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
