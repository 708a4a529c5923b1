//! Full request-headers → decision round trips over a real Unix socket, client and agent on
//! one current-thread tokio runtime, plus the raw floor (the same bytes ping-ponged over a
//! bare `UnixStream` pair) and a pipelined run (64 requests in flight on one connection).
//!
//! The reference client and agent (with `binary-uds`) both prefer MessagePack and always
//! negotiate it, so the reference has no JSON round trip here.

use agentwire_benches::fixtures::{self, Size};
use agentwire_benches::roundtrip::{AwPair, RawPair, RefPair, current_thread};
use agentwire_core::message::Encoding;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures_util::future::join_all;
use std::hint::black_box;
use std::time::Instant;
use zentinel_agent_protocol as zr;

const AW: [(Encoding, &str); 3] = [
    (Encoding::Postcard, "postcard"),
    (Encoding::Msgpack, "msgpack"),
    (Encoding::Json, "json"),
];
const PIPELINE: usize = 64;

pub(crate) fn bench(c: &mut Criterion) {
    let rt = current_thread();
    // `UnixStream::pair` (the raw floor) needs the runtime's reactor.
    let _guard = rt.enter();
    for size in Size::ALL {
        let mut g = c.benchmark_group(format!("uds/sequential/{}", size.name()));
        g.throughput(Throughput::Elements(1));
        for (enc, name) in AW {
            let pair = rt.block_on(AwPair::start(enc));
            let request = fixtures::aw_request_headers(size, "req-1");
            g.bench_function(BenchmarkId::new("agentwire", name), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(pair.round_trip(request.clone()).await);
                        }
                        start.elapsed()
                    })
                })
            });
            rt.block_on(async { drop(pair) });
            let mut raw = RawPair::new(size, enc);
            g.bench_function(BenchmarkId::new("raw_floor", name), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            raw.round_trip().await;
                        }
                        start.elapsed()
                    })
                })
            });
        }
        let pair = rt.block_on(RefPair::start());
        assert_eq!(
            rt.block_on(pair.encoding()),
            zr::v2::UdsEncoding::MessagePack
        );
        let event = fixtures::zr_request_headers(size, "req-1");
        g.bench_function(BenchmarkId::new("reference", "msgpack"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(pair.round_trip(&event).await);
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(async { drop(pair) });
        g.finish();
    }

    let mut g = c.benchmark_group("uds/pipelined64/small");
    g.throughput(Throughput::Elements(PIPELINE as u64));
    for (enc, name) in AW {
        let pair = rt.block_on(AwPair::start(enc));
        let requests: Vec<_> = (0..PIPELINE)
            .map(|i| fixtures::aw_request_headers(Size::Small, &format!("req-{i}")))
            .collect();
        g.bench_function(BenchmarkId::new("agentwire", name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let all = join_all(requests.iter().map(|r| pair.round_trip(r.clone())));
                        black_box(all.await);
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(async { drop(pair) });
    }
    let pair = rt.block_on(RefPair::start());
    let events: Vec<_> = (0..PIPELINE)
        .map(|i| fixtures::zr_request_headers(Size::Small, &format!("req-{i}")))
        .collect();
    g.bench_function(BenchmarkId::new("reference", "msgpack"), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(join_all(events.iter().map(|e| pair.round_trip(e))).await);
                }
                start.elapsed()
            })
        })
    });
    rt.block_on(async { drop(pair) });
    g.finish();
}
