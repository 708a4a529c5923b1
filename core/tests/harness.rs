//! Deterministic two-endpoint harness: a proxy session and an agent session wired back to
//! back with a virtual clock, no sockets and no threads.

use agentwire_core::encoding::WireFormat;
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, MessageType, encode_frame};
use agentwire_core::message::*;
use agentwire_core::session::*;
use agentwire_core::time::Instant;
use bytes::{Bytes, BytesMut};
use core::time::Duration;

struct Pair {
    now: Instant,
    proxy: ProxySession,
    agent: AgentSession,
    proxy_events: Vec<ProxyEvent>,
    agent_events: Vec<AgentEvent>,
}

fn capabilities(max_concurrency: u32) -> Capabilities {
    Capabilities {
        agent_id: "test-agent".into(),
        name: "Test".into(),
        version: "1".into(),
        supported_events: vec![1, 2, 3, 4, 5, 6, 7, 8],
        features: Features::default(),
        limits: Limits {
            max_concurrency,
            ..Limits::default()
        },
    }
}

impl Pair {
    fn new(proxy_config: ProxyConfig, agent_config: AgentConfig) -> Pair {
        let now = Instant::from_millis(1_000);
        let mut pair = Pair {
            now,
            proxy: ProxySession::new(proxy_config, now),
            agent: AgentSession::new(agent_config, now),
            proxy_events: Vec::new(),
            agent_events: Vec::new(),
        };
        pair.pump();
        pair
    }

    fn with_encodings(proxy: &[Encoding], agent: &[Encoding]) -> Pair {
        Pair::new(
            ProxyConfig {
                encodings: proxy.to_vec(),
                ..ProxyConfig::default()
            },
            AgentConfig {
                capabilities: capabilities(100),
                encodings: agent.to_vec(),
                ..AgentConfig::default()
            },
        )
    }

