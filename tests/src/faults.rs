//! Fault scenarios of issue #9 that fit the runtime-generic suite: an agent that stops
//! reading, cancel storms, and a proxy that pings without reading its pongs. Each is a
//! `pub async fn name<R: Runtime>(runtime: R)` listed in [`crate::uds_suite!`].

use crate::support::*;
use crate::{ALL, FAST, LATE, TestAgent, assert_healthy, connect};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, MessageType};
use agentwire_core::message::*;
use agentwire_runtime::client::{AgentClient, ClientError};
use agentwire_runtime::{BoxReader, Runtime};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_util::future::join_all;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Reads until nothing arrives for `quiet` (or the peer closes); returns the byte count.
/// Bounded by `limit` overall.
async fn drain_quietly<R: Runtime>(
    runtime: &R,
    reader: &mut BoxReader,
    quiet: Duration,
    limit: Duration,
    mut on_bytes: impl FnMut(&[u8]),
) -> usize {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    while Instant::now() < deadline {
        match agentwire_runtime::timeout(runtime, quiet, reader.read(&mut buf)).await {
            Some(Ok(n)) if n > 0 => {
                total += n;
                on_bytes(&buf[..n]);
            }
            // Quiet for `quiet`, closed, or broken: done.
            _ => break,
        }
    }
    total
}

/// An agent answers the handshake and then never reads its socket again, so the proxy's
/// writes fill the socket buffer. Requests already written time out with `Timeout` at their
/// deadline; once the client's write buffer reaches its bound, new requests are refused at
/// once with `Backpressure` (typed, no waiting); nothing hangs, nothing stays in flight, and
/// the bytes the client ever queued for that agent stay within its configured bound. Another
/// agent on the same runtime keeps being served throughout.
pub async fn agent_that_stops_reading_bounds_the_client<R: Runtime>(runtime: R) {
    let dir = TestDir::new();
    let (server, healthy) = crate::healthy_neighbour(&runtime, &dir).await;

    let path = dir.socket("deaf");
    let listener = runtime.bind_unix(&path).expect("bind");
    let accept = runtime.accept_unix(&listener);
    let mut config = client_config(&[Encoding::Json]);
    // Small enough that a few hundred 64 KiB chunks reach it, large enough to hold many.
    let max_buffered = 1024 * 1024;
    config.session.max_buffered_bytes = max_buffered;
    let connect = AgentClient::connect_unix(&runtime, &path, config);
    let serve_handshake = async {
        let (mut reader, mut writer) = accept.await.expect("accept");
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let frame = crate::read_frame(&runtime, &mut reader, &mut decoder).await;
        assert_eq!(frame.kind, MessageType::HandshakeRequest);
        writer
            .write_all(&handshake_response_frame())
            .await
            .expect("write handshake answer");
        writer.flush().await.expect("flush");
        (reader, writer)
    };
    let (client, (mut deaf_reader, deaf_writer)) =
        futures_lite::future::zip(connect, serve_handshake).await;
    let client = client.expect("handshake with the deaf agent");

    // 400 chunks of 64 KiB (25 MiB) offered at once, far more than the socket buffers plus
    // the client's 1 MiB bound can hold.
    let deadline = Duration::from_millis(800);
    let data = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let sends = join_all((0..400u32).map(|i| {
        let client = &client;
        let data = &data;
        async move {
            let event = Event::RequestBodyChunk(chunk(&format!("deaf-{i}"), 0, data, true));
            let start = Instant::now();
            let result = client.send_event_with_timeout(event, deadline).await;
            (result, start.elapsed())
        }
    }));
    let probe = async {
        // The other agent is served while the deaf one fills up.
        for i in 0..5 {
            assert_healthy(&healthy, &format!("during-{i}")).await;
            sleep(&runtime, Duration::from_millis(50)).await;
        }
    };
    let (results, ()) = futures_lite::future::zip(sends, probe).await;
    let (mut timeouts, mut refused) = (0, 0);
    for (result, elapsed) in results {
        match result {
            Err(ClientError::Timeout) => {
                timeouts += 1;
                assert!(
                    elapsed >= deadline && elapsed < deadline + LATE,
                    "timeout after {elapsed:?}"
                );
            }
            Err(ClientError::Backpressure) => {
                refused += 1;
                assert!(elapsed < FAST, "a refusal took {elapsed:?}");
            }
            other => panic!("a deaf agent produced {other:?}"),
        }
    }
    eprintln!(
        "deaf agent: {timeouts} timeouts, {refused} refused with Backpressure, in {:?}",
        started.elapsed()
    );
    assert!(timeouts > 0, "nothing was ever written");
    assert!(refused > 0, "the client buffered 25 MiB for a deaf agent");
    assert_eq!(client.in_flight(), 0, "timed out requests still in flight");
    assert!(client.is_connected(), "a slow reader is not a dead agent");
    assert_healthy(&healthy, "after").await;

    // What the client queued for the deaf agent: read it all now. The session refuses at
    // `max_buffered` and the writer task holds at most one batch taken before that, so the
    // total is under two bounds plus the socket buffers and one frame.
    let queued = drain_quietly(
        &runtime,
        &mut deaf_reader,
        Duration::from_millis(500),
        Duration::from_secs(10),
        |_| {},
    )
    .await;
    let bound = 2 * max_buffered + 4 * 1024 * 1024;
    eprintln!("deaf agent: the client queued {queued} bytes (bound {bound})");
    assert!(queued > 0);
    assert!(queued < bound, "the client queued {queued} bytes");
    // Once the agent reads again the connection is usable (the timed-out requests' Cancels
    // arrived with the rest; a fresh request is refused only while the buffer is full).
    drop((deaf_reader, deaf_writer, listener));
    assert_healthy(&healthy, "end").await;
    server.stop(&runtime).await;
}

