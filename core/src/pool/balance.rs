//! Choosing a connection: pure selection over a slice of connection states.
//!
//! [`select`] is a pure function of the connections' atomic state, the time and a `ticket`
//! (a number the caller draws per selection): it reads, never writes, never allocates and
//! never waits, and it returns a decision as data ([`Selection`]). [`Balancer`] draws the
//! tickets from one relaxed atomic counter and adds bounded select-then-admit retries.
//!
//! A connection is a **candidate** only when it is open, healthy and its circuit breaker
//! admits (closed, or open with the reset timeout passed so a probe may go). Candidates that
//! are paused or at their in-flight limit are not selected either, but they decide which
//! refusal is reported, so the caller knows whether waiting can help.

use core::borrow::Borrow;

use super::ConnectionId;
use super::connection::{ConnectionState, InFlightGuard, Standing};
use crate::sync::{AtomicU64, Ordering};
use crate::time::Instant;

/// Load-balancing strategy among the candidates of one agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Rotate through the candidates in turn (reference default).
    #[default]
    RoundRobin,
    /// Fewest requests in flight; ties rotate so idle connections share the load instead of
    /// the first one taking it all.
    LeastConnections,
    /// Lowest lifetime error rate (in whole percent, so near-equal rates count as equal),
    /// then fewest in flight, then rotation.
    HealthWeighted,
    /// Uniformly random candidate.
    Random,
    /// Two distinct random candidates, the one with fewer in flight wins ("power of two
    /// choices": nearly least-connections quality without reading a global minimum).
    PowerOfTwoChoices,
}

/// The decision of one selection.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Selection {
    /// Use the connection at this index of the slice.
    Selected(usize),
    /// The slice is empty.
    NoConnections,
    /// No connection is usable: each is closed, unhealthy or circuit-open. Waiting for
    /// maintenance or a breaker's reset timeout may help; waiting for the agent will not.
    NoneHealthy,
    /// Every candidate is paused by agent flow control (for affine routing: the one
    /// candidate is). Applies the flow-control mode.
    AllPaused,
    /// Every unpaused candidate is at its in-flight limit (for affine routing: the one
    /// candidate is). A completion will free a slot; applies the flow-control mode.
    AtCapacity,
}

impl Selection {
    /// The index, if a connection was selected.
    #[must_use]
    pub fn index(self) -> Option<usize> {
        match self {
            Selection::Selected(index) => Some(index),
            _ => None,
        }
    }
}

/// One step of wyrand, a fast and statistically solid 64-bit generator: the output for the
/// generator state that follows `state`. The state advances by a constant, so a shared
/// generator needs only a relaxed `fetch_add`, never a CAS loop; and any `u64` is a usable
/// seed (zero included).
#[must_use]
pub fn wyrand(state: u64) -> u64 {
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    let state = state.wrapping_add(WY_INCREMENT);
    let t = u128::from(state) * u128::from(state ^ P1);
    // Folding the high half into the low half is the point of the mix.
    ((t >> 64) as u64) ^ (t as u64)
}

/// wyrand's state increment.
const WY_INCREMENT: u64 = 0xa076_1d64_78bd_642f;

/// A uniform index below `n` (`n > 0`) from 64 random bits, without division
/// (Lemire's multiply-shift).
fn below(random: u64, n: usize) -> usize {
    ((u128::from(random) * n as u128) >> 64) as usize
}

/// What one pass over the connections saw.
#[derive(Clone, Copy, Debug, Default)]
struct Census {
    eligible: usize,
    any_full: bool,
    any_paused: bool,
}

impl Census {
    fn take<C: Borrow<ConnectionState>>(connections: &[C], now: Instant) -> Census {
        let mut census = Census::default();
        for connection in connections {
            match connection.borrow().standing(now) {
                Standing::Eligible { .. } => census.eligible += 1,
                Standing::Full => census.any_full = true,
                Standing::Paused => census.any_paused = true,
                Standing::Unusable => {}
            }
        }
        census
    }

    /// The refusal to report when nothing is eligible.
    fn refusal(self, total: usize) -> Selection {
        if total == 0 {
            Selection::NoConnections
        } else if self.any_full {
            Selection::AtCapacity
        } else if self.any_paused {
            Selection::AllPaused
        } else {
            Selection::NoneHealthy
        }
    }
}

