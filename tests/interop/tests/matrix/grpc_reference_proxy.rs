//! Reference gRPC proxy side (`AgentClientV2`, and `AgentPool` with an `http://` endpoint) →
//! agentwire `GrpcServer`.
//!
//! The reference gRPC client carries request headers, both body chunks and response headers
//! (no RequestComplete, WebSocket, guardrail or configure call). What it cannot represent
//! is checked as the reference sees it:
//! * it rebuilds an answer with `version` 2, no `routing_metadata`, no body mutations and no
//!   `websocket_decision` (the proto has no field for them); agentwire carries those in
//!   `audit.custom` under `agentwire.*` keys, which the reference shows as extra strings;
//! * `audit.custom` values are strings on the wire: agentwire sends strings unquoted (B9
//!   fixed) and other values as JSON text, marked by `agentwire.json_keys`.
//! * On the way in, the reference replaces the metadata `timestamp` by the send time and drops
//!   `tls_cipher` (§10.5).

use crate::support::*;
use agentwire_core::message::{AgentResponse, AnyValue, BodyMutation, Event, Value};
use std::time::Duration;
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;

/// What the reference gRPC client shows of `answer` (see the module docs).
fn as_reference_sees_it(answer: &AgentResponse) -> AgentResponse {
    let mut want = answer.clone();
    want.routing_metadata.clear();
    want.request_body_mutation = None;
    want.response_body_mutation = None;
    want.websocket_decision = None;
    want.audit.custom = custom_as_strings(answer);
    let reserved = |key: &str, value: String| (key.to_string(), AnyValue(Value::String(value)));
    let json_keys: Vec<Value> = answer
        .audit
        .custom
        .iter()
        .filter(|(_, v)| !v.0.is_string())
        .map(|(k, _)| Value::String(k.clone()))
        .collect();
    if !json_keys.is_empty() {
        want.audit.custom.extend([reserved(
            "agentwire.json_keys",
            Value::Array(json_keys).to_string(),
        )]);
    }
    if !answer.routing_metadata.is_empty() {
        want.audit.custom.extend([reserved(
            "agentwire.routing_metadata",
            serde_json::to_string(&answer.routing_metadata).unwrap(),
        )]);
    }
    let mutation = |m: &BodyMutation| serde_json::to_string(m).unwrap();
    if let Some(m) = &answer.request_body_mutation {
        want.audit
            .custom
            .extend([reserved("agentwire.request_body_mutation", mutation(m))]);
    }
    if let Some(m) = &answer.response_body_mutation {
        want.audit
            .custom
            .extend([reserved("agentwire.response_body_mutation", mutation(m))]);
    }
    want
}

/// The event as agentwire's gRPC agent receives it from the reference client.
fn as_received_over_grpc(sent: &Event, got: &Event) -> Event {
    let mut want = sent.clone();
    if let (Event::RequestHeaders(w), Event::RequestHeaders(g)) = (&mut want, got) {
        w.metadata.tls_cipher = None;
        // The send time, as RFC 3339 with milliseconds.
        assert!(
            g.metadata.timestamp.len() == 24 && g.metadata.timestamp.ends_with('Z'),
            "timestamp {:?}",
            g.metadata.timestamp
        );
        w.metadata.timestamp = g.metadata.timestamp.clone();
    }
    want
}