/// Thousands of requests started and cancelled at once, half by dropping their futures at
/// random moments and half with an explicit `cancel`, mixed with requests that are answered
/// at once: every future ends exactly once, nothing stays in flight, the agent is told about
/// every cancelled request (exactly once each) and drops its handler, and the connections
/// serve normally afterwards.
pub async fn cancel_storm_leaves_nothing_in_flight<R: Runtime>(runtime: R) {
    let dir = TestDir::new();
    let agent = Arc::new(TestAgent::new(runtime.clone()));
    let mut config = server_config(ALL);
    // ~670 requests per connection are held at once (never answered, cancelled later) and
    // this proxy, like the reference, does not wait for flow control (the suite's agent
    // advertises 2 048): the default handler cap runs 256 of them and the rest wait in a
    // backlog sized to the advertised concurrency, where most of the cancels find them. With
    // the default backlog (256) the connection would stop reading with both full, and the
    // Cancels queued behind further events would not be seen until a handler ends.
    config.serve.max_backlog_per_connection = 2048 - config.serve.max_concurrent_per_connection;
    let server = start_server(&runtime, &dir.socket("agent"), config, agent.clone());
    let clients = [
        connect(&runtime, &server).await,
        connect(&runtime, &server).await,
    ];
    const N: usize = 2000;
    let ended = AtomicUsize::new(0);
    // Even requests are dropped after a while, odd ones cancelled explicitly; two in three
    // go to `/slow` (never answered), the rest to `/` (answered at once).
    let sends = join_all((0..N).map(|i| {
        let client = &clients[i % 2];
        let (runtime, ended) = (&runtime, &ended);
        async move {
            let slow = i % 3 != 2;
            let id = format!("storm-{i}");
            let uri = if slow { "/slow" } else { "/" };
            let send = client.send_request_headers(request(&id, uri));
            let outcome = if i % 2 == 0 {
                // Dropped after 0–49 ms, mostly while the agent holds it.
                let wait = Duration::from_millis((i * 7 % 50) as u64);
                agentwire_runtime::timeout(runtime, wait, send).await
            } else if slow {
                let cancel = async {
                    sleep(runtime, Duration::from_millis((i * 11 % 50) as u64)).await;
                    client
                        .cancel(&id, CancelReason::ClientDisconnect)
                        .expect("cancel a pending request");
                };
                let (r, ()) = futures_lite::future::zip(send, cancel).await;
                Some(r)
            } else {
                // A late cancel of an answered request: harmless, still told to the agent.
                let r = send.await;
                let _ = client.cancel(&id, CancelReason::ClientDisconnect);
                Some(r)
            };
            ended.fetch_add(1, Ordering::AcqRel);
            (i, slow, outcome)
        }
    }));
    let results = agentwire_runtime::timeout(&runtime, Duration::from_secs(20), sends)
        .await
        .expect("the storm ended");
    assert_eq!(ended.load(Ordering::Acquire), N);
    let mut slow_ids = HashSet::new();
    let (mut dropped, mut cancelled, mut answered) = (0, 0, 0);
    for (i, slow, outcome) in results {
        match outcome {
            None => dropped += 1,
            Some(Err(ClientError::Cancelled)) => cancelled += 1,
            Some(Ok(answer)) => {
                assert!(!slow, "a /slow request was answered");
                assert_eq!(
                    answer.correlation_id(),
                    Some(format!("storm-{i}").as_str()),
                    "answer routed to the wrong caller"
                );
                answered += 1;
            }
            Some(Err(e)) => panic!("storm-{i}: {e}"),
        }
        if slow {
            slow_ids.insert(format!("storm-{i}"));
        }
    }
    eprintln!("cancel storm: {dropped} dropped, {cancelled} cancelled, {answered} answered");
    assert!(
        dropped > 0 && cancelled > 0 && answered > 0,
        "{dropped} dropped, {cancelled} cancelled, {answered} answered"
    );
    for client in &clients {
        assert_eq!(client.in_flight(), 0, "cancelled requests still in flight");
        assert!(client.is_connected());
    }
    // Every slow request was cancelled exactly once on the agent's side, and its handler
    // (if it ran) was dropped; fast ones may see a late Cancel, at most one each.
    let everything_told = wait_until(&runtime, Duration::from_secs(15), || {
        let cancels = agent.stats.cancels();
        slow_ids
            .iter()
            .all(|id| cancels.iter().any(|c| &c.correlation_id == id))
    })
    .await;
    if !everything_told {
        let cancels = agent.stats.cancels();
        let missing: Vec<&String> = slow_ids
            .iter()
            .filter(|id| !cancels.iter().any(|c| &c.correlation_id == *id))
            .take(20)
            .collect();
        panic!(
            "the agent did not see every cancel: {} of {} seen, missing e.g. {missing:?}",
            cancels.len(),
            slow_ids.len()
        );
    }
    let cancels = agent.stats.cancels();
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    // (A handler whose Cancel arrived in the same read as its event never started, so the
    // order of drop and `on_cancel` is checked by `cancel_drops_the_agents_handler`; here
    // it is enough that no handler is left running, below.)
    for record in &cancels {
        *per_id.entry(record.correlation_id.as_str()).or_default() += 1;
    }
    for (id, count) in &per_id {
        assert_eq!(*count, 1, "{id} cancelled {count} times");
    }
    assert!(
        wait_until(&runtime, FAST, || {
            agent.stats.started() == agent.stats.finished() + agent.stats.dropped()
        })
        .await,
        "handlers still running: started {}, finished {}, dropped {}",
        agent.stats.started(),
        agent.stats.finished(),
        agent.stats.dropped()
    );
    for (i, client) in clients.iter().enumerate() {
        assert_healthy(client, &format!("after-storm-{i}")).await;
    }
    server.stop(&runtime).await;
}

