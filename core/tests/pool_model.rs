//! Model-based property test of the pool's decision logic.
//!
//! Random sequences of operations — add/close/remove a connection, select-and-send (with and
//! without correlation affinity), complete, fail, time out, cancel, pause, resume, health
//! flips, capacity changes, clock ticks with affinity sweeps — are applied both to the real
//! structures (`ConnectionState`, `select_preferring`, `CircuitBreaker`, `AffinityMap`) and
//! to a naive single-threaded oracle written from the specification. After every step the
//! two must agree, and the invariants hold:
//!
//! * in-flight counts never go negative, match the oracle, and return to zero once every
//!   request has ended;
//! * a selection never lands on a closed, paused, unhealthy or circuit-open connection (or
//!   one at its limit), and a refusal is reported only when the oracle finds no candidate,
//!   with the same reason;
//! * affinity points at a live connection or selection falls back; the map's cap, refusal
//!   count and expiry match the oracle;
//! * a breaker in half-open never lets a second probe through, and its phase always equals
//!   the oracle's.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentwire_core::pool::{
    AcquireError, AffinityConfig, AffinityMap, BindOutcome, BreakerConfig, CircuitState,
    ConnectionConfig, ConnectionId, ConnectionState, InFlightGuard, RequestOutcome, Selection,
    Strategy as Balancing, select_preferring,
};
use agentwire_core::time::Instant;
use proptest::prelude::*;

const THRESHOLD: u32 = 2;
const RESET_MS: u64 = 100;
const AFFINITY_CAP: usize = 3;
const AFFINITY_TTL_MS: u64 = 150;
const MAX_CONNECTIONS: usize = 5;
const KEYS: u8 = 6;

#[derive(Clone, Debug)]
enum Op {
    Add {
        capacity: u32,
    },
    Close(usize),
    Remove(usize),
    /// Send request headers (`affine: false`) or a body chunk of request `key` routed by
    /// affinity (`affine: true`).
    Send {
        key: u8,
        affine: bool,
    },
    End {
        request: usize,
        outcome: RequestOutcome,
    },
    Drop(usize),
    Pause(usize),
    Resume(usize),
    SetHealthy(usize, bool),
    SetCapacity(usize, u32),
    Tick {
        millis: u64,
    },
    ClearAffinity(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        Just(RequestOutcome::Success),
        Just(RequestOutcome::Failure),
        Just(RequestOutcome::Timeout),
        Just(RequestOutcome::Cancelled),
    ];
    prop_oneof![
        2 => (0..3_u32).prop_map(|capacity| Op::Add { capacity }),
        1 => any::<usize>().prop_map(Op::Close),
        1 => any::<usize>().prop_map(Op::Remove),
        6 => (0..KEYS, any::<bool>()).prop_map(|(key, affine)| Op::Send { key, affine }),
        4 => (any::<usize>(), outcome).prop_map(|(request, outcome)| Op::End { request, outcome }),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Pause),
        1 => any::<usize>().prop_map(Op::Resume),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, h)| Op::SetHealthy(i, h)),
        1 => (any::<usize>(), 0..3_u32).prop_map(|(i, c)| Op::SetCapacity(i, c)),
        2 => (0..120_u64).prop_map(|millis| Op::Tick { millis }),
        1 => (0..KEYS).prop_map(Op::ClearAffinity),
    ]
}

fn balancing() -> impl Strategy<Value = Balancing> {
    prop_oneof![
        Just(Balancing::RoundRobin),
        Just(Balancing::LeastConnections),
        Just(Balancing::HealthWeighted),
        Just(Balancing::Random),
        Just(Balancing::PowerOfTwoChoices),
    ]
}

/// The oracle's breaker: the specification, written as plainly as possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breaker {
    Closed { failures: u32 },
    Open { opened_at: u64 },
    HalfOpen { opened_at: u64 },
}