    /// Moves bytes both ways until nothing moves; bounded so a bug cannot spin forever.
    fn pump(&mut self) {
        for _ in 0..1_000 {
            let mut moved = false;
            while let Some(bytes) = self.proxy.poll_transmit() {
                self.agent.handle_input(self.now, &bytes);
                moved = true;
            }
            while let Some(bytes) = self.agent.poll_transmit() {
                self.proxy.handle_input(self.now, &bytes);
                moved = true;
            }
            while let Some(e) = self.proxy.poll_event() {
                self.proxy_events.push(e);
                moved = true;
            }
            while let Some(e) = self.agent.poll_event() {
                self.agent_events.push(e);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn advance(&mut self, by: Duration) {
        self.now = self.now.saturating_add(by);
        self.proxy.handle_timeout(self.now);
        self.agent.handle_timeout(self.now);
        self.pump();
    }

    fn agent_requests(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.agent_events.retain(|e| match e {
            AgentEvent::Request(ev) => {
                out.push(ev.clone());
                false
            }
            _ => true,
        });
        out
    }

    fn take_proxy_events(&mut self) -> Vec<ProxyEvent> {
        std::mem::take(&mut self.proxy_events)
    }
}

fn headers_event(id: &str) -> Event {
    let mut headers = Headers::new();
    headers.append("host", "example.com");
    headers.append("accept", "*/*");
    Event::RequestHeaders(RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: id.into(),
            request_id: format!("rid-{id}"),
            client_ip: "127.0.0.1".into(),
            client_port: 4000,
            protocol: "HTTP/1.1".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            ..RequestMetadata::default()
        },
        method: "GET".into(),
        uri: "/x".into(),
        headers,
    })
}

#[test]
fn handshake_negotiates_each_encoding() {
    let cases = [
        (vec![Encoding::Json], Encoding::Json),
        (vec![Encoding::Msgpack, Encoding::Json], Encoding::Msgpack),
        (
            vec![Encoding::Postcard, Encoding::Msgpack, Encoding::Json],
            Encoding::Postcard,
        ),
    ];
    for (offer, expected) in cases {
        let mut pair = Pair::with_encodings(
            &offer,
            &[Encoding::Postcard, Encoding::Msgpack, Encoding::Json],
        );
        assert!(pair.proxy.is_ready(), "{offer:?}");
        assert!(pair.agent.is_ready());
        assert!(matches!(
            pair.take_proxy_events().as_slice(),
            [ProxyEvent::Connected { encoding, protocol_version: 2, .. }] if *encoding == expected
        ));
        assert_eq!(pair.proxy.wire_format().encoding, expected);
        assert!(
            pair.proxy.wire_format().raw_body_bytes,
            "agentwire agents take raw bytes"
        );
        // A full round trip in that encoding, body bytes included.
        let chunk = Event::RequestBodyChunk(BodyChunk {
            correlation_id: "c".into(),
            data: Bytes::from_static(b"\x00\xffDROP TABLE"),
            is_last: true,
            total_size: Some(13),
            chunk_index: 0,
            bytes_transferred: 13,
        });
        pair.proxy.send_event(pair.now, &chunk).unwrap();
        pair.pump();
        assert_eq!(pair.agent_requests(), vec![chunk]);
    }
}

#[test]
fn agent_without_postcard_falls_back_to_the_next_offer() {
    let mut pair = Pair::with_encodings(
        &[Encoding::Postcard, Encoding::Msgpack, Encoding::Json],
        &[Encoding::Json],
    );
    assert_eq!(pair.proxy.wire_format().encoding, Encoding::Json);
    assert!(matches!(
        pair.take_proxy_events()[0],
        ProxyEvent::Connected { .. }
    ));
}

#[test]
fn pipelined_requests_are_matched_by_correlation_id_in_any_order() {
    let mut pair = Pair::with_encodings(&[Encoding::Msgpack], &[Encoding::Msgpack]);
    pair.take_proxy_events();
    for i in 0..100 {
        pair.proxy
            .send_event(pair.now, &headers_event(&format!("req-{i}")))
            .unwrap();
    }
    assert_eq!(pair.proxy.in_flight(), 100);
    pair.pump();
    let requests = pair.agent_requests();
    assert_eq!(requests.len(), 100);
    // Answer in reverse order, each with a decision naming the request.
    for ev in requests.iter().rev() {
        let id = ev.correlation_id().to_owned();
        let mut response = AgentResponse::allow();
        response.request_headers.push(HeaderOp::Set {
            name: "x-id".into(),
            value: id.clone(),
        });
        pair.agent.respond(&id, response).unwrap();
    }
    pair.pump();
    // At 100 in flight the agent reached its declared concurrency: it paused the proxy and
    // resumed it as answers went out.
    let (flow, events): (Vec<_>, Vec<_>) = pair
        .take_proxy_events()
        .into_iter()
        .partition(|e| matches!(e, ProxyEvent::FlowControl(_)));
    assert_eq!(flow.len(), 2);
    assert!(!pair.proxy.is_paused());
    assert_eq!(events.len(), 100);
    for e in events {
        let ProxyEvent::Response {
            correlation_id,
            response,
        } = e
        else {
            panic!("unexpected {e:?}")
        };
        assert_eq!(
            response.request_headers,
            vec![HeaderOp::Set {
                name: "x-id".into(),
                value: correlation_id.clone()
            }]
        );
    }
    assert_eq!(pair.proxy.in_flight(), 0);
    assert_eq!(pair.agent.in_flight(), 0);
}

#[test]
fn second_event_for_an_outstanding_id_is_refused() {
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.proxy
        .send_event(pair.now, &headers_event("a"))
        .unwrap();
    assert_eq!(
        pair.proxy.send_event(pair.now, &headers_event("a")),
        Err(SendError::DuplicateCorrelationId)
    );
    assert_eq!(
        pair.proxy.send_event(pair.now, &headers_event("")),
        Err(SendError::EmptyCorrelationId)
    );
}

#[test]
fn timeout_fails_the_request_once_and_tells_the_agent() {
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.take_proxy_events();
    pair.proxy
        .send_event_with_timeout(pair.now, &headers_event("slow"), Duration::from_millis(50))
        .unwrap();
    pair.pump();
    assert_eq!(
        pair.proxy.poll_timeout(),
        Some(pair.now.saturating_add(Duration::from_millis(50)))
    );
    pair.advance(Duration::from_millis(49));
    assert!(pair.take_proxy_events().is_empty());
    pair.advance(Duration::from_millis(1));
    let events = pair.take_proxy_events();
    assert!(matches!(
        events.as_slice(),
        [ProxyEvent::Failed { correlation_id, error: RequestError::Timeout }] if correlation_id == "slow"
    ));
    assert!(pair.agent_events.iter().any(|e| matches!(
        e,
        AgentEvent::Cancelled { correlation_id, reason: CancelReason::Timeout } if correlation_id == "slow"
    )));
    // The agent's late answer is refused locally (the id was cancelled) and nothing more
    // reaches the proxy.
    assert_eq!(
        pair.agent.respond("slow", AgentResponse::allow()),
        Err(SendError::NotInFlight)
    );
    pair.advance(Duration::from_secs(60));
    assert!(pair.take_proxy_events().is_empty());
    assert_eq!(pair.proxy.poll_timeout(), None);
}

#[test]
fn late_response_after_timeout_is_counted_not_delivered() {
    let mut pair = Pair::new(
        ProxyConfig {
            cancel_on_timeout: false,
            encodings: vec![Encoding::Json],
            ..ProxyConfig::default()
        },
        AgentConfig {
            capabilities: capabilities(100),
            ..AgentConfig::default()
        },
    );
    pair.take_proxy_events();
    pair.proxy
        .send_event_with_timeout(pair.now, &headers_event("late"), Duration::from_millis(10))
        .unwrap();
    pair.pump();
    pair.advance(Duration::from_millis(10));
    assert_eq!(pair.take_proxy_events().len(), 1);
    pair.agent.respond("late", AgentResponse::allow()).unwrap();
    pair.pump();
    assert!(pair.take_proxy_events().is_empty());
    assert_eq!(pair.proxy.stats().unmatched_responses, 1);
}

#[test]
fn cancel_and_cancel_all() {
    let mut pair = Pair::with_encodings(&[Encoding::Postcard], &[Encoding::Postcard]);
    pair.take_proxy_events();
    for id in ["a", "b", "c"] {
        pair.proxy.send_event(pair.now, &headers_event(id)).unwrap();
    }
    pair.proxy
        .cancel(pair.now, "a", CancelReason::ClientDisconnect)
        .unwrap();
    pair.proxy
        .cancel_all(pair.now, CancelReason::ProxyShutdown)
        .unwrap();
    pair.pump();
    let failed: Vec<_> = pair
        .take_proxy_events()
        .into_iter()
        .map(|e| match e {
            ProxyEvent::Failed {
                correlation_id,
                error: RequestError::Cancelled,
            } => correlation_id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(failed, ["a", "b", "c"]);
    assert_eq!(pair.proxy.in_flight(), 0);
    assert_eq!(pair.agent.in_flight(), 0);
    let cancels = pair
        .agent_events
        .iter()
        .filter(|e| matches!(e, AgentEvent::Cancelled { .. }))
        .count();
    assert_eq!(cancels, 3);
}

#[test]
fn agent_pauses_the_proxy_at_its_concurrency_and_resumes_at_half() {
    let mut pair = Pair::new(
        ProxyConfig::default(),
        AgentConfig {
            capabilities: capabilities(4),
            ..AgentConfig::default()
        },
    );
    pair.take_proxy_events();
    assert_eq!(pair.proxy.in_flight_limit(), 4);
    for i in 0..4 {
        pair.proxy
            .send_event(pair.now, &headers_event(&format!("r{i}")))
            .unwrap();
    }
    assert_eq!(
        pair.proxy.send_event(pair.now, &headers_event("r4")),
        Err(SendError::TooManyInFlight { limit: 4 })
    );
    pair.pump();
    assert!(
        pair.proxy.is_paused(),
        "agent at max_concurrency pauses the proxy"
    );
    for id in ["r0", "r1"] {
        pair.agent.respond(id, AgentResponse::allow()).unwrap();
    }
    pair.pump();
    assert!(!pair.proxy.is_paused(), "resumed at half");
    let pauses = pair
        .take_proxy_events()
        .into_iter()
        .filter(|e| matches!(e, ProxyEvent::FlowControl(_)))
        .count();
    assert_eq!(pauses, 2);
}

#[test]
fn explicit_flow_control_signals_are_enforced() {
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.agent
        .send_flow_control(FlowAction::Pause, pair.now)
        .unwrap();
    pair.pump();
    assert_eq!(
        pair.proxy.send_event(pair.now, &headers_event("x")),
        Err(SendError::Paused)
    );
    pair.agent
        .send_flow_control(FlowAction::Resume, pair.now)
        .unwrap();
    pair.agent
        .send_flow_control(
            FlowAction::UpdateCapacity {
                buffer_available: 1,
            },
            pair.now,
        )
        .unwrap();
    pair.pump();
    pair.proxy
        .send_event(pair.now, &headers_event("x"))
        .unwrap();
    assert!(matches!(
        pair.proxy.send_event(pair.now, &headers_event("y")),
        Err(SendError::TooManyInFlight { limit: 1 })
    ));
}

#[test]
fn connection_loss_fails_every_waiter_exactly_once() {
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.take_proxy_events();
    for i in 0..10 {
        pair.proxy
            .send_event(pair.now, &headers_event(&format!("r{i}")))
            .unwrap();
    }
    pair.pump();
    pair.proxy.handle_eof(pair.now);
    pair.proxy.handle_eof(pair.now);
    pair.advance(Duration::from_secs(3600));
    let events = pair.take_proxy_events();
    let failed = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ProxyEvent::Failed {
                    error: RequestError::ConnectionClosed(CloseReason::PeerClosed),
                    ..
                }
            )
        })
        .count();
    assert_eq!(failed, 10);
    assert!(matches!(
        events.last(),
        Some(ProxyEvent::Closed(CloseReason::PeerClosed))
    ));
    assert_eq!(events.len(), 11);
    assert_eq!(
        pair.proxy.send_event(pair.now, &headers_event("z")),
        Err(SendError::Closed)
    );
}