/// The agent-side write buffer under a ping burst: a proxy that sends pings as fast as it can
/// and never reads the pongs. The agent stops reading once its write buffer is at its bound
/// (`max_buffered_bytes`), so the proxy's writes stall after a bounded amount; when the proxy
/// reads again every ping it managed to send is answered, in order; other proxies are served
/// throughout.
pub async fn ping_burst_is_bounded_by_the_agent<R: Runtime>(runtime: R) {
    let dir = TestDir::new();
    let agent = Arc::new(TestAgent::new(runtime.clone()));
    let mut config = server_config(ALL);
    let max_buffered = 512 * 1024;
    config.serve.agent.max_buffered_bytes = max_buffered;
    let server = start_server(&runtime, &dir.socket("agent"), config, agent.clone());
    let healthy = connect(&runtime, &server).await;

    let (mut reader, mut writer) = runtime.connect_unix(server.path()).await.unwrap();
    writer.write_all(&handshake_request_frame()).await.unwrap();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let frame = crate::read_frame(&runtime, &mut reader, &mut decoder).await;
    assert_eq!(frame.kind, MessageType::HandshakeResponse);

    // 1 000 pings of ~1 KiB per write; stop when a write makes no progress for 500 ms
    // (the agent stopped reading) or when far more than any bound has gone through.
    // The agent echoes a ping's payload byte for byte without decoding it, so ~1 KiB of
    // anything makes a big ping.
    let payload: Vec<u8> = (0..1024u32).map(|i| b'a' + (i % 26) as u8).collect();
    let one = raw_frame(MessageType::Ping as u8, &payload);
    let batch: Vec<u8> = one.repeat(1000);
    let give_up_at = 64 * 1024 * 1024;
    let mut sent = 0usize;
    let stalled = loop {
        if sent >= give_up_at {
            break false;
        }
        let write = agentwire_runtime::timeout(
            &runtime,
            Duration::from_millis(500),
            // Continue where the last (partial) write stopped: the stream stays framed.
            writer.write(&batch[sent % batch.len()..]),
        )
        .await;
        match write {
            Some(Ok(n)) if n > 0 => sent += n,
            Some(other) => panic!("the agent dropped the pinging proxy: {other:?}"),
            None => break true,
        }
    };
    let bound = 2 * max_buffered + 4 * 1024 * 1024;
    eprintln!(
        "ping burst: the agent took {sent} bytes of pings before it stopped reading (bound {bound})"
    );
    assert!(stalled, "the agent kept reading {sent} bytes of pings");
    assert!(sent < bound, "the agent took {sent} bytes of pings");
    assert_healthy(&healthy, "during-burst").await;

    // Reading again: the agent resumes reading once its buffer drains, and every ping is
    // answered with its pong, in order. The torn last frame is finished while reading (the
    // agent is still blocked on its own writes until then), so the count is exact.
    let torn = sent % one.len();
    let rest = if torn == 0 { &[][..] } else { &one[torn..] };
    let pings = sent.div_ceil(one.len());
    let mut pongs = 0usize;
    let mut wrong = 0usize;
    let finish = async {
        let wrote = agentwire_runtime::timeout(&runtime, Duration::from_secs(10), async {
            writer.write_all(rest).await?;
            writer.flush().await
        })
        .await;
        assert!(
            matches!(wrote, Some(Ok(()))),
            "the agent never resumed reading: {wrote:?}"
        );
    };
    let drain = drain_quietly(
        &runtime,
        &mut reader,
        Duration::from_millis(1500),
        Duration::from_secs(20),
        |bytes| {
            decoder.extend(bytes);
            while let Some(frame) = decoder.decode().expect("well-formed pongs") {
                if frame.kind == MessageType::Pong && frame.payload[..] == payload[..] {
                    pongs += 1;
                } else {
                    wrong += 1;
                }
            }
        },
    );
    futures_lite::future::zip(finish, drain).await;
    let left = decoder.buffered();
    eprintln!("ping burst: {pings} pings, {pongs} pongs");
    assert_eq!(wrong, 0);
    assert_eq!(left, 0, "a torn pong");
    assert_eq!(pongs, pings, "pings went unanswered");
    drop((reader, writer));
    assert_healthy(&healthy, "after-burst").await;
    server.stop(&runtime).await;
}

