//! Counts allocations and drives callgrind for request-headers round trips (issue #8).
//!
//! `rt_count alloc IMPL N` prints allocations (and bytes) per round trip, proxy and agent
//! together, over N round trips after a warm-up. `rt_count run IMPL N` just does N round trips
//! inside `measured_loop`, for
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_loop*'`;
//! run it with N and 2N and divide the difference by N.
//!
//! IMPL: `aw-postcard`, `aw-msgpack`, `aw-json`, `ref-msgpack`, `raw-msgpack`. Client and agent
//! share one current-thread tokio runtime; the fixture is the small request (5 headers).

use agentwire_benches::alloc_count::CountingAlloc;
use agentwire_benches::fixtures::{self, Size};
use agentwire_benches::roundtrip::{AwPair, RawPair, RefPair, current_thread};
use agentwire_core::message::{Encoding, RequestHeaders};
use std::hint::black_box;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const WARMUP: usize = 200;

enum Subject {
    Aw(AwPair, Vec<RequestHeaders>),
    Ref(
        Box<RefPair>,
        Box<zentinel_agent_protocol::RequestHeadersEvent>,
    ),
    Raw(RawPair),
}

impl Subject {
    /// Round trips `from..to` of the prepared requests.
    async fn run(&mut self, n: usize) {
        match self {
            Subject::Aw(pair, requests) => {
                for request in requests.drain(..n) {
                    black_box(pair.round_trip(request).await);
                }
            }
            Subject::Ref(pair, event) => {
                for _ in 0..n {
                    black_box(pair.round_trip(event).await);
                }
            }
            Subject::Raw(pair) => {
                for _ in 0..n {
                    pair.round_trip().await;
                }
            }
        }
    }
}

#[inline(never)]
fn measured_loop(rt: &tokio::runtime::Runtime, subject: &mut Subject, n: usize) {
    rt.block_on(subject.run(n));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!(
            "usage: rt_count <alloc|run> <aw-postcard|aw-msgpack|aw-json|ref-msgpack|raw-msgpack> N"
        );
        std::process::exit(2);
    }
    let n: usize = args[3].parse().expect("N");
    let rt = current_thread();
    let requests = |k: usize| -> Vec<RequestHeaders> {
        let one = fixtures::aw_request_headers(Size::Small, "req-1");
        vec![one; k]
    };
    let mut subject = rt.block_on(async {
        match args[2].as_str() {
            "aw-postcard" => Subject::Aw(
                AwPair::start(Encoding::Postcard).await,
                requests(WARMUP + n),
            ),
            "aw-msgpack" => {
                Subject::Aw(AwPair::start(Encoding::Msgpack).await, requests(WARMUP + n))
            }
            "aw-json" => Subject::Aw(AwPair::start(Encoding::Json).await, requests(WARMUP + n)),
            "ref-msgpack" => Subject::Ref(
                Box::new(RefPair::start().await),
                Box::new(fixtures::zr_request_headers(Size::Small, "req-1")),
            ),
            "raw-msgpack" => Subject::Raw(RawPair::new(Size::Small, Encoding::Msgpack)),
            other => panic!("unknown IMPL {other}"),
        }
    });
    rt.block_on(subject.run(WARMUP));
    match args[1].as_str() {
        "alloc" => {
            let (a0, b0) = (ALLOC.allocations(), ALLOC.bytes());
            rt.block_on(subject.run(n));
            let (a1, b1) = (ALLOC.allocations(), ALLOC.bytes());
            println!(
                "{} allocations/rt {:.2} bytes/rt {:.0}",
                args[2],
                (a1 - a0) as f64 / n as f64,
                (b1 - b0) as f64 / n as f64
            );
        }
        "run" => measured_loop(&rt, &mut subject, n),
        other => panic!("unknown mode {other}"),
    }
}
