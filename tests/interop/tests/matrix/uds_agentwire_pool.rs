//! agentwire `AgentPool` → reference `UdsAgentServerV2`, in JSON and in MessagePack.

use crate::support::*;
use agentwire_core::message::Encoding;
use agentwire_pool::{AgentOptions, AgentPool, PoolError, PoolOutcome};
use agentwire_runtime::client::ClientError;

async fn every_event(offer: Vec<Encoding>, expected: Encoding) {
    let cell = format!("agentwire AgentPool → reference UdsAgentServerV2 ({expected:?})");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref-agent.sock");
    let cases = cases_of(&[
        Kind::RequestHeaders,
        Kind::RequestBodyChunk,
        Kind::ResponseHeaders,
        Kind::ResponseBodyChunk,
        Kind::RequestComplete,
        Kind::WebSocketFrame,
        Kind::GuardrailInspect,
    ]);
    let agent = RefAgent::new("ref-agent", &cases);
    let _server = start_ref_uds_server(&path, agent.clone()).await;
    let pool = AgentPool::new(agentwire_tokio::runtime(), aw_pool_config(3, &offer));
    let endpoint = path.to_str().unwrap();
    bounded(
        "add_agent",
        pool.add_agent("ref", endpoint, AgentOptions::default()),
    )
    .await
    .expect("registered");
    assert_eq!(pool.healthy_connections("ref"), 3, "{cell}");
    // A second registration of the same agent with a short deadline, for the guardrail.
    let hurried = AgentOptions {
        request_timeout: Some(NO_ANSWER),
        connections: Some(1),
        ..AgentOptions::default()
    };
    bounded(
        "add_agent",
        pool.add_agent("ref-hurried", endpoint, hurried),
    )
    .await
    .expect("registered");
    assert_eq!(agent.handshakes.lock().unwrap().len(), 4);

    for case in &cases {
        let id = case.id();
        if kind(&case.event) == Kind::GuardrailInspect {
            // B2: never answered; the pool reports the client's timeout, promptly.
            let result = bounded(id, aw_pool_send(&pool, "ref-hurried", case.event.clone())).await;
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
        assert_answer(&cell, id, &answer, &routed(&case.answer, id));
        assert_event(&cell, &agent.received(id), &case.event);
        pool.clear_affinity(id);
    }
    assert_eq!(pool.in_flight("ref"), 0);
    assert_eq!(
        pool.healthy_connections("ref"),
        3,
        "{cell}: every connection survived"
    );
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_every_event_type() {
    within(
        "pool json",
        every_event(vec![Encoding::Json], Encoding::Json),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_every_event_type() {
    within(
        "pool msgpack",
        every_event(default_offer(), Encoding::Msgpack),
    )
    .await;
}
