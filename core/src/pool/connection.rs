//! The shared, atomic state of one pooled connection and the RAII guard of one request on it.

use core::fmt;
use core::ops::Deref;
use core::time::Duration;

use super::ConnectionId;
use super::breaker::{
    BreakerConfig, CircuitBreaker, CircuitPermit, CircuitState, CircuitTransition,
};
use crate::sync::{Arc, AtomicU64, Ordering};
use crate::time::Instant;

/// The largest in-flight limit a connection can be given (the limit shares a 64-bit word
/// with the in-flight count and the flags, 24 bits each).
pub const MAX_IN_FLIGHT_LIMIT: u32 = (1 << 24) - 1;

// Layout of `ConnectionState::slot`, the word every admission decision reads and writes:
//   bits  0..24  requests in flight
//   bits 24..48  in-flight limit (the agent's advertised capacity)
//   bit  48      healthy (maintenance's cached verdict)
//   bit  49      paused (agent flow control)
//   bit  50      closed (terminal)
// Keeping them in one word makes "not closed, not paused, below the limit → count me in" a
// single compare-and-swap: a close or pause that wins the race is seen by every admission
// ordered after it, with no window in between.
const IN_FLIGHT_MASK: u64 = (1 << 24) - 1;
const LIMIT_SHIFT: u32 = 24;
const LIMIT_MASK: u64 = ((1 << 24) - 1) << LIMIT_SHIFT;
const HEALTHY: u64 = 1 << 48;
const PAUSED: u64 = 1 << 49;
const CLOSED: u64 = 1 << 50;

const fn in_flight_of(word: u64) -> u32 {
    (word & IN_FLIGHT_MASK) as u32
}

const fn limit_of(word: u64) -> u32 {
    ((word & LIMIT_MASK) >> LIMIT_SHIFT) as u32
}

/// Tuning of one pooled connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Requests allowed in flight at once until the agent advertises otherwise (reference
    /// default 100; clamped to [`MAX_IN_FLIGHT_LIMIT`]).
    pub max_in_flight: u32,
    /// The connection's circuit breaker.
    pub breaker: BreakerConfig,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_in_flight: 100,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Why [`ConnectionState::try_acquire`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcquireError {
    /// The connection was closed; it will never admit again.
    Closed,
    /// The agent paused this connection (flow control).
    Paused,
    /// The in-flight limit is reached.
    AtCapacity,
    /// The circuit breaker is open, or half-open with its probe taken.
    CircuitOpen,
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcquireError::Closed => "connection closed",
            AcquireError::Paused => "connection paused by the agent",
            AcquireError::AtCapacity => "connection at its in-flight limit",
            AcquireError::CircuitOpen => "connection's circuit breaker is open",
        })
    }
}

impl core::error::Error for AcquireError {}

/// How a request ended, as told to [`InFlightGuard::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// The agent answered.
    Success,
    /// The request failed (connection error, agent error, undecodable reply).
    Failure,
    /// The agent did not answer in time; counts as a failure.
    Timeout,
    /// The caller gave up for reasons that say nothing about the agent (client went away,
    /// shutdown). Same as dropping the guard.
    Cancelled,
}

/// A consistent-enough view of a [`ConnectionState`] for maintenance, metrics and tests.
///
/// Flags, in-flight count and limit come from one atomic load and are mutually consistent;
/// the counters are read separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    /// The connection's id.
    pub id: ConnectionId,
    /// Requests in flight.
    pub in_flight: u32,
    /// The in-flight limit.
    pub max_in_flight: u32,
    /// Maintenance's cached health verdict.
    pub healthy: bool,
    /// Paused by agent flow control.
    pub paused: bool,
    /// Closed for good.
    pub closed: bool,
    /// Requests admitted over the connection's life.
    pub requests: u64,
    /// Requests that failed or timed out over the connection's life.
    pub errors: u64,
    /// Failures since the last success.
    pub consecutive_errors: u32,
    /// The circuit breaker's phase.
    pub circuit: CircuitState,
    /// When the connection last admitted a request (its creation time if never).
    pub last_used: Instant,
}

