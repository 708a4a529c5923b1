//! The pool's in-process decisions: selection, affinity, health, metrics and the whole hot
//! path of starting and finishing a request (no serialization, no I/O).
//!
//! Two axes: `pool/select` and `pool/hot_path_conns` grow the number of **connections of one
//! agent** (1–1 000); `pool/hot_path` grows the number of **agents** in the registry (1–1 000,
//! each with the default 4 connections) and runs the proxy's hot path for one of them, as
//! `agentwire-pool`'s `AgentPool` does per event (`pick` + admission + `run`'s accounting):
//! registry snapshot load, lookup by agent id, agent breaker, affinity lookup, connection
//! list load, selection, `Arc` clone of the chosen connection, admission, counters, finish,
//! latency histogram.
//!
//! The reference keeps its selection private; its nearest public operation is
//! `AgentPool::create_sticky_session`, which is `select_connection` plus one DashMap insert,
//! measured here over real (idle) UDS connections to a reference agent. Its affinity lookup
//! is `has_sticky_session`.

use agentwire_benches::roundtrip::current_thread;
use agentwire_core::metrics::{AgentMetrics, Histogram, ProtocolMetrics};
use agentwire_core::pool::{
    AffinityConfig, AffinityMap, Balancer, BreakerConfig, CircuitBreaker, ConnectionConfig,
    ConnectionId, ConnectionState, RequestOutcome, Strategy, select,
};
use agentwire_core::time::Instant;
use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion};
use std::collections::HashMap;
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

    hot_path_agents(c);

    // The hot path of one request over N connections of one agent (the axis of the first
    // measurements): affinity lookup, select + admit, counters, finish, latency histogram.
    let mut g = c.benchmark_group("pool/hot_path_conns");
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

/// One registered agent, as `agentwire-pool` keeps it (the fields the hot path touches).
struct BenchAgent {
    breaker: CircuitBreaker,
    balancer: Balancer,
    affinity: AffinityMap,
    metrics: AgentMetrics,
    connections: ArcSwap<Vec<Arc<ConnectionState>>>,
}

/// Connections per agent: `PoolConfig::connections_per_agent`'s default.
const CONNECTIONS_PER_AGENT: usize = 4;

fn hot_path_agents(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool/hot_path");
    for n in COUNTS {
        let mut next_id = 0u64;
        let registry: HashMap<String, Arc<BenchAgent>, foldhash::fast::RandomState> = (0..n)
            .map(|a| {
                let conns = (0..CONNECTIONS_PER_AGENT)
                    .map(|_| {
                        next_id += 1;
                        Arc::new(ConnectionState::new(
                            ConnectionId(next_id),
                            Instant::ZERO,
                            ConnectionConfig::default(),
                        ))
                    })
                    .collect();
                let agent = BenchAgent {
                    breaker: CircuitBreaker::new(BreakerConfig::default()),
                    balancer: Balancer::new(Strategy::RoundRobin, a as u64),
                    affinity: affinity(100, CONNECTIONS_PER_AGENT),
                    metrics: AgentMetrics::default(),
                    connections: ArcSwap::from_pointee(conns),
                };
                (format!("agent-{a:04}"), Arc::new(agent))
            })
            .collect();
        let published = ArcSwap::from_pointee(registry);
        let metrics = ProtocolMetrics::default();
        let id = format!("agent-{:04}", n / 2);
        g.bench_function(BenchmarkId::new("agentwire", n), |b| {
            b.iter(|| {
                let t = now();
                // pick: registry snapshot, agent by id, agent breaker, affinity, selection.
                let registry = published.load();
                let agent = registry.get(black_box(id.as_str())).expect("agent");
                let permit = agent.breaker.try_admit(t).expect("agent breaker");
                let preferred = agent.affinity.get(black_box("req-absent"), t);
                let conns = agent.connections.load();
                let index = agent
                    .balancer
                    .select_preferring(&conns, preferred, t)
                    .index()
                    .expect("selected");
                let conn = Arc::clone(&conns[index]);
                drop(conns);
                // admission, then run's accounting around the (absent) send.
                let guard = conn.try_acquire(t).expect("admitted");
                metrics.requests.inc();
                agent.metrics.requests.inc();
                black_box(guard.finish(RequestOutcome::Success, t));
                black_box(agent.breaker.record_success(permit));
                metrics.responses.inc();
                metrics.request_duration.record_micros(250);
            })
        });
    }
    g.finish();
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
