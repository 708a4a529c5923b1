//! Body chunk encode/decode at 1, 4, 16 and 64 KiB.
//!
//! agentwire: JSON (base64 text), MessagePack with raw `bin` bytes (toward agentwire agents),
//! postcard; decoding a raw-bytes chunk returns a zero-copy slice of the frame (asserted).
//! Reference: encode as its client does (`send_*_body_chunk_binary`: JSON object with base64
//! text, or MessagePack with `bin` data); decode as its agent does (`RequestBodyChunkEvent`,
//! whose `data` is a base64 `String`, then base64-decoded to reach the bytes). The reference
//! agent cannot decode its own client's MessagePack `bin` chunks unless the bytes happen to be
//! UTF-8, so its MessagePack decode is measured on the base64-text form.

use agentwire_benches::fixtures;
use agentwire_core::encoding::{WireFormat, decode_event, encode_event};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN, MessageType};
use agentwire_core::message::{Encoding, Event};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput};
use serde::{Serialize, Serializer};
use std::hint::black_box;
use zentinel_agent_protocol as zr;
use zr::v2::UdsEncoding;

const SIZES: [usize; 4] = [1024, 4096, 16384, 65536];

struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// The reference client's private `BinaryBodyChunk` (MessagePack path), field for field.
#[derive(Serialize)]
struct ZrBinaryBodyChunk<'a> {
    correlation_id: &'a str,
    data: RawBytes<'a>,
    is_last: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_size: Option<usize>,
    chunk_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_received: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_sent: Option<usize>,
}

fn zr_encode(enc: UdsEncoding, data: &[u8]) -> Vec<u8> {
    match enc {
        UdsEncoding::Json => {
            let json = serde_json::json!({
                "correlation_id": "req-1",
                "data": STANDARD.encode(data),
                "is_last": false,
                "total_size": Option::<usize>::None,
                "chunk_index": 0,
                "bytes_received": Some(data.len()),
                "bytes_sent": Option::<usize>::None,
            });
            serde_json::to_vec(&json).expect("json")
        }
        UdsEncoding::MessagePack => enc
            .serialize(&ZrBinaryBodyChunk {
                correlation_id: "req-1",
                data: RawBytes(data),
                is_last: false,
                total_size: None,
                chunk_index: 0,
                bytes_received: Some(data.len()),
                bytes_sent: None,
            })
            .expect("msgpack"),
    }
}

fn zr_text_chunk(data: &[u8]) -> zr::RequestBodyChunkEvent {
    zr::RequestBodyChunkEvent {
        correlation_id: "req-1".into(),
        data: STANDARD.encode(data),
        is_last: false,
        total_size: None,
        chunk_index: 0,
        bytes_received: data.len(),
    }
}

pub(crate) fn bench(c: &mut Criterion) {
    for size in SIZES {
        let mut g = c.benchmark_group(format!("body/{}KiB", size / 1024));
        g.throughput(Throughput::Bytes(size as u64));
        let data = fixtures::body(size);
        let event = fixtures::aw_chunk(data.clone());
        for (enc, raw, name) in [
            (Encoding::Json, false, "json"),
            (Encoding::Msgpack, true, "msgpack"),
            (Encoding::Postcard, true, "postcard"),
        ] {
            let format = WireFormat {
                encoding: enc,
                raw_body_bytes: raw,
            };
            let mut buf = BytesMut::with_capacity(size * 2);
            g.bench_function(BenchmarkId::new("encode/agentwire", name), |b| {
                b.iter(|| {
                    buf.clear();
                    encode_event(black_box(&event), format, DEFAULT_MAX_FRAME_LEN, &mut buf)
                        .expect("encode");
                    black_box(buf.len())
                })
            });
            buf.clear();
            encode_event(&event, format, DEFAULT_MAX_FRAME_LEN, &mut buf).expect("encode");
            let payload = buf.split().freeze().slice(HEADER_LEN..);
            if raw {
                let Ok(Event::RequestBodyChunk(chunk)) =
                    decode_event(MessageType::RequestBodyChunk, &payload, enc)
                else {
                    panic!("decode");
                };
                let inside = payload.as_ptr_range();
                assert!(
                    inside.contains(&chunk.data.as_ptr()),
                    "{name} body decode must be a zero-copy slice of the frame"
                );
                assert_eq!(chunk.data, data);
            }
            g.bench_function(BenchmarkId::new("decode/agentwire", name), |b| {
                b.iter(|| {
                    black_box(
                        decode_event(MessageType::RequestBodyChunk, black_box(&payload), enc)
                            .expect("decode"),
                    )
                })
            });
        }
        for (enc, name) in [
            (UdsEncoding::Json, "json"),
            (UdsEncoding::MessagePack, "msgpack"),
        ] {
            g.bench_function(BenchmarkId::new("encode/reference", name), |b| {
                b.iter(|| black_box(zr_encode(enc, black_box(&data))))
            });
            let payload = enc.serialize(&zr_text_chunk(&data)).expect("serialize");
            g.bench_function(BenchmarkId::new("decode/reference", name), |b| {
                b.iter(|| {
                    let e: zr::RequestBodyChunkEvent =
                        enc.deserialize(black_box(&payload)).expect("decode");
                    black_box(STANDARD.decode(e.data.as_bytes()).expect("base64"))
                })
            });
        }
        g.finish();
    }
}
