//! Reference `AgentClientV2Uds` → agentwire `UdsServer`, in JSON and in MessagePack.
//!
//! The reference client offers `["msgpack","json"]`; the agentwire agent picks the first it
//! speaks, so an agent restricted to JSON gives the JSON cell.

use crate::support::*;
use agentwire_core::message::{Encoding, Event};
use bytes::Bytes;
use std::time::Duration;
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;

async fn connect(path: &std::path::Path) -> zv2::AgentClientV2Uds {
    let client = zv2::AgentClientV2Uds::new(
        "aw-agent",
        path.to_str().expect("utf-8 path"),
        Duration::from_secs(5),
    )
    .await
    .expect("reference client");
    bounded("reference connect", client.connect())
        .await
        .expect("the reference client completes the handshake with agentwire");
    client
}

/// Every event type and every answer shape, through the reference client.
async fn every_event(encoding: Encoding) {
    let cell = format!("reference AgentClientV2Uds → agentwire UdsServer ({encoding:?})");
    let dir = tempfile::tempdir().unwrap();
    let cases = catalogue();
    let agent = AwAgent::new(&cases);
    let server = start_aw_uds(dir.path(), agent.clone(), &[encoding]);
    let client = connect(&server.path).await;

    let expected = match encoding {
        Encoding::Msgpack => zv2::UdsEncoding::MessagePack,
        _ => zv2::UdsEncoding::Json,
    };
    assert_eq!(
        client.encoding().await,
        expected,
        "{cell}: negotiated encoding"
    );

    // What the reference proxy announced, as the agent saw it.
    let hello = agent.connects.lock().unwrap()[0].clone();
    assert_eq!(hello.proxy_id, "zentinel-proxy");
    assert_eq!(hello.proxy_version, "0.6.45");
    assert_eq!(hello.supported_versions, vec![2]);
    assert_eq!(
        hello.supported_encodings,
        vec![Encoding::Msgpack, Encoding::Json]
    );
    assert!(hello.agentwire_encodings.is_empty());
    // 0.6.45 puts no configuration in the handshake (and sends no Configure on connect).
    assert!(
        hello.config.is_null(),
        "{cell}: handshake config {:?}",
        hello.config
    );

    // The capabilities as the reference decoded them. It maps event number 8 (configure) to
    // nothing (B8): it learns seven of agentwire's eight event types.
    let caps = client.capabilities().await.expect("capabilities");
    assert_eq!(caps.agent_id, "aw-agent");
    assert_eq!(caps.supported_events.len(), 7, "{cell}: {caps:?}");
    assert!(!caps.supports_event(zref::EventType::Configure));
    assert!(caps.features.guardrails && caps.features.streaming_body);

    for case in &cases {
        let id = case.id();
        let answer = bounded(id, ref_uds_send(&client, id, &aw_to_ref_event(&case.event)))
            .await
            .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
        assert_answer(
            &cell,
            id,
            &ref_to_aw_response(&answer),
            &routed(&case.answer, id),
        );
        assert_event(&cell, &agent.received(id), &case.event);
    }
    // Nothing but the events sent: no Configure was delivered on connect.
    let seen: Vec<String> = agent
        .seen()
        .iter()
        .map(|e| e.correlation_id().to_string())
        .collect();
    let sent: Vec<String> = cases.iter().map(|c| c.id().to_string()).collect();
    assert_eq!(
        seen, sent,
        "{cell}: the agent saw exactly the events sent, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_every_event_type() {
    within("json_every_event_type", every_event(Encoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_every_event_type() {
    within("msgpack_every_event_type", every_event(Encoding::Msgpack)).await;
}

/// The reference's "binary" body-chunk methods (B1): raw MessagePack `bin` in a MessagePack
/// session, base64 with all seven keys (nulls included) in a JSON session. The reference's own
/// agent cannot read the first form; agentwire reads both, non-UTF-8 bytes included.
async fn binary_chunks(encoding: Encoding) {
    let cell = format!("reference binary body chunks → agentwire ({encoding:?})");
    let dir = tempfile::tempdir().unwrap();
    let agent = AwAgent::new(&[]);
    let server = start_aw_uds(dir.path(), agent.clone(), &[encoding]);
    let client = connect(&server.path).await;
    let data = Bytes::from_static(b"\x00\xc3\x28\xff binary \x80\x81");

    let answer = bounded(
        "binary request chunk",
        client.send_request_body_chunk_binary(&zref::BinaryRequestBodyChunkEvent {
            correlation_id: "bin-req".into(),
            data: data.clone(),
            is_last: false,
            total_size: Some(1000),
            chunk_index: 4,
            bytes_received: 512,
        }),
    )
    .await
    .expect("answered");
    // Not scripted: the agent answers 599, which proves the handler ran (the reference agent
    // would answer Allow without running it, S1).
    assert!(matches!(
        answer.decision,
        zref::Decision::Block { status: 599, .. }
    ));
    let Event::RequestBodyChunk(chunk) = agent.received("bin-req") else {
        panic!("{cell}: not a request body chunk")
    };
    assert_eq!(chunk.data, data, "{cell}: bytes");
    assert_eq!(
        (
            chunk.is_last,
            chunk.total_size,
            chunk.chunk_index,
            chunk.bytes_transferred
        ),
        (false, Some(1000), 4, 512),
        "{cell}"
    );

    let answer = bounded(
        "binary response chunk",
        client.send_response_body_chunk_binary(&zref::BinaryResponseBodyChunkEvent {
            correlation_id: "bin-resp".into(),
            data: data.clone(),
            is_last: true,
            total_size: None,
            chunk_index: 0,
            bytes_sent: 11,
        }),
    )
    .await
    .expect("answered");
    assert!(matches!(
        answer.decision,
        zref::Decision::Block { status: 599, .. }
    ));
    let Event::ResponseBodyChunk(chunk) = agent.received("bin-resp") else {
        panic!("{cell}: not a response body chunk")
    };
    assert_eq!(chunk.data, data, "{cell}: bytes");
    assert_eq!(
        (
            chunk.is_last,
            chunk.total_size,
            chunk.chunk_index,
            chunk.bytes_transferred
        ),
        (true, None, 0, 11),
        "{cell}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_binary_body_chunks() {
    within("json_binary_body_chunks", binary_chunks(Encoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_binary_body_chunks() {
    within(
        "msgpack_binary_body_chunks",
        binary_chunks(Encoding::Msgpack),
    )
    .await;
}

/// Cancel and Ping are JSON whatever was negotiated (B4): agentwire reads the Cancel, echoes
/// the Ping, and the connection carries on.
async fn cancel_and_ping(encoding: Encoding) {
    let cell = format!("reference cancel/ping → agentwire ({encoding:?})");
    let dir = tempfile::tempdir().unwrap();
    let cases = cases_of(&[Kind::RequestHeaders]);
    let agent = AwAgent::new(&cases);
    let server = start_aw_uds(dir.path(), agent.clone(), &[encoding]);
    let client = connect(&server.path).await;

    bounded("ping", client.ping()).await.expect("ping queued");
    bounded(
        "cancel",
        client.cancel_request("gone-1", zv2::CancelReason::Timeout),
    )
    .await
    .expect("cancel queued");
    bounded(
        "cancel",
        client.cancel_request("gone-2", zv2::CancelReason::Manual),
    )
    .await
    .expect("cancel queued");
    // The connection still works, and both cancels were read before this answer.
    let case = &cases[0];
    let answer = bounded(
        "after cancel",
        ref_uds_send(&client, case.id(), &aw_to_ref_event(&case.event)),
    )
    .await
    .unwrap_or_else(|e| panic!("{cell}: connection broken after cancel/ping: {e}"));
    assert_answer(
        &cell,
        case.id(),
        &ref_to_aw_response(&answer),
        &routed(&case.answer, case.id()),
    );
    assert!(client.is_connected().await);
    let cancels = agent.cancels.lock().unwrap().clone();
    assert_eq!(
        cancels,
        vec![("gone-1".to_string(), 1), ("gone-2".to_string(), 5)],
        "{cell}: cancels (reason = declaration index)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_cancel_and_ping() {
    within("json_cancel_and_ping", cancel_and_ping(Encoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_cancel_and_ping() {
    within(
        "msgpack_cancel_and_ping",
        cancel_and_ping(Encoding::Msgpack),
    )
    .await;
}

/// 150 requests at once on one connection to an agent that declares `max_concurrency` 100
/// and takes 100 ms per answer: agentwire answers out of order and pauses the proxy with
/// FlowControl frames in its own (tagged) shape, which the reference client cannot read and
/// skips (B3: it would ignore a pause anyway). Every request is answered with its own id.
async fn pipelined(encoding: Encoding) {
    let cell = format!("reference client pipelining → agentwire ({encoding:?})");
    let dir = tempfile::tempdir().unwrap();
    let agent = AwAgent::slow(&[], Duration::from_millis(100));
    let server = start_aw_uds(dir.path(), agent.clone(), &[encoding]);
    let client = std::sync::Arc::new(connect(&server.path).await);
    let template = match aw_to_ref_event(&cases_of(&[Kind::RequestHeaders])[0].event) {
        RefEvent::RequestHeaders(e) => e,
        _ => unreachable!(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..150 {
        let client = client.clone();
        let mut event = template.clone();
        event.metadata.correlation_id = format!("p-{i}");
        tasks.spawn(async move {
            let id = event.metadata.correlation_id.clone();
            (id.clone(), client.send_request_headers(&id, &event).await)
        });
    }
    let mut answered = 0;
    while let Some(joined) = bounded("pipelined answers", tasks.join_next()).await {
        let (id, result) = joined.expect("task");
        let answer = result.unwrap_or_else(|e| panic!("{cell}: {id}: {e}"));
        assert_eq!(
            answer
                .audit
                .custom
                .get("correlation_id")
                .and_then(|v| v.as_str()),
            Some(id.as_str())
        );
        answered += 1;
    }
    assert_eq!(answered, 150);
    assert_eq!(agent.seen().len(), 150);
    assert!(client.is_connected().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_pipelined_beyond_the_declared_concurrency() {
    within("json pipelined", pipelined(Encoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_pipelined_beyond_the_declared_concurrency() {
    within("msgpack pipelined", pipelined(Encoding::Msgpack)).await;
}
