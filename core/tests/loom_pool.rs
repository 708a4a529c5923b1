//! Loom models of the pool's atomic logic (`agentwire_core::pool`).
//!
//! Run (release: loom explores many thousands of interleavings):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p agentwire-core --release \
//!     --target-dir target/loom --test loom_pool
//! ```
//!
//! Every model uses 2-3 threads and one or two connections. Exploration is bounded to
//! [`PREEMPTION_BOUND`] = 3 preemptions per execution (override with `LOOM_MAX_PREEMPTIONS`).
//! The bugs these models target — a lost or doubled probe, a double open, an admission
//! slipping past a close or a limit, a leaked in-flight count — need at most two preemptions
//! to show (planted versions of the probe and admission races fail within bound 2). Measured
//! on the project's 2-core machine, the whole file (10 models, release build) takes about
//! 3 s at bound 2, 30 s at bound 3 and 4 minutes at bound 4, so 3 keeps CI well inside its
//! three-minute budget with a margin above what the bugs need.
#![cfg(loom)]

use core::time::Duration;

use agentwire_core::pool::{
    AcquireError, AffinityConfig, AffinityMap, Balancer, BindOutcome, BreakerConfig,
    CircuitBreaker, CircuitPermit, CircuitState, CircuitTransition, ConnectionConfig, ConnectionId,
    ConnectionState, RequestOutcome, Strategy,
};
use agentwire_core::sync::{Arc, AtomicBool, AtomicUsize, Ordering};
use agentwire_core::time::Instant;
use loom::thread;

/// Preemptions explored per execution unless `LOOM_MAX_PREEMPTIONS` says otherwise.
const PREEMPTION_BOUND: usize = 3;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTION_BOUND);
    }
    builder.check(f);
}

const NOW: Instant = Instant::from_millis(1_000);

fn connections(n: u64, max_in_flight: u32) -> Arc<Vec<ConnectionState>> {
    Arc::new(
        (0..n)
            .map(|i| {
                ConnectionState::new(
                    ConnectionId(i),
                    Instant::ZERO,
                    ConnectionConfig {
                        max_in_flight,
                        breaker: BreakerConfig {
                            failure_threshold: 3,
                            reset_timeout: Duration::from_millis(100),
                        },
                    },
                )
            })
            .collect(),
    )
}

/// A selection that starts after a health flip or a close is visible never lands on that
/// connection, and an admission can never slip in after `close` returned: `close` reports
/// every request admitted before it.
#[test]
fn select_never_uses_a_connection_after_its_flip_or_close_is_visible() {
    model(|| {
        let conns = connections(2, 1);
        let unhealthy_done = Arc::new(AtomicBool::new(false));
        let close_done = Arc::new(AtomicBool::new(false));

        let flipper = {
            let (conns, done) = (Arc::clone(&conns), Arc::clone(&unhealthy_done));
            thread::spawn(move || {
                conns[0].set_healthy(false);
                done.store(true, Ordering::Release);
            })
        };
        let closer = {
            let (conns, done) = (Arc::clone(&conns), Arc::clone(&close_done));
            thread::spawn(move || {
                let in_flight_at_close = conns[1].close();
                done.store(true, Ordering::Release);
                in_flight_at_close
            })
        };

        let balancer = Balancer::new(Strategy::RoundRobin, 0);
        let saw_unhealthy = unhealthy_done.load(Ordering::Acquire);
        let saw_closed = close_done.load(Ordering::Acquire);
        let admitted = balancer.acquire(&conns[..], None, NOW);
        if let Ok((index, _)) = &admitted {
            assert!(!(saw_unhealthy && *index == 0), "selected after the flip");
            assert!(!(saw_closed && *index == 1), "selected after the close");
        }

        flipper.join().unwrap();
        let in_flight_at_close = closer.join().unwrap();
        // The guard is still held here: if it is on connection 1, it was admitted before the
        // close, so the close must have counted it.
        if let Ok((1, guard)) = &admitted {
            assert_eq!(in_flight_at_close, 1, "an admission slipped past close()");
            assert_eq!(guard.connection().in_flight(), 1);
        }
        drop(admitted);
        assert!(conns[1].is_drained());
        assert_eq!(conns[0].in_flight(), 0);
    });
}