/// The `rank`-th eligible connection (0-based), or the last eligible one if states changed
/// since the census and fewer are eligible now.
fn nth_eligible<C: Borrow<ConnectionState>>(
    connections: &[C],
    now: Instant,
    rank: usize,
) -> Option<(usize, u32)> {
    let mut seen = 0;
    let mut last = None;
    for (index, connection) in connections.iter().enumerate() {
        if let Standing::Eligible { in_flight } = connection.borrow().standing(now) {
            if seen == rank {
                return Some((index, in_flight));
            }
            seen += 1;
            last = Some((index, in_flight));
        }
    }
    last
}

/// One pass from a rotating start, keeping the eligible connection with the smallest key;
/// the rotation breaks ties fairly. A key equal to `floor` (the smallest any connection can
/// have) ends the pass early: nothing later could beat it, since only a strictly smaller key
/// replaces the current best. An idle pool therefore costs one probe.
fn min_by_key<C, K, F>(
    connections: &[C],
    now: Instant,
    start: usize,
    floor: &K,
    key: F,
) -> Option<usize>
where
    C: Borrow<ConnectionState>,
    K: Ord,
    F: Fn(&ConnectionState, u32) -> K,
{
    let len = connections.len();
    let mut best: Option<(K, usize)> = None;
    let mut index = start;
    for _ in 0..len {
        let connection = connections[index].borrow();
        if let Standing::Eligible { in_flight } = connection.standing(now) {
            let candidate = key(connection, in_flight);
            if candidate == *floor {
                return Some(index);
            }
            if best
                .as_ref()
                .is_none_or(|(current, _)| candidate < *current)
            {
                best = Some((candidate, index));
            }
        }
        index += 1;
        if index == len {
            index = 0;
        }
    }
    best.map(|(_, index)| index)
}

/// Lifetime error rate in whole percent (0 with no requests yet).
fn error_percent(connection: &ConnectionState) -> u64 {
    let requests = connection.request_count();
    if requests == 0 {
        return 0;
    }
    let errors = connection.error_count().min(requests);
    // Cannot overflow: errors <= requests, and the product is computed in u128.
    (u128::from(errors) * 100 / u128::from(requests)) as u64
}

/// Selects a connection with `strategy` among `connections` at `now`.
///
/// `ticket` is the caller's per-selection number: round robin uses it as its position, the
/// random strategies hash it (with [`wyrand`]), least-connections and health-weighted use it
/// to rotate their tie-breaking. Equal inputs give equal outputs, which is what makes this
/// testable; [`Balancer`] supplies fresh tickets.
///
/// Cost: round robin, random and power-of-two-choices **probe** the connection(s) the ticket
/// names first — one or two loads each, O(1) whatever the number of connections — and pass
/// over the whole slice only when a probed connection is not eligible (then a census and a
/// pick among the eligible ones, which keeps the distribution uniform over them and decides
/// the refusal). Least-connections and health-weighted pass over the slice from a rotating
/// start and stop at the first idle (and, for health-weighted, error-free) connection. Loads
/// only: no writes, no allocation.
pub fn select<C: Borrow<ConnectionState>>(
    strategy: Strategy,
    connections: &[C],
    now: Instant,
    ticket: u64,
) -> Selection {
    let len = connections.len();
    if len == 0 {
        return Selection::NoConnections;
    }
    let chosen = match strategy {
        Strategy::LeastConnections => min_by_key(
            connections,
            now,
            rotation(ticket, len),
            &0,
            |_, in_flight| in_flight,
        ),
        Strategy::HealthWeighted => min_by_key(
            connections,
            now,
            rotation(ticket, len),
            &(0, 0),
            |c, in_flight| (error_percent(c), in_flight),
        ),
        Strategy::RoundRobin => {
            let index = rotation(ticket, len);
            if eligible(connections, index, now).is_some() {
                return Selection::Selected(index);
            }
            // The ticket's connection is out: spread its turn over the eligible ones. Within
            // one residue class of `ticket % len`, `ticket / len` counts up by one per turn,
            // so every eligible connection still gets exactly its share.
            let census = Census::take(connections, now);
            if census.eligible == 0 {
                return census.refusal(len);
            }
            let rank = ((ticket / len as u64) % census.eligible as u64) as usize;
            nth_eligible(connections, now, rank).map(|(index, _)| index)
        }
        Strategy::Random | Strategy::PowerOfTwoChoices => {
            let random = wyrand(ticket.wrapping_mul(WY_INCREMENT));
            let first = below(random, len);
            if let Some(first_load) = eligible(connections, first, now) {
                if strategy == Strategy::Random || len == 1 {
                    return Selection::Selected(first);
                }
                // A second, distinct connection: offset by 1..len from the first.
                let second = (first + 1 + below(wyrand(random), len - 1)) % len;
                if let Some(second_load) = eligible(connections, second, now) {
                    return Selection::Selected(if second_load < first_load {
                        second
                    } else {
                        first
                    });
                }
            }
            let census = Census::take(connections, now);
            if census.eligible == 0 {
                return census.refusal(len);
            }
            // Fresh bits: `wyrand(random)` already chose the second probe, and reusing it
            // would tie the fallback's pick to where that probe missed.
            let random = wyrand(wyrand(random));
            if strategy == Strategy::Random {
                nth_eligible(connections, now, below(random, census.eligible))
                    .map(|(index, _)| index)
            } else {
                two_choices(connections, now, census.eligible, random)
            }
        }
    };
    match chosen {
        Some(index) => Selection::Selected(index),
        // Nothing eligible (or everything changed between passes): say why.
        None => Census::take(connections, now).refusal(len),
    }
}

