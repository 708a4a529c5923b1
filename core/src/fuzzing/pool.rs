//! Operation sequences over the pool's decision logic.

use crate::pool::{
    AcquireError, AffinityConfig, AffinityMap, Balancer, BindOutcome, BreakerConfig, CircuitState,
    CircuitTransition, ConnectionConfig, ConnectionId, ConnectionState, InFlightGuard,
    MAX_IN_FLIGHT_LIMIT, RequestOutcome, Selection, Strategy, select_preferring,
};
use crate::sync::Arc;
use crate::time::Instant;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use arbitrary::{Arbitrary, Unstructured};
use core::time::Duration;

/// Operations per input.
const MAX_OPS: usize = 1024;

#[derive(Arbitrary, Debug)]
struct ConnectionSetup {
    /// In-flight limit: this % 5 (0 admits nothing).
    max_in_flight: u8,
    /// Breaker threshold: this % 4 (0 is treated as 1 by the breaker).
    threshold: u8,
    /// Breaker reset timeout in milliseconds.
    reset_ms: u16,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    first: ConnectionSetup,
    more: [Option<ConnectionSetup>; 3],
    strategy: u8,
    seed: u64,
    /// Affinity cap: this % 6.
    affinity_cap: u8,
    affinity_idle_ms: Option<u16>,
    affinity_shards: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// `try_acquire` (borrowed guard) or `try_acquire_owned`.
    Acquire {
        conn: u8,
        owned: bool,
    },
    /// `Balancer::acquire`, with or without a preferred connection.
    Balance {
        preferred: Option<u8>,
    },
    /// `select_preferring` with an explicit ticket.
    Select {
        preferred: Option<u8>,
        ticket: u64,
    },
    /// `finish` a held guard: success, failure, timeout, cancelled.
    Finish {
        guard: u8,
        outcome: u8,
    },
    /// Drop a held guard without a verdict.
    Drop {
        guard: u8,
    },
    Pause(u8),
    Resume(u8),
    Close(u8),
    Healthy(u8, bool),
    Limit(u8, u32),
    Advance(u16),
    Bind {
        key: u8,
        conn: u8,
    },
    Get {
        key: u8,
    },
    Clear {
        key: u8,
    },
    ClearConnection(u8),
    Sweep,
}

enum Guard<'a> {
    Borrowed(InFlightGuard<&'a ConnectionState>),
    Owned(InFlightGuard<Arc<ConnectionState>>),
}

impl Guard<'_> {
    fn is_probe(&self) -> bool {
        match self {
            Guard::Borrowed(g) => g.is_probe(),
            Guard::Owned(g) => g.is_probe(),
        }
    }

    fn finish(self, outcome: RequestOutcome, now: Instant) -> Option<CircuitTransition> {
        match self {
            Guard::Borrowed(g) => g.finish(outcome, now),
            Guard::Owned(g) => g.finish(outcome, now),
        }
    }
}

/// The state of a connection as the sequence of calls defines it.
#[derive(Clone, Copy, Debug)]
struct Model {
    closed: bool,
    paused: bool,
    healthy: bool,
    limit: u32,
}

/// What selection may see of a connection just before a call.
#[derive(Clone, Copy, Debug)]
struct Before {
    usable: bool,
    paused: bool,
    full: bool,
    circuit: CircuitState,
    would_admit: bool,
}

fn before(c: &ConnectionState, now: Instant) -> Before {
    let s = c.snapshot();
    let would_admit = c.circuit().would_admit(now);
    Before {
        usable: !s.closed && s.healthy && would_admit,
        paused: s.paused,
        full: s.in_flight >= s.max_in_flight,
        circuit: s.circuit,
        would_admit,
    }
}

/// The affinity map's expected contents: key → (connection, last use in ms).
struct AffinityModel {
    entries: BTreeMap<String, (ConnectionId, u64)>,
    cap: usize,
    idle_ms: Option<u64>,
    rejected: u64,
}

impl AffinityModel {
    fn expired(&self, last: u64, now: u64) -> bool {
        self.idle_ms.is_some_and(|t| now.saturating_sub(last) >= t)
    }
}

fn outcome(n: u8) -> RequestOutcome {
    match n % 4 {
        0 => RequestOutcome::Success,
        1 => RequestOutcome::Failure,
        2 => RequestOutcome::Timeout,
        _ => RequestOutcome::Cancelled,
    }
}

