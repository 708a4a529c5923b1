//! The pool's in-process decisions: selection, affinity, health, metrics and the whole hot
//! path of starting and finishing a request (no serialization, no I/O).
//!
//! The reference keeps its selection private; its nearest public operation is
//! `AgentPool::create_sticky_session`, which is `select_connection` plus one DashMap insert,
//! measured here over real (idle) UDS connections to a reference agent. Its affinity lookup
//! is `has_sticky_session`.

use agentwire_benches::roundtrip::current_thread;
use agentwire_core::metrics::{AgentMetrics, Histogram};
use agentwire_core::pool::{
    AffinityConfig, AffinityMap, Balancer, ConnectionConfig, ConnectionId, ConnectionState,
    RequestOutcome, Strategy, select,
};
use agentwire_core::time::Instant;
use criterion::{BenchmarkId, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use zentinel_agent_protocol as zr;

const COUNTS: [usize; 4] = [1, 10, 100, 1000];
const AFFINITY: [usize; 4] = [10, 100, 1000, 10_000];

fn connections(n: usize) -> Vec<Arc<ConnectionState>> {
    (0..n)
        .map(|i| {
            Arc::new(ConnectionState::new(
                ConnectionId(i as u64),
                Instant::ZERO,
                ConnectionConfig::default(),
            ))
        })
        .collect()
}

fn now() -> Instant {
    Instant::from_millis(1_000)
}

fn affinity(n: usize, conns: usize) -> AffinityMap {
    let map = AffinityMap::new(AffinityConfig::default());
    for i in 0..n {
        let _ = map.bind(
            &format!("req-{i}"),
            ConnectionId((i % conns.max(1)) as u64),
            now(),
        );
    }
    map
}

pub(crate) fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/select");
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::HealthWeighted,
        Strategy::Random,
        Strategy::PowerOfTwoChoices,
    ] {
        for n in COUNTS {
            let conns = connections(n);
            let mut ticket = 0u64;
            g.bench_function(
                BenchmarkId::new(format!("agentwire/{strategy:?}"), n),
                |b| {
                    b.iter(|| {
                        ticket = ticket.wrapping_add(1);
                        black_box(select(strategy, black_box(&conns), now(), ticket))
                    })
                },
            );
        }
    }
    g.finish();

    let mut g = c.benchmark_group("pool/affinity");
    for n in AFFINITY {
        let map = affinity(n, 16);
        let hit = format!("req-{}", n / 2);
        g.bench_function(BenchmarkId::new("agentwire/hit", n), |b| {
            b.iter(|| black_box(map.get(black_box(&hit), now())))
        });
        g.bench_function(BenchmarkId::new("agentwire/miss", n), |b| {
            b.iter(|| black_box(map.get(black_box("req-absent"), now())))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("pool/health_metrics");
    let conns = connections(4);
    g.bench_function("agentwire/health_read", |b| {
        b.iter(|| black_box(black_box(&conns[2]).is_healthy()))
    });
    let metrics = AgentMetrics::default();
    g.bench_function("agentwire/counter_inc", |b| {
        b.iter(|| black_box(&metrics).requests.inc())
    });
    let histogram = Histogram::new();
    let mut micros = 0u64;
    g.bench_function("agentwire/histogram_record", |b| {
        b.iter(|| {
            micros = (micros + 37) % 20_000;
            black_box(&histogram).record_micros(micros)
        })
    });
    let zmetrics = zr::v2::ProtocolMetrics::new();
    g.bench_function("reference/counter_inc", |b| {
        b.iter(|| black_box(&zmetrics).inc_requests())
    });
    g.bench_function("reference/histogram_record", |b| {
        b.iter(|| {
            micros = (micros + 37) % 20_000;
            black_box(&zmetrics).record_request_duration(Duration::from_micros(micros))
        })
    });
    g.finish();

    // The hot path of one request: affinity lookup, select + admit, counters, finish,
    // latency histogram.
    let mut g = c.benchmark_group("pool/hot_path");
    for n in COUNTS {
        let conns = connections(n);
        let balancer = Balancer::new(Strategy::RoundRobin, 7);
        let map = affinity(1000, n);
        let metrics = AgentMetrics::default();
        let histogram = Histogram::new();
        g.bench_function(BenchmarkId::new("agentwire", n), |b| {
            b.iter(|| {
                let t = now();
                let preferred = map.get(black_box("req-absent"), t);
                let (index, guard) = balancer
                    .acquire(black_box(&conns), preferred, t)
                    .expect("acquire");
                metrics.requests.inc();
                black_box(index);
                black_box(guard.finish(RequestOutcome::Success, t));
                histogram.record_micros(250);
            })
        });
    }
    g.finish();

    reference_pool(c);
}

fn reference_pool(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("zr-pool.sock");
    let server = zr::v2::UdsAgentServerV2::new(
        "bench-agent",
        path.clone(),
        Box::new(agentwire_benches::roundtrip::RefAgent),
    );
    let server = rt.spawn(async move {
        let _ = server.run().await;
    });
    rt.block_on(async {
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let endpoint = format!("unix:{}", path.display());

    let mut g = c.benchmark_group("pool/select");
    for n in [1usize, 10, 100] {
        let pool = zr::v2::AgentPool::with_config(zr::v2::AgentPoolConfig {
            connections_per_agent: n,
            ..Default::default()
        });
        if let Err(e) = rt.block_on(pool.add_agent("agent", endpoint.clone())) {
            eprintln!("reference pool with {n} connections: {e}");
            continue;
        }
        if let Err(e) = pool.create_sticky_session("probe", "agent") {
            eprintln!("reference create_sticky_session: {e}");
            continue;
        }
        g.bench_function(
            BenchmarkId::new("reference/RoundRobin+sticky_insert", n),
            |b| b.iter(|| black_box(pool.create_sticky_session(black_box("s"), "agent")).is_ok()),
        );
        let _ = rt.block_on(pool.remove_agent("agent"));
    }
    g.finish();

    let mut g = c.benchmark_group("pool/affinity");
    let pool = zr::v2::AgentPool::with_config(zr::v2::AgentPoolConfig {
        connections_per_agent: 4,
        ..Default::default()
    });
    if rt
        .block_on(pool.add_agent("agent", endpoint.clone()))
        .is_ok()
    {
        let mut have = 0;
        for n in [10usize, 100, 1000, 10_000] {
            while have < n {
                pool.create_sticky_session(format!("req-{have}"), "agent")
                    .expect("sticky session");
                have += 1;
            }
            let hit = format!("req-{}", n / 2);
            g.bench_function(BenchmarkId::new("reference/hit", n), |b| {
                b.iter(|| black_box(pool.has_sticky_session(black_box(&hit))))
            });
            g.bench_function(BenchmarkId::new("reference/miss", n), |b| {
                b.iter(|| black_box(pool.has_sticky_session(black_box("req-absent"))))
            });
        }
    }
    g.finish();
    server.abort();
}