#[test]
fn configuration_is_delivered_before_the_connection_is_usable() {
    let config = AnyValue(serde_json::json!({"paranoia": 2}));
    let mut pair = Pair::new(
        ProxyConfig {
            agent_config: Some(config.clone()),
            ..ProxyConfig::default()
        },
        AgentConfig {
            capabilities: capabilities(100),
            ..AgentConfig::default()
        },
    );
    assert!(!pair.proxy.is_ready());
    assert!(pair.take_proxy_events().is_empty());
    let requests = pair.agent_requests();
    let [Event::Configure(configure)] = requests.as_slice() else {
        panic!("expected a Configure, got {requests:?}")
    };
    assert_eq!(configure.config, config);
    assert_eq!(configure.correlation_id, "zentinel-configure-test-agent-0");
    pair.agent
        .respond(&configure.correlation_id, AgentResponse::allow())
        .unwrap();
    pair.pump();
    assert!(pair.proxy.is_ready());
    assert!(matches!(
        pair.take_proxy_events().as_slice(),
        [ProxyEvent::Connected { .. }]
    ));
}

#[test]
fn rejected_or_unanswered_configuration_closes_the_connection() {
    let proxy_config = ProxyConfig {
        agent_config: Some(AnyValue(serde_json::json!({"x": 1}))),
        configure_timeout: Duration::from_secs(1),
        ..ProxyConfig::default()
    };
    let mut pair = Pair::new(proxy_config.clone(), AgentConfig::default());
    let id = pair.agent_requests()[0].correlation_id().to_owned();
    pair.agent.respond(&id, AgentResponse::block(500)).unwrap();
    pair.pump();
    assert!(matches!(
        pair.take_proxy_events().as_slice(),
        [ProxyEvent::Closed(CloseReason::ConfigurationRejected)]
    ));

    let mut pair = Pair::new(proxy_config, AgentConfig::default());
    pair.advance(Duration::from_secs(1));
    assert!(matches!(
        pair.take_proxy_events().as_slice(),
        [ProxyEvent::Closed(CloseReason::ConfigurationTimeout)]
    ));
}

