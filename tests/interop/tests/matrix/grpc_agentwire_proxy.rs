//! agentwire gRPC proxy side (`GrpcAgentClient`, and `AgentPool` with the gRPC connector) →
//! reference `GrpcAgentServerV2`.
//!
//! What the reference agent does with what it receives (§10.5) is checked as such:
//! * the metadata `timestamp` becomes the decimal send time in ms, `tls_cipher` is dropped;
//! * RequestComplete: `upstream_attempts` forced to 1;
//! * WebSocket frames: `opcode` becomes the proto frame-type number as text (`"1"` for text),
//!   `frame_index` 0, `fin` true, no route, empty client ip;
//! * answers lose `routing_metadata`, body mutations and `websocket_decision`, and every
//!   `audit.custom` value arrives JSON-quoted (B9); agentwire unquotes strings, other values
//!   stay their JSON text;
//! * GuardrailInspect is never answered (B2): agentwire times out cleanly;
//! * 0.6.45's gRPC agent ignores `configure` (its handler's `on_configure` is not called) and
//!   answers the ping agentwire sends after it, so agentwire counts the configuration as
//!   delivered; the handshake's `config_json` does reach `on_handshake`.

use crate::support::*;
use agentwire_core::message::{AgentResponse, Configure, Event};
use agentwire_grpc::{ClientError, GrpcAgentClient, GrpcClientConfig};
use agentwire_pool::{AgentOptions, AgentPool, PoolError, PoolOutcome};
use std::time::Duration;

fn client_config() -> GrpcClientConfig {
    GrpcClientConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..GrpcClientConfig::default()
    }
}

/// What agentwire receives from the reference gRPC agent for `answer`.
fn as_agentwire_sees_it(answer: &AgentResponse) -> AgentResponse {
    let mut want = answer.clone();
    want.routing_metadata.clear();
    want.request_body_mutation = None;
    want.response_body_mutation = None;
    want.websocket_decision = None;
    want.audit.custom = custom_as_strings(answer);
    want
}

/// The event as the reference gRPC agent hands it to its handler.
fn as_reference_receives_it(sent: &Event, got: &Event) -> Event {
    let mut want = sent.clone();
    match (&mut want, got) {
        (Event::RequestHeaders(w), Event::RequestHeaders(g)) => {
            w.metadata.tls_cipher = None;
            assert!(
                g.metadata.timestamp.parse::<u64>().is_ok(),
                "timestamp {:?}",
                g.metadata.timestamp
            );
            w.metadata.timestamp = g.metadata.timestamp.clone();
        }
        (Event::RequestComplete(w), _) => w.upstream_attempts = 1,
        (Event::WebSocketFrame(w), _) => {
            w.opcode = match w.opcode.as_str() {
                "text" => "1",
                "binary" => "2",
                "ping" => "3",
                "pong" => "4",
                "close" => "5",
                _ => "0",
            }
            .into();
            w.frame_index = 0;
            w.fin = true;
            w.route_id = None;
            w.client_ip = String::new();
        }
        _ => {}
    }
    want
}

const KINDS: [Kind; 6] = [
    Kind::RequestHeaders,
    Kind::RequestBodyChunk,
    Kind::ResponseHeaders,
    Kind::ResponseBodyChunk,
    Kind::RequestComplete,
    Kind::WebSocketFrame,
];