/// Where a connection stands for selection, from one load of its admission word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// Closed, unhealthy or circuit-open: never a candidate.
    Unusable,
    /// Would be a candidate but the agent paused it.
    Paused,
    /// Would be a candidate but its in-flight limit is reached.
    Full,
    /// A candidate, with this many requests in flight.
    Eligible {
        /// Requests in flight at the time of the load.
        in_flight: u32,
    },
}

/// The shared state of one pooled connection: what selection reads and what every request
/// on it updates. Share it as `Arc<ConnectionState>` between the connection's driver task,
/// the pool's selection and maintenance.
///
/// Every method is a handful of atomic operations: no lock, no allocation, no waiting, so
/// selection never awaits (reference §14 B14). The struct is aligned to a cache line so two
/// connections' counters never share one (false sharing would make every request on one
/// connection slow down its neighbours).
#[repr(align(64))]
pub struct ConnectionState {
    /// In-flight count, in-flight limit and flags; see the layout above.
    slot: AtomicU64,
    /// Milliseconds from `created_at` to the latest admission.
    last_used_ms: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    breaker: CircuitBreaker,
    id: ConnectionId,
    created_at: Instant,
}

impl ConnectionState {
    /// A healthy, unpaused, open connection created at `now`.
    #[must_use]
    pub fn new(id: ConnectionId, now: Instant, config: ConnectionConfig) -> Self {
        let limit = u64::from(config.max_in_flight.min(MAX_IN_FLIGHT_LIMIT));
        ConnectionState {
            slot: AtomicU64::new(HEALTHY | (limit << LIMIT_SHIFT)),
            last_used_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            breaker: CircuitBreaker::new(config.breaker),
            id,
            created_at: now,
        }
    }

    /// The connection's id (stable for its whole life, unlike its index in a pool's list).
    #[must_use]
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// When the connection was created.
    #[must_use]
    pub fn created_at(&self) -> Instant {
        self.created_at
    }

    fn load(&self) -> u64 {
        self.slot.load(Ordering::Acquire)
    }

