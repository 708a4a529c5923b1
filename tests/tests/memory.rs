//! Issue #9: resident memory around hostile peers, measured.
//!
//! One test, alone in its binary, so the process's RSS is this test's: every hostile case
//! runs in turn against a real agent server and a real client over Unix sockets, and for
//! each one `VmRSS` is read before and after and the peak (`VmHWM`, reset before each case
//! through `/proc/self/clear_refs`) is compared with a bound derived from the configured
//! frame limit. The hostile bytes are built before the baseline is taken, so what is
//! measured is what agentwire does with them. The figures are printed (`--nocapture`).

use agentwire_core::encoding::{WireFormat, encode_event};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, MessageType};
use agentwire_core::message::*;
use agentwire_runtime::client::{AgentClient, ClientError};
use agentwire_runtime::server::AgentHandler;
use agentwire_runtime::{BoxReader, BoxWriter, Runtime};
use agentwire_tests::*;
use agentwire_tokio::TokioRuntime;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The frame limit every case runs against (the default: 16 MiB).
const MAX_FRAME: u64 = DEFAULT_MAX_FRAME_LEN as u64;
const MIB: u64 = 1024 * 1024;

/// Answers everything with Allow: the memory measured is the protocol's, not a handler's.
struct Allow;
impl AgentHandler for Allow {}

struct Case {
    name: &'static str,
    before: Rss,
    after: Rss,
    bound_kib: u64,
    /// Whether `VmHWM` was reset before the case (it is the lifetime peak otherwise).
    reset: bool,
}

impl Case {
    fn peak_growth_kib(&self) -> u64 {
        if self.reset {
            self.after.peak_kib.saturating_sub(self.before.now_kib)
        } else {
            // Without a reset an earlier case's peak would count against this one: take how
            // far the lifetime peak moved, or the resident growth, whichever is larger.
            let peak = self.after.peak_kib.saturating_sub(self.before.peak_kib);
            peak.max(self.after.now_kib.saturating_sub(self.before.now_kib))
        }
    }
}

/// Runs `case` between two RSS readings, with the peak reset first.
async fn measured(
    cases: &mut Vec<Case>,
    name: &'static str,
    bound: u64,
    case: impl std::future::Future<Output = ()>,
) {
    // Let the previous case's connections wind down first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reset = reset_peak_rss();
    let before = rss();
    case.await;
    let after = rss();
    let c = Case {
        name,
        before,
        after,
        bound_kib: bound / 1024,
        reset,
    };
    eprintln!(
        "{name:<36} RSS before {:>7} KiB, after {:>7} KiB, peak {:>7} KiB: peak growth {:>6} KiB (bound {} KiB){}",
        c.before.now_kib,
        c.after.now_kib,
        c.after.peak_kib,
        c.peak_growth_kib(),
        c.bound_kib,
        if reset { "" } else { " [peak not resettable]" }
    );
    cases.push(c);
}

async fn raw_proxy(runtime: &TokioRuntime, path: &std::path::Path) -> (BoxReader, BoxWriter) {
    let (mut reader, mut writer) = runtime.connect_unix(path).await.unwrap();
    writer.write_all(&handshake_request_frame()).await.unwrap();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let frame = next_frame(&mut reader, &mut decoder)
        .await
        .expect("handshake answer");
    assert_eq!(frame.kind, MessageType::HandshakeResponse);
    (reader, writer)
}

