//! A per-connection circuit breaker as one atomic word.
//!
//! The reference pool has no breaker (§11.4, §14 B13): three consecutive errors mark a
//! connection unhealthy *forever*, because an unselectable connection can never record the
//! success that would heal it. Here a connection that fails `failure_threshold` times in a row
//! is **opened** (not selected); once `reset_timeout` has passed, exactly **one** probe request
//! is let through (**half-open**); the probe's success **closes** the breaker, its failure
//! re-opens it for another `reset_timeout`.
//!
//! The whole state — phase, consecutive failures and the time the breaker opened — lives in
//! one `AtomicU64`, so every transition is a single compare-and-swap: two concurrent failures
//! cannot both open the breaker, and two concurrent admissions cannot both claim the probe.
//!
//! Outcomes are attributed by the [`CircuitPermit`] that [`CircuitBreaker::try_admit`]
//! handed out: only the probe's verdict may leave half-open, and verdicts of requests admitted
//! before the breaker opened are ignored once it is open (they describe the past). A probe
//! that ends without a verdict (cancelled, dropped, panicked) is handed back with
//! [`CircuitBreaker::abandon`], so the next request can probe instead: the probe is never
//! lost and the breaker never sticks in half-open.

use core::fmt;
use core::time::Duration;

use crate::sync::{AtomicU64, Ordering};
use crate::time::Instant;

/// Tuning of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1; the reference marks a
    /// connection unhealthy after 3).
    pub failure_threshold: u16,
    /// How long an open breaker refuses requests before it lets one probe through.
    pub reset_timeout: Duration,
}

impl Default for BreakerConfig {
    /// Three failures, like the reference's health rule; five seconds, like its reconnect
    /// interval.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            reset_timeout: Duration::from_secs(5),
        }
    }
}

/// The phase of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Requests flow; failures are being counted.
    Closed,
    /// Requests are refused until the reset timeout has passed.
    Open,
    /// One probe request is in flight; everything else is refused until it ends.
    HalfOpen,
}

/// A change of [`CircuitState`] caused by one call, reported so the caller can count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitTransition {
    /// Closed → open: the failure threshold was reached.
    Opened,
    /// Open → half-open: a probe was admitted.
    HalfOpened,
    /// Half-open → closed: the probe succeeded.
    Closed,
    /// Half-open → open: the probe failed.
    Reopened,
}

/// What [`CircuitBreaker::try_admit`] granted: hand it back with the request's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CircuitPermit {
    /// An ordinary request through a closed breaker.
    Normal,
    /// The single half-open probe: its verdict decides the breaker's next phase.
    Probe,
}

impl CircuitPermit {
    /// Whether this is the half-open probe.
    #[must_use]
    pub fn is_probe(self) -> bool {
        self == CircuitPermit::Probe
    }
}

/// [`CircuitBreaker::try_admit`] refused: the breaker is open (and its reset timeout has not
/// passed) or half-open with the probe already taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CircuitOpen;

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker is open")
    }
}

impl core::error::Error for CircuitOpen {}

// Layout of the state word:
//   bits 0..2   phase (0 closed, 1 open, 2 half-open)
//   bits 2..18  consecutive failures, saturating at 0xFFFF
//   bits 18..64 milliseconds since the caller's epoch at which the breaker last opened
//               (46 bits: over two thousand years; saturates)
const PHASE_MASK: u64 = 0b11;
const PHASE_CLOSED: u64 = 0;
const PHASE_OPEN: u64 = 1;
const PHASE_HALF_OPEN: u64 = 2;
const FAILURES_SHIFT: u32 = 2;
const FAILURES_MAX: u64 = 0xFFFF;
const OPENED_AT_SHIFT: u32 = 18;
const OPENED_AT_MAX: u64 = (1 << (64 - OPENED_AT_SHIFT)) - 1;

const fn pack(phase: u64, failures: u64, opened_at_ms: u64) -> u64 {
    phase | (failures << FAILURES_SHIFT) | (opened_at_ms << OPENED_AT_SHIFT)
}

const fn phase(word: u64) -> u64 {
    word & PHASE_MASK
}

const fn failures(word: u64) -> u64 {
    (word >> FAILURES_SHIFT) & FAILURES_MAX
}

const fn opened_at_ms(word: u64) -> u64 {
    word >> OPENED_AT_SHIFT
}

fn millis(now: Instant) -> u64 {
    now.as_millis().min(OPENED_AT_MAX)
}

/// A lock-free closed → open → half-open → closed circuit breaker (see the module docs).
#[derive(Debug)]
pub struct CircuitBreaker {
    word: AtomicU64,
    failure_threshold: u64,
    reset_timeout_ms: u64,
}