/// Checks a selection against the connections' standing before it.
fn check_selection(selection: Selection, seen: &[Before], preferred: Option<usize>) {
    let eligible = |b: &Before| b.usable && !b.paused && !b.full;
    match selection {
        Selection::Selected(i) => {
            assert!(eligible(&seen[i]), "selected connection {i}: {:?}", seen[i]);
            if let Some(p) = preferred
                && eligible(&seen[p])
            {
                assert_eq!(i, p, "an eligible preferred connection was passed over");
            }
        }
        Selection::NoConnections => panic!("the pool is never empty"),
        Selection::NoneHealthy => assert!(
            seen.iter().all(|b| !b.usable),
            "NoneHealthy with a usable connection: {seen:?}"
        ),
        Selection::AllPaused => {
            // A paused preferred connection is not abandoned (it holds the request's state).
            let preferred_paused = preferred.is_some_and(|p| seen[p].usable && seen[p].paused);
            assert!(
                preferred_paused
                    || (seen.iter().any(|b| b.usable && b.paused)
                        && !seen.iter().any(|b| b.usable && !b.paused)),
                "AllPaused: {seen:?}"
            );
        }
        Selection::AtCapacity => {
            let full = |b: &Before| b.usable && !b.paused && b.full;
            let preferred_full = preferred.is_some_and(|p| full(&seen[p]));
            assert!(
                preferred_full || (seen.iter().any(full) && !seen.iter().any(eligible)),
                "AtCapacity: {seen:?}"
            );
        }
    }
}