/// A raw proxy connection past its handshake (JSON), which ignores flow control like the
/// reference (§14 B3): it writes whatever the scenario says, whatever the agent signals.
async fn raw_proxy<R: Runtime>(
    runtime: &R,
    server: &RunningServer,
) -> (BoxReader, agentwire_runtime::BoxWriter, FrameDecoder) {
    let (mut reader, mut writer) = runtime.connect_unix(server.path()).await.unwrap();
    writer.write_all(&handshake_request_frame()).await.unwrap();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let frame = crate::read_frame(runtime, &mut reader, &mut decoder).await;
    assert_eq!(frame.kind, MessageType::HandshakeResponse);
    (reader, writer, decoder)
}

/// Writes `bytes` within [`FAST`] (they fit in the socket buffers; a stall is a failure).
async fn write_fast<R: Runtime>(
    runtime: &R,
    writer: &mut agentwire_runtime::BoxWriter,
    bytes: &[u8],
) {
    let wrote = agentwire_runtime::timeout(runtime, FAST, async {
        writer.write_all(bytes).await?;
        writer.flush().await
    })
    .await;
    assert!(matches!(wrote, Some(Ok(()))), "write stalled: {wrote:?}");
}

fn headers_frames(ids: impl IntoIterator<Item = String>, uri: &str) -> Vec<u8> {
    ids.into_iter()
        .flat_map(|id| json_frame(MessageType::RequestHeaders, &request(&id, uri)))
        .collect()
}

fn cancel_frame(id: &str) -> Vec<u8> {
    json_frame(
        MessageType::Cancel,
        &Cancel {
            correlation_id: id.to_owned(),
            reason: CancelReason::ClientDisconnect,
            timestamp_ms: 0,
        },
    )
}

/// The id an answer frame is for; panics on anything but answers, pongs and flow control.
fn answered_id(frame: &agentwire_core::frame::Frame) -> Option<String> {
    match frame.kind {
        MessageType::AgentResponse => {
            let answer: AgentResponse = agentwire_core::encoding::decode_message(
                MessageType::AgentResponse,
                &frame.payload,
                Encoding::Json,
            )
            .expect("a JSON answer");
            Some(answer.correlation_id().expect("an id").to_owned())
        }
        MessageType::Pong | MessageType::FlowControl => None,
        other => panic!("unexpected {other:?} from the agent"),
    }
}