/// Whatever way requests end — success, timeout, cancellation (a dropped guard) — every
/// admitted request is counted out exactly once, the limit is never exceeded, and the
/// counters agree with what was admitted.
#[test]
fn in_flight_returns_to_zero_under_concurrent_complete_timeout_and_cancel() {
    model(|| {
        let conns = connections(1, 2);
        let worker = |outcome: Option<RequestOutcome>| {
            let conns = Arc::clone(&conns);
            thread::spawn(move || match conns[0].try_acquire(NOW) {
                Ok(guard) => {
                    assert!(guard.connection().in_flight() <= 2, "limit exceeded");
                    match outcome {
                        Some(outcome) => {
                            let _ = guard.finish(outcome, NOW);
                        }
                        None => drop(guard),
                    }
                    (1_u64, u64::from(outcome == Some(RequestOutcome::Timeout)))
                }
                Err(refusal) => {
                    assert_eq!(refusal, AcquireError::AtCapacity);
                    (0, 0)
                }
            })
        };
        let completes = worker(Some(RequestOutcome::Success));
        let times_out = worker(Some(RequestOutcome::Timeout));
        let cancelled = worker(None).join().unwrap();
        let totals = [
            completes.join().unwrap(),
            times_out.join().unwrap(),
            cancelled,
        ];

        let admitted: u64 = totals.iter().map(|t| t.0).sum();
        let failed: u64 = totals.iter().map(|t| t.1).sum();
        assert!(
            admitted >= 2,
            "two slots for three requests: at least two get in"
        );
        assert_eq!(conns[0].in_flight(), 0);
        assert_eq!(conns[0].request_count(), admitted);
        assert_eq!(conns[0].error_count(), failed);
    });
}

/// Two concurrent round-robin selections on two one-slot connections both get a slot (a lost
/// admission race retries elsewhere), and no connection ever holds more than its one slot.
#[test]
fn round_robin_spreads_concurrent_selections() {
    concurrent_selections_respect_limits(Strategy::RoundRobin);
}

/// The same for least-connections, whose choice depends on in-flight counts that change
/// under its feet.
#[test]
fn least_connections_spreads_concurrent_selections() {
    concurrent_selections_respect_limits(Strategy::LeastConnections);
}

fn concurrent_selections_respect_limits(strategy: Strategy) {
    model(move || {
        let conns = connections(2, 1);
        let balancer = Arc::new(Balancer::new(strategy, 0));
        // Holders per connection, maintained by the test around each held guard.
        let holders = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let request = {
            let (conns, balancer, holders) = (
                Arc::clone(&conns),
                Arc::clone(&balancer),
                Arc::clone(&holders),
            );
            move || {
                let (index, guard) = balancer
                    .acquire(&conns[..], None, NOW)
                    .expect("two slots for two requests");
                assert_eq!(
                    holders[index].fetch_add(1, Ordering::AcqRel),
                    0,
                    "slot shared"
                );
                assert_eq!(
                    guard.connection().in_flight(),
                    1,
                    "above the one-slot limit"
                );
                holders[index].fetch_sub(1, Ordering::AcqRel);
                drop(guard);
            }
        };
        let other = thread::spawn(request.clone());
        request();
        other.join().unwrap();
        assert!(conns.iter().all(|c| c.in_flight() == 0));
        assert_eq!(conns.iter().map(|c| c.request_count()).sum::<u64>(), 2);
    });
}

/// However many failures race to the threshold, the breaker opens exactly once.
#[test]
fn breaker_opens_exactly_once() {
    model(|| {
        let breaker = Arc::new(CircuitBreaker::new(BreakerConfig {
            failure_threshold: 2,
            reset_timeout: Duration::from_millis(100),
        }));
        let spawn_failure = || {
            let breaker = Arc::clone(&breaker);
            thread::spawn(move || breaker.record_failure(CircuitPermit::Normal, NOW))
        };
        let a = spawn_failure();
        let b = spawn_failure();
        let c = breaker.record_failure(CircuitPermit::Normal, NOW);
        let transitions = [a.join().unwrap(), b.join().unwrap(), c];
        let opened = transitions
            .iter()
            .filter(|t| **t == Some(CircuitTransition::Opened))
            .count();
        assert_eq!(opened, 1, "{transitions:?}");
        assert_eq!(breaker.state(), CircuitState::Open);
    });
}

