//! Reference `AgentPool` (UDS endpoint) → agentwire `UdsServer`, in JSON and in MessagePack.
//!
//! The 0.6.45 pool carries request headers, both body chunks, response headers and guardrail
//! inspections (it has no RequestComplete, WebSocket or Configure call).

use crate::support::*;
use agentwire_core::message::Encoding;
use std::time::Duration;
use zentinel_agent_protocol::v2 as zv2;

async fn every_event(encoding: Encoding) {
    let cell = format!("reference AgentPool → agentwire UdsServer ({encoding:?})");
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_of(&[
        Kind::RequestHeaders,
        Kind::RequestBodyChunk,
        Kind::ResponseHeaders,
        Kind::ResponseBodyChunk,
        Kind::GuardrailInspect,
    ]);
    let agent = AwAgent::new(&cases);
    let server = start_aw_uds(dir.path(), agent.clone(), &[encoding]);

    let pool = zv2::AgentPool::with_config(zv2::AgentPoolConfig {
        connections_per_agent: 3,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..zv2::AgentPoolConfig::default()
    });
    bounded(
        "add_agent",
        pool.add_agent("aw-agent", format!("unix:{}", server.path.display())),
    )
    .await
    .expect("the reference pool registers the agentwire agent");
    assert!(pool.is_agent_healthy("aw-agent"), "{cell}: agent healthy");
    let stats = pool.agent_stats("aw-agent").await.expect("stats");
    assert_eq!(
        stats.active_connections, 3,
        "{cell}: every connection handshaked"
    );
    assert_eq!(agent.connects.lock().unwrap().len(), 3);

    for case in &cases {
        let id = case.id();
        let answer = match aw_to_ref_event(&case.event) {
            RefEvent::RequestHeaders(e) => pool.send_request_headers("aw-agent", id, &e).await,
            RefEvent::RequestBodyChunk(e) => pool.send_request_body_chunk("aw-agent", id, &e).await,
            RefEvent::ResponseHeaders(e) => pool.send_response_headers("aw-agent", id, &e).await,
            RefEvent::ResponseBodyChunk(e) => {
                pool.send_response_body_chunk("aw-agent", id, &e).await
            }
            RefEvent::GuardrailInspect(e) => pool.send_guardrail_inspect("aw-agent", id, &e).await,
            other => unreachable!("not a pool event: {other:?}"),
        }
        .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
        assert_answer(
            &cell,
            id,
            &ref_to_aw_response(&answer),
            &routed(&case.answer, id),
        );
        assert_event(&cell, &agent.received(id), &case.event);
        pool.clear_correlation_affinity(id);
    }
    // A pool-level cancel goes to every connection of the agent, each a JSON Cancel (B4).
    pool.cancel_request("aw-agent", "gone", zv2::CancelReason::ClientDisconnect)
        .await
        .expect("cancel");
    for _ in 0..200 {
        if agent.cancels.lock().unwrap().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        agent.cancels.lock().unwrap().clone(),
        vec![("gone".to_string(), 0); 3],
        "{cell}: one Cancel per connection"
    );
    let stats = pool.agent_stats("aw-agent").await.expect("stats");
    assert_eq!(stats.total_errors, 0, "{cell}: {stats:?}");
    pool.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_every_event_type() {
    within("pool json", every_event(Encoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_every_event_type() {
    within("pool msgpack", every_event(Encoding::Msgpack)).await;
}