#[test]
fn handshake_timeout_on_both_sides() {
    let now = Instant::ZERO;
    let mut proxy = ProxySession::new(ProxyConfig::default(), now);
    let _ = proxy.poll_transmit();
    assert_eq!(proxy.poll_timeout(), Some(Instant::from_millis(5_000)));
    proxy.handle_timeout(Instant::from_millis(5_000));
    assert!(matches!(
        proxy.poll_event(),
        Some(ProxyEvent::Closed(CloseReason::HandshakeTimeout))
    ));

    let mut agent = AgentSession::new(AgentConfig::default(), now);
    agent.handle_timeout(Instant::from_millis(10_000));
    assert!(matches!(
        agent.poll_event(),
        Some(AgentEvent::Closed(CloseReason::HandshakeTimeout))
    ));
}

#[test]
fn ping_measures_round_trip_time() {
    for enc in [Encoding::Json, Encoding::Msgpack, Encoding::Postcard] {
        let mut pair = Pair::with_encodings(&[enc], &[enc]);
        pair.take_proxy_events();
        let seq = pair.proxy.ping(pair.now).unwrap();
        let sent = pair.proxy.poll_transmit().unwrap();
        pair.now = pair.now.saturating_add(Duration::from_micros(250));
        pair.agent.handle_input(pair.now, &sent);
        pair.pump();
        assert!(matches!(
            pair.take_proxy_events().as_slice(),
            [ProxyEvent::Pong { sequence, rtt }] if *sequence == seq && *rtt == Duration::from_micros(250)
        ));
    }
}