/// In half-open exactly one probe is out at a time, an abandoned probe goes to the next
/// caller instead of being lost, and the breaker never ends stuck in half-open.
#[test]
fn breaker_half_open_admits_one_probe_and_never_loses_it() {
    model(|| {
        let breaker = Arc::new(CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            reset_timeout: Duration::from_millis(100),
        }));
        assert_eq!(
            breaker.record_failure(CircuitPermit::Normal, Instant::ZERO),
            Some(CircuitTransition::Opened)
        );
        let outstanding = Arc::new(AtomicUsize::new(0));
        let prober = |succeed: bool| {
            let (breaker, outstanding) = (Arc::clone(&breaker), Arc::clone(&outstanding));
            thread::spawn(move || {
                match breaker.try_admit(NOW) {
                    Ok(CircuitPermit::Probe) => {}
                    // The other side's probe already closed the breaker: not a probe.
                    Ok(CircuitPermit::Normal) => return false,
                    Err(_) => return false,
                }
                let permit = CircuitPermit::Probe;
                assert_eq!(outstanding.fetch_add(1, Ordering::AcqRel), 0, "two probes");
                // Leave the probe's accounting before handing it back, so the next probe
                // cannot be counted while this one is still counted.
                outstanding.fetch_sub(1, Ordering::AcqRel);
                if succeed {
                    assert_eq!(
                        breaker.record_success(permit),
                        Some(CircuitTransition::Closed)
                    );
                } else {
                    breaker.abandon(permit);
                }
                true
            })
        };
        let abandons = prober(false);
        let succeeds = prober(true);
        let probed = [abandons.join().unwrap(), succeeds.join().unwrap()];
        assert!(probed.iter().any(|p| *p), "someone got the probe");
        match breaker.state() {
            CircuitState::Closed => assert!(probed[1]),
            // Only the abandoning side probed: the probe is available again.
            CircuitState::Open => assert_eq!(breaker.try_admit(NOW), Ok(CircuitPermit::Probe)),
            CircuitState::HalfOpen => panic!("stuck in half-open with no probe out"),
        }
    });
}

/// The same through the connection: a probe guard dropped by a cancelled request, racing
/// with another admission, leaves neither a stuck breaker nor an in-flight count.
#[test]
fn connection_probe_cancel_races_with_admission() {
    model(|| {
        let conns = connections(1, 4);
        for _ in 0..3 {
            let guard = conns[0].try_acquire(Instant::ZERO).unwrap();
            let _ = guard.finish(RequestOutcome::Failure, Instant::ZERO);
        }
        assert_eq!(conns[0].circuit().state(), CircuitState::Open);
        let canceller = {
            let conns = Arc::clone(&conns);
            thread::spawn(move || {
                if let Ok(guard) = conns[0].try_acquire(NOW) {
                    assert!(guard.is_probe());
                    drop(guard);
                }
            })
        };
        let mine = conns[0].try_acquire(NOW);
        if let Ok(guard) = &mine {
            assert!(
                guard.is_probe(),
                "only probes get through a non-closed breaker"
            );
        }
        canceller.join().unwrap();
        let closed_by_me = mine.map(|g| g.finish(RequestOutcome::Success, NOW));
        assert_eq!(conns[0].in_flight(), 0);
        match conns[0].circuit().state() {
            CircuitState::Closed => {
                assert_eq!(closed_by_me, Ok(Some(CircuitTransition::Closed)));
            }
            CircuitState::Open => assert!(conns[0].try_acquire(NOW).unwrap().is_probe()),
            CircuitState::HalfOpen => panic!("probe lost"),
        }
    });
}

