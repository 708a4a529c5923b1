//! Byte-level comparison with what the reference puts on the wire.
//!
//! * Proxy side: a recording agent captures every frame the reference `AgentClientV2Uds`
//!   sends for the catalogue, then every frame agentwire's `AgentClient` sends for the same
//!   events. JSON frames must be identical byte for byte. MessagePack frames must be
//!   identical byte for byte too, except where the reference serializes a Rust `HashMap`
//!   with more than one entry (header maps, guardrail metadata), whose order changes from run
//!   to run: those are compared as decoded values.
//! * Agent side: a raw proxy sends the same frames to the reference `UdsAgentServerV2` and to
//!   an agentwire agent scripted with the same answers, and compares their answers the same
//!   way (an answer is byte-comparable when each of its maps has at most one entry).
//!
//! Differences by design, checked as such: the handshake (agentwire adds its own keys), and
//! Cancel and Ping in a MessagePack session — the reference writes them as JSON (B4),
//! agentwire in the negotiated encoding, which the reference agent reads (it only logs a
//! Cancel and echoes a Ping).

use crate::support::*;
use agentwire_core::encoding::{WireFormat, decode_payload, encode_event, salvage_correlation_id};
use agentwire_core::frame::MessageType as AwType;
use agentwire_core::message::{AgentResponse, Encoding, Event, Value};
use agentwire_runtime::client::AgentClient;
use bytes::BytesMut;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{BufReader, BufWriter};
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;
use zentinel_agent_protocol::v2::uds::{MessageType, read_message, write_message};

type Frames = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

fn aw_encoding(e: zv2::UdsEncoding) -> Encoding {
    match e {
        zv2::UdsEncoding::Json => Encoding::Json,
        zv2::UdsEncoding::MessagePack => Encoding::Msgpack,
    }
}

/// A fake agent that records every frame and answers events with an Allow carrying the
/// event's id, in `encoding`.
async fn start_recorder(path: &Path, encoding: zv2::UdsEncoding) -> (Frames, RecorderTask) {
    let listener = tokio::net::UnixListener::bind(path).expect("bind the recorder");
    let frames: Frames = Arc::default();
    let sink = frames.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (r, w) = stream.into_split();
            let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
            while let Ok((kind, payload)) = read_message(&mut r).await {
                sink.lock().unwrap().push((kind as u8, payload.clone()));
                let answer = match kind {
                    MessageType::HandshakeRequest => {
                        let response = zv2::UdsHandshakeResponse {
                            protocol_version: 2,
                            capabilities: zv2::UdsCapabilities::from(RefAgent::ref_capabilities(
                                "recorder",
                            )),
                            success: true,
                            error: None,
                            encoding,
                        };
                        Some((
                            MessageType::HandshakeResponse,
                            serde_json::to_vec(&response).unwrap(),
                        ))
                    }
                    MessageType::Ping => Some((MessageType::Pong, payload)),
                    MessageType::Cancel => None,
                    _ => {
                        let id = salvage_correlation_id(&payload, aw_encoding(encoding))
                            .unwrap_or_default();
                        let mut response = zref::AgentResponse::default_allow();
                        response
                            .audit
                            .custom
                            .insert("correlation_id".into(), Value::String(id));
                        Some((
                            MessageType::AgentResponse,
                            encoding.serialize(&response).unwrap(),
                        ))
                    }
                };
                if let Some((kind, bytes)) = answer
                    && write_message(&mut w, kind, &bytes).await.is_err()
                {
                    break;
                }
            }
        }
    });
    (frames, RecorderTask(task))
}

struct RecorderTask(tokio::task::JoinHandle<()>);

impl Drop for RecorderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the reference serializes a `HashMap` of more than one entry in this event.
fn has_unordered_map(event: &Event) -> bool {
    match event {
        Event::RequestHeaders(e) => e.headers.len() > 1,
        Event::ResponseHeaders(e) => e.headers.len() > 1,
        Event::GuardrailInspect(e) => e.metadata.len() > 1,
        _ => false,
    }
}

/// Whether an answer has a map of more than one entry (the id is one entry of `custom`).
fn answer_has_unordered_map(a: &AgentResponse) -> bool {
    let decision_map = match &a.decision {
        agentwire_core::message::Decision::Block { headers, .. } => {
            headers.as_ref().is_some_and(|h| h.len() > 1)
        }
        agentwire_core::message::Decision::Challenge { params, .. } => params.len() > 1,
        _ => false,
    };
    decision_map || a.routing_metadata.len() > 1 || !a.audit.custom.is_empty()
}

fn decoded(kind: u8, payload: &[u8], encoding: Encoding) -> Value {
    let kind = AwType::from_byte(kind).expect("a known type");
    decode_payload::<Value>(kind, payload, encoding)
        .unwrap_or_else(|e| panic!("{kind:?} does not decode as {encoding:?}: {e}"))
}