const KINDS: [Kind; 4] = [
    Kind::RequestHeaders,
    Kind::RequestBodyChunk,
    Kind::ResponseHeaders,
    Kind::ResponseBodyChunk,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_client_every_event_type() {
    within("reference gRPC client", async {
        let cell = "reference AgentClientV2 (gRPC) → agentwire GrpcServer";
        let cases = cases_of(&KINDS);
        let agent = AwAgent::new(&cases);
        let server = start_aw_grpc(agent.clone()).await;
        let client = bounded(
            "new",
            zv2::AgentClientV2::new("aw-agent", server.endpoint.clone(), Duration::from_secs(5)),
        )
        .await
        .expect("channel");
        bounded("connect", client.connect())
            .await
            .expect("the reference gRPC client completes the handshake with agentwire");
        let caps = client.capabilities().await.expect("capabilities");
        assert_eq!(caps.agent_id, "aw-agent");
        assert_eq!(caps.supported_events.len(), 8, "{caps:?}");
        let hello = agent.connects.lock().unwrap()[0].clone();
        assert_eq!(hello.proxy_id, "zentinel-proxy");
        assert_eq!(hello.supported_versions, vec![2, 1]);

        for case in &cases {
            let id = case.id();
            let answer = match aw_to_ref_event(&case.event) {
                RefEvent::RequestHeaders(e) => client.send_request_headers(id, &e).await,
                RefEvent::RequestBodyChunk(e) => client.send_request_body_chunk(id, &e).await,
                RefEvent::ResponseHeaders(e) => client.send_response_headers(id, &e).await,
                RefEvent::ResponseBodyChunk(e) => client.send_response_body_chunk(id, &e).await,
                other => unreachable!("{other:?}"),
            }
            .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
            assert_answer(
                cell,
                id,
                &ref_to_aw_response(&answer),
                &as_reference_sees_it(&case.answer),
            );
            let got = agent.received(id);
            assert_event(cell, &got, &as_received_over_grpc(&case.event, &got));
        }
        // Ping and cancel: agentwire answers the ping and reads the cancel (reason + 1 on
        // gRPC); the stream carries on.
        client.ping().await.expect("ping");
        client
            .cancel_request("gone", zv2::CancelReason::ProxyShutdown)
            .await
            .expect("cancel");
        let case = &cases[0];
        let RefEvent::RequestHeaders(mut e) = aw_to_ref_event(&case.event) else {
            unreachable!()
        };
        e.metadata.correlation_id = "after-cancel".into();
        let answer = bounded(
            "after cancel",
            client.send_request_headers("after-cancel", &e),
        )
        .await
        .expect("stream still up");
        assert!(matches!(
            answer.decision,
            zref::Decision::Block { status: 599, .. }
        ));
        assert_eq!(
            agent.cancels.lock().unwrap().clone(),
            vec![("gone".to_string(), 4)],
            "cancel reason proxy_shutdown"
        );
        client.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_pool_every_event_type() {
    within("reference gRPC pool", async {
        let cell = "reference AgentPool (gRPC) → agentwire GrpcServer";
        let cases = cases_of(&[
            Kind::RequestHeaders,
            Kind::RequestBodyChunk,
            Kind::ResponseHeaders,
            Kind::ResponseBodyChunk,
            Kind::GuardrailInspect,
        ]);
        let agent = AwAgent::new(&cases);
        let server = start_aw_grpc(agent.clone()).await;
        let pool = zv2::AgentPool::with_config(zv2::AgentPoolConfig {
            connections_per_agent: 2,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            ..zv2::AgentPoolConfig::default()
        });
        bounded(
            "add_agent",
            pool.add_agent("aw-agent", server.endpoint.clone()),
        )
        .await
        .expect("registered");
        let stats = pool.agent_stats("aw-agent").await.expect("stats");
        assert_eq!(stats.active_connections, 2, "{cell}");
        for case in &cases {
            let id = case.id();
            let answer = match aw_to_ref_event(&case.event) {
                RefEvent::RequestHeaders(e) => pool.send_request_headers("aw-agent", id, &e).await,
                RefEvent::RequestBodyChunk(e) => {
                    pool.send_request_body_chunk("aw-agent", id, &e).await
                }
                RefEvent::ResponseHeaders(e) => {
                    pool.send_response_headers("aw-agent", id, &e).await
                }
                RefEvent::ResponseBodyChunk(e) => {
                    pool.send_response_body_chunk("aw-agent", id, &e).await
                }
                RefEvent::GuardrailInspect(e) => {
                    // The reference pool refuses guardrails on gRPC before sending anything.
                    let result = pool.send_guardrail_inspect("aw-agent", id, &e).await;
                    assert!(
                        matches!(result, Err(zref::AgentProtocolError::InvalidMessage(_))),
                        "{cell}: {result:?}"
                    );
                    continue;
                }
                other => unreachable!("{other:?}"),
            }
            .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
            assert_answer(
                cell,
                id,
                &ref_to_aw_response(&answer),
                &as_reference_sees_it(&case.answer),
            );
            let got = agent.received(id);
            assert_event(cell, &got, &as_received_over_grpc(&case.event, &got));
            pool.clear_correlation_affinity(id);
        }
        assert!(
            agent
                .seen()
                .iter()
                .all(|e| kind(e) != Kind::GuardrailInspect),
            "no guardrail reached the agent"
        );
        pool.shutdown().await.expect("shutdown");
    })
    .await;
}
