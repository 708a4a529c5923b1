//! agentwire `AgentClient` → reference `UdsAgentServerV2`, in JSON and in MessagePack.
//!
//! agentwire offers postcard first, but only in its own `agentwire_encodings` key; the
//! reference reads `supported_encodings` (`["msgpack","json"]`) and must land on MessagePack.

use crate::support::*;
use agentwire_core::message::{Encoding, Event};
use agentwire_runtime::client::{AgentClient, ClientError};
use std::time::Duration;

async fn connect(path: &std::path::Path, offer: &[Encoding]) -> AgentClient {
    bounded(
        "agentwire connect",
        AgentClient::connect_unix(
            &agentwire_tokio::runtime(),
            path,
            aw_client_config(offer, None),
        ),
    )
    .await
    .expect("agentwire completes the handshake with the reference agent")
}

/// Every event type the reference agent answers, and each answer shape.
async fn every_event(offer: Vec<Encoding>, expected: Encoding) {
    let cell = format!("agentwire AgentClient → reference UdsAgentServerV2 ({expected:?})");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref-agent.sock");
    let cases = cases_of(&[
        Kind::RequestHeaders,
        Kind::RequestBodyChunk,
        Kind::ResponseHeaders,
        Kind::ResponseBodyChunk,
        Kind::RequestComplete,
        Kind::WebSocketFrame,
    ]);
    let agent = RefAgent::new("ref-agent", &cases);
    let _server = start_ref_uds_server(&path, agent.clone()).await;
    let client = connect(&path, &offer).await;

    let info = client.info().expect("connected").clone();
    assert_eq!(info.encoding, expected, "{cell}: negotiated encoding");
    assert_eq!(info.protocol_version, 2);
    assert_eq!(info.capabilities.agent_id, "ref-agent");
    // The reference numbers configure 8 in what it sends (B8).
    assert_eq!(
        info.capabilities.supported_events,
        vec![1, 2, 3, 4, 5, 6, 8]
    );
    let hello = agent.handshakes.lock().unwrap()[0].clone();
    assert_eq!(hello.proxy_id, "agentwire-proxy");
    assert_eq!(hello.supported_versions, vec![2]);
    assert!(hello.config.is_null());

    for case in &cases {
        let id = case.id();
        let answer = bounded(id, client.send_event(case.event.clone()))
            .await
            .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
        assert_answer(&cell, id, &answer, &routed(&case.answer, id));
        assert_event(&cell, &agent.received(id), &case.event);
    }
    assert!(
        agent.configs.lock().unwrap().is_empty(),
        "no configuration was sent"
    );

    // Ping: the reference echoes the payload, in whatever encoding it came.
    let rtt = bounded(
        "ping",
        client.ping(&agentwire_tokio::runtime(), Duration::from_secs(2)),
    )
    .await
    .unwrap_or_else(|e| panic!("{cell}: ping: {e}"));
    assert!(rtt < Duration::from_secs(2));

    // Cancel: the reference only logs it; the connection carries on.
    client
        .cancel("never-sent", agentwire_core::message::CancelReason::Manual)
        .expect("cancel queued");
    let again = &cases[0];
    let mut event = again.event.clone();
    if let Event::RequestHeaders(h) = &mut event {
        h.metadata.correlation_id = "after-cancel".into();
    }
    let answer = bounded("after cancel", client.send_event(event)).await;
    // Not scripted under this id: the reference handler answers 599, proving it ran.
    assert!(
        matches!(&answer, Ok(r) if matches!(r.decision, agentwire_core::message::Decision::Block { status: 599, .. })),
        "{cell}: after cancel: {answer:?}"
    );
    assert!(client.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_every_event_type() {
    within("json", every_event(vec![Encoding::Json], Encoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_every_event_type() {
    // The default offer (postcard, msgpack, json): the reference must pick MessagePack.
    within("msgpack", every_event(default_offer(), Encoding::Msgpack)).await;
}

/// B2: the reference agent never answers a GuardrailInspect. agentwire's client must give up
/// at the deadline with `Timeout` — not hang — and the connection must stay usable.
async fn guardrail_times_out(offer: Vec<Encoding>) {
    let cell = format!("agentwire guardrail → reference agent ({offer:?})");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref-agent.sock");
    let cases = catalogue();
    let agent = RefAgent::new("ref-agent", &cases);
    let _server = start_ref_uds_server(&path, agent.clone()).await;
    let client = connect(&path, &offer).await;

    for case in cases_of(&[Kind::GuardrailInspect]) {
        let started = std::time::Instant::now();
        let result = bounded(
            "guardrail",
            client.send_event_with_timeout(case.event.clone(), NO_ANSWER),
        )
        .await;
        assert!(
            matches!(result, Err(ClientError::Timeout)),
            "{cell}: {}: {result:?}",
            case.id()
        );
        assert!(started.elapsed() < NO_ANSWER + Duration::from_secs(2));
        assert_eq!(client.in_flight(), 0, "{cell}: the slot is freed");
    }
    assert!(
        agent.seen().is_empty(),
        "the reference handler never sees a guardrail event"
    );
    // The timeout sent a Cancel (the reference logs it); the connection still answers.
    let case = &cases_of(&[Kind::ResponseHeaders])[0];
    let answer = bounded("after guardrail", client.send_event(case.event.clone()))
        .await
        .unwrap_or_else(|e| panic!("{cell}: connection unusable after the timeout: {e}"));
    assert_answer(&cell, case.id(), &answer, &routed(&case.answer, case.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_guardrail_is_never_answered_b2() {
    within("json guardrail", guardrail_times_out(vec![Encoding::Json])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_guardrail_is_never_answered_b2() {
    within("msgpack guardrail", guardrail_times_out(default_offer())).await;
}

/// A reference agent that refuses the handshake: agentwire reports the agent's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_agent_refusing_the_handshake() {
    within("refused handshake", async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref-agent.sock");
        let agent = RefAgent::refusing("ref-agent", "maintenance window");
        let _server = start_ref_uds_server(&path, agent).await;
        let result = bounded(
            "connect",
            AgentClient::connect_unix(
                &agentwire_tokio::runtime(),
                &path,
                aw_client_config(&default_offer(), None),
            ),
        )
        .await;
        match result {
            Err(ClientError::Handshake(
                agentwire_core::session::CloseReason::HandshakeRejected { error },
            )) => assert_eq!(error.as_deref(), Some("maintenance window")),
            other => panic!("{other:?}"),
        }
    })
    .await;
}

/// The reference agent handles one event at a time per connection; agentwire keeps up to its
/// declared `max_concurrency` (100) in flight and matches the answers by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_to_a_sequential_reference_agent() {
    within("pipelined", async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref-agent.sock");
        let agent = RefAgent::new("ref-agent", &[]);
        let _server = start_ref_uds_server(&path, agent.clone()).await;
        let client = connect(&path, &default_offer()).await;
        let template = cases_of(&[Kind::RequestBodyChunk])[0].event.clone();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let client = client.clone();
            let mut event = template.clone();
            if let Event::RequestBodyChunk(c) = &mut event {
                c.correlation_id = format!("p-{i}");
                c.chunk_index = i;
            }
            tasks.spawn(async move { (i, client.send_event(event).await) });
        }
        while let Some(joined) = bounded("answers", tasks.join_next()).await {
            let (i, result) = joined.expect("task");
            let answer = result.unwrap_or_else(|e| panic!("p-{i}: {e}"));
            assert_eq!(answer.correlation_id(), Some(format!("p-{i}").as_str()));
        }
        assert_eq!(agent.seen().len(), 100);
    })
    .await;
}
