//! agentwire client ↔ agentwire server over 127.0.0.1 (h2c): every event type and decision,
//! concurrency on one stream, cancellation, timeouts, limits, flow control, stream loss,
//! configuration, B20 refusals, unary ProcessEvent and ControlStream.

mod common;

use agentwire_core::encoding::EncodeError;
use agentwire_core::frame::FrameError;
use agentwire_core::message::{
    AgentResponse, AnyValue, BodyChunk, CancelReason, Configure, Decision, Event, FlowAction,
    GuardrailInspect, HealthState, InspectionType, RequestComplete, ResponseHeaders,
    WebSocketDecision, WebSocketFrame,
};
use agentwire_core::session::{CloseReason, SendError};
use agentwire_grpc::pb;
use agentwire_grpc::pb::agent_service_v2_client::AgentServiceV2Client;
use agentwire_grpc::{
    AgentNotice, ClientError, GrpcAgentClient, GrpcClientConfig, RESPONSE_TOO_LARGE,
};
use bytes::Bytes;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn client(endpoint: &str) -> GrpcAgentClient {
    GrpcAgentClient::connect(endpoint, GrpcClientConfig::default())
        .await
        .expect("connect")
}

/// What the agent sees of `response` once the proxy-side client has added the routing key.
fn as_received(mut response: AgentResponse, id: &str) -> AgentResponse {
    response.set_correlation_id(id);
    response
}

