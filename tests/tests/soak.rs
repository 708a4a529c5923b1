//! Issue #9 soak (`#[ignore]`d; CI runs it for 20 s):
//!
//! ```sh
//! AGENTWIRE_SOAK_SECS=20 cargo test -p agentwire-tests --test soak -- --ignored --nocapture
//! ```
//!
//! Mixed load through an `AgentPool` (headers only; headers + body + RequestComplete; callers
//! that give up and drop their request) against the test agent in a child process, which is
//! killed with SIGKILL and restarted at random moments for `AGENTWIRE_SOAK_SECS` (default
//! 20). Every request must end exactly once, within its deadline (no lost or duplicated
//! answer; answers are checked against their request), the pool must count nothing in flight
//! at the end and serve again, and resident memory at the end must be within a bound of the
//! level after warm-up.

mod common;

use agentwire_pool::AgentPool;
use agentwire_tests::{AgentProcess, TestDir, rss};
use agentwire_tokio::TokioRuntime;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most requests one soak run records (the ledger is allocated and touched up front, so its
/// pages are in the warm-up RSS, not in the growth).
const CAPACITY: usize = 4_000_000;
const UNSET: u8 = u8::MAX;
/// When the soak started (for the timestamps it prints).
static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Outcome kinds, by code (index).
const KINDS: &[&str] = &[
    "answered",
    "dropped",
    "connection_closed",
    "no_healthy_connection",
    "circuit_open",
    "connect",
    "timeout",
    "flow_control_paused",
    "other",
];

/// One byte per request, set exactly once.
struct Slots {
    slots: Vec<AtomicU8>,
    duplicates: AtomicU64,
    late: AtomicU64,
}

impl Slots {
    fn new() -> Self {
        Slots {
            // Filled with a non-zero value, so every page is touched now.
            slots: (0..CAPACITY).map(|_| AtomicU8::new(UNSET)).collect(),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }

    fn record(&self, n: u64, kind: &str, took: Duration) {
        if took > request_limit() {
            eprintln!(
                "request {n} took {took:?} ({kind}), ended at {:?}",
                T0.get().map(Instant::elapsed)
            );
            self.late.fetch_add(1, Ordering::AcqRel);
        }
        let code = KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(KINDS.len() - 1) as u8;
        if self.slots[n as usize]
            .compare_exchange(UNSET, code, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.duplicates.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn start_agent(socket: &Path) -> AgentProcess {
    AgentProcess::start(Path::new(AGENT_BIN), socket, Duration::from_secs(20))
}

#[test]
#[ignore = "soak: minutes of load; CI runs it with AGENTWIRE_SOAK_SECS=20"]
fn soak_mixed_load_with_agent_kills() {
    let secs: u64 = std::env::var("AGENTWIRE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (tokio, runtime) = agentwire_tests::two_worker_tokio();
    let limit = Duration::from_secs(secs + 120);
    tokio.block_on(async move {
        tokio::time::timeout(limit, soak(runtime, Duration::from_secs(secs)))
            .await
            .expect("the soak hung");
    });
}

async fn soak(runtime: TokioRuntime, duration: Duration) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("soak: {duration:?}, seed {seed:#x}");
    let _ = T0.set(Instant::now());
    let slots = Arc::new(Slots::new());
    let dir = TestDir::new();
    let socket = dir.socket("agent");
    let agent = Arc::new(Mutex::new(Some(start_agent(&socket))));
    let pool = AgentPool::new(runtime, pool_config());
    pool.add_agent("agent", socket.to_str().unwrap(), Default::default())
        .await
        .expect("add agent");

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..64u64)
        .map(|w| {
            let (pool, slots, stop, next) =
                (pool.clone(), slots.clone(), stop.clone(), next.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                while !stop.load(Ordering::Acquire) {
                    let n = next.fetch_add(1, Ordering::AcqRel);
                    if n as usize >= CAPACITY {
                        return;
                    }
                    let id = format!("s-{n}");
                    let started = Instant::now();
                    let request = one_request(&pool, &id, rng.below(4));
                    let kind = if rng.below(10) == 0 {
                        // A caller that gives up: the pool call is dropped mid-flight.
                        let wait = Duration::from_millis(rng.below(5));
                        match tokio::time::timeout(wait, request).await {
                            Ok(end) => end,
                            Err(_) => {
                                pool.clear_affinity(&id);
                                End::Failed("dropped".into())
                            }
                        }
                    } else {
                        request.await
                    };
                    let kind = match &kind {
                        End::Answered => "answered",
                        End::Failed(k) => k.as_str(),
                    };
                    slots.record(n, kind, started.elapsed());
                    // A pool call that fails fast (circuit open while the agent is dead) never
                    // yields; a caller retrying in a loop would hold its worker thread and
                    // starve the connections' own tasks. Proxies get requests at a rate, not
                    // in a spin: pause after a failure, and always let others run.
                    if kind == "answered" {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
                    }
                }
            })
        })
        .collect();

    // Warm-up, then the RSS baseline.
    let warm_up = (duration / 4).min(Duration::from_secs(5));
    tokio::time::sleep(warm_up).await;
    let warm = rss();
    let warm_requests = next.load(Ordering::Acquire);
    eprintln!(
        "soak: after warm-up ({warm_up:?}, {warm_requests} requests) RSS {} KiB",
        warm.now_kib
    );

    // Chaos: SIGKILL the agent every 0.5–2.5 s, restart it 0–300 ms later.
    let end_at = Instant::now() + duration.saturating_sub(warm_up);
    let mut rng = Rng(seed);
    let mut kills = 0;
    while Instant::now() < end_at {
        let wait = Duration::from_millis(500 + rng.below(2000));
        tokio::time::sleep(wait.min(end_at.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= end_at {
            break;
        }
        if let Some(a) = agent.lock().unwrap().take() {
            a.kill9();
        }
        eprintln!("soak: SIGKILL at {:?}", T0.get().map(Instant::elapsed));
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        *agent.lock().unwrap() = Some(start_agent(&socket));
    }
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.expect("a worker panicked (a wrong answer?)");
    }
    let issued = next.load(Ordering::Acquire).min(CAPACITY as u64);

    // Exactly once, on time.
    assert_eq!(
        slots.duplicates.load(Ordering::Acquire),
        0,
        "a request ended twice"
    );
    assert_eq!(slots.late.load(Ordering::Acquire), 0, "requests ended late");
    let mut tally: BTreeMap<&str, u64> = BTreeMap::new();
    let mut lost = Vec::new();
    for n in 0..issued {
        match slots.slots[n as usize].load(Ordering::Acquire) {
            UNSET => lost.push(n),
            code => *tally.entry(KINDS[code as usize]).or_default() += 1,
        }
    }
    assert!(
        lost.is_empty(),
        "{} requests never ended: {:?}…",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!("soak: {issued} requests, {kills} SIGKILLs; outcomes {tally:?}");
    assert!(
        !tally.contains_key("other"),
        "an outcome outside the expected kinds"
    );
    assert!(tally.get("answered").copied().unwrap_or(0) > issued / 4);

    // Nothing left in flight; the agent (restarted) is served again.
    assert!(
        eventually(Duration::from_secs(10), || pool.in_flight("agent") == 0).await,
        "{} still in flight",
        pool.in_flight("agent")
    );
    assert_eq!(pool.metrics().in_flight_requests.get(), 0);
    assert!(
        eventually(Duration::from_secs(20), || pool
            .healthy_connections("agent")
            == 4)
        .await,
        "the pool did not reconnect"
    );
    assert!(
        answered_again(&pool, "final", Duration::from_secs(10)).await,
        "the pool does not serve after the soak"
    );

    // Flat memory: the end is within a bound of the level after warm-up. The bound is what
    // the pool may legitimately hold at any time (its connections' buffers, the affinity maps
    // up to their caps) plus allocator slack, not a function of how many requests ran.
    let end = rss();
    let growth = end.now_kib.saturating_sub(warm.now_kib);
    let bound_kib = 32 * 1024;
    eprintln!(
        "soak: RSS after warm-up {} KiB, at the end {} KiB (growth {growth} KiB, bound {bound_kib} KiB; peak {} KiB)",
        warm.now_kib, end.now_kib, end.peak_kib
    );
    assert!(
        growth < bound_kib,
        "RSS grew by {growth} KiB during the soak"
    );
    pool.shutdown().await;
    drop(agent);
}