async fn next_frame(
    reader: &mut BoxReader,
    decoder: &mut FrameDecoder,
) -> Option<agentwire_core::frame::Frame> {
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) = decoder.decode().ok()? {
                return Some(frame);
            }
            let n = reader.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            decoder.extend(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// Sends `bytes` after the handshake and expects the agent to close the connection.
async fn expect_closed(runtime: &TokioRuntime, path: &std::path::Path, bytes: &[u8]) {
    let (mut reader, mut writer) = raw_proxy(runtime, path).await;
    // The write may fail half-way: the agent closes as soon as it has seen the header.
    let _ = writer.write_all(bytes).await;
    let closed = read_until_closed(runtime, &mut reader, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the agent kept the connection open");
}

/// Sends one event frame and returns the agent's answer.
async fn expect_answer(
    runtime: &TokioRuntime,
    path: &std::path::Path,
    frame: &[u8],
) -> AgentResponse {
    let (mut reader, mut writer) = raw_proxy(runtime, path).await;
    writer.write_all(frame).await.unwrap();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let answer = next_frame(&mut reader, &mut decoder)
        .await
        .expect("an answer");
    assert_eq!(answer.kind, MessageType::AgentResponse);
    agentwire_core::encoding::decode_message(
        MessageType::AgentResponse,
        &answer.payload,
        Encoding::Json,
    )
    .expect("a decodable answer")
}

/// A hostile agent on `path` handshakes, then writes `answer` once a request arrives: the
/// client's request must end with `ConnectionClosed`.
async fn client_sees_close(runtime: &TokioRuntime, path: &std::path::Path, answer: Vec<Vec<u8>>) {
    let mut script = vec![
        Step::AwaitFrames(1),
        Step::Write(handshake_response_frame()),
        Step::AwaitFrames(2),
    ];
    script.extend(answer.into_iter().map(Step::Write));
    let _hostile = HostileAgent::start(runtime, path, script);
    let client = AgentClient::connect_unix(runtime, path, client_config(&[Encoding::Json]))
        .await
        .unwrap();
    let result = client.send_request_headers(request("lie", "/")).await;
    assert!(
        matches!(result, Err(ClientError::ConnectionClosed(_))),
        "{result:?}"
    );
}

fn event_frame(event: &Event) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    encode_event(event, WireFormat::JSON, DEFAULT_MAX_FRAME_LEN, &mut out).expect("encode");
    out.to_vec()
}

#[test]
fn resident_memory_stays_bounded_under_hostile_peers() {
    let (tokio, runtime) = agentwire_tests::two_worker_tokio();
    tokio.block_on(async move {
        tokio::time::timeout(Duration::from_secs(120), scenario(runtime))
            .await
            .expect("the memory test did not finish in 2 minutes");
    });
}

async fn scenario(runtime: TokioRuntime) {
    let dir = TestDir::new();
    let server = start_server(
        &runtime,
        &dir.socket("agent"),
        server_config(&[Encoding::Json]),
        Arc::new(Allow),
    );
    let path = server.path().to_owned();

    // Every hostile input, built before any baseline.
    let junk = vec![0x41u8; MIB as usize];
    let mut claims_4gib = vec![0xff, 0xff, 0xff, 0xff, 0x10];
    claims_4gib.extend_from_slice(&junk);
    let mut claims_16mib_plus_1 = (DEFAULT_MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    claims_16mib_plus_1.push(0x10);
    claims_16mib_plus_1.extend_from_slice(&junk);
    let mut many = request("many-headers", "/");
    for i in 0..100_000 {
        many.headers.append(format!("x-h-{i:06}"), "v");
    }
    let many_headers = event_frame(&Event::RequestHeaders(many));
    let mut at_cap = request("cap-headers", "/");
    for i in 0..MAX_COLLECTION_LEN {
        at_cap.headers.append(format!("x-h-{i:06}"), "v");
    }
    let cap_headers = event_frame(&Event::RequestHeaders(at_cap));
    // As many tiny headers as fit in one frame: the worst ratio of decoded size to wire size
    // (written as JSON text directly: building a `Headers` of a million names one `append`
    // at a time is quadratic).
    let mut tiny = String::from(
        r#"{"metadata":{"correlation_id":"tiny-headers","request_id":"","client_ip":"","client_port":0,"protocol":"","timestamp":""},"method":"GET","uri":"/","headers":{"#,
    );
    let mut i = 0u32;
    while tiny.len() < (MAX_FRAME - 64 * 1024) as usize {
        tiny.push_str(&format!(r#""{i:x}":["v"],"#));
        i += 1;
    }
    tiny.pop();
    tiny.push_str("}}");
    let tiny_count = i;
    let tiny_headers = raw_frame(MessageType::RequestHeaders as u8, tiny.as_bytes());
    drop(tiny);
    let mut huge = request("huge-value", "/");
    huge.headers.insert("x-huge", "v".repeat(10 * MIB as usize));
    let huge_value = event_frame(&Event::RequestHeaders(huge));
    let depth = 1_000_000;
    let mut nested = br#"{"correlation_id":"deep","uri":"#.to_vec();
    nested.extend(std::iter::repeat_n(b'[', depth));
    nested.extend(std::iter::repeat_n(b']', depth));
    nested.push(b'}');
    let deeply_nested = raw_frame(0x10, &nested);
    // An agent's answer filling a frame with tiny header operations / audit tags.
    let tiny_answer = |head: &str, item: &str, tail: &str| {
        let mut json = String::from(head);
        while json.len() < (MAX_FRAME - 64 * 1024) as usize {
            json.push_str(item);
            json.push(',');
        }
        json.pop();
        json.push_str(tail);
        raw_frame(MessageType::AgentResponse as u8, json.as_bytes())
    };
    let tiny_ops = tiny_answer(
        r#"{"version":2,"decision":"allow","request_headers":["#,
        r#"{"remove":{"name":"a"}}"#,
        r#"],"audit":{"custom":{"correlation_id":"lie"}}}"#,
    );
    let tiny_tags = tiny_answer(
        r#"{"version":2,"decision":"allow","audit":{"custom":{"correlation_id":"lie"},"tags":["#,
        r#""t""#,
        "]}}",
    );
    let answer_4gib = vec![0xff, 0xff, 0xff, 0xff, 0x20];
    let mut answer_16mib_plus_1 = (DEFAULT_MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    answer_16mib_plus_1.push(0x20);
    eprintln!(
        "inputs: 10 000 headers = {} KiB frame, 100 000 headers = {} KiB frame, {tiny_count} tiny headers = {} KiB frame, 10 MiB value = {} KiB frame, nesting = {} KiB frame",
        cap_headers.len() / 1024,
        many_headers.len() / 1024,
        tiny_headers.len() / 1024,
        huge_value.len() / 1024,
        deeply_nested.len() / 1024
    );
    // Warm up: the runtime's threads, the server's first connection, the allocator's arenas.
    let warm = AgentClient::connect_unix(&runtime, &path, client_config(&[Encoding::Json]))
        .await
        .unwrap();
    warm.send_request_headers(request("warm", "/"))
        .await
        .unwrap();
    drop(warm);

    let mut cases = Vec::new();
    // A refused length claim costs nothing sized by the claim: the 64 KiB read buffer and
    // the bytes that arrived, nowhere near the claimed size.
    let refused = MAX_FRAME / 4;
    measured(&mut cases, "agent: declared length 4 GiB", refused, async {
        expect_closed(&runtime, &path, &claims_4gib).await;
    })
    .await;
    measured(
        &mut cases,
        "agent: declared length 16 MiB + 1",
        refused,
        async {
            expect_closed(&runtime, &path, &claims_16mib_plus_1).await;
        },
    )
    .await;
    // A legal frame is buffered once, decoded once, and its event lives while its handler
    // runs: a small multiple of the frame limit.
    let legal = 3 * MAX_FRAME;
    // Tiny headers would decode to ~11 times their wire size (a `String` per name, a `Vec`
    // and a `String` per value, for ~13 bytes of JSON each: 183 MiB for the 16 MiB frame
    // before the cap); `MAX_COLLECTION_LEN` refuses the map at its 10 001st value, so what
    // remains is the frame itself, buffered once. See docs/ARCHITECTURE.md, "Hostile peers
    // and faults".
    let refused_frame = 2 * MAX_FRAME;
    let is_refusal = |answer: &AgentResponse| {
        assert!(
            matches!(answer.decision, Decision::Block { status: 500, .. }),
            "{answer:?}"
        );
    };
    measured(
        &mut cases,
        "agent: 10 000 headers (the cap)",
        legal,
        async {
            let answer = expect_answer(&runtime, &path, &cap_headers).await;
            assert_eq!(answer.decision, Decision::Allow);
        },
    )
    .await;
    measured(
        &mut cases,
        "agent: 100 000 headers (refused)",
        refused_frame,
        async {
            is_refusal(&expect_answer(&runtime, &path, &many_headers).await);
        },
    )
    .await;
    measured(&mut cases, "agent: 10 MiB header value", legal, async {
        let answer = expect_answer(&runtime, &path, &huge_value).await;
        assert_eq!(answer.decision, Decision::Allow);
    })
    .await;
    measured(
        &mut cases,
        "agent: max frame of tiny headers",
        refused_frame,
        async {
            is_refusal(&expect_answer(&runtime, &path, &tiny_headers).await);
        },
    )
    .await;
    // The same again: what the allocator kept from the first run is reused, not added to
    // (a leak would grow by the same amount each time).
    measured(&mut cases, "agent: 10 000 headers (again)", legal, async {
        let answer = expect_answer(&runtime, &path, &cap_headers).await;
        assert_eq!(answer.decision, Decision::Allow);
    })
    .await;
    measured(
        &mut cases,
        "agent: 10 MiB header value (again)",
        legal,
        async {
            let answer = expect_answer(&runtime, &path, &huge_value).await;
            assert_eq!(answer.decision, Decision::Allow);
        },
    )
    .await;
    measured(
        &mut cases,
        "agent: JSON nested 1 000 000 deep",
        refused,
        async {
            let answer = expect_answer(&runtime, &path, &deeply_nested).await;
            assert!(
                matches!(answer.decision, Decision::Block { status: 500, .. }),
                "{answer:?}"
            );
        },
    )
    .await;
    // 64 proxies each announce a 16 MiB frame and drip it one byte per 20 ms for 2 s.
    let slow_conns: u64 = 64;
    measured(
        &mut cases,
        "agent: slowloris x64",
        slow_conns * 256 * 1024,
        async {
            let drips = (0..slow_conns).map(|_| {
                let (runtime, path) = (runtime.clone(), path.clone());
                async move {
                    let (_reader, mut writer) = raw_proxy(&runtime, &path).await;
                    let mut header = DEFAULT_MAX_FRAME_LEN.to_be_bytes().to_vec();
                    header.push(0x10);
                    writer.write_all(&header).await.unwrap();
                    let until = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < until {
                        if writer.write_all(b"x").await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
            futures_util::future::join_all(drips).await;
        },
    )
    .await;
    // The client side: an agent answers with a lying length.
    for (name, bytes) in [
        ("client: declared length 4 GiB", &answer_4gib),
        ("client: declared length 16 MiB + 1", &answer_16mib_plus_1),
    ] {
        let path = dir.socket(&format!("hostile-{}", bytes[0]));
        let answer = vec![bytes.clone(), junk.clone()];
        measured(
            &mut cases,
            name,
            refused,
            client_sees_close(&runtime, &path, answer),
        )
        .await;
    }
    // The client side: an agent answers with a frame of tiny collection elements. The
    // answer is refused at its 10 001st element and the connection closed (an unreadable
    // answer cannot be matched to its request).
    for (name, bytes) in [
        ("client: max frame of tiny header ops", &tiny_ops),
        ("client: max frame of tiny audit tags", &tiny_tags),
    ] {
        let path = dir.socket(&format!("hostile-{}", bytes.len() % 1000));
        measured(
            &mut cases,
            name,
            refused_frame,
            client_sees_close(&runtime, &path, vec![bytes.clone()]),
        )
        .await;
    }
    server.stop(&runtime).await;

    let over: Vec<&Case> = cases
        .iter()
        .filter(|c| c.peak_growth_kib() > c.bound_kib)
        .collect();
    assert!(
        over.is_empty(),
        "over their bound: {:?}",
        over.iter()
            .map(|c| (c.name, c.peak_growth_kib(), c.bound_kib))
            .collect::<Vec<_>>()
    );
}