#[tokio::test]
async fn every_event_type_round_trips() {
    within(20, async {
        let recorder = Arc::new(Recorder::default());
        let server = start(recorder.clone(), server_config()).await;
        let client = client(&server.endpoint).await;
        assert_eq!(client.agent_id(), "test-agent");
        assert_eq!(
            client.info().capabilities.supported_events,
            (1..=8).collect::<Vec<_>>()
        );

        let mut headers = headers_event("rt-1", "/plain");
        headers.metadata.server_name = Some("example.com".into());
        headers.metadata.tls_version = Some("TLSv1.3".into());
        headers.metadata.route_id = Some("route-1".into());
        headers.metadata.upstream_id = Some("up-1".into());
        headers.metadata.traceparent = Some("00-abc-def-01".into());
        headers.headers.append("accept", "application/json");
        headers.headers.append("x-multi", "1");
        let r = client.send_request_headers(headers.clone()).await.unwrap();
        assert_eq!(r.audit.tags, ["/plain"]);
        assert_eq!(r.correlation_id(), Some("rt-1"));

        let binary: Vec<u8> = (0..=255u8).collect();
        let chunk = BodyChunk {
            correlation_id: "rt-1".into(),
            data: Bytes::from(binary.clone()),
            is_last: false,
            total_size: Some(512),
            chunk_index: 0,
            bytes_transferred: 256,
        };
        let r = client.send_request_body_chunk(chunk.clone()).await.unwrap();
        assert_eq!(r.audit.tags, ["request_body_chunk"]);

        let response_headers = ResponseHeaders {
            correlation_id: "rt-1".into(),
            status: 404,
            headers: [("content-type", "text/plain")].into_iter().collect(),
        };
        let r = client
            .send_response_headers(response_headers.clone())
            .await
            .unwrap();
        assert_eq!(r.audit.tags, ["response_headers"]);

        let response_chunk = BodyChunk {
            correlation_id: "rt-1".into(),
            data: Bytes::from_static(b"not found"),
            is_last: true,
            total_size: None,
            chunk_index: 0,
            bytes_transferred: 9,
        };
        let r = client
            .send_response_body_chunk(response_chunk.clone())
            .await
            .unwrap();
        assert_eq!(r.audit.tags, ["response_body_chunk"]);

        let complete = RequestComplete {
            correlation_id: "rt-1".into(),
            status: 404,
            duration_ms: 42,
            request_body_size: 512,
            response_body_size: 9,
            upstream_attempts: 1,
            error: Some("upstream said no".into()),
        };
        let r = client
            .send_request_complete(complete.clone())
            .await
            .unwrap();
        assert_eq!(r.audit.tags, ["request_complete"]);

        let frame = WebSocketFrame {
            correlation_id: "ws-1".into(),
            opcode: "binary".into(),
            data: Bytes::from_static(&[0, 159, 146, 150]),
            client_to_server: true,
            frame_index: 0,
            fin: true,
            route_id: None,
            client_ip: String::new(),
        };
        let r = client.send_websocket_frame(frame.clone()).await.unwrap();
        assert_eq!(r.websocket_decision, Some(WebSocketDecision::Drop));

        let guardrail = GuardrailInspect {
            correlation_id: "gr-1".into(),
            inspection_type: InspectionType::PiiDetection,
            content: "my ssn is 078-05-1120".into(),
            model: Some("gpt-x".into()),
            categories: vec!["ssn".into(), "credit_card".into()],
            route_id: Some("llm".into()),
            metadata: [
                ("content_type".to_owned(), "prompt".to_owned()),
                ("tenant".to_owned(), "t1".to_owned()),
            ]
            .into(),
        };
        // B2: the reference never answers this; agentwire does.
        let r = client
            .send_guardrail_inspect(guardrail.clone())
            .await
            .unwrap();
        assert!(matches!(r.decision, Decision::Block { status: 451, .. }));

        let configure = Configure {
            config: AnyValue(serde_json::json!({"paranoia-level": 3})),
            config_version: Some("v7".into()),
            correlation_id: "cfg-1".into(),
        };
        let r = client.send_configure(configure.clone()).await.unwrap();
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(r.correlation_id(), Some("cfg-1"));

        let rtt = client.ping(Duration::from_secs(5)).await.unwrap();
        assert!(rtt < Duration::from_secs(5));

        // What the agent saw: equal to what was sent, except the documented losses.
        let mut expected_headers = headers.clone();
        expected_headers.metadata.tls_cipher = None;
        let mut expected_configure = configure.clone();
        expected_configure.correlation_id = String::new();
        let expected = vec![
            Event::RequestHeaders(expected_headers),
            Event::RequestBodyChunk(chunk),
            Event::ResponseHeaders(response_headers),
            Event::ResponseBodyChunk(response_chunk),
            Event::RequestComplete(complete),
            Event::WebSocketFrame(frame),
            Event::GuardrailInspect(guardrail),
            Event::Configure(expected_configure),
        ];
        recorder
            .wait_for("every event", |s| {
                s.iter().filter(|x| matches!(x, Seen::Event(_))).count() == expected.len()
            })
            .await;
        assert_eq!(recorder.events(), expected);
        let connects: Vec<_> = recorder
            .snapshot()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Connect(h) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(connects.len(), 1);
        assert_eq!(connects[0].supported_versions, [2]);
        assert_eq!(connects[0].proxy_id, "agentwire-proxy");
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn every_decision_round_trips() {
    within(20, async {
        let server = start(Arc::new(Recorder::default()), server_config()).await;
        let client = client(&server.endpoint).await;
        for (i, uri) in ["/allow-rich", "/block", "/redirect", "/challenge", "/other"]
            .into_iter()
            .enumerate()
        {
            let id = format!("d-{i}");
            let r = client
                .send_request_headers(headers_event(&id, uri))
                .await
                .unwrap();
            assert_eq!(r, as_received(decision_for(uri), &id), "{uri}");
        }
        // The rich answer carries everything the proto has no field for.
        let r = client
            .send_request_headers(headers_event("d-rich", "/allow-rich"))
            .await
            .unwrap();
        assert!(r.needs_more);
        assert_eq!(r.routing_metadata["upstream"], "canary");
        assert_eq!(r.request_body_mutation.unwrap().chunk_index, 3);
        assert!(matches!(
            r.websocket_decision,
            Some(WebSocketDecision::Close { code: 1008, .. })
        ));
        assert_eq!(r.audit.custom["score"], AnyValue(serde_json::json!(7)));
        assert_eq!(r.audit.custom["quoted"], AnyValue::from("\"q\""));
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn two_hundred_concurrent_requests_on_one_stream() {
    within(30, async {
        let recorder = Arc::new(Recorder::default());
        let server = start(recorder.clone(), server_config()).await;
        let client = client(&server.endpoint).await;
        let started = Instant::now();
        let calls = (0..200).map(|i| {
            let client = client.clone();
            async move {
                let id = format!("c-{i}");
                let r = client
                    .send_request_headers(headers_event(&id, "/sleep300"))
                    .await
                    .unwrap();
                assert_eq!(r.correlation_id(), Some(id.as_str()));
                assert_eq!(r.audit.tags, ["/sleep300"]);
            }
        });
        futures_util::future::join_all(calls).await;
        // 200 × 300 ms sequentially would take a minute: they ran concurrently.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(recorder.events().len(), 200);
        assert_eq!(client.in_flight(), 0);
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn timeout_fails_the_request_cancels_it_at_the_agent_and_keeps_the_connection() {
    within(20, async {
        let recorder = Arc::new(Recorder::default());
        let server = start(recorder.clone(), server_config()).await;
        let client = client(&server.endpoint).await;
        let started = Instant::now();
        let result = client
            .send_event_with_timeout(
                Event::RequestHeaders(headers_event("slow-1", "/slow")),
                Duration::from_millis(200),
            )
            .await;
        assert!(matches!(result, Err(ClientError::Timeout)), "{result:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(client.in_flight(), 0);
        // The agent was told (reason timeout) and dropped the handler.
        recorder
            .wait_for("the cancel", |s| {
                s.contains(&Seen::Cancel("slow-1".into(), CancelReason::Timeout))
                    && s.contains(&Seen::Dropped("slow-1".into()))
            })
            .await;
        let r = client
            .send_request_headers(headers_event("after", "/fine"))
            .await
            .unwrap();
        assert_eq!(r.audit.tags, ["/fine"]);
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn cancel_aborts_the_handler_and_fails_the_waiter() {
    within(20, async {
        let recorder = Arc::new(Recorder::default());
        let server = start(recorder.clone(), server_config()).await;
        let client = client(&server.endpoint).await;
        let pending = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_request_headers(headers_event("cx-1", "/slow"))
                    .await
            })
        };
        recorder
            .wait_for("the request", |s| {
                s.iter().any(|x| matches!(x, Seen::Event(_)))
            })
            .await;
        client.cancel("cx-1", CancelReason::Manual).unwrap();
        let result = pending.await.unwrap();
        assert!(matches!(result, Err(ClientError::Cancelled)), "{result:?}");
        recorder
            .wait_for("the abort", |s| {
                s.contains(&Seen::Cancel("cx-1".into(), CancelReason::Manual))
                    && s.contains(&Seen::Dropped("cx-1".into()))
            })
            .await;

        // cancel_all: one Cancel per pending id.
        let pending: Vec<_> = (0..3)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .send_request_headers(headers_event(&format!("ca-{i}"), "/slow"))
                        .await
                })
            })
            .collect();
        recorder
            .wait_for("three more requests", |s| {
                s.iter().filter(|x| matches!(x, Seen::Event(_))).count() == 4
            })
            .await;
        client.cancel_all(CancelReason::ProxyShutdown).unwrap();
        for p in pending {
            assert!(matches!(p.await.unwrap(), Err(ClientError::Cancelled)));
        }
        recorder
            .wait_for("three cancels", |s| {
                s.iter()
                    .filter(|x| matches!(x, Seen::Cancel(_, CancelReason::ProxyShutdown)))
                    .count()
                    == 3
            })
            .await;

        // Dropping the caller's future cancels too.
        let dropped = tokio::time::timeout(
            Duration::from_millis(100),
            client.send_request_headers(headers_event("cd-1", "/slow")),
        )
        .await;
        assert!(dropped.is_err());
        recorder
            .wait_for("the disconnect cancel", |s| {
                s.contains(&Seen::Cancel("cd-1".into(), CancelReason::ClientDisconnect))
            })
            .await;
        assert_eq!(client.in_flight(), 0);
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn oversize_messages_are_refused_without_taking_the_connection_down() {
    within(30, async {
        let server = start(Arc::new(Recorder::default()), server_config()).await;
        let client = client(&server.endpoint).await;
        // Other requests in flight while the oversize one is refused.
        let others: Vec<_> = (0..5)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .send_request_headers(headers_event(&format!("o-{i}"), "/sleep300"))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let big = BodyChunk {
            correlation_id: "big".into(),
            data: Bytes::from(vec![7u8; 5 * 1024 * 1024]),
            is_last: true,
            ..BodyChunk::default()
        };
        let result = client.send_request_body_chunk(big).await;
        match result {
            Err(ClientError::Protocol(SendError::Encode(EncodeError::Frame(
                FrameError::FrameTooLarge { len, max },
            )))) => {
                assert!(len > 5 * 1024 * 1024);
                assert_eq!(max, 4 * 1024 * 1024);
            }
            other => panic!("expected a size refusal, got {other:?}"),
        }
        for o in others {
            assert_eq!(o.await.unwrap().unwrap().audit.tags, ["/sleep300"]);
        }
        // An answer over the limit is replaced by a fail-closed Block, the stream stays up.
        let r = client
            .send_request_headers(headers_event("huge", "/huge"))
            .await
            .unwrap();
        assert!(matches!(r.decision, Decision::Block { status: 500, .. }));
        assert_eq!(r.audit.reason_codes, [RESPONSE_TOO_LARGE]);
        // Just under the limit still passes.
        let fits = BodyChunk {
            correlation_id: "fits".into(),
            data: Bytes::from(vec![7u8; 4 * 1024 * 1024 - 64]),
            is_last: true,
            ..BodyChunk::default()
        };
        client.send_request_body_chunk(fits).await.unwrap();
        assert!(client.is_connected());
        let r = client
            .send_request_headers(headers_event("after", "/fine"))
            .await
            .unwrap();
        assert_eq!(r.audit.tags, ["/fine"]);
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn agent_dropping_the_stream_fails_every_waiter_at_once() {
    within(20, async {
        let endpoint = start_fake(FakeAgent {
            script: Script::DropAfter(3),
        })
        .await;
        let config = GrpcClientConfig {
            request_timeout: Duration::from_secs(30),
            ..GrpcClientConfig::default()
        };
        let client = GrpcAgentClient::connect(&endpoint, config).await.unwrap();
        let started = Instant::now();
        let calls = (0..3).map(|i| {
            let client = client.clone();
            async move {
                client
                    .send_request_headers(headers_event(&format!("w-{i}"), "/x"))
                    .await
            }
        });
        let results = futures_util::future::join_all(calls).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "waiters waited {:?}",
            started.elapsed()
        );
        for r in results {
            assert!(
                matches!(
                    r,
                    Err(ClientError::ConnectionClosed(Some(CloseReason::PeerClosed)))
                ),
                "{r:?}"
            );
        }
        assert!(!client.is_connected());
        let after = client
            .send_request_headers(headers_event("late", "/x"))
            .await;
        assert!(matches!(after, Err(ClientError::ConnectionClosed(_))));
    })
    .await;
}

#[tokio::test]
async fn flow_control_and_notices_from_the_agent() {
    within(20, async {
        let endpoint = start_fake(FakeAgent {
            script: Script::Notices,
        })
        .await;
        let notices = Arc::new(agentwire_core::sync::Mutex::new(Vec::new()));
        let sink = notices.clone();
        let callback: agentwire_grpc::NoticeCallback = Arc::new(move |n: AgentNotice| {
            sink.lock().unwrap().push(n);
        });
        let client = GrpcAgentClient::connect_with_notices(
            &endpoint,
            GrpcClientConfig::default(),
            Some(callback),
        )
        .await
        .unwrap();
        for _ in 0..200 {
            if notices.lock().unwrap().len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(client.is_paused());
        let refused = client
            .send_request_headers(headers_event("p-1", "/x"))
            .await;
        match refused {
            Err(ClientError::FlowControlPaused { agent_id }) => assert_eq!(agent_id, "fake"),
            other => panic!("expected a pause refusal, got {other:?}"),
        }
        {
            let seen = notices.lock().unwrap();
            assert!(seen.iter().any(|n| matches!(
                n,
                AgentNotice::FlowControl(s) if s.action == FlowAction::Pause
            )));
            assert!(seen.iter().any(|n| matches!(
                n,
                AgentNotice::Health(h) if matches!(
                    &h.state,
                    HealthState::Unhealthy { reason, recoverable: true } if reason == "disk"
                )
            )));
            assert!(seen.iter().any(|n| matches!(
                n,
                AgentNotice::Metrics(m) if m.counters[0].value == 3
            )));
            assert!(seen.iter().any(|n| matches!(
                n,
                AgentNotice::ConfigUpdate(c) if c.request_id == "cu-1"
            )));
        }
        // The fake agent resumes before it answers a ping.
        client.ping(Duration::from_secs(5)).await.unwrap();
        assert!(!client.is_paused());
        let r = client
            .send_request_headers(headers_event("p-2", "/x"))
            .await
            .unwrap();
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(r.correlation_id(), Some("p-2"));
    })
    .await;
}

#[tokio::test]
async fn configuration_is_delivered_on_connect_and_a_rejection_fails_the_connect() {
    within(20, async {
        let recorder = Arc::new(Recorder::default());
        let server = start(recorder.clone(), server_config()).await;
        let config = GrpcClientConfig {
            agent_config: Some(AnyValue(serde_json::json!({"rules": ["a", "b"]}))),
            ..GrpcClientConfig::default()
        };
        let client = GrpcAgentClient::connect(&server.endpoint, config)
            .await
            .unwrap();
        let seen = recorder.snapshot();
        assert!(matches!(
            &seen[0],
            Seen::Connect(h) if h.config == AnyValue(serde_json::json!({"rules": ["a", "b"]}))
        ));
        assert!(matches!(
            &seen[1],
            Seen::Event(Event::Configure(c))
                if c.config == AnyValue(serde_json::json!({"rules": ["a", "b"]}))
                    && c.config_version.is_none()
        ));
        client.close();

        let rejected = GrpcClientConfig {
            agent_config: Some(AnyValue(serde_json::json!({"reject": true}))),
            ..GrpcClientConfig::default()
        };
        let result = GrpcAgentClient::connect(&server.endpoint, rejected).await;
        assert!(
            matches!(
                result,
                Err(ClientError::Handshake(CloseReason::ConfigurationRejected))
            ),
            "{result:?}"
        );

        // A later rejected configure ends the stream (the reference's contract).
        let client = GrpcAgentClient::connect(&server.endpoint, GrpcClientConfig::default())
            .await
            .unwrap();
        let result = client
            .send_configure(Configure {
                config: AnyValue(serde_json::json!({"reject": true})),
                ..Configure::default()
            })
            .await;
        assert!(
            matches!(
                result,
                Err(ClientError::ConnectionClosed(Some(
                    CloseReason::ConfigurationRejected
                )))
            ),
            "{result:?}"
        );
        assert_eq!(
            client.close_status().map(|s| s.code()),
            Some(tonic::Code::FailedPrecondition)
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn local_refusals_are_typed() {
    within(20, async {
        let mut config = server_config();
        config.capabilities.limits.max_concurrency = 2;
        config.auto_flow_control = false;
        let server = start(Arc::new(Recorder::default()), config).await;
        let client = client(&server.endpoint).await;
        assert_eq!(client.in_flight_limit(), 2);
        let empty = client.send_request_headers(headers_event("", "/x")).await;
        assert!(matches!(
            empty,
            Err(ClientError::Protocol(SendError::EmptyCorrelationId))
        ));
        let a = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_request_headers(headers_event("same", "/sleep300"))
                    .await
            })
        };
        let b = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_request_headers(headers_event("other", "/sleep300"))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dup = client
            .send_request_headers(headers_event("same", "/x"))
            .await;
        assert!(
            matches!(
                dup,
                Err(ClientError::TooManyInFlight { limit: 2 })
                    | Err(ClientError::Protocol(SendError::DuplicateCorrelationId))
            ),
            "{dup:?}"
        );
        let third = client
            .send_request_headers(headers_event("third", "/x"))
            .await;
        assert!(
            matches!(third, Err(ClientError::TooManyInFlight { limit: 2 })),
            "{third:?}"
        );
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        client.close();
        let closed = client
            .send_request_headers(headers_event("late", "/x"))
            .await;
        assert!(matches!(
            closed,
            Err(ClientError::ConnectionClosed(Some(CloseReason::Local)))
        ));
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_agent_pauses_the_proxy_at_its_declared_concurrency_and_resumes() {
    within(20, async {
        let mut config = server_config();
        config.capabilities.limits.max_concurrency = 2;
        let server = start(Arc::new(Recorder::default()), config).await;
        let client = client(&server.endpoint).await;
        let busy: Vec<_> = (0..2)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .send_request_headers(headers_event(&format!("busy-{i}"), "/sleep300"))
                        .await
                })
            })
            .collect();
        for _ in 0..200 {
            if client.is_paused() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(client.is_paused());
        let refused = client.send_request_headers(headers_event("third", "/x")).await;
        assert!(
            matches!(refused, Err(ClientError::FlowControlPaused { ref agent_id }) if agent_id == "test-agent"),
            "{refused:?}"
        );
        for b in busy {
            b.await.unwrap().unwrap();
        }
        for _ in 0..200 {
            if !client.is_paused() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!client.is_paused());
        client
            .send_request_headers(headers_event("fourth", "/x"))
            .await
            .unwrap();
        client.close();
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connect_failures_are_typed_and_bounded() {
    within(20, async {
        // Nothing listens.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = GrpcAgentClient::connect(&format!("127.0.0.1:{port}"), GrpcClientConfig::default())
            .await;
        assert!(matches!(r, Err(ClientError::Connect(_))), "{r:?}");

        // Accepts TCP and never speaks HTTP/2.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let config = GrpcClientConfig {
            connect_timeout: Duration::from_millis(300),
            ..GrpcClientConfig::default()
        };
        let started = Instant::now();
        let r = GrpcAgentClient::connect(&format!("http://{addr}"), config).await;
        assert!(
            matches!(r, Err(ClientError::ConnectTimeout | ClientError::Connect(_))),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        hold.abort();

        // https without TLS settings, and bad endpoint strings.
        let r = GrpcAgentClient::connect("https://127.0.0.1:1", GrpcClientConfig::default()).await;
        assert!(matches!(r, Err(ClientError::Connect(e)) if e.kind() == std::io::ErrorKind::InvalidInput));
        let r = GrpcAgentClient::connect("unix:/tmp/x.sock", GrpcClientConfig::default()).await;
        assert!(matches!(r, Err(ClientError::Connect(e)) if e.kind() == std::io::ErrorKind::InvalidInput));
    })
    .await;
}

async fn raw_client(endpoint: &str) -> AgentServiceV2Client<tonic::transport::Channel> {
    AgentServiceV2Client::connect(endpoint.to_owned())
        .await
        .unwrap()
}

fn msg(m: pb::proxy_to_agent::Message) -> pb::ProxyToAgent {
    pb::ProxyToAgent { message: Some(m) }
}

#[tokio::test]
async fn events_before_the_handshake_are_refused_with_a_status() {
    within(20, async {
        let server = start(Arc::new(Recorder::default()), server_config()).await;
        let mut raw = raw_client(&server.endpoint).await;
        let event = mapping_headers("early");
        let response = raw
            .process_stream(tokio_stream::iter(vec![msg(event)]))
            .await
            .unwrap();
        let mut inbound = response.into_inner();
        let status = inbound
            .message()
            .await
            .expect_err("B20: refused, not dropped");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("before handshake"),
            "{}",
            status.message()
        );

        // A handshake without version 2 is answered with success=false, then the stream ends.
        let hello = pb::proxy_to_agent::Message::Handshake(pb::HandshakeRequest {
            supported_versions: vec![1],
            proxy_id: "old".into(),
            proxy_version: "0".into(),
            config_json: "{}".into(),
        });
        let mut inbound = raw
            .process_stream(tokio_stream::iter(vec![msg(hello)]))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        let Some(pb::agent_to_proxy::Message::Handshake(h)) = first.message else {
            panic!("expected a handshake answer")
        };
        assert!(!h.success);
        assert!(h.error.unwrap().contains("version"));
        let status = inbound
            .message()
            .await
            .expect_err("stream ends with a status");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);

        // A stream that never handshakes is ended after the handshake timeout.
        let mut config = server_config();
        config.handshake_timeout = Duration::from_millis(200);
        let quick = start(Arc::new(Recorder::default()), config).await;
        let mut raw = AgentServiceV2Client::connect(quick.endpoint.clone())
            .await
            .unwrap();
        let (_keep, rx) = tokio::sync::mpsc::channel::<pb::ProxyToAgent>(1);
        let mut inbound = raw
            .process_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let status = inbound.message().await.expect_err("deadline");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        quick.stop().await;
        server.stop().await;
    })
    .await;
}

fn mapping_headers(id: &str) -> pb::proxy_to_agent::Message {
    agentwire_grpc::mapping::event_to_pb(Event::RequestHeaders(headers_event(id, "/raw")), 1, false)
        .unwrap()
}

#[tokio::test]
async fn unary_process_event_and_control_stream() {
    within(20, async {
        let mut config = server_config();
        config.extras.health = Some(agentwire_grpc::mapping::HealthReporting {
            report_interval_ms: 100,
            ..Default::default()
        });
        let server = start(Arc::new(Recorder::default()), config).await;
        let mut raw = raw_client(&server.endpoint).await;

        let pong = raw
            .process_event(msg(pb::proxy_to_agent::Message::Ping(pb::Ping {
                sequence: 9,
                timestamp_ms: 5,
            })))
            .await
            .unwrap()
            .into_inner();
        assert!(matches!(
            pong.message,
            Some(pb::agent_to_proxy::Message::Pong(p)) if p.sequence == 9 && p.ping_timestamp_ms == 5
        ));
        let answer = raw
            .process_event(msg(mapping_headers("unary-1")))
            .await
            .unwrap()
            .into_inner();
        let Some(pb::agent_to_proxy::Message::Response(r)) = answer.message else {
            panic!("expected a response")
        };
        assert_eq!(r.correlation_id, "unary-1");
        assert_eq!(r.audit.unwrap().tags, ["/raw"]);
        // Guardrails are answered on the unary path too.
        let guard = agentwire_grpc::mapping::event_to_pb(
            Event::GuardrailInspect(GuardrailInspect {
                correlation_id: "g".into(),
                ..GuardrailInspect::default()
            }),
            1,
            false,
        )
        .unwrap();
        let answer = raw.process_event(msg(guard)).await.unwrap().into_inner();
        assert!(matches!(
            answer.message,
            Some(pb::agent_to_proxy::Message::Response(pb::AgentResponse {
                decision: Some(pb::agent_response::Decision::Block(_)),
                ..
            }))
        ));
        let cancel = raw
            .process_event(msg(pb::proxy_to_agent::Message::Cancel(pb::CancelRequest::default())))
            .await
            .expect_err("cancel is not a unary event");
        assert_eq!(cancel.code(), tonic::Code::InvalidArgument);

        // ControlStream: heartbeat at once and every report interval; config updates accepted.
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentControl>(4);
        let mut control = raw
            .control_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = control.message().await.unwrap().unwrap();
        assert!(matches!(
            first.message,
            Some(pb::proxy_control::Message::Configure(c)) if c.config_json == "{}" && !c.is_initial
        ));
        tx.send(pb::AgentControl {
            message: Some(pb::agent_control::Message::ConfigUpdate(pb::ConfigUpdateRequest {
                request_id: "cu-9".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut heartbeats = 1;
        let mut answered = false;
        while !(answered && heartbeats >= 3) {
            match control.message().await.unwrap().unwrap().message {
                Some(pb::proxy_control::Message::ConfigResponse(r)) => {
                    assert_eq!(r.request_id, "cu-9");
                    assert!(r.accepted);
                    answered = true;
                }
                Some(pb::proxy_control::Message::Configure(_)) => heartbeats += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(tx);
        server.stop().await;

        // B17: a zero interval with metrics export does not panic; the heartbeat still starts.
        let mut config = server_config();
        config.capabilities.features.metrics_export = true;
        config.extras.health = Some(agentwire_grpc::mapping::HealthReporting {
            report_interval_ms: 0,
            ..Default::default()
        });
        let server = start(Arc::new(Recorder::default()), config).await;
        let mut raw = raw_client(&server.endpoint).await;
        let (_tx, rx) = tokio::sync::mpsc::channel::<pb::AgentControl>(1);
        let mut control = raw
            .control_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        assert!(control.message().await.unwrap().is_some());
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_ends_the_stream() {
    within(20, async {
        let server = start(Arc::new(Recorder::default()), server_config()).await;
        let client = client(&server.endpoint).await;
        let pending = {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send_request_headers(headers_event("drain-1", "/sleep300"))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.shutdown.trigger();
        let answer = pending.await.unwrap().unwrap();
        assert_eq!(answer.audit.tags, ["/sleep300"]);
        within(5, server.task).await.unwrap().unwrap();
        for _ in 0..300 {
            if !client.is_connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!client.is_connected());
        assert_eq!(
            client.close_status().map(|s| s.code()),
            Some(tonic::Code::Unavailable)
        );
    })
    .await;
}