impl Breaker {
    fn state(self) -> CircuitState {
        match self {
            Breaker::Closed { .. } => CircuitState::Closed,
            Breaker::Open { .. } => CircuitState::Open,
            Breaker::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    fn admits(self, now: u64) -> bool {
        match self {
            Breaker::Closed { .. } => true,
            Breaker::Open { opened_at } => now - opened_at >= RESET_MS,
            Breaker::HalfOpen { .. } => false,
        }
    }
}

/// The oracle's view of one connection.
#[derive(Debug)]
struct Model {
    id: ConnectionId,
    healthy: bool,
    paused: bool,
    closed: bool,
    capacity: u32,
    in_flight: i64,
    breaker: Breaker,
}

impl Model {
    fn usable(&self, now: u64) -> bool {
        !self.closed && self.healthy && self.breaker.admits(now)
    }

    fn eligible(&self, now: u64) -> bool {
        self.usable(now) && !self.paused && self.in_flight < i64::from(self.capacity)
    }
}

struct Request {
    guard: InFlightGuard<Arc<ConnectionState>>,
    connection: ConnectionId,
    probe: bool,
}

struct Harness {
    strategy: Balancing,
    now: u64,
    ticket: u64,
    next_id: u64,
    /// The pool's list, as the async pool would hold it.
    connections: Vec<Arc<ConnectionState>>,
    /// The oracle, by id; removed connections stay here (their requests still end).
    models: HashMap<ConnectionId, Model>,
    /// Every connection ever created, for the final drain check.
    all: Vec<Arc<ConnectionState>>,
    requests: Vec<Request>,
    affinity: AffinityMap,
    /// key → (connection, last used ms).
    affinity_model: HashMap<u8, (ConnectionId, u64)>,
    affinity_rejections: u64,
}

impl Harness {
    fn new(strategy: Balancing) -> Self {
        Harness {
            strategy,
            now: 1_000,
            ticket: 0,
            next_id: 0,
            connections: Vec::new(),
            models: HashMap::new(),
            all: Vec::new(),
            requests: Vec::new(),
            affinity: AffinityMap::new(AffinityConfig {
                max_entries: AFFINITY_CAP,
                idle_timeout: Some(Duration::from_millis(AFFINITY_TTL_MS)),
                shards: 2,
            }),
            affinity_model: HashMap::new(),
            affinity_rejections: 0,
        }
    }

    fn instant(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn pick(&self, i: usize) -> Option<Arc<ConnectionState>> {
        (!self.connections.is_empty())
            .then(|| Arc::clone(&self.connections[i % self.connections.len()]))
    }

    fn model(&mut self, id: ConnectionId) -> &mut Model {
        self.models
            .get_mut(&id)
            .expect("every connection has a model")
    }

    /// What the oracle expects `select_preferring` to answer (any eligible index is fine;
    /// `None` inside means "some eligible connection").
    fn expected_refusal(&self, candidates: &[&Model]) -> Selection {
        let now = self.now;
        if self.connections.is_empty() {
            Selection::NoConnections
        } else if candidates
            .iter()
            .any(|m| m.usable(now) && !m.paused && !m.eligible(now))
        {
            Selection::AtCapacity
        } else if candidates.iter().any(|m| m.usable(now) && m.paused) {
            Selection::AllPaused
        } else {
            Selection::NoneHealthy
        }
    }

    fn send(&mut self, key: u8, affine: bool) {
        let now = self.now;
        let instant = self.instant();
        // The affinity lookup must agree with the oracle (expired entries are invisible).
        let real_target = self.affinity.get(&key.to_string(), instant);
        let model_target = self
            .affinity_model
            .get(&key)
            .filter(|(_, last)| now - last < AFFINITY_TTL_MS)
            .map(|(id, _)| *id);
        assert_eq!(real_target, model_target, "affinity lookup of {key}");
        if real_target.is_some() {
            self.affinity_model.get_mut(&key).unwrap().1 = now;
        }
        let preferred = if affine { real_target } else { None };

        self.ticket += 1;
        let selection = select_preferring(
            self.strategy,
            &self.connections,
            preferred,
            instant,
            self.ticket,
        );

        // The oracle's verdict on the preferred connection, if it is still in the list.
        let preferred_model = preferred
            .filter(|id| self.connections.iter().any(|c| c.id() == *id))
            .map(|id| &self.models[&id])
            .filter(|m| !m.closed);
        let listed: Vec<&Model> = self
            .connections
            .iter()
            .map(|c| &self.models[&c.id()])
            .collect();
        match (preferred_model, selection) {
            // A usable preferred connection decides alone: selected, or blocked on it.
            (Some(m), _) if m.usable(now) => {
                let expected = if m.eligible(now) {
                    Selection::Selected(
                        self.connections
                            .iter()
                            .position(|c| c.id() == m.id)
                            .unwrap(),
                    )
                } else {
                    self.expected_refusal(&[m])
                };
                assert_eq!(selection, expected, "affine selection");
            }
            // Otherwise normal selection: any eligible connection, or the right refusal.
            (_, Selection::Selected(index)) => {
                let chosen = &self.models[&self.connections[index].id()];
                assert!(
                    chosen.eligible(now),
                    "selected an ineligible connection: {chosen:?}"
                );
            }
            (_, refusal) => {
                assert!(
                    listed.iter().all(|m| !m.eligible(now)),
                    "refused ({refusal:?}) with an eligible connection"
                );
                assert_eq!(refusal, self.expected_refusal(&listed));
            }
        }

        let Selection::Selected(index) = selection else {
            return;
        };
        let connection = Arc::clone(&self.connections[index]);
        let id = connection.id();
        // Single-threaded: what selection saw, admission must grant.
        let guard = ConnectionState::try_acquire_owned(&connection, instant)
            .expect("admission agrees with selection");
        let model = self.model(id);
        let probe = matches!(model.breaker, Breaker::Open { .. });
        if let Breaker::Open { opened_at } = model.breaker {
            model.breaker = Breaker::HalfOpen { opened_at };
        }
        model.in_flight += 1;
        assert_eq!(guard.is_probe(), probe, "probe accounting");
        assert_eq!(connection.in_flight() as i64, self.models[&id].in_flight);
        self.requests.push(Request {
            guard,
            connection: id,
            probe,
        });

        // Headers (and a fallback) bind the key to where the request went.
        if real_target != Some(id) {
            let outcome = self.affinity.bind(&key.to_string(), id, instant);
            // Expired entries still take room until swept, in the real map and here.
            let live = self.affinity_model.len();
            let expected = if self.affinity_model.contains_key(&key) {
                BindOutcome::Updated
            } else if live >= AFFINITY_CAP {
                BindOutcome::Rejected
            } else {
                BindOutcome::Inserted
            };
            assert_eq!(outcome, expected, "bind of {key}");
            if outcome == BindOutcome::Rejected {
                self.affinity_rejections += 1;
            } else {
                self.affinity_model.insert(key, (id, now));
            }
        }
    }

    fn end(&mut self, request: usize, outcome: Option<RequestOutcome>) {
        if self.requests.is_empty() {
            return;
        }
        let Request {
            guard,
            connection,
            probe,
        } = self.requests.swap_remove(request % self.requests.len());
        let now = self.now;
        match outcome {
            Some(outcome) => {
                let _ = guard.finish(outcome, self.instant());
            }
            None => drop(guard),
        }
        let model = self.model(connection);
        model.in_flight -= 1;
        assert!(model.in_flight >= 0, "in-flight went negative");
        model.breaker = match (outcome, probe, model.breaker) {
            (Some(RequestOutcome::Success), true, Breaker::HalfOpen { .. }) => {
                Breaker::Closed { failures: 0 }
            }
            (Some(RequestOutcome::Success), false, Breaker::Closed { .. }) => {
                Breaker::Closed { failures: 0 }
            }
            (
                Some(RequestOutcome::Failure | RequestOutcome::Timeout),
                true,
                Breaker::HalfOpen { .. },
            ) => Breaker::Open { opened_at: now },
            (
                Some(RequestOutcome::Failure | RequestOutcome::Timeout),
                false,
                Breaker::Closed { failures },
            ) => {
                if failures + 1 >= THRESHOLD {
                    Breaker::Open { opened_at: now }
                } else {
                    Breaker::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (Some(RequestOutcome::Cancelled) | None, true, Breaker::HalfOpen { opened_at }) => {
                Breaker::Open { opened_at }
            }
            (_, _, unchanged) => unchanged,
        };
    }

    fn apply(&mut self, op: Op) {
        let instant = self.instant();
        match op {
            Op::Add { capacity } => {
                if self.connections.len() >= MAX_CONNECTIONS {
                    return;
                }
                let id = ConnectionId(self.next_id);
                self.next_id += 1;
                let connection = Arc::new(ConnectionState::new(
                    id,
                    instant,
                    ConnectionConfig {
                        max_in_flight: capacity,
                        breaker: BreakerConfig {
                            failure_threshold: THRESHOLD as u16,
                            reset_timeout: Duration::from_millis(RESET_MS),
                        },
                    },
                ));
                self.connections.push(Arc::clone(&connection));
                self.all.push(connection);
                self.models.insert(
                    id,
                    Model {
                        id,
                        healthy: true,
                        paused: false,
                        closed: false,
                        capacity,
                        in_flight: 0,
                        breaker: Breaker::Closed { failures: 0 },
                    },
                );
            }
            Op::Close(i) => {
                if let Some(c) = self.pick(i) {
                    let in_flight = c.close();
                    let model = self.model(c.id());
                    model.closed = true;
                    assert_eq!(i64::from(in_flight), model.in_flight);
                    let breaker_closed = model.breaker.state() == CircuitState::Closed;
                    let refusal = c.try_acquire(instant).err();
                    // A refusing breaker answers first; otherwise the close does.
                    assert!(refusal.is_some());
                    if breaker_closed {
                        assert_eq!(refusal, Some(AcquireError::Closed));
                    }
                }
            }
            Op::Remove(i) => {
                if let Some(c) = self.pick(i) {
                    c.close();
                    self.model(c.id()).closed = true;
                    self.connections.retain(|x| x.id() != c.id());
                    // Purge its affinities at once (the oracle's keys follow).
                    let purged = self.affinity.clear_connection(c.id());
                    let before = self.affinity_model.len();
                    self.affinity_model.retain(|_, (id, _)| *id != c.id());
                    assert_eq!(purged, before - self.affinity_model.len());
                }
            }
            Op::Send { key, affine } => self.send(key, affine),
            Op::End { request, outcome } => self.end(request, Some(outcome)),
            Op::Drop(request) => self.end(request, None),
            Op::Pause(i) => {
                if let Some(c) = self.pick(i) {
                    let was = std::mem::replace(&mut self.model(c.id()).paused, true);
                    assert_eq!(c.pause(), !was);
                }
            }
            Op::Resume(i) => {
                if let Some(c) = self.pick(i) {
                    let was = std::mem::replace(&mut self.model(c.id()).paused, false);
                    assert_eq!(c.resume(), was);
                }
            }
            Op::SetHealthy(i, healthy) => {
                if let Some(c) = self.pick(i) {
                    let was = std::mem::replace(&mut self.model(c.id()).healthy, healthy);
                    assert_eq!(c.set_healthy(healthy), was);
                }
            }
            Op::SetCapacity(i, capacity) => {
                if let Some(c) = self.pick(i) {
                    let was = std::mem::replace(&mut self.model(c.id()).capacity, capacity);
                    assert_eq!(c.set_max_in_flight(capacity), was);
                }
            }
            Op::Tick { millis } => {
                self.now += millis;
                let now = self.now;
                let swept = self.affinity.sweep(self.instant());
                let before = self.affinity_model.len();
                self.affinity_model
                    .retain(|_, (_, last)| now - *last < AFFINITY_TTL_MS);
                assert_eq!(swept, before - self.affinity_model.len(), "sweep count");
            }
            Op::ClearAffinity(key) => {
                let real = self.affinity.clear(&key.to_string());
                let model = self.affinity_model.remove(&key).map(|(id, _)| id);
                assert_eq!(real, model);
            }
        }
        self.check();
    }

    fn check(&self) {
        for connection in &self.all {
            let model = &self.models[&connection.id()];
            let snapshot = connection.snapshot();
            assert!(model.in_flight >= 0);
            assert_eq!(i64::from(snapshot.in_flight), model.in_flight, "{model:?}");
            assert_eq!(snapshot.circuit, model.breaker.state(), "{model:?}");
            assert_eq!(
                (snapshot.healthy, snapshot.paused, snapshot.closed),
                (model.healthy, model.paused, model.closed)
            );
            // At most one probe out per connection, and only while half-open.
            let probes = self
                .requests
                .iter()
                .filter(|r| r.probe && r.connection == model.id)
                .count();
            assert!(probes <= 1, "two probes in half-open");
            assert_eq!(probes == 1, model.breaker.state() == CircuitState::HalfOpen);
        }
        assert!(self.affinity.len() <= AFFINITY_CAP);
        assert_eq!(self.affinity.len(), self.affinity_model.len());
        assert_eq!(self.affinity.rejected_total(), self.affinity_rejections);
    }

    /// Ends every request (each way in turn) and checks that nothing is left in flight.
    fn drain(mut self) {
        let outstanding = self.requests.len();
        for way in 0..outstanding {
            let outcome = [
                Some(RequestOutcome::Success),
                Some(RequestOutcome::Timeout),
                None,
            ][way % 3];
            self.end(0, outcome);
            self.check();
        }
        assert!(self.requests.is_empty());
        for connection in &self.all {
            assert_eq!(
                connection.in_flight(),
                0,
                "in-flight did not return to zero"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pool_agrees_with_the_oracle(
        strategy in balancing(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut harness = Harness::new(strategy);
        for op in ops {
            harness.apply(op);
        }
        harness.drain();
    }
}
