//! The pool's decision logic: atomics only, no I/O, no clock, no threads.
//!
//! The async `AgentPool` (sockets, reconnect tasks, maintenance timer) lives in the runtime
//! crates and calls into this module on its hot path. Everything here is runtime-free: time
//! comes in as [`Instant`](crate::time::Instant), randomness as a seed or ticket, decisions
//! go out as data ([`Selection`], [`FlowDecision`], [`BindOutcome`]).
//!
//! | piece | fixes in the reference (spec §11, §14) |
//! |---|---|
//! | [`ConnectionState`] + [`InFlightGuard`] | B12: in-flight counts leak on timeout/error; B14: selection may block on a lock |
//! | [`select`] / [`Balancer`] (round robin, least connections, health-weighted, random, power of two choices) | B14; health-weighted by percent error rate so tiny differences do not pin all traffic on one connection |
//! | [`CircuitBreaker`] | B13: an unhealthy connection can never recover |
//! | [`AffinityMap`] / [`StickySessions`] | B16: response chunks had no affinity; B12: affinity entries live on |
//! | [`Backoff`] | lockstep reconnects (no jitter) |
//! | [`FlowControlMode`] | B3/§6.6: flow control was dead |
//!
//! # The hot path: two synchronisation points per request
//!
//! Starting and ending one request touches shared state at exactly two moments, each a
//! single ordered read-modify-write on the chosen connection's admission word:
//!
//! 1. **Admission** — [`Balancer::acquire`] (or [`select`] then
//!    [`ConnectionState::try_acquire`]): selection only *loads* (one or two loads per
//!    connection it looks at: the admission word, which packs in-flight count, limit and
//!    the healthy/paused/closed flags, and the breaker word — round robin, random and power
//!    of two choices look at the one or two connections their ticket names unless one of
//!    those is not eligible, least-connections stops at the first idle connection, so an
//!    agent's connection count does not show in the common case); the ticket is a relaxed
//!    `fetch_add` that orders nothing; then **one compare-and-swap** checks "open, not
//!    paused, below the limit" and counts the request in, atomically with any concurrent
//!    pause, close or limit change (a breaker in half-open adds one CAS to claim the probe,
//!    once per reset timeout).
//! 2. **Release** — dropping (or [`finish`](InFlightGuard::finish)ing) the guard: **one
//!    `fetch_sub`** with `Release` ordering. A success on a connection with no recent
//!    failures only loads the breaker word; failures do their CAS on the cold path.
//!
//! Everything else the request does — the request counter, the last-used time, the error
//! counter — is a relaxed increment or store on the same cache line as the admission word
//! (the struct is cache-line aligned), so it costs no extra cache-line transfer and orders
//! nothing. No lock, no allocation, no `await` anywhere on this path. The borrowed guard
//! ([`ConnectionState::try_acquire`]) avoids even the `Arc` reference-count traffic;
//! [`ConnectionState::try_acquire_owned`] trades two more atomic operations for a `'static`
//! guard.
//!
//! Affinity lookups (body chunks) take one uncontended shard read lock in [`AffinityMap`];
//! that is a per-chunk cost outside the admission/release pair and documented there.

mod affinity;
mod backoff;
mod balance;
mod breaker;
mod connection;
mod flow;

use core::borrow::Borrow;

pub use affinity::{AffinityConfig, AffinityMap, BindOutcome, StickySessions};
pub use backoff::Backoff;
pub use balance::{
    ADMISSION_ATTEMPTS, Balancer, Selection, Strategy, find, select, select_preferring, wyrand,
};
pub use breaker::{
    BreakerConfig, CircuitBreaker, CircuitOpen, CircuitPermit, CircuitState, CircuitTransition,
};
pub use connection::{
    AcquireError, ConnectionConfig, ConnectionSnapshot, ConnectionState, InFlightGuard,
    MAX_IN_FLIGHT_LIMIT, RequestOutcome,
};
pub use flow::{FlowBlock, FlowControlMode, FlowDecision};

/// A connection's identity inside a pool: stable for its life, never reused by a well-behaved
/// pool (a counter), unlike its index in the connection list, which shifts when connections
/// are replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

/// Totals over a set of connections, for gauges.
///
/// Computing the in-flight gauge from the connections themselves at scrape time, instead of
/// incrementing and decrementing a global gauge per request, means it cannot leak (the
/// reference's pool gauge did, §14 B12) and keeps a contended global counter off the hot
/// path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionTally {
    /// Connections counted (closed ones included).
    pub total: u64,
    /// Open and healthy connections.
    pub healthy: u64,
    /// Open connections paused by their agent.
    pub paused: u64,
    /// Requests in flight on all of them.
    pub in_flight: u64,
}

impl ConnectionTally {
    /// Tallies `connections`.
    #[must_use]
    pub fn of<C: Borrow<ConnectionState>>(connections: &[C]) -> Self {
        let mut tally = ConnectionTally::default();
        for connection in connections {
            tally.add(&connection.borrow().snapshot());
        }
        tally
    }

    /// Adds one connection's snapshot (to tally several agents into one).
    pub fn add(&mut self, snapshot: &ConnectionSnapshot) {
        self.total += 1;
        self.healthy += u64::from(snapshot.healthy && !snapshot.closed);
        self.paused += u64::from(snapshot.paused && !snapshot.closed);
        self.in_flight += u64::from(snapshot.in_flight);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::time::Instant;

    #[test]
    fn tally_counts_open_connections_by_state() {
        let conns: alloc::vec::Vec<_> = (0..4)
            .map(|i| {
                ConnectionState::new(ConnectionId(i), Instant::ZERO, ConnectionConfig::default())
            })
            .collect();
        conns[1].pause();
        conns[2].set_healthy(false);
        conns[3].close();
        let _a = conns[0].try_acquire(Instant::ZERO).unwrap();
        let _b = conns[2].try_acquire(Instant::ZERO).unwrap();
        assert_eq!(
            ConnectionTally::of(&conns),
            ConnectionTally {
                total: 4,
                healthy: 2,
                paused: 1,
                in_flight: 2
            }
        );
    }
}