fn check_answer(cell: &str, case: &Case, got: &AgentResponse) {
    // agentwire puts the proto's `correlation_id` into `audit.custom`, as on UDS.
    let want = routed(&as_agentwire_sees_it(&case.answer), case.id());
    assert_answer(cell, case.id(), got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_client_every_event_type() {
    within("agentwire gRPC client", async {
        let cell = "agentwire GrpcAgentClient → reference GrpcAgentServerV2";
        let cases = cases_of(&KINDS);
        let agent = RefAgent::new("ref-agent", &catalogue());
        let server = start_ref_grpc(agent.clone()).await;
        let client = bounded(
            "connect",
            GrpcAgentClient::connect(&server.endpoint, client_config()),
        )
        .await
        .unwrap_or_else(|e| panic!("{cell}: connect: {e}"));
        assert_eq!(client.agent_id(), "ref-agent");
        assert_eq!(
            client.info().capabilities.supported_events,
            vec![1, 2, 3, 4, 5, 6, 8]
        );

        for case in &cases {
            let id = case.id();
            let answer = bounded(id, client.send_event(case.event.clone()))
                .await
                .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
            check_answer(cell, case, &answer);
            let got = agent.received(id);
            assert_event(cell, &got, &as_reference_receives_it(&case.event, &got));
        }

        // B2: a guardrail inspection is never answered; the deadline ends it cleanly.
        for case in cases_of(&[Kind::GuardrailInspect]) {
            let result = bounded(
                "guardrail",
                client.send_event_with_timeout(case.event.clone(), NO_ANSWER),
            )
            .await;
            assert!(
                matches!(result, Err(ClientError::Timeout)),
                "{cell}: {result:?}"
            );
        }
        assert_eq!(client.in_flight(), 0);

        // Configure on demand: acknowledged by the ping that follows it, never handed to the
        // reference handler.
        let answer = bounded(
            "configure",
            client.send_configure(Configure {
                config: sample_config(),
                config_version: Some("v7".into()),
                correlation_id: "cfg-live".into(),
            }),
        )
        .await
        .expect("configure acknowledged");
        assert_answer(
            cell,
            "cfg-live",
            &answer,
            &routed(&AgentResponse::allow(), "cfg-live"),
        );
        assert!(agent.configs.lock().unwrap().is_empty());

        // Ping and cancel; the stream is still up afterwards.
        bounded("ping", client.ping(Duration::from_secs(2)))
            .await
            .expect("pong");
        client
            .cancel("gone", agentwire_core::message::CancelReason::Manual)
            .expect("cancel");
        let mut event = cases_of(&[Kind::ResponseHeaders])[0].event.clone();
        let Event::ResponseHeaders(e) = &mut event else {
            unreachable!()
        };
        e.correlation_id = "after-cancel".into();
        let answer = bounded("after cancel", client.send_event(event))
            .await
            .expect("stream still up");
        assert!(matches!(
            answer.decision,
            agentwire_core::message::Decision::Block { status: 599, .. }
        ));
        client.close();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_client_config_on_connect() {
    within("agentwire gRPC config", async {
        let agent = RefAgent::new("ref-agent", &[]);
        let server = start_ref_grpc(agent.clone()).await;
        let config = GrpcClientConfig {
            agent_config: Some(sample_config()),
            ..client_config()
        };
        let client = bounded(
            "connect",
            GrpcAgentClient::connect(&server.endpoint, config),
        )
        .await
        .expect("connected: the configure's ping was answered");
        let hello = agent.handshakes.lock().unwrap()[0].clone();
        assert_eq!(
            hello.config,
            sample_config().0,
            "config_json in the handshake"
        );
        assert_eq!(hello.supported_versions, vec![2]);
        assert!(
            agent.configs.lock().unwrap().is_empty(),
            "0.6.45's gRPC agent does not pass a configure to its handler"
        );
        assert!(client.is_connected());
        client.close();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_pool_every_event_type() {
    within("agentwire gRPC pool", async {
        let cell = "agentwire AgentPool (gRPC) → reference GrpcAgentServerV2";
        let mut kinds = KINDS.to_vec();
        kinds.push(Kind::GuardrailInspect);
        let cases = cases_of(&kinds);
        let agent = RefAgent::new("ref-agent", &cases);
        let server = start_ref_grpc(agent.clone()).await;
        let pool = AgentPool::new(
            agentwire_tokio::runtime(),
            aw_pool_config(2, &default_offer()),
        );
        pool.enable_grpc(client_config());
        bounded(
            "add_agent",
            pool.add_agent("ref", &server.endpoint, AgentOptions::default()),
        )
        .await
        .expect("registered");
        let hurried = AgentOptions {
            request_timeout: Some(NO_ANSWER),
            connections: Some(1),
            ..AgentOptions::default()
        };
        bounded(
            "add_agent",
            pool.add_agent("ref-hurried", &server.endpoint, hurried),
        )
        .await
        .expect("registered");
        assert_eq!(pool.healthy_connections("ref"), 2, "{cell}");
        for case in &cases {
            let id = case.id();
            if kind(&case.event) == Kind::GuardrailInspect {
                let result =
                    bounded(id, aw_pool_send(&pool, "ref-hurried", case.event.clone())).await;
                assert!(
                    matches!(result, Err(PoolError::Client(ClientError::Timeout))),
                    "{cell}: {id}: {result:?}"
                );
                continue;
            }
            let outcome = bounded(id, aw_pool_send(&pool, "ref", case.event.clone()))
                .await
                .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
            let PoolOutcome::Answered(answer) = outcome else {
                panic!("{cell}: {id} skipped: {outcome:?}")
            };
            check_answer(cell, case, &answer);
            let got = agent.received(id);
            assert_event(cell, &got, &as_reference_receives_it(&case.event, &got));
            pool.clear_affinity(id);
        }
        assert_eq!(pool.healthy_connections("ref"), 2, "{cell}");
        pool.shutdown().await;
    })
    .await;
}