/// With the default handler cap, a proxy that ignores flow control pipelines more requests
/// than the cap: the agent keeps reading (the excess waits in the connection's backlog), so a
/// Ping is answered while every handler is busy, no handler beyond the cap starts, and the
/// backlog starts in arrival order, one event per freed handler.
pub async fn pings_are_answered_at_the_handler_cap<R: Runtime>(runtime: R) {
    let dir = TestDir::new();
    let agent = Arc::new(TestAgent::new(runtime.clone()));
    let config = server_config(ALL);
    let cap = config.serve.max_concurrent_per_connection;
    assert!(
        config.serve.max_backlog_per_connection >= 10,
        "a default backlog"
    );
    let server = start_server(&runtime, &dir.socket("agent"), config, agent.clone());
    let (mut reader, mut writer, mut decoder) = raw_proxy(&runtime, &server).await;

    // `cap` handlers that never answer, then 10 ordinary requests behind them; once the
    // handlers are all busy, a ping.
    let mut bytes = headers_frames((0..cap).map(|i| format!("slow-{i}")), "/slow");
    bytes.extend(headers_frames((0..10).map(|i| format!("fast-{i}")), "/"));
    write_fast(&runtime, &mut writer, &bytes).await;
    assert!(
        wait_until(&runtime, FAST, || agent.stats.started() >= cap).await,
        "{} handlers started, cap {cap}",
        agent.stats.started()
    );
    let ping = raw_frame(MessageType::Ping as u8, b"at-the-cap");
    write_fast(&runtime, &mut writer, &ping).await;
    let frame = loop {
        let frame = crate::read_frame(&runtime, &mut reader, &mut decoder).await;
        if frame.kind != MessageType::FlowControl {
            break frame;
        }
    };
    assert_eq!(frame.kind, MessageType::Pong, "answered before the ping");
    assert_eq!(&frame.payload[..], b"at-the-cap");
    assert!(
        wait_until(&runtime, FAST, || agent.stats.started() == cap).await,
        "{} handlers started, cap {cap}",
        agent.stats.started()
    );
    // A Cancel frees one handler: the backlog then runs one event at a time, in order.
    write_fast(&runtime, &mut writer, &cancel_frame("slow-0")).await;
    let mut order = Vec::new();
    while order.len() < 10 {
        let frame = crate::read_frame(&runtime, &mut reader, &mut decoder).await;
        order.extend(answered_id(&frame));
    }
    let expected: Vec<String> = (0..10).map(|i| format!("fast-{i}")).collect();
    assert_eq!(order, expected, "the backlog ran out of order");
    assert_eq!(agent.stats.max_running.load(Ordering::Acquire), cap);
    drop((reader, writer));
    assert!(
        wait_until(&runtime, FAST, || agent.stats.started()
            == agent.stats.finished() + agent.stats.dropped())
        .await,
        "handlers still running after the proxy left"
    );
    server.stop(&runtime).await;
}