    /// Maintenance's cached health verdict (initially true). Selection skips unhealthy
    /// connections.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.load() & HEALTHY != 0
    }

    /// Whether agent flow control paused the connection.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.load() & PAUSED != 0
    }

    /// Whether [`close`](Self::close) was called.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.load() & CLOSED != 0
    }

    /// Requests currently in flight.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        in_flight_of(self.load())
    }

    /// The current in-flight limit.
    #[must_use]
    pub fn max_in_flight(&self) -> u32 {
        limit_of(self.load())
    }

    /// Closed and no request in flight: safe to drop the transport.
    #[must_use]
    pub fn is_drained(&self) -> bool {
        let word = self.load();
        word & CLOSED != 0 && in_flight_of(word) == 0
    }

    fn set_flag(&self, flag: u64, on: bool) -> bool {
        let previous = if on {
            self.slot.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.slot.fetch_and(!flag, Ordering::AcqRel)
        };
        previous & flag != 0
    }

    /// Sets the cached health verdict (maintenance does this; selection only reads it).
    /// Returns the previous verdict.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.set_flag(HEALTHY, healthy)
    }

    /// Pauses the connection on the agent's request. Returns `true` if it was not paused
    /// already (count a pause event only then).
    pub fn pause(&self) -> bool {
        !self.set_flag(PAUSED, true)
    }

    /// Lifts an agent pause. Returns `true` if it was paused.
    pub fn resume(&self) -> bool {
        self.set_flag(PAUSED, false)
    }

    /// Applies the agent's advertised capacity (clamped to [`MAX_IN_FLIGHT_LIMIT`]); returns
    /// the previous limit. Lowering it below the in-flight count admits nothing new until
    /// enough requests finish; nothing in flight is disturbed.
    pub fn set_max_in_flight(&self, limit: u32) -> u32 {
        let limit = u64::from(limit.min(MAX_IN_FLIGHT_LIMIT)) << LIMIT_SHIFT;
        let previous = self
            .slot
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some((word & !LIMIT_MASK) | limit)
            })
            .unwrap_or_else(|word| word);
        limit_of(previous)
    }

    /// Closes the connection for good: from the moment this returns, no admission succeeds.
    /// Returns how many requests were still in flight; they finish normally, and
    /// [`is_drained`](Self::is_drained) turns true when the last one ends.
    pub fn close(&self) -> u32 {
        in_flight_of(self.slot.fetch_or(CLOSED, Ordering::AcqRel))
    }

    fn offset_ms(&self, now: Instant) -> u64 {
        now.as_nanos().saturating_sub(self.created_at.as_nanos()) / 1_000_000
    }

    /// Records that the connection was used at `now`.
    ///
    /// A load, and a store only when the millisecond changed — no read-modify-write. Two
    /// racing touches may leave the earlier of two times in the same few milliseconds, which
    /// is well within what idle detection needs.
    pub fn touch(&self, now: Instant) {
        let offset = self.offset_ms(now);
        if offset > self.last_used_ms.load(Ordering::Relaxed) {
            self.last_used_ms.store(offset, Ordering::Relaxed);
        }
    }

    /// When the connection last admitted a request (millisecond resolution), or its creation
    /// time if it never did.
    #[must_use]
    pub fn last_used(&self) -> Instant {
        let offset = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.created_at.saturating_add(offset)
    }

    /// How long the connection has been idle at `now`.
    #[must_use]
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_used())
    }

    /// Requests admitted over the connection's life.
    #[must_use]
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that failed or timed out over the connection's life.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    #[must_use]
    pub fn consecutive_errors(&self) -> u32 {
        self.breaker.consecutive_failures()
    }

    /// The connection's circuit breaker.
    #[must_use]
    pub fn circuit(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// A snapshot for maintenance and metrics.
    #[must_use]
    pub fn snapshot(&self) -> ConnectionSnapshot {
        let word = self.load();
        ConnectionSnapshot {
            id: self.id,
            in_flight: in_flight_of(word),
            max_in_flight: limit_of(word),
            healthy: word & HEALTHY != 0,
            paused: word & PAUSED != 0,
            closed: word & CLOSED != 0,
            requests: self.request_count(),
            errors: self.error_count(),
            consecutive_errors: self.consecutive_errors(),
            circuit: self.breaker.state(),
            last_used: self.last_used(),
        }
    }

    /// Where this connection stands for selection at `now`: one load of the admission word
    /// plus, for a healthy open connection, one load of the breaker.
    pub(super) fn standing(&self, now: Instant) -> Standing {
        let word = self.load();
        if word & CLOSED != 0 || word & HEALTHY == 0 || !self.breaker.would_admit(now) {
            Standing::Unusable
        } else if word & PAUSED != 0 {
            Standing::Paused
        } else if in_flight_of(word) >= limit_of(word) {
            Standing::Full
        } else {
            Standing::Eligible {
                in_flight: in_flight_of(word),
            }
        }
    }

    /// Counts one request in: the admission decision. Health is *not* checked here — that
    /// is selection's job — so a request routed by affinity still reaches its connection.
    fn admit(&self, now: Instant) -> Result<CircuitPermit, AcquireError> {
        let permit = self
            .breaker
            .try_admit(now)
            .map_err(|_| AcquireError::CircuitOpen)?;
        let mut word = self.slot.load(Ordering::Acquire);
        loop {
            let refusal = if word & CLOSED != 0 {
                Some(AcquireError::Closed)
            } else if word & PAUSED != 0 {
                Some(AcquireError::Paused)
            } else if in_flight_of(word) >= limit_of(word) {
                Some(AcquireError::AtCapacity)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                // Hand a claimed probe back, or the breaker would wait for a verdict forever.
                self.breaker.abandon(permit);
                return Err(refusal);
            }
            // The in-flight count is below the limit, so +1 cannot carry into the limit bits.
            match self.slot.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        // Statistics: same cache line as the word just written, ordered by nothing.
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.touch(now);
        Ok(permit)
    }

    /// Admits one request at `now`, returning the guard that ends it. The guard borrows the
    /// connection; see [`try_acquire_owned`](Self::try_acquire_owned) for one that can move
    /// into a spawned task.
    ///
    /// # Errors
    /// [`AcquireError`] when closed, paused, at the in-flight limit or circuit-open.
    pub fn try_acquire(&self, now: Instant) -> Result<InFlightGuard<&Self>, AcquireError> {
        let permit = self.admit(now)?;
        Ok(InFlightGuard::new(self, permit))
    }

    /// Like [`try_acquire`](Self::try_acquire) but the guard holds an `Arc` (cloned only on
    /// success, which costs one more atomic increment and decrement per request).
    ///
    /// # Errors
    /// As [`try_acquire`](Self::try_acquire).
    pub fn try_acquire_owned(
        this: &Arc<Self>,
        now: Instant,
    ) -> Result<InFlightGuard<Arc<Self>>, AcquireError> {
        let permit = this.admit(now)?;
        Ok(InFlightGuard::new(Arc::clone(this), permit))
    }

    /// The release half of admission: one `Release` decrement, paired with the `Acquire`
    /// loads of drainers, so everything the request did is visible to whoever sees the count
    /// reach zero.
    fn release(&self) {
        let previous = self.slot.fetch_sub(1, Ordering::Release);
        debug_assert!(in_flight_of(previous) > 0, "in-flight count underflow");
    }
}

impl fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionState")
            .field("snapshot", &self.snapshot())
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One request counted in on a connection. Dropping it counts the request out on **every**
/// path — completion, error, timeout, cancellation, a dropped future, panic unwinding — so
/// in-flight counts cannot leak (reference §14 B12).
///
/// Tell it how the request ended with [`finish`](Self::finish); a guard dropped without a
/// verdict is treated as [`RequestOutcome::Cancelled`], which also hands a half-open probe
/// back to the breaker.
#[must_use = "dropping the guard ends the request at once, as cancelled"]
#[derive(Debug)]
pub struct InFlightGuard<C: Deref<Target = ConnectionState>> {
    connection: C,
    permit: CircuitPermit,
    settled: bool,
}

impl<C: Deref<Target = ConnectionState>> InFlightGuard<C> {
    fn new(connection: C, permit: CircuitPermit) -> Self {
        InFlightGuard {
            connection,
            permit,
            settled: false,
        }
    }

    /// The connection the request runs on.
    #[must_use]
    pub fn connection(&self) -> &ConnectionState {
        &self.connection
    }

    /// Whether this request is its connection's half-open probe.
    #[must_use]
    pub fn is_probe(&self) -> bool {
        self.permit.is_probe()
    }

    /// Ends the request with its outcome at `now` and counts it out. Returns the circuit
    /// transition it caused, for the caller's metrics.
    pub fn finish(mut self, outcome: RequestOutcome, now: Instant) -> Option<CircuitTransition> {
        self.settled = true;
        let connection: &ConnectionState = &self.connection;
        match outcome {
            RequestOutcome::Success => connection.breaker.record_success(self.permit),
            RequestOutcome::Failure | RequestOutcome::Timeout => {
                connection.errors.fetch_add(1, Ordering::Relaxed);
                connection.breaker.record_failure(self.permit, now)
            }
            RequestOutcome::Cancelled => {
                connection.breaker.abandon(self.permit);
                None
            }
        }
        // `self` drops here: the slot is released after the verdict is recorded, so a
        // drainer that sees zero in flight also sees every verdict.
    }
}

impl<C: Deref<Target = ConnectionState>> Drop for InFlightGuard<C> {
    fn drop(&mut self) {
        if !self.settled {
            self.connection.breaker.abandon(self.permit);
        }
        self.connection.release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::pool::breaker::CircuitState;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn connection(max_in_flight: u32) -> ConnectionState {
        ConnectionState::new(
            ConnectionId(7),
            at(1_000),
            ConnectionConfig {
                max_in_flight,
                breaker: BreakerConfig {
                    failure_threshold: 2,
                    reset_timeout: Duration::from_millis(100),
                },
            },
        )
    }

    #[test]
    fn new_connection_is_healthy_open_and_idle() {
        let c = connection(3);
        let s = c.snapshot();
        assert_eq!(s.id, ConnectionId(7));
        assert!(s.healthy && !s.paused && !s.closed);
        assert_eq!((s.in_flight, s.max_in_flight, s.requests), (0, 3, 0));
        assert_eq!(s.circuit, CircuitState::Closed);
        assert_eq!(c.last_used(), at(1_000));
    }

    #[test]
    fn admission_respects_the_limit_and_guards_release_on_drop() {
        let c = connection(2);
        let a = c.try_acquire(at(1_001)).unwrap();
        let b = c.try_acquire(at(1_002)).unwrap();
        assert_eq!(c.in_flight(), 2);
        assert_eq!(
            c.try_acquire(at(1_003)).unwrap_err(),
            AcquireError::AtCapacity
        );
        drop(a);
        assert_eq!(c.in_flight(), 1);
        let _ = b.finish(RequestOutcome::Success, at(1_004));
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.request_count(), 2);
        assert_eq!(c.error_count(), 0);
    }

    #[test]
    fn guard_releases_when_a_panic_unwinds_through_it() {
        let c = connection(1);
        let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
            let _guard = c.try_acquire(at(1_001)).unwrap();
            panic!("request handler panicked");
        }));
        assert!(result.is_err());
        assert_eq!(c.in_flight(), 0);
        assert!(c.try_acquire(at(1_002)).is_ok());
    }

    #[test]
    fn every_outcome_releases_the_slot() {
        let c = connection(1);
        for outcome in [
            RequestOutcome::Success,
            RequestOutcome::Failure,
            RequestOutcome::Success,
            RequestOutcome::Timeout,
            RequestOutcome::Cancelled,
        ] {
            let guard = c.try_acquire(at(1_001)).unwrap();
            let _ = guard.finish(outcome, at(1_002));
            assert_eq!(c.in_flight(), 0, "{outcome:?} leaked its slot");
        }
        assert_eq!(c.error_count(), 2);
    }

    #[test]
    fn pause_close_and_limit_changes_refuse_new_requests_only() {
        let c = connection(2);
        let held = c.try_acquire(at(1_001)).unwrap();
        assert!(c.pause());
        assert!(!c.pause(), "a second pause is not a new event");
        assert_eq!(c.try_acquire(at(1_002)).unwrap_err(), AcquireError::Paused);
        assert!(c.resume());
        assert!(!c.resume());
        assert_eq!(c.set_max_in_flight(1), 2);
        assert_eq!(
            c.try_acquire(at(1_003)).unwrap_err(),
            AcquireError::AtCapacity
        );
        assert_eq!(c.set_max_in_flight(u32::MAX), 1);
        assert_eq!(c.max_in_flight(), MAX_IN_FLIGHT_LIMIT);
        assert_eq!(c.close(), 1);
        assert!(!c.is_drained());
        assert_eq!(c.try_acquire(at(1_004)).unwrap_err(), AcquireError::Closed);
        drop(held);
        assert!(c.is_drained());
        // Flag changes never disturbed the count or the limit.
        assert_eq!((c.in_flight(), c.max_in_flight()), (0, MAX_IN_FLIGHT_LIMIT));
    }

    #[test]
    fn health_flag_round_trips_and_does_not_gate_admission() {
        let c = connection(1);
        assert!(c.set_healthy(false));
        assert!(!c.is_healthy());
        // Affinity-routed requests may still use an unhealthy connection; selection won't.
        assert_eq!(c.standing(at(1_001)), Standing::Unusable);
        drop(c.try_acquire(at(1_001)).unwrap());
        assert!(!c.set_healthy(true));
        assert_eq!(c.standing(at(1_001)), Standing::Eligible { in_flight: 0 });
    }

    #[test]
    fn failures_open_the_circuit_and_a_probe_heals_it() {
        let c = connection(10);
        for t in [1_001, 1_002] {
            let guard = c.try_acquire(at(t)).unwrap();
            let _ = guard.finish(RequestOutcome::Timeout, at(t));
        }
        assert_eq!(c.circuit().state(), CircuitState::Open);
        assert_eq!(c.consecutive_errors(), 2);
        assert_eq!(c.standing(at(1_050)), Standing::Unusable);
        assert_eq!(
            c.try_acquire(at(1_050)).unwrap_err(),
            AcquireError::CircuitOpen
        );
        let probe = c.try_acquire(at(1_102)).unwrap();
        assert!(probe.is_probe());
        assert_eq!(
            c.try_acquire(at(1_103)).unwrap_err(),
            AcquireError::CircuitOpen
        );
        assert_eq!(
            probe.finish(RequestOutcome::Success, at(1_104)),
            Some(CircuitTransition::Closed)
        );
        assert_eq!(c.consecutive_errors(), 0);
        assert!(!c.try_acquire(at(1_105)).unwrap().is_probe());
    }

    #[test]
    fn refused_admission_hands_the_probe_back() {
        let c = connection(10);
        for t in [1_001, 1_002] {
            let _ = c
                .try_acquire(at(t))
                .unwrap()
                .finish(RequestOutcome::Failure, at(t));
        }
        assert!(c.pause());
        // The breaker would grant the probe, but the pause refuses the request...
        assert_eq!(c.try_acquire(at(1_200)).unwrap_err(), AcquireError::Paused);
        assert_eq!(c.circuit().state(), CircuitState::Open);
        assert!(c.resume());
        // ...so the probe is still available afterwards.
        assert!(c.try_acquire(at(1_200)).unwrap().is_probe());
    }

    #[test]
    fn dropped_probe_is_not_lost() {
        let c = connection(10);
        for t in [1_001, 1_002] {
            let _ = c
                .try_acquire(at(t))
                .unwrap()
                .finish(RequestOutcome::Failure, at(t));
        }
        drop(c.try_acquire(at(1_200)).unwrap());
        assert_eq!(c.circuit().state(), CircuitState::Open);
        assert!(c.try_acquire(at(1_200)).unwrap().is_probe());
    }

    #[test]
    fn touch_tracks_the_latest_use_in_milliseconds() {
        let c = connection(10);
        c.touch(at(1_500));
        assert_eq!(c.last_used(), at(1_500));
        c.touch(at(1_200));
        assert_eq!(
            c.last_used(),
            at(1_500),
            "an older time does not move it back"
        );
        assert_eq!(c.idle_for(at(2_000)), Duration::from_millis(500));
        assert_eq!(c.idle_for(at(0)), Duration::ZERO);
        drop(c.try_acquire(at(3_000)).unwrap());
        assert_eq!(c.last_used(), at(3_000));
    }

    #[test]
    fn owned_guard_keeps_the_connection_alive() {
        let c = Arc::new(connection(1));
        let guard = ConnectionState::try_acquire_owned(&c, at(1_001)).unwrap();
        assert_eq!(Arc::strong_count(&c), 2);
        assert_eq!(guard.connection().in_flight(), 1);
        drop(guard);
        assert_eq!(Arc::strong_count(&c), 1);
        assert_eq!(c.in_flight(), 0);
    }
}