#[test]
fn undecodable_event_is_refused_never_allowed() {
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.take_proxy_events();
    // A well-framed RequestHeaders whose payload misses required keys.
    let mut raw = BytesMut::new();
    encode_frame(
        MessageType::RequestHeaders,
        br#"{"correlation_id":"bad","metadata":{"correlation_id":"bad"}}"#,
        DEFAULT_MAX_FRAME_LEN,
        &mut raw,
    )
    .unwrap();
    pair.agent.handle_input(pair.now, &raw);
    let out = pair.agent.poll_transmit().expect("a refusal");
    assert!(
        pair.agent.is_ready(),
        "a bad payload does not end the connection"
    );
    assert!(matches!(
        pair.agent.poll_event(),
        Some(AgentEvent::Undecodable { correlation_id: Some(id), .. }) if id == "bad"
    ));
    // Feed the refusal to a proxy waiting on that id.
    pair.proxy
        .send_event(pair.now, &headers_event("bad"))
        .unwrap();
    let _ = pair.proxy.poll_transmit();
    pair.proxy.handle_input(pair.now, &out);
    match pair.proxy.poll_event() {
        Some(ProxyEvent::Response { response, .. }) => assert!(matches!(
            response.decision,
            Decision::Block { status: 500, .. }
        )),
        other => panic!("expected a Block, got {other:?}"),
    }
}

#[test]
fn hostile_frames_close_with_typed_errors() {
    // Oversize length, zero length, unknown type, garbage handshake: each a typed close.
    type CloseCheck = fn(&CloseReason) -> bool;
    let cases: Vec<(Vec<u8>, CloseCheck)> = vec![
        (vec![0x01, 0, 0, 1, 0x01], |r| {
            matches!(
                r,
                CloseReason::Frame(agentwire_core::frame::FrameError::FrameTooLarge { .. })
            )
        }),
        (vec![0, 0, 0, 0, 0x01], |r| {
            matches!(
                r,
                CloseReason::Frame(agentwire_core::frame::FrameError::ZeroLength)
            )
        }),
        (vec![0, 0, 0, 1, 0xf0], |r| {
            matches!(
                r,
                CloseReason::Frame(agentwire_core::frame::FrameError::UnknownType(0xf0))
            )
        }),
        (vec![0, 0, 0, 3, 0x01, b'{', b'x'], |r| {
            matches!(r, CloseReason::Decode(_))
        }),
        (vec![0, 0, 0, 3, 0x10, b'{', b'}'], |r| {
            matches!(
                r,
                CloseReason::UnexpectedMessage(MessageType::RequestHeaders)
            )
        }),
    ];
    for (bytes, check) in cases {
        let mut agent = AgentSession::new(AgentConfig::default(), Instant::ZERO);
        agent.handle_input(Instant::ZERO, &bytes);
        match agent.poll_event() {
            Some(AgentEvent::Closed(reason)) => assert!(check(&reason), "{bytes:?}: {reason:?}"),
            other => panic!("{bytes:?}: expected a close, got {other:?}"),
        }
        assert!(agent.is_closed());
    }
    // A proxy fed garbage by its agent fails its waiters at once.
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.take_proxy_events();
    pair.proxy
        .send_event(pair.now, &headers_event("w"))
        .unwrap();
    pair.proxy
        .handle_input(pair.now, &[0xff, 0xff, 0xff, 0xff, 0x20]);
    let events = pair.take_proxy_events();
    let mut events = events;
    while let Some(e) = pair.proxy.poll_event() {
        events.push(e);
    }
    assert!(matches!(
        events.as_slice(),
        [
            ProxyEvent::Failed {
                error: RequestError::ConnectionClosed(CloseReason::Frame(_)),
                ..
            },
            ProxyEvent::Closed(_)
        ]
    ));
}

