//! Encode and decode of request headers and of an agent response, per encoding.

use agentwire_benches::fixtures::{self, Size};
use agentwire_core::encoding::{
    WireFormat, decode_event, decode_message, encode_event, encode_frame_of,
};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN, MessageType};
use agentwire_core::message::{AgentResponse, Encoding, Event};
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use zentinel_agent_protocol as zr;
use zr::v2::UdsEncoding;

const AW: [(Encoding, &str); 3] = [
    (Encoding::Json, "json"),
    (Encoding::Msgpack, "msgpack"),
    (Encoding::Postcard, "postcard"),
];
const ZR: [(UdsEncoding, &str); 2] = [
    (UdsEncoding::Json, "json"),
    (UdsEncoding::MessagePack, "msgpack"),
];

/// What the reference client does to a request-headers event before framing it: JSON goes
/// through a `Value` with the correlation id inserted at the top level; MessagePack is
/// `to_vec_named`.
pub(crate) fn zr_encode_headers(enc: UdsEncoding, event: &zr::RequestHeadersEvent) -> Vec<u8> {
    match enc {
        UdsEncoding::Json => {
            let mut v = serde_json::to_value(event).expect("to_value");
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "correlation_id".to_string(),
                    serde_json::Value::String(event.metadata.correlation_id.clone()),
                );
            }
            serde_json::to_vec(&v).expect("to_vec")
        }
        UdsEncoding::MessagePack => enc.serialize(event).expect("serialize"),
    }
}

pub(crate) fn bench(c: &mut Criterion) {
    for size in Size::ALL {
        let mut g = c.benchmark_group(format!("codec/request_headers/{}", size.name()));
        let event = Event::RequestHeaders(fixtures::aw_request_headers(size, "req-1"));
        for (enc, name) in AW {
            let format = WireFormat::new(enc);
            let mut buf = BytesMut::with_capacity(4096);
            encode_event(&event, format, DEFAULT_MAX_FRAME_LEN, &mut buf).expect("encode");
            let frame = buf.split().freeze();
            g.throughput(Throughput::Bytes(frame.len() as u64));
            g.bench_function(BenchmarkId::new("encode/agentwire", name), |b| {
                b.iter(|| {
                    buf.clear();
                    encode_event(black_box(&event), format, DEFAULT_MAX_FRAME_LEN, &mut buf)
                        .expect("encode");
                    black_box(buf.len())
                })
            });
            let payload: Bytes = frame.slice(HEADER_LEN..);
            g.bench_function(BenchmarkId::new("decode/agentwire", name), |b| {
                b.iter(|| {
                    black_box(
                        decode_event(MessageType::RequestHeaders, black_box(&payload), enc)
                            .expect("decode"),
                    )
                })
            });
        }
        let zevent = fixtures::zr_request_headers(size, "req-1");
        for (enc, name) in ZR {
            let payload = zr_encode_headers(enc, &zevent);
            g.throughput(Throughput::Bytes(payload.len() as u64 + HEADER_LEN as u64));
            g.bench_function(BenchmarkId::new("encode/reference", name), |b| {
                b.iter(|| black_box(zr_encode_headers(enc, black_box(&zevent))))
            });
            g.bench_function(BenchmarkId::new("decode/reference", name), |b| {
                b.iter(|| {
                    let e: zr::RequestHeadersEvent =
                        enc.deserialize(black_box(&payload)).expect("decode");
                    black_box(e)
                })
            });
        }
        g.finish();
    }

    let mut g = c.benchmark_group("codec/response");
    let response = fixtures::aw_response("req-1");
    for (enc, name) in AW {
        let mut buf = BytesMut::with_capacity(1024);
        encode_frame_of(
            MessageType::AgentResponse,
            &response,
            enc,
            DEFAULT_MAX_FRAME_LEN,
            &mut buf,
        )
        .expect("encode");
        let frame = buf.split().freeze();
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(BenchmarkId::new("encode/agentwire", name), |b| {
            b.iter(|| {
                buf.clear();
                encode_frame_of(
                    MessageType::AgentResponse,
                    black_box(&response),
                    enc,
                    DEFAULT_MAX_FRAME_LEN,
                    &mut buf,
                )
                .expect("encode");
                black_box(buf.len())
            })
        });
        let payload = frame.slice(HEADER_LEN..);
        g.bench_function(BenchmarkId::new("decode/agentwire", name), |b| {
            b.iter(|| {
                let r: AgentResponse =
                    decode_message(MessageType::AgentResponse, black_box(&payload), enc)
                        .expect("decode");
                black_box(r)
            })
        });
    }
    let zresponse = fixtures::zr_response("req-1");
    for (enc, name) in ZR {
        let payload = enc.serialize(&zresponse).expect("serialize");
        g.throughput(Throughput::Bytes(payload.len() as u64 + HEADER_LEN as u64));
        g.bench_function(BenchmarkId::new("encode/reference", name), |b| {
            b.iter(|| black_box(enc.serialize(black_box(&zresponse)).expect("serialize")))
        });
        g.bench_function(BenchmarkId::new("decode/reference", name), |b| {
            b.iter(|| {
                let r: zr::AgentResponse = enc.deserialize(black_box(&payload)).expect("decode");
                black_box(r)
            })
        });
    }
    g.finish();
}