/// Binds, lookups and clears racing on a map with room for one entry: the cap holds, every
/// refusal is counted, lookups only ever see what was bound for that key, and the entry
/// count matches the entries actually present.
#[test]
fn affinity_bind_lookup_clear_races() {
    model(|| {
        let map = Arc::new(AffinityMap::new(AffinityConfig {
            max_entries: 1,
            idle_timeout: Some(Duration::from_secs(60)),
            shards: 2,
        }));
        let binder = |key: &'static str, id: u64| {
            let map = Arc::clone(&map);
            thread::spawn(move || map.bind(key, ConnectionId(id), NOW))
        };
        let a = binder("a", 1);
        let b = binder("b", 2);
        let looked_up = map.get("a", NOW);
        assert!(matches!(looked_up, None | Some(ConnectionId(1))));
        let cleared = map.clear("a");
        assert!(matches!(cleared, None | Some(ConnectionId(1))));
        let outcomes = [a.join().unwrap(), b.join().unwrap()];

        let rejected = outcomes
            .iter()
            .filter(|o| **o == BindOutcome::Rejected)
            .count() as u64;
        assert_eq!(map.rejected_total(), rejected);
        assert!(
            outcomes.contains(&BindOutcome::Inserted),
            "the first bind always fits"
        );
        let present = [map.get("a", NOW), map.get("b", NOW)];
        assert!(map.len() <= 1);
        assert_eq!(map.len(), present.iter().flatten().count());
        assert!(matches!(present[0], None | Some(ConnectionId(1))));
        assert!(matches!(present[1], None | Some(ConnectionId(2))));
    });
}

/// A sweep racing with a refreshing lookup never removes an entry the lookup just saw as
/// alive without counting it, and the entry count stays exact.
#[test]
fn affinity_sweep_races_with_refresh() {
    model(|| {
        let map = Arc::new(AffinityMap::new(AffinityConfig {
            max_entries: 4,
            idle_timeout: Some(Duration::from_millis(100)),
            shards: 1,
        }));
        let _ = map.bind("k", ConnectionId(1), Instant::ZERO);
        let sweeper = {
            let map = Arc::clone(&map);
            thread::spawn(move || map.sweep(Instant::from_millis(150)))
        };
        // At 99 ms the entry is alive unless the sweep (at 150 ms, idle since 0) got it first;
        // a lookup that saw it refreshed it to 99 ms, so the sweep must then spare it.
        let seen = map.get("k", Instant::from_millis(99));
        let evicted = sweeper.join().unwrap();
        assert_eq!(
            seen.is_some(),
            evicted == 0,
            "seen {seen:?}, evicted {evicted}"
        );
        assert_eq!(map.evicted_total(), evicted as u64);
        assert_eq!(map.len(), 1 - evicted);
    });
}

/// A send that starts after a pause is visible is refused; sends racing with the pause
/// either get in or are refused as paused; in-flight counts return to zero; after a resume
/// sends flow again.
#[test]
fn pause_and_resume_race_with_sends() {
    model(|| {
        let conns = connections(1, 2);
        let pause_visible = Arc::new(AtomicBool::new(false));
        let pauser = {
            let (conns, visible) = (Arc::clone(&conns), Arc::clone(&pause_visible));
            thread::spawn(move || {
                assert!(conns[0].pause(), "nobody else pauses");
                visible.store(true, Ordering::Release);
            })
        };
        let racing_sender = {
            let conns = Arc::clone(&conns);
            thread::spawn(move || match conns[0].try_acquire(NOW) {
                Ok(guard) => drop(guard),
                Err(refusal) => assert_eq!(refusal, AcquireError::Paused),
            })
        };
        let saw_pause = pause_visible.load(Ordering::Acquire);
        let sent = conns[0].try_acquire(NOW);
        if saw_pause {
            assert_eq!(sent.as_ref().err(), Some(&AcquireError::Paused));
        }
        drop(sent);
        pauser.join().unwrap();
        racing_sender.join().unwrap();
        assert_eq!(conns[0].in_flight(), 0);
        assert!(conns[0].resume());
        drop(conns[0].try_acquire(NOW).expect("flows after resume"));
        assert_eq!(conns[0].in_flight(), 0);
    });
}