impl CircuitBreaker {
    /// A closed breaker with no failures.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            word: AtomicU64::new(pack(PHASE_CLOSED, 0, 0)),
            failure_threshold: u64::from(config.failure_threshold.max(1)),
            reset_timeout_ms: u64::try_from(config.reset_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The current phase. An open breaker whose reset timeout has passed still reports
    /// [`CircuitState::Open`] until a request claims the probe.
    #[must_use]
    pub fn state(&self) -> CircuitState {
        match phase(self.word.load(Ordering::Acquire)) {
            PHASE_CLOSED => CircuitState::Closed,
            PHASE_OPEN => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// Failures since the last success (saturating at 65 535).
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        // The mask keeps the value within 16 bits.
        failures(self.word.load(Ordering::Relaxed)) as u32
    }

    /// Whether [`try_admit`](Self::try_admit) would currently succeed: closed, or open with
    /// the reset timeout passed. One load; this is what selection uses.
    #[must_use]
    pub fn would_admit(&self, now: Instant) -> bool {
        self.admits(self.word.load(Ordering::Acquire), now)
    }

    fn admits(&self, word: u64, now: Instant) -> bool {
        match phase(word) {
            PHASE_CLOSED => true,
            PHASE_OPEN => self.reset_elapsed(word, now),
            _ => false,
        }
    }

    fn reset_elapsed(&self, word: u64, now: Instant) -> bool {
        millis(now).saturating_sub(opened_at_ms(word)) >= self.reset_timeout_ms
    }

    /// Admits one request: [`CircuitPermit::Normal`] through a closed breaker (a single load,
    /// no write), or claims the probe of an open breaker whose reset timeout has passed
    /// (one CAS; exactly one concurrent caller wins it).
    ///
    /// # Errors
    /// [`CircuitOpen`] while open before the reset timeout, or half-open with the probe taken.
    pub fn try_admit(&self, now: Instant) -> Result<CircuitPermit, CircuitOpen> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            match phase(word) {
                PHASE_CLOSED => return Ok(CircuitPermit::Normal),
                PHASE_OPEN if self.reset_elapsed(word, now) => {
                    let probing = (word & !PHASE_MASK) | PHASE_HALF_OPEN;
                    match self.word.compare_exchange_weak(
                        word,
                        probing,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(CircuitPermit::Probe),
                        Err(actual) => word = actual,
                    }
                }
                _ => return Err(CircuitOpen),
            }
        }
    }