#[test]
fn agent_disconnects_a_proxy_beyond_its_hard_in_flight_cap() {
    let mut pair = Pair::new(
        ProxyConfig::default(),
        AgentConfig {
            capabilities: capabilities(0),
            max_in_flight: 3,
            ..AgentConfig::default()
        },
    );
    for i in 0..4 {
        pair.proxy
            .send_event(pair.now, &headers_event(&format!("r{i}")))
            .unwrap();
    }
    pair.pump();
    assert!(pair.agent.is_closed());
    assert!(pair.agent_events.iter().any(|e| matches!(
        e,
        AgentEvent::Closed(CloseReason::TooManyInFlight { limit: 3 })
    )));
}

#[test]
fn reference_style_json_cancel_is_accepted_in_a_msgpack_session() {
    let mut pair = Pair::with_encodings(&[Encoding::Msgpack], &[Encoding::Msgpack]);
    pair.proxy
        .send_event(pair.now, &headers_event("m"))
        .unwrap();
    pair.pump();
    let mut raw = BytesMut::new();
    encode_frame(
        MessageType::Cancel,
        br#"{"correlation_id":"m","reason":0,"timestamp_ms":1}"#,
        DEFAULT_MAX_FRAME_LEN,
        &mut raw,
    )
    .unwrap();
    pair.agent.handle_input(pair.now, &raw);
    assert_eq!(pair.agent.in_flight(), 0);
    let _ = WireFormat::JSON;
}

#[test]
fn established_sessions_skip_the_handshake() {
    let format = WireFormat::new(Encoding::Json);
    let mut proxy = ProxySession::new_established(ProxyConfig::default(), format, capabilities(8));
    let mut agent = AgentSession::new_established(AgentConfig::default(), format);
    assert!(proxy.is_ready() && agent.is_ready());
    assert!(matches!(
        proxy.poll_event(),
        Some(ProxyEvent::Connected { .. })
    ));
    assert!(proxy.poll_transmit().is_none(), "no handshake is written");
    assert_eq!(proxy.in_flight_limit(), 8);
    let now = Instant::ZERO;
    proxy.send_event(now, &headers_event("rev")).unwrap();
    agent.handle_input(now, &proxy.poll_transmit().unwrap());
    assert!(matches!(agent.poll_event(), Some(AgentEvent::Request(_))));
    agent.respond("rev", AgentResponse::allow()).unwrap();
    proxy.handle_input(now, &agent.poll_transmit().unwrap());
    assert!(matches!(
        proxy.poll_event(),
        Some(ProxyEvent::Response { .. })
    ));
}

#[test]
fn cancel_frees_the_slot_even_when_the_agent_is_not_reading() {
    let mut pair = Pair::new(
        ProxyConfig {
            max_buffered_bytes: 1,
            ..ProxyConfig::default()
        },
        AgentConfig {
            capabilities: capabilities(100),
            ..AgentConfig::default()
        },
    );
    pair.take_proxy_events();
    pair.proxy
        .send_event(pair.now, &headers_event("stuck"))
        .unwrap();
    // Nothing is written: the buffer is over its bound.
    assert!(matches!(
        pair.proxy.send_event(pair.now, &headers_event("next")),
        Err(SendError::Backpressure { .. })
    ));
    pair.proxy
        .cancel(pair.now, "stuck", CancelReason::ClientDisconnect)
        .unwrap();
    assert_eq!(pair.proxy.in_flight(), 0);
    assert!(matches!(
        pair.proxy.poll_event(),
        Some(ProxyEvent::Failed {
            error: RequestError::Cancelled,
            ..
        })
    ));
}

#[test]
fn local_close_keeps_queued_frames_for_the_driver_to_flush() {
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.take_proxy_events();
    pair.proxy
        .send_event(pair.now, &headers_event("c1"))
        .unwrap();
    pair.pump();
    pair.proxy
        .cancel(pair.now, "c1", CancelReason::ProxyShutdown)
        .unwrap();
    pair.proxy.close();
    let queued = pair
        .proxy
        .poll_transmit()
        .expect("the Cancel is still queued");
    pair.agent.handle_input(pair.now, &queued);
    assert!(matches!(
        pair.agent.poll_event(),
        Some(AgentEvent::Cancelled {
            reason: CancelReason::ProxyShutdown,
            ..
        })
    ));
    // A peer failure, by contrast, drops anything unwritten.
    let mut pair = Pair::with_encodings(&[Encoding::Json], &[Encoding::Json]);
    pair.proxy
        .send_event(pair.now, &headers_event("c2"))
        .unwrap();
    pair.proxy.handle_eof(pair.now);
    assert!(pair.proxy.poll_transmit().is_none());
}