/// Target `pool`: up to four connections (limits, breaker thresholds and reset timeouts
/// chosen by the input), a balancer, an affinity map, and up to 1024 operations: direct and
/// balanced admissions, verdicts, dropped guards, pause, resume, close, health, limit
/// changes, clock ticks, affinity binds, lookups, clears and sweeps.
///
/// After every operation: each connection's in-flight count is exactly its live guards
/// (never negative), flags and limit are what the calls set; no admission on a closed or
/// paused connection or beyond the limit; a probe only from an open breaker whose reset
/// timeout passed, at most one probe live per connection and the breaker half-open exactly
/// while it lives; a refused admission hands the probe back; selections land only on
/// eligible connections and refusals name a true reason; the affinity map holds at most its
/// cap and answers as a model of it does. When every guard is dropped, every count is zero.
pub fn pool(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut now = Instant::from_millis(10_000);
    let configs: Vec<&ConnectionSetup> = core::iter::once(&setup.first)
        .chain(setup.more.iter().flatten())
        .collect();
    let conns: Vec<Arc<ConnectionState>> = configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Arc::new(ConnectionState::new(
                ConnectionId(i as u64),
                now,
                ConnectionConfig {
                    max_in_flight: u32::from(c.max_in_flight % 5),
                    breaker: BreakerConfig {
                        failure_threshold: u16::from(c.threshold % 4),
                        reset_timeout: Duration::from_millis(u64::from(c.reset_ms)),
                    },
                },
            ))
        })
        .collect();
    let mut models: Vec<Model> = configs
        .iter()
        .map(|c| Model {
            closed: false,
            paused: false,
            healthy: true,
            limit: u32::from(c.max_in_flight % 5),
        })
        .collect();
    let strategy = match setup.strategy % 5 {
        0 => Strategy::RoundRobin,
        1 => Strategy::LeastConnections,
        2 => Strategy::HealthWeighted,
        3 => Strategy::Random,
        _ => Strategy::PowerOfTwoChoices,
    };
    let balancer = Balancer::new(strategy, setup.seed);
    let affinity = AffinityMap::new(AffinityConfig {
        max_entries: usize::from(setup.affinity_cap % 6),
        idle_timeout: setup
            .affinity_idle_ms
            .map(|ms| Duration::from_millis(u64::from(ms))),
        shards: usize::from(setup.affinity_shards % 8),
    });
    let mut affinity_model = AffinityModel {
        entries: BTreeMap::new(),
        cap: usize::from(setup.affinity_cap % 6),
        idle_ms: setup.affinity_idle_ms.map(u64::from),
        rejected: 0,
    };
    let n = conns.len();
    let pick = |i: u8| usize::from(i) % n;
    let key = |k: u8| format!("k{}", k % 8);
    let mut guards: Vec<(usize, Guard<'_>)> = Vec::new();

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Acquire { conn, owned } => {
                let i = pick(conn);
                let c = &conns[i];
                let seen = before(c, now);
                let in_flight = c.in_flight();
                let result = if owned {
                    ConnectionState::try_acquire_owned(c, now).map(Guard::Owned)
                } else {
                    c.try_acquire(now).map(Guard::Borrowed)
                };
                let m = models[i];
                match result {
                    Ok(guard) => {
                        assert!(!m.closed && !m.paused, "admitted on a closed/paused {m:?}");
                        assert!(in_flight < m.limit, "admitted beyond the limit");
                        if guard.is_probe() {
                            assert_eq!(seen.circuit, CircuitState::Open);
                            assert!(seen.would_admit, "probe before the reset timeout");
                            assert_eq!(c.circuit().state(), CircuitState::HalfOpen);
                        } else {
                            assert_eq!(seen.circuit, CircuitState::Closed);
                        }
                        guards.push((i, guard));
                    }
                    Err(e) => {
                        match e {
                            AcquireError::CircuitOpen => assert!(!seen.would_admit),
                            AcquireError::Closed => assert!(m.closed),
                            AcquireError::Paused => assert!(m.paused && !m.closed),
                            AcquireError::AtCapacity => assert!(in_flight >= m.limit),
                        }
                        assert_eq!(
                            c.circuit().state(),
                            seen.circuit,
                            "a refused admission ({e}) moved the breaker"
                        );
                    }
                }
            }
            Op::Balance { preferred } => {
                let seen: Vec<Before> = conns.iter().map(|c| before(c, now)).collect();
                let preferred_index = preferred.map(pick);
                let id = preferred_index.map(|i| ConnectionId(i as u64));
                match balancer.acquire(&conns, id, now) {
                    Ok((i, guard)) => {
                        check_selection(Selection::Selected(i), &seen, preferred_index);
                        assert!(!models[i].closed && !models[i].paused);
                        guards.push((i, Guard::Borrowed(guard)));
                    }
                    Err(refusal) => {
                        assert!(refusal.index().is_none());
                        check_selection(refusal, &seen, preferred_index);
                    }
                }
            }
            Op::Select { preferred, ticket } => {
                let seen: Vec<Before> = conns.iter().map(|c| before(c, now)).collect();
                let preferred_index = preferred.map(pick);
                let id = preferred_index.map(|i| ConnectionId(i as u64));
                let selection = select_preferring(strategy, &conns, id, now, ticket);
                check_selection(selection, &seen, preferred_index);
            }
            Op::Finish { guard, outcome: o } => {
                if guards.is_empty() {
                    continue;
                }
                let (i, g) = guards.remove(usize::from(guard) % guards.len());
                let probe = g.is_probe();
                let o = outcome(o);
                let transition = g.finish(o, now);
                let state = conns[i].circuit().state();
                match (probe, o, transition) {
                    (true, RequestOutcome::Success, t) => {
                        assert_eq!(t, Some(CircuitTransition::Closed));
                        assert_eq!(state, CircuitState::Closed);
                    }
                    (true, RequestOutcome::Failure | RequestOutcome::Timeout, t) => {
                        assert_eq!(t, Some(CircuitTransition::Reopened));
                        assert_eq!(state, CircuitState::Open);
                    }
                    (true, RequestOutcome::Cancelled, t) => {
                        assert_eq!(t, None);
                        assert_eq!(state, CircuitState::Open, "abandoned probe lost");
                    }
                    (false, RequestOutcome::Failure | RequestOutcome::Timeout, t) => {
                        assert!(matches!(t, None | Some(CircuitTransition::Opened)));
                        if t.is_some() {
                            assert_eq!(state, CircuitState::Open);
                        }
                    }
                    (false, _, t) => assert_eq!(t, None, "a non-probe verdict moved {t:?}"),
                }
            }
            Op::Drop { guard } => {
                if guards.is_empty() {
                    continue;
                }
                let (i, g) = guards.remove(usize::from(guard) % guards.len());
                let probe = g.is_probe();
                drop(g);
                if probe {
                    assert_eq!(conns[i].circuit().state(), CircuitState::Open);
                }
            }
            Op::Pause(c) => {
                let i = pick(c);
                assert_eq!(conns[i].pause(), !models[i].paused);
                models[i].paused = true;
            }
            Op::Resume(c) => {
                let i = pick(c);
                assert_eq!(conns[i].resume(), models[i].paused);
                models[i].paused = false;
            }
            Op::Close(c) => {
                let i = pick(c);
                let live = guards.iter().filter(|(j, _)| *j == i).count();
                assert_eq!(conns[i].close() as usize, live);
                models[i].closed = true;
            }
            Op::Healthy(c, healthy) => {
                let i = pick(c);
                assert_eq!(conns[i].set_healthy(healthy), models[i].healthy);
                models[i].healthy = healthy;
            }
            Op::Limit(c, limit) => {
                let i = pick(c);
                assert_eq!(conns[i].set_max_in_flight(limit), models[i].limit);
                models[i].limit = limit.min(MAX_IN_FLIGHT_LIMIT);
            }
            Op::Advance(ms) => now = now.saturating_add(Duration::from_millis(u64::from(ms))),
            Op::Bind { key: k, conn } => {
                let (k, id) = (key(k), ConnectionId(pick(conn) as u64));
                let now_ms = now.as_millis();
                let outcome = affinity.bind(&k, id, now);
                let m = &mut affinity_model;
                let expected = if let Some(entry) = m.entries.get_mut(&k) {
                    *entry = (id, now_ms);
                    BindOutcome::Updated
                } else if m.entries.len() < m.cap {
                    m.entries.insert(k, (id, now_ms));
                    BindOutcome::Inserted
                } else {
                    m.rejected += 1;
                    BindOutcome::Rejected
                };
                assert_eq!(outcome, expected);
            }
            Op::Get { key: k } => {
                let k = key(k);
                let now_ms = now.as_millis();
                let got = affinity.get(&k, now);
                let m = &mut affinity_model;
                let expired = m.entries.get(&k).map(|(_, last)| m.expired(*last, now_ms));
                let expected = match (m.entries.get_mut(&k), expired) {
                    (Some((id, last)), Some(false)) => {
                        *last = (*last).max(now_ms);
                        Some(*id)
                    }
                    _ => None,
                };
                assert_eq!(got, expected, "affinity lookup of {k}");
            }
            Op::Clear { key: k } => {
                let k = key(k);
                let expected = affinity_model.entries.remove(&k).map(|(id, _)| id);
                assert_eq!(affinity.clear(&k), expected);
            }
            Op::ClearConnection(c) => {
                let id = ConnectionId(pick(c) as u64);
                let before = affinity_model.entries.len();
                affinity_model.entries.retain(|_, (conn, _)| *conn != id);
                assert_eq!(
                    affinity.clear_connection(id),
                    before - affinity_model.entries.len()
                );
            }
            Op::Sweep => {
                let now_ms = now.as_millis();
                let m = &mut affinity_model;
                let before = m.entries.len();
                if m.idle_ms.is_some() {
                    let idle = m.idle_ms;
                    m.entries.retain(|_, (_, last)| {
                        idle.is_none_or(|t| now_ms.saturating_sub(*last) < t)
                    });
                }
                assert_eq!(affinity.sweep(now), before - m.entries.len());
            }
        }

        // Invariants after every operation.
        for (i, c) in conns.iter().enumerate() {
            let live = guards.iter().filter(|(j, _)| *j == i).count();
            let probes = guards
                .iter()
                .filter(|(j, g)| *j == i && g.is_probe())
                .count();
            let s = c.snapshot();
            assert_eq!(
                s.in_flight as usize, live,
                "connection {i}: in flight ≠ guards"
            );
            assert!(probes <= 1, "connection {i}: {probes} probes");
            assert_eq!(
                probes == 1,
                s.circuit == CircuitState::HalfOpen,
                "connection {i}: half-open exactly while its probe lives"
            );
            let m = models[i];
            assert_eq!(
                (s.closed, s.paused, s.healthy, s.max_in_flight),
                (m.closed, m.paused, m.healthy, m.limit),
                "connection {i}: flags"
            );
        }
        assert_eq!(affinity.len(), affinity_model.entries.len());
        assert!(affinity.len() <= affinity.max_entries());
        assert_eq!(affinity.rejected_total(), affinity_model.rejected);
    }

    drop(guards);
    for (i, c) in conns.iter().enumerate() {
        assert_eq!(c.in_flight(), 0, "connection {i} leaked a request");
        assert_ne!(c.circuit().state(), CircuitState::HalfOpen);
        assert_eq!(c.is_drained(), models[i].closed);
    }
}