    /// Records a successful request. A probe's success closes the breaker; a normal
    /// success resets the failure count (no write at all when it is already zero, which keeps
    /// the success path of a healthy connection free of read-modify-writes).
    pub fn record_success(&self, permit: CircuitPermit) -> Option<CircuitTransition> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let next = match (permit, phase(word)) {
                (CircuitPermit::Probe, PHASE_HALF_OPEN) => pack(PHASE_CLOSED, 0, 0),
                (CircuitPermit::Normal, PHASE_CLOSED) if failures(word) != 0 => {
                    pack(PHASE_CLOSED, 0, 0)
                }
                // Already clean, or a late verdict the current phase no longer cares about.
                _ => return None,
            };
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return permit.is_probe().then_some(CircuitTransition::Closed);
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Records a failed request (an error or a timeout) at `now`. The failure that reaches the
    /// threshold opens the breaker — exactly once, however many fail concurrently; a probe's
    /// failure re-opens it for another reset timeout.
    pub fn record_failure(&self, permit: CircuitPermit, now: Instant) -> Option<CircuitTransition> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let count = (failures(word) + 1).min(FAILURES_MAX);
            let (next, transition) = match (permit, phase(word)) {
                (CircuitPermit::Probe, PHASE_HALF_OPEN) => (
                    pack(PHASE_OPEN, count, millis(now)),
                    Some(CircuitTransition::Reopened),
                ),
                (CircuitPermit::Normal, PHASE_CLOSED) if count >= self.failure_threshold => (
                    pack(PHASE_OPEN, count, millis(now)),
                    Some(CircuitTransition::Opened),
                ),
                (CircuitPermit::Normal, PHASE_CLOSED) => (pack(PHASE_CLOSED, count, 0), None),
                // Open already (this request was admitted before it opened), or half-open
                // with someone else's probe deciding: not ours to judge.
                _ => return None,
            };
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return transition,
                Err(actual) => word = actual,
            }
        }
    }

    /// Hands back a permit whose request ended without a verdict (cancelled, dropped,
    /// unwound). For the probe this returns the breaker to open with its original opening
    /// time, so the reset timeout has still passed and the next request probes instead.
    pub fn abandon(&self, permit: CircuitPermit) {
        if permit != CircuitPermit::Probe {
            return;
        }
        let mut word = self.word.load(Ordering::Acquire);
        while phase(word) == PHASE_HALF_OPEN {
            let reopened = (word & !PHASE_MASK) | PHASE_OPEN;
            match self.word.compare_exchange_weak(
                word,
                reopened,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn breaker(threshold: u16, reset_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: threshold,
            reset_timeout: Duration::from_millis(reset_ms),
        })
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn opens_exactly_at_the_threshold() {
        let b = breaker(3, 1000);
        assert_eq!(b.record_failure(CircuitPermit::Normal, at(1)), None);
        assert_eq!(b.record_failure(CircuitPermit::Normal, at(2)), None);
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.consecutive_failures(), 2);
        assert_eq!(
            b.record_failure(CircuitPermit::Normal, at(3)),
            Some(CircuitTransition::Opened)
        );
        assert_eq!(b.state(), CircuitState::Open);
        // Late failures of requests admitted before the opening change nothing.
        assert_eq!(b.record_failure(CircuitPermit::Normal, at(4)), None);
        assert_eq!(b.try_admit(at(3)), Err(CircuitOpen));
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let b = breaker(2, 1000);
        assert_eq!(b.record_failure(CircuitPermit::Normal, at(1)), None);
        assert_eq!(b.record_success(CircuitPermit::Normal), None);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.record_failure(CircuitPermit::Normal, at(2)), None);
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_after_the_reset_timeout() {
        let b = breaker(1, 100);
        assert_eq!(
            b.record_failure(CircuitPermit::Normal, at(1_000)),
            Some(CircuitTransition::Opened)
        );
        assert!(!b.would_admit(at(1_099)));
        assert_eq!(b.try_admit(at(1_099)), Err(CircuitOpen));
        assert!(b.would_admit(at(1_100)));
        assert_eq!(b.try_admit(at(1_100)), Ok(CircuitPermit::Probe));
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.try_admit(at(5_000)), Err(CircuitOpen));
        assert!(!b.would_admit(at(5_000)));
        // A normal success (a request from before the opening) does not close it.
        assert_eq!(b.record_success(CircuitPermit::Normal), None);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(
            b.record_success(CircuitPermit::Probe),
            Some(CircuitTransition::Closed)
        );
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.try_admit(at(5_000)), Ok(CircuitPermit::Normal));
    }

    #[test]
    fn failed_probe_reopens_for_a_fresh_timeout() {
        let b = breaker(1, 100);
        let _ = b.record_failure(CircuitPermit::Normal, at(0));
        assert_eq!(b.try_admit(at(100)), Ok(CircuitPermit::Probe));
        assert_eq!(
            b.record_failure(CircuitPermit::Probe, at(150)),
            Some(CircuitTransition::Reopened)
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.try_admit(at(249)), Err(CircuitOpen));
        assert_eq!(b.try_admit(at(250)), Ok(CircuitPermit::Probe));
    }

    #[test]
    fn abandoned_probe_is_handed_to_the_next_request() {
        let b = breaker(1, 100);
        let _ = b.record_failure(CircuitPermit::Normal, at(0));
        assert_eq!(b.try_admit(at(100)), Ok(CircuitPermit::Probe));
        b.abandon(CircuitPermit::Probe);
        assert_eq!(b.state(), CircuitState::Open);
        // The original opening time is kept, so no new wait is imposed.
        assert_eq!(b.try_admit(at(100)), Ok(CircuitPermit::Probe));
        // Abandoning a normal permit is a no-op.
        b.abandon(CircuitPermit::Normal);
        assert_eq!(b.state(), CircuitState::HalfOpen);
    }

    #[test]
    fn zero_threshold_is_treated_as_one() {
        let b = breaker(0, 10);
        assert_eq!(
            b.record_failure(CircuitPermit::Normal, at(0)),
            Some(CircuitTransition::Opened)
        );
    }

    #[test]
    fn the_latest_expressible_instant_fits_the_state_word() {
        let b = breaker(1, 10);
        let far = Instant::from_nanos(u64::MAX);
        assert_eq!(
            b.record_failure(CircuitPermit::Normal, far),
            Some(CircuitTransition::Opened)
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.consecutive_failures(), 1);
        assert!(!b.would_admit(far));
        assert!(!b.would_admit(Instant::ZERO));
    }

    #[test]
    fn failure_count_saturates_instead_of_spilling_into_the_timestamp() {
        let b = breaker(u16::MAX, 10);
        for i in 0..u64::from(u16::MAX) {
            let _ = b.record_failure(CircuitPermit::Normal, at(i));
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.try_admit(at(1_000_000)), Ok(CircuitPermit::Probe));
        assert_eq!(
            b.record_failure(CircuitPermit::Probe, at(1_000_000)),
            Some(CircuitTransition::Reopened)
        );
        assert_eq!(b.consecutive_failures(), u32::from(u16::MAX));
        // The opening time was not corrupted by the saturated count.
        assert!(!b.would_admit(at(1_000_009)));
        assert!(b.would_admit(at(1_000_010)));
    }
}