/// `ticket % len`, in 32-bit arithmetic when `len` allows (a 32-bit division is several times
/// cheaper than a 64-bit one on common x86-64 parts; the rotation only needs to be fair, and
/// the 32-bit ticket wraps every 2^32 selections, a single uneven step).
fn rotation(ticket: u64, len: usize) -> usize {
    match u32::try_from(len) {
        Ok(len32) => (ticket as u32 % len32) as usize,
        Err(_) => (ticket % len as u64) as usize,
    }
}

/// The in-flight count of the connection at `index` if it is eligible.
fn eligible<C: Borrow<ConnectionState>>(
    connections: &[C],
    index: usize,
    now: Instant,
) -> Option<u32> {
    match connections[index].borrow().standing(now) {
        Standing::Eligible { in_flight } => Some(in_flight),
        _ => None,
    }
}

/// Power of two choices among the `eligible` connections (by rank): the fallback when a
/// probed connection was not eligible.
fn two_choices<C: Borrow<ConnectionState>>(
    connections: &[C],
    now: Instant,
    eligible: usize,
    random: u64,
) -> Option<usize> {
    let first_rank = below(random, eligible);
    let first = nth_eligible(connections, now, first_rank)?;
    if eligible == 1 {
        return Some(first.0);
    }
    // A second, distinct rank: offset by 1..eligible from the first.
    let offset = 1 + below(wyrand(random), eligible - 1);
    let second = nth_eligible(connections, now, (first_rank + offset) % eligible)?;
    Some(if second.1 < first.1 {
        second.0
    } else {
        first.0
    })
}

/// Selects the connection with id `preferred` if it is still a candidate — affinity for body
/// chunks of a request (and of its response, §14 B16) and for sticky sessions — else falls
/// back to [`select`].
///
/// A preferred connection that is paused or full is **not** abandoned: the answer is
/// [`Selection::AllPaused`] / [`Selection::AtCapacity`], because the agent keeps the request's
/// state on that connection and another one could not continue it. A preferred connection
/// that is closed, unhealthy or circuit-open is abandoned: the pool never sends to those.
pub fn select_preferring<C: Borrow<ConnectionState>>(
    strategy: Strategy,
    connections: &[C],
    preferred: Option<ConnectionId>,
    now: Instant,
    ticket: u64,
) -> Selection {
    if let Some(index) = preferred.and_then(|id| find(connections, id)) {
        match connections[index].borrow().standing(now) {
            Standing::Eligible { .. } => return Selection::Selected(index),
            Standing::Paused => return Selection::AllPaused,
            Standing::Full => return Selection::AtCapacity,
            Standing::Unusable => {}
        }
    }
    select(strategy, connections, now, ticket)
}

/// The index of the connection with `id` that is not closed, if any.
#[must_use]
pub fn find<C: Borrow<ConnectionState>>(connections: &[C], id: ConnectionId) -> Option<usize> {
    connections.iter().position(|c| {
        let c = c.borrow();
        c.id() == id && !c.is_closed()
    })
}

/// How many select-then-admit rounds [`Balancer::acquire`] makes before reporting the
/// connections as busy. Each lost round means another request took the slot (or a pause,
/// close or probe raced in) between the load and the admission CAS.
pub const ADMISSION_ATTEMPTS: usize = 3;

/// A [`Strategy`] plus the shared ticket counter that drives it. One per agent.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    tickets: AtomicU64,
}

