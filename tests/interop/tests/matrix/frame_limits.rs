//! The largest frame (B10), JSON sessions, both directions.
//!
//! The reference *writer* accepts a payload of 16 MiB (length field 16 MiB + 1) but every
//! reference *reader* refuses a length field above 16 MiB, so the largest frame that crosses
//! the wire has a length field of exactly 16 MiB. agentwire must accept that frame from a
//! reference proxy and may send it to a reference agent; one byte more is refused by its
//! reader (as the reference's own reader does) and refused locally by its writer, before
//! anything reaches the socket.

use crate::support::*;
use agentwire_core::encoding::{EncodeError, WireFormat, encode_event};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameError};
use agentwire_core::message::{BodyChunk, Encoding, Event};
use agentwire_core::session::SendError;
use agentwire_runtime::client::{AgentClient, ClientError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use std::time::Duration;
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;

/// 16 MiB: the largest length field every reference reader accepts.
const MAX_LEN: usize = 16 * 1024 * 1024;

/// The JSON payload the reference UDS client writes for a request body chunk (its
/// `send_event`: the event as a JSON value, the correlation id put at the top, compact text).
fn reference_json_payload(id: &str, e: &zref::RequestBodyChunkEvent) -> Vec<u8> {
    let mut v = serde_json::to_value(e).unwrap();
    v.as_object_mut()
        .unwrap()
        .insert("correlation_id".into(), id.into());
    serde_json::to_vec(&v).unwrap()
}

/// A reference chunk whose frame has a length field of exactly `len`; its id is padded to
/// reach it. Returns the id, the event and the body bytes.
///
/// Sized by arithmetic (base64 text needs no escaping, so the payload is the overhead of the
/// event with an empty body plus the base64 length): serializing 16 MiB in a debug build is
/// slow. `small_sizes_are_exact` checks the arithmetic against real serializations.
fn reference_chunk_of_len(len: usize) -> (String, zref::RequestBodyChunkEvent, Bytes) {
    let payload = len - 1;
    let n = (payload - 512) / 4 * 3;
    let mut e = zref::RequestBodyChunkEvent {
        correlation_id: "big".into(),
        data: String::new(),
        is_last: true,
        total_size: Some(n),
        chunk_index: 0,
        bytes_received: n,
    };
    let overhead = reference_json_payload("big", &e).len();
    let pad = payload - overhead - n / 3 * 4;
    let body = Bytes::from(vec![0xa5u8; n]);
    e.correlation_id = format!("big{}", "x".repeat(pad));
    e.data = BASE64.encode(&body);
    (e.correlation_id.clone(), e, body)
}

fn agentwire_len_field(c: &BodyChunk) -> usize {
    let mut out = BytesMut::new();
    encode_event(
        &Event::RequestBodyChunk(c.clone()),
        WireFormat::JSON,
        u32::MAX,
        &mut out,
    )
    .unwrap();
    u32::from_be_bytes(out[..4].try_into().unwrap()) as usize
}

/// An agentwire chunk whose JSON frame has a length field of exactly `len` (sized like
/// [`reference_chunk_of_len`]).
fn agentwire_chunk_of_len(len: usize) -> BodyChunk {
    let n = (len - 513) / 4 * 3;
    let mut chunk = BodyChunk {
        correlation_id: "big".into(),
        total_size: Some(n as u64),
        bytes_transferred: n as u64,
        data: Bytes::new(),
        is_last: true,
        chunk_index: 0,
    };
    let overhead = agentwire_len_field(&chunk);
    chunk.correlation_id = format!("big{}", "x".repeat(len - overhead - n / 3 * 4));
    chunk.data = Bytes::from(vec![0x5au8; n]);
    chunk
}

#[test]
fn small_sizes_are_exact() {
    for len in [4_096, 10_000, 65_537] {
        let (id, e, _) = reference_chunk_of_len(len);
        assert_eq!(reference_json_payload(&id, &e).len() + 1, len);
        assert_eq!(agentwire_len_field(&agentwire_chunk_of_len(len)), len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_proxy_largest_frame_is_accepted_one_more_byte_closes() {
    within("largest frame from the reference proxy", async {
        let dir = tempfile::tempdir().unwrap();
        let agent = AwAgent::new(&[]);
        let server = start_aw_uds(dir.path(), agent.clone(), &[Encoding::Json]);
        let path = server.path.to_str().unwrap().to_string();

        let client = zv2::AgentClientV2Uds::new("aw", path.clone(), Duration::from_secs(10))
            .await
            .unwrap();
        bounded("connect", client.connect())
            .await
            .expect("connected");
        let (id, event, body) = reference_chunk_of_len(MAX_LEN);
        let answer = bounded("16 MiB frame", client.send_request_body_chunk(&id, &event))
            .await
            .expect("the largest frame is answered");
        assert!(matches!(
            answer.decision,
            zref::Decision::Block { status: 599, .. }
        ));
        let Event::RequestBodyChunk(got) = agent.received(&id) else {
            panic!("not a chunk")
        };
        assert_eq!(got.data, body);

        // One byte more: the reference writer sends it; agentwire's reader refuses the length
        // and closes, exactly as a reference reader would. The reference client never fails
        // its waiter on EOF, so it waits out its own timeout.
        let client = zv2::AgentClientV2Uds::new("aw", path.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        bounded("connect", client.connect())
            .await
            .expect("connected");
        let (id, event, _) = reference_chunk_of_len(MAX_LEN + 1);
        let result = bounded("16 MiB + 1", client.send_request_body_chunk(&id, &event)).await;
        assert!(
            result.is_err(),
            "an over-long frame was answered: {result:?}"
        );
        assert!(agent.seen().iter().all(|e| e.correlation_id() != id));

        // The agent itself is unharmed.
        let client = zv2::AgentClientV2Uds::new("aw", path, Duration::from_secs(5))
            .await
            .unwrap();
        bounded("reconnect", client.connect())
            .await
            .expect("a new connection works");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_proxy_largest_frame_is_answered_one_more_byte_is_refused_locally() {
    within("largest frame to the reference agent", async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref-agent.sock");
        let agent = RefAgent::new("ref-agent", &[]);
        let _server = start_ref_uds_server(&path, agent.clone()).await;
        let mut config = aw_client_config(&[Encoding::Json], None);
        config.session.request_timeout = Duration::from_secs(10);
        let client = bounded(
            "connect",
            AgentClient::connect_unix(&agentwire_tokio::runtime(), &path, config),
        )
        .await
        .expect("connected");
        assert_eq!(DEFAULT_MAX_FRAME_LEN as usize, MAX_LEN);

        let chunk = agentwire_chunk_of_len(MAX_LEN);
        let id = chunk.correlation_id.clone();
        let body = chunk.data.clone();
        let answer = bounded("16 MiB frame", client.send_request_body_chunk(chunk))
            .await
            .expect("the reference agent answers the largest frame");
        assert!(matches!(
            answer.decision,
            agentwire_core::message::Decision::Block { status: 599, .. }
        ));
        let Event::RequestBodyChunk(got) = agent.received(&id) else {
            panic!("not a chunk")
        };
        assert_eq!(got.data, body);

        // One byte more would kill the connection at the reference's reader: refused here.
        let chunk = agentwire_chunk_of_len(MAX_LEN + 1);
        let result = bounded("16 MiB + 1", client.send_request_body_chunk(chunk)).await;
        assert!(
            matches!(
                result,
                Err(ClientError::Protocol(SendError::Encode(
                    EncodeError::Frame(FrameError::FrameTooLarge { .. })
                )))
            ),
            "{result:?}"
        );
        assert!(client.is_connected());
        let case = &cases_of(&[Kind::ResponseHeaders])[0];
        bounded("afterwards", client.send_event(case.event.clone()))
            .await
            .expect("the connection is still usable");
    })
    .await;
}