/// With the default handler cap, a proxy that ignores flow control starts more requests than
/// the cap and then cancels every one: each Cancel takes effect at once — backlogged requests
/// never run their handler, running ones are aborted — none is answered, the agent is told of
/// each exactly once, and the connection serves normally afterwards.
pub async fn cancels_past_the_handler_cap_all_take_effect<R: Runtime>(runtime: R) {
    let dir = TestDir::new();
    let agent = Arc::new(TestAgent::new(runtime.clone()));
    let config = server_config(ALL);
    let cap = config.serve.max_concurrent_per_connection;
    let over = cap + config.serve.max_backlog_per_connection / 2;
    let server = start_server(&runtime, &dir.socket("agent"), config, agent.clone());
    let (mut reader, mut writer, mut decoder) = raw_proxy(&runtime, &server).await;

    let ids: Vec<String> = (0..over).map(|i| format!("over-{i}")).collect();
    write_fast(&runtime, &mut writer, &headers_frames(ids.clone(), "/slow")).await;
    assert!(
        wait_until(&runtime, FAST, || agent.stats.started() >= cap).await,
        "{} handlers started, cap {cap}",
        agent.stats.started()
    );
    // Backlogged ones first, then the running ones; then a request that must be answered.
    let mut bytes: Vec<u8> = ids.iter().rev().flat_map(|id| cancel_frame(id)).collect();
    bytes.extend(headers_frames(["after".to_owned()], "/"));
    write_fast(&runtime, &mut writer, &bytes).await;
    loop {
        let frame = crate::read_frame(&runtime, &mut reader, &mut decoder).await;
        match answered_id(&frame) {
            Some(id) if id == "after" => break,
            Some(id) => panic!("the cancelled {id} was answered"),
            None => {}
        }
    }
    let cancels = agent.stats.cancels();
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for record in &cancels {
        *per_id.entry(record.correlation_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_id.len(), over, "cancels seen: {}", per_id.len());
    assert!(
        per_id.values().all(|n| *n == 1),
        "a request cancelled twice"
    );
    assert!(
        wait_until(&runtime, FAST, || agent.stats.dropped() == cap).await,
        "aborted handlers: {} of {cap}",
        agent.stats.dropped()
    );
    // The backlogged requests never reached the handler; only `after` ran besides the cap.
    assert_eq!(agent.stats.started(), cap + 1);
    assert_eq!(agent.stats.finished(), 1);
    drop((reader, writer));
    server.stop(&runtime).await;
}

/// A proxy that ignores flow control and floods events: past the handler cap and the backlog
/// the agent stops reading that connection, so what it holds is bounded (cap and backlog
/// events, plus one read) and the proxy's writes stall; other proxies are served throughout,
/// and a shutdown still ends the stalled connection and its handlers.
pub async fn backlog_past_the_handler_cap_is_bounded<R: Runtime>(runtime: R) {
    let dir = TestDir::new();
    let agent = Arc::new(TestAgent::new(runtime.clone()));
    let mut config = server_config(ALL);
    // The end of the scenario waits for it.
    config.serve.drain_timeout = Duration::from_secs(1);
    let cap = config.serve.max_concurrent_per_connection;
    let held = cap + config.serve.max_backlog_per_connection;
    // An unbounded backlog would read on to the session's `max_in_flight` and then close.
    let max_in_flight = config.serve.agent.max_in_flight;
    let server = start_server(&runtime, &dir.socket("agent"), config, agent.clone());
    let healthy = connect(&runtime, &server).await;
    let (reader, mut writer, _decoder) = raw_proxy(&runtime, &server).await;

    // ~1 KiB events, so the socket buffers hold few of them.
    let padded = |i: usize| {
        let mut r = request(&format!("flood-{i}"), "/slow");
        r.headers.insert("x-pad", "p".repeat(1000));
        json_frame(MessageType::RequestHeaders, &r)
    };
    let frame_len = padded(0).len();
    let total = max_in_flight + 16;
    let flood: Vec<u8> = (0..total).flat_map(padded).collect();
    let mut sent = 0usize;
    let stalled = loop {
        if sent >= flood.len() {
            break false;
        }
        let write = agentwire_runtime::timeout(
            &runtime,
            Duration::from_millis(500),
            writer.write(&flood[sent..]),
        )
        .await;
        match write {
            Some(Ok(n)) if n > 0 => sent += n,
            Some(other) => panic!("the agent dropped the flooding proxy: {other:?}"),
            None => break true,
        }
    };
    // Held by the agent: the handlers and the backlog, plus one 64 KiB read; the rest sits
    // in the socket buffers (a few hundred KiB on Linux).
    let bound = held * frame_len + 64 * 1024 + 2 * 1024 * 1024;
    eprintln!(
        "flood: the agent took {sent} bytes ({} events of {frame_len} bytes) before it \
         stopped reading (bound {bound})",
        sent / frame_len
    );
    assert!(stalled, "the agent read all {total} events");
    assert!(sent < bound, "the agent took {sent} bytes");
    assert!(sent / frame_len < max_in_flight);
    assert!(
        wait_until(&runtime, FAST, || agent.stats.started() == cap).await,
        "{} handlers started, cap {cap}",
        agent.stats.started()
    );
    assert_healthy(&healthy, "during-flood").await;
    assert_eq!(
        agent.stats.started(),
        cap + 1,
        "a handler past the cap started"
    );
    // A connection that is not being read cannot see its proxy leave; the shutdown's drain
    // timeout ends it, dropping its handlers.
    server.stop(&runtime).await;
    assert!(
        wait_until(&runtime, FAST, || agent.stats.dropped() == cap).await,
        "handlers left running: {} dropped of {cap}",
        agent.stats.dropped()
    );
    drop((reader, writer));
}