impl Balancer {
    /// A balancer whose tickets start at `seed` (seed differently per agent so agents do not
    /// walk their connections in lockstep).
    #[must_use]
    pub fn new(strategy: Strategy, seed: u64) -> Self {
        Balancer {
            strategy,
            tickets: AtomicU64::new(seed),
        }
    }

    /// The strategy.
    #[must_use]
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Draws the next ticket: one relaxed `fetch_add`. Nothing is ordered by it; concurrent
    /// callers merely get distinct tickets.
    pub fn next_ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// [`select`] with a fresh ticket.
    pub fn select<C: Borrow<ConnectionState>>(&self, connections: &[C], now: Instant) -> Selection {
        select(self.strategy, connections, now, self.next_ticket())
    }

    /// [`select_preferring`] with a fresh ticket.
    pub fn select_preferring<C: Borrow<ConnectionState>>(
        &self,
        connections: &[C],
        preferred: Option<ConnectionId>,
        now: Instant,
    ) -> Selection {
        select_preferring(
            self.strategy,
            connections,
            preferred,
            now,
            self.next_ticket(),
        )
    }

    /// Selects and admits in one go: the whole hot path of starting a request. Retries a
    /// lost admission race at most [`ADMISSION_ATTEMPTS`] times.
    ///
    /// # Errors
    /// The refusal [`Selection`] (never `Selected`); after repeatedly lost races,
    /// [`Selection::AtCapacity`], since the connections are busy right now.
    pub fn acquire<'a, C: Borrow<ConnectionState>>(
        &self,
        connections: &'a [C],
        preferred: Option<ConnectionId>,
        now: Instant,
    ) -> Result<(usize, InFlightGuard<&'a ConnectionState>), Selection> {
        for _ in 0..ADMISSION_ATTEMPTS {
            match self.select_preferring(connections, preferred, now) {
                Selection::Selected(index) => {
                    if let Ok(guard) = connections[index].borrow().try_acquire(now) {
                        return Ok((index, guard));
                    }
                }
                refusal => return Err(refusal),
            }
        }
        Err(Selection::AtCapacity)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use alloc::vec::Vec;
    use core::time::Duration;

    use super::*;
    use crate::pool::breaker::BreakerConfig;
    use crate::pool::connection::{ConnectionConfig, RequestOutcome};

    const NOW: Instant = Instant::from_millis(10_000);

    fn pool(n: u64, max_in_flight: u32) -> Vec<ConnectionState> {
        (0..n)
            .map(|i| {
                ConnectionState::new(
                    ConnectionId(i),
                    Instant::ZERO,
                    ConnectionConfig {
                        max_in_flight,
                        breaker: BreakerConfig {
                            failure_threshold: 1,
                            reset_timeout: Duration::from_secs(60),
                        },
                    },
                )
            })
            .collect()
    }

    fn open_circuit(c: &ConnectionState) {
        let _ = c
            .try_acquire(NOW)
            .unwrap()
            .finish(RequestOutcome::Failure, NOW);
    }

    const ALL: [Strategy; 5] = [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::HealthWeighted,
        Strategy::Random,
        Strategy::PowerOfTwoChoices,
    ];

    #[test]
    fn round_robin_visits_every_candidate_equally() {
        let conns = pool(4, 10);
        conns[1].set_healthy(false);
        let mut hits = [0_u32; 4];
        for ticket in 0..300 {
            hits[select(Strategy::RoundRobin, &conns, NOW, ticket)
                .index()
                .unwrap()] += 1;
        }
        assert_eq!(hits, [100, 0, 100, 100]);
    }

    #[test]
    fn round_robin_shares_stay_equal_when_probes_miss() {
        // Two of four out, in the pattern where "next eligible after the miss" would send
        // every missed turn to the same connection.
        let conns = pool(4, 10);
        conns[1].set_healthy(false);
        conns[3].close();
        let mut hits = [0_u32; 4];
        for ticket in 0..400 {
            hits[select(Strategy::RoundRobin, &conns, NOW, ticket)
                .index()
                .unwrap()] += 1;
        }
        assert_eq!(hits, [200, 0, 200, 0]);
        // Large pools: one probe finds the ticket's connection.
        let big = pool(1_000, 10);
        for ticket in [0, 1, 999, 1_000, 123_456] {
            assert_eq!(
                select(Strategy::RoundRobin, &big, NOW, ticket),
                Selection::Selected((ticket % 1_000) as usize)
            );
        }
    }

    #[test]
    fn random_strategies_stay_uniform_over_eligible_when_probes_miss() {
        let conns = pool(6, 10);
        conns[0].set_healthy(false);
        conns[1].pause();
        conns[2].close();
        for strategy in [Strategy::Random, Strategy::PowerOfTwoChoices] {
            let mut hits = [0_u32; 6];
            for ticket in 0..30_000 {
                hits[select(strategy, &conns, NOW, ticket).index().unwrap()] += 1;
            }
            assert_eq!(hits[..3], [0, 0, 0], "{strategy:?}");
            for h in &hits[3..] {
                assert!((9_000..11_000).contains(h), "{strategy:?}: {hits:?}");
            }
        }
    }

    #[test]
    fn least_connections_picks_the_least_loaded_and_rotates_ties() {
        let conns = pool(3, 10);
        let _a = conns[0].try_acquire(NOW).unwrap();
        let _b = conns[0].try_acquire(NOW).unwrap();
        let _c = conns[2].try_acquire(NOW).unwrap();
        for ticket in 0..6 {
            assert_eq!(
                select(Strategy::LeastConnections, &conns, NOW, ticket),
                Selection::Selected(1)
            );
        }
        let idle = pool(3, 10);
        let picks: Vec<_> = (0..3)
            .map(|t| select(Strategy::LeastConnections, &idle, NOW, t))
            .collect();
        assert_eq!(
            picks,
            [
                Selection::Selected(0),
                Selection::Selected(1),
                Selection::Selected(2)
            ]
        );
    }

    #[test]
    fn health_weighted_prefers_the_lower_error_rate_then_lower_load() {
        let conns = pool(3, 10);
        // Connection 0: 1 error in 2 requests (50 %); threshold 1 would open its breaker, so
        // close it again with a probe to keep it a candidate.
        let _ = conns[0]
            .try_acquire(NOW)
            .unwrap()
            .finish(RequestOutcome::Success, NOW);
        open_circuit(&conns[0]);
        let later = NOW.saturating_add(Duration::from_secs(60));
        let probe = conns[0].try_acquire(later).unwrap();
        let _ = probe.finish(RequestOutcome::Cancelled, later);
        assert_eq!((conns[0].request_count(), conns[0].error_count()), (3, 1));
        let probe = conns[0].try_acquire(later).unwrap();
        let _ = probe.finish(RequestOutcome::Success, later);
        // Connection 1: 0 errors, idle. Connection 2: no requests finished, two in flight.
        let _ = conns[1]
            .try_acquire(later)
            .unwrap()
            .finish(RequestOutcome::Success, later);
        let _x = conns[2].try_acquire(later).unwrap();
        let _y = conns[2].try_acquire(later).unwrap();
        // 0 % beats 25 %; among the 0 % ones, fewer in flight wins.
        for ticket in 0..6 {
            assert_eq!(
                select(Strategy::HealthWeighted, &conns, later, ticket),
                Selection::Selected(1)
            );
        }
        // With equal rates and loads, ties rotate.
        let fresh = pool(2, 10);
        assert_ne!(
            select(Strategy::HealthWeighted, &fresh, NOW, 0),
            select(Strategy::HealthWeighted, &fresh, NOW, 1)
        );
    }

    #[test]
    fn random_strategies_cover_all_candidates_and_only_them() {
        let conns = pool(5, 10);
        conns[3].close();
        for strategy in [Strategy::Random, Strategy::PowerOfTwoChoices] {
            let mut hits = [0_u32; 5];
            for ticket in 0..2_000 {
                hits[select(strategy, &conns, NOW, ticket).index().unwrap()] += 1;
            }
            assert_eq!(hits[3], 0, "{strategy:?} selected a closed connection");
            for (i, h) in hits.iter().enumerate().filter(|(i, _)| *i != 3) {
                assert!(*h > 300, "{strategy:?} starved connection {i}: {hits:?}");
            }
        }
    }

    #[test]
    fn power_of_two_choices_avoids_the_busier_of_two() {
        let conns = pool(2, 10);
        let _busy = conns[0].try_acquire(NOW).unwrap();
        for ticket in 0..50 {
            assert_eq!(
                select(Strategy::PowerOfTwoChoices, &conns, NOW, ticket),
                Selection::Selected(1)
            );
        }
    }

    #[test]
    fn never_selects_closed_unhealthy_paused_or_open_circuit() {
        let conns = pool(5, 10);
        conns[0].close();
        conns[1].set_healthy(false);
        conns[2].pause();
        open_circuit(&conns[3]);
        for strategy in ALL {
            for ticket in 0..20 {
                assert_eq!(
                    select(strategy, &conns, NOW, ticket),
                    Selection::Selected(4),
                    "{strategy:?}"
                );
            }
        }
    }

    #[test]
    fn refusals_say_whether_waiting_helps() {
        for strategy in ALL {
            let empty: [ConnectionState; 0] = [];
            assert_eq!(select(strategy, &empty, NOW, 0), Selection::NoConnections);
            let conns = pool(2, 1);
            conns[0].set_healthy(false);
            open_circuit(&conns[1]);
            assert_eq!(select(strategy, &conns, NOW, 0), Selection::NoneHealthy);
            let conns = pool(2, 1);
            conns[0].pause();
            conns[1].pause();
            assert_eq!(select(strategy, &conns, NOW, 0), Selection::AllPaused);
            // One paused, one full: a completion helps sooner than a resume.
            conns[1].resume();
            let _held = conns[1].try_acquire(NOW).unwrap();
            assert_eq!(select(strategy, &conns, NOW, 0), Selection::AtCapacity);
        }
    }

    #[test]
    fn an_expired_open_circuit_is_selectable_for_its_probe() {
        let conns = pool(1, 10);
        open_circuit(&conns[0]);
        assert_eq!(
            select(Strategy::RoundRobin, &conns, NOW, 0),
            Selection::NoneHealthy
        );
        let later = NOW.saturating_add(Duration::from_secs(60));
        assert_eq!(
            select(Strategy::RoundRobin, &conns, later, 0),
            Selection::Selected(0)
        );
        let balancer = Balancer::new(Strategy::RoundRobin, 0);
        let (_, probe) = balancer.acquire(&conns, None, later).unwrap();
        assert!(probe.is_probe());
        // While the probe is out, nothing else gets through.
        assert_eq!(
            balancer.acquire(&conns, None, later).unwrap_err(),
            Selection::NoneHealthy
        );
    }

    #[test]
    fn preferred_connection_wins_while_usable_and_blocks_when_paused_or_full() {
        let conns = pool(3, 1);
        let preferred = Some(ConnectionId(2));
        for ticket in 0..5 {
            assert_eq!(
                select_preferring(Strategy::RoundRobin, &conns, preferred, NOW, ticket),
                Selection::Selected(2)
            );
        }
        conns[2].pause();
        assert_eq!(
            select_preferring(Strategy::RoundRobin, &conns, preferred, NOW, 0),
            Selection::AllPaused
        );
        conns[2].resume();
        let _held = conns[2].try_acquire(NOW).unwrap();
        assert_eq!(
            select_preferring(Strategy::RoundRobin, &conns, preferred, NOW, 0),
            Selection::AtCapacity
        );
        // Unhealthy, closed or unknown: fall back to normal selection.
        conns[2].set_healthy(false);
        assert!(matches!(
            select_preferring(Strategy::RoundRobin, &conns, preferred, NOW, 0),
            Selection::Selected(0 | 1)
        ));
        conns[2].set_healthy(true);
        conns[2].close();
        assert_eq!(find(&conns, ConnectionId(2)), None);
        assert!(matches!(
            select_preferring(Strategy::RoundRobin, &conns, preferred, NOW, 0),
            Selection::Selected(0 | 1)
        ));
        assert!(matches!(
            select_preferring(Strategy::RoundRobin, &conns, Some(ConnectionId(99)), NOW, 0),
            Selection::Selected(0 | 1)
        ));
    }

    #[test]
    fn balancer_acquire_fills_every_slot_then_reports_capacity() {
        let conns = pool(3, 2);
        for strategy in ALL {
            let balancer = Balancer::new(strategy, 42);
            let guards: Vec<_> = (0..6)
                .map(|_| balancer.acquire(&conns, None, NOW).unwrap().1)
                .collect();
            assert!(conns.iter().all(|c| c.in_flight() == 2), "{strategy:?}");
            assert_eq!(
                balancer.acquire(&conns, None, NOW).unwrap_err(),
                Selection::AtCapacity
            );
            drop(guards);
            assert!(conns.iter().all(|c| c.in_flight() == 0));
        }
    }

    #[test]
    fn wyrand_mixes_consecutive_states() {
        let a = wyrand(0);
        let b = wyrand(WY_INCREMENT);
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert!((a ^ b).count_ones() > 10);
        assert_eq!(below(u64::MAX, 10), 9);
        assert_eq!(below(0, 10), 0);
    }
}
