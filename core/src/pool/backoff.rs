//! Reconnect backoff as a pure function.
//!
//! The reference's backoff (§11.5) doubles `reconnect_interval` up to 2⁵ with a 120 s cap and
//! no jitter, so every proxy that lost the same agent at the same moment retries in
//! lockstep. [`Backoff::next_delay`] adds bounded jitter from a caller-supplied seed (no RNG,
//! no clock inside).

use core::time::Duration;

use super::balance::wyrand;
use crate::time::Instant;

/// Exponential reconnect backoff with jitter and a cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// No delay exceeds this.
    pub max_delay: Duration,
    /// The delay doubles at most this many times (reference: 5).
    pub max_doublings: u32,
    /// How much of the delay may be shaved off at random, in thousandths (0 = none,
    /// 1000 = anywhere from zero to the full delay; values above 1000 act as 1000).
    pub jitter_permille: u16,
}

impl Default for Backoff {
    /// 5 s doubling up to 5 times, capped at 120 s (the reference's schedule), with up to
    /// 20 % jitter.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(5),
            max_delay: Duration::from_secs(120),
            max_doublings: 5,
            jitter_permille: 200,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt after `failures` consecutive failed attempts.
    ///
    /// Zero failures: zero (the first attempt is immediate). Otherwise
    /// `min(max_delay, base × 2^min(failures − 1, max_doublings))`, minus a jitter share drawn
    /// uniformly from `[0, jitter_permille/1000]` of it using `jitter_seed` — equal seeds give
    /// equal delays, and the result is always within `[delay × (1 − jitter), delay]`.
    #[must_use]
    pub fn next_delay(&self, failures: u32, jitter_seed: u64) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(self.max_doublings).min(127);
        let cap = self.max_delay.as_nanos();
        // u128 nanoseconds: a 2^127 shift would overflow, so saturate by checking first.
        let full = self
            .base
            .as_nanos()
            .checked_mul(1_u128 << doublings)
            .map_or(cap, |d| d.min(cap));
        let jitter = u128::from(self.jitter_permille.min(1_000));
        // Uniform fraction in [0, 1) as 64 random bits; shave full × jitter/1000 × fraction.
        // `span × fraction / 2^64` without overflowing u128: multiply the halves separately.
        let span = full * jitter / 1_000;
        let fraction = u128::from(wyrand(jitter_seed));
        let shave = (span >> 64) * fraction + (((span & u128::from(u64::MAX)) * fraction) >> 64);
        let nanos = full - shave;
        Duration::new(
            u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
            (nanos % 1_000_000_000) as u32,
        )
    }

    /// When the next attempt may start, given the time of the last failure.
    #[must_use]
    pub fn next_attempt_at(
        &self,
        failures: u32,
        last_failure: Instant,
        jitter_seed: u64,
    ) -> Instant {
        last_failure.saturating_add(self.next_delay(failures, jitter_seed))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn no_jitter() -> Backoff {
        Backoff {
            jitter_permille: 0,
            ..Backoff::default()
        }
    }

    #[test]
    fn doubles_from_the_base_then_caps() {
        let b = no_jitter();
        let secs: alloc::vec::Vec<u64> = (0..9).map(|n| b.next_delay(n, 7).as_secs()).collect();
        assert_eq!(secs, [0, 5, 10, 20, 40, 80, 120, 120, 120]);
    }

    #[test]
    fn huge_inputs_saturate_at_the_cap() {
        let b = Backoff {
            base: Duration::MAX,
            max_doublings: u32::MAX,
            ..no_jitter()
        };
        assert_eq!(b.next_delay(u32::MAX, 0), Duration::from_secs(120));
        let uncapped = Backoff {
            max_delay: Duration::MAX,
            ..b
        };
        assert_eq!(uncapped.next_delay(u32::MAX, 0), Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_its_band_and_actually_varies() {
        let b = Backoff::default();
        let mut distinct = alloc::collections::BTreeSet::new();
        for seed in 0..500 {
            let d = b.next_delay(2, seed);
            assert!(d <= Duration::from_secs(10), "{d:?}");
            assert!(d >= Duration::from_secs(8), "{d:?}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 400);
        assert_eq!(b.next_delay(3, 99), b.next_delay(3, 99));
    }

    #[test]
    fn next_attempt_is_relative_to_the_last_failure() {
        let b = no_jitter();
        let t = Instant::from_millis(1_000);
        assert_eq!(b.next_attempt_at(0, t, 0), t);
        assert_eq!(b.next_attempt_at(1, t, 0), Instant::from_millis(6_000));
    }
}