/// Compares two payloads; returns true when they were compared byte for byte.
#[track_caller]
fn same_bytes_or_values(
    what: &str,
    kind: u8,
    ours: &[u8],
    theirs: &[u8],
    encoding: Encoding,
    unordered: bool,
) -> bool {
    // Answers (0x20) carry Rust maps in JSON too; events are sorted in JSON.
    if unordered && (encoding == Encoding::Msgpack || kind == 0x20) {
        assert_eq!(
            decoded(kind, ours, encoding),
            decoded(kind, theirs, encoding),
            "{what}: decoded values differ"
        );
        false
    } else {
        assert!(
            ours == theirs,
            "{what}: bytes differ\n ours: {}\ntheirs: {}",
            String::from_utf8_lossy(ours),
            String::from_utf8_lossy(theirs)
        );
        true
    }
}

async fn proxy_side(encoding: zv2::UdsEncoding) {
    let enc = aw_encoding(encoding);
    let dir = tempfile::tempdir().unwrap();
    let cases = catalogue();

    // The reference client.
    let ref_path = dir.path().join("rec-ref.sock");
    let (ref_frames, _task1) = start_recorder(&ref_path, encoding).await;
    let client = zv2::AgentClientV2Uds::new(
        "recorder",
        ref_path.to_str().unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    bounded("connect", client.connect())
        .await
        .expect("connected");
    for case in &cases {
        bounded(
            case.id(),
            ref_uds_send(&client, case.id(), &aw_to_ref_event(&case.event)),
        )
        .await
        .expect("answered");
    }
    client
        .cancel_request("gone", zv2::CancelReason::Timeout)
        .await
        .unwrap();
    client.ping().await.unwrap();

    // agentwire's client with its default offer (the recorder picks the encoding).
    let aw_path = dir.path().join("rec-aw.sock");
    let (aw_frames, _task2) = start_recorder(&aw_path, encoding).await;
    let offer = default_offer();
    let aw = bounded(
        "connect",
        AgentClient::connect_unix(
            &agentwire_tokio::runtime(),
            &aw_path,
            aw_client_config(&offer, None),
        ),
    )
    .await
    .expect("connected");
    for case in &cases {
        bounded(case.id(), aw.send_event(case.event.clone()))
            .await
            .expect("answered");
    }
    aw.cancel("gone", agentwire_core::message::CancelReason::Timeout)
        .unwrap();
    bounded(
        "ping",
        aw.ping(&agentwire_tokio::runtime(), Duration::from_secs(2)),
    )
    .await
    .expect("pong");

    let theirs = ref_frames.lock().unwrap().clone();
    let ours = aw_frames.lock().unwrap().clone();
    assert_eq!(ours.len(), theirs.len(), "frame count");
    assert_eq!(
        ours.len(),
        cases.len() + 3,
        "handshake, events, cancel, ping"
    );

    // The handshake: the reference's keys, plus agentwire's own extension.
    let (ours_hello, theirs_hello): (Value, Value) = (
        serde_json::from_slice(&ours[0].1).unwrap(),
        serde_json::from_slice(&theirs[0].1).unwrap(),
    );
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut want_keys = keys(&theirs_hello);
    want_keys.push("agentwire_encodings".into());
    want_keys.sort();
    assert_eq!(keys(&ours_hello), want_keys);
    for key in ["supported_versions", "supported_encodings", "config"] {
        assert_eq!(ours_hello[key], theirs_hello[key], "handshake {key}");
    }

    // Every event, in order.
    let mut exact = 0;
    for (i, case) in cases.iter().enumerate() {
        let (ko, po) = &ours[i + 1];
        let (kt, pt) = &theirs[i + 1];
        assert_eq!(ko, kt, "{}: frame type", case.id());
        exact += usize::from(same_bytes_or_values(
            &format!("{enc:?} {}", case.id()),
            *ko,
            po,
            pt,
            enc,
            has_unordered_map(&case.event),
        ));
    }
    // JSON: every event byte for byte; MessagePack: all but the six with a multi-entry map.
    let want = if enc == Encoding::Json {
        cases.len()
    } else {
        cases.len() - 6
    };
    assert_eq!(exact, want, "events compared byte for byte");

    // Cancel and Ping: the reference writes JSON whatever was negotiated (B4).
    let n = cases.len() + 1;
    for (offset, kind) in [(0, 0x40u8), (1, 0x41u8)] {
        let (ko, po) = &ours[n + offset];
        let (kt, pt) = &theirs[n + offset];
        assert_eq!((*ko, *kt), (kind, kind));
        let mut o = decoded(kind, po, enc);
        let mut t = decoded(kind, pt, Encoding::Json);
        o["timestamp_ms"] = Value::Null;
        t["timestamp_ms"] = Value::Null;
        assert_eq!(o, t, "{kind:#x}: same fields");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_proxy_frames_match_the_reference_byte_for_byte() {
    within("json proxy bytes", proxy_side(zv2::UdsEncoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_proxy_frames_match_the_reference_byte_for_byte() {
    within(
        "msgpack proxy bytes",
        proxy_side(zv2::UdsEncoding::MessagePack),
    )
    .await;
}

/// Sends every catalogue event (as the reference proxy writes it) over a raw connection to
/// the agent at `path` and returns the handshake answer and every answer frame.
async fn raw_proxy(path: &PathBuf, encoding: zv2::UdsEncoding, cases: &[Case]) -> Vec<Vec<u8>> {
    let stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let (r, w) = stream.into_split();
    let (mut r, mut w) = (BufReader::new(r), BufWriter::new(w));
    let hello = zv2::UdsHandshakeRequest {
        supported_versions: vec![2],
        proxy_id: "zentinel-proxy".into(),
        proxy_version: "0.6.45".into(),
        config: None,
        supported_encodings: match encoding {
            zv2::UdsEncoding::Json => vec![zv2::UdsEncoding::Json],
            zv2::UdsEncoding::MessagePack => {
                vec![zv2::UdsEncoding::MessagePack, zv2::UdsEncoding::Json]
            }
        },
    };
    write_message(
        &mut w,
        MessageType::HandshakeRequest,
        &serde_json::to_vec(&hello).unwrap(),
    )
    .await
    .unwrap();
    let mut answers = Vec::new();
    let (kind, payload) = bounded("handshake", read_message(&mut r)).await.unwrap();
    assert_eq!(kind, MessageType::HandshakeResponse);
    answers.push(payload);
    let format = WireFormat::new(aw_encoding(encoding));
    for case in cases {
        let mut frame = BytesMut::new();
        encode_event(&case.event, format, u32::MAX, &mut frame).unwrap();
        let kind = MessageType::try_from(frame[4]).unwrap();
        write_message(&mut w, kind, &frame[5..]).await.unwrap();
        let (kind, payload) = bounded(case.id(), read_message(&mut r)).await.unwrap();
        assert_eq!(kind, MessageType::AgentResponse, "{}", case.id());
        answers.push(payload);
    }
    answers
}

async fn agent_side(encoding: zv2::UdsEncoding) {
    let enc = aw_encoding(encoding);
    let dir = tempfile::tempdir().unwrap();
    // The reference agent never answers a guardrail inspection (B2): left out here.
    let cases: Vec<Case> = catalogue()
        .into_iter()
        .filter(|c| kind(&c.event) != Kind::GuardrailInspect)
        .collect();
    let ref_path = dir.path().join("ref-agent.sock");
    let _server = start_ref_uds_server(&ref_path, RefAgent::new("ref-agent", &cases)).await;
    let theirs = raw_proxy(&ref_path, encoding, &cases).await;
    let aw = start_aw_uds(
        dir.path(),
        AwAgent::new(&cases),
        &[Encoding::Json, Encoding::Msgpack],
    );
    let ours = raw_proxy(&aw.path, encoding, &cases).await;

    // Handshake answers: the same keys (agentwire adds its extension), the same encoding.
    let (o, t): (Value, Value) = (
        serde_json::from_slice(&ours[0]).unwrap(),
        serde_json::from_slice(&theirs[0]).unwrap(),
    );
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let mut want = keys(&t);
    want.push("agentwire".into());
    want.sort();
    assert_eq!(keys(&o), want);
    assert_eq!(o["encoding"], t["encoding"]);
    assert_eq!(o["success"], t["success"]);
    assert_eq!(o["protocol_version"], t["protocol_version"]);
    let cap_keys = |v: &Value, k: &str| keys(&v["capabilities"][k]);
    assert_eq!(keys(&o["capabilities"]), keys(&t["capabilities"]));
    assert_eq!(cap_keys(&o, "features"), cap_keys(&t, "features"));
    assert_eq!(cap_keys(&o, "limits"), cap_keys(&t, "limits"));

    let mut exact = 0;
    for (i, case) in cases.iter().enumerate() {
        exact += usize::from(same_bytes_or_values(
            &format!("{enc:?} answer to {}", case.id()),
            0x20,
            &ours[i + 1],
            &theirs[i + 1],
            enc,
            answer_has_unordered_map(&case.answer),
        ));
    }
    // Every answer whose maps have at most one entry (all but rh-block, rh-challenge,
    // rh-allow and rh-minimal) byte for byte.
    assert_eq!(exact, cases.len() - 4, "answers compared byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_agent_answers_match_the_reference_byte_for_byte() {
    within("json agent bytes", agent_side(zv2::UdsEncoding::Json)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_agent_answers_match_the_reference_byte_for_byte() {
    within(
        "msgpack agent bytes",
        agent_side(zv2::UdsEncoding::MessagePack),
    )
    .await;
}
