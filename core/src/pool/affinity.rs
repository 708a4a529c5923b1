//! Bounded, expiring key → connection maps: correlation affinity and sticky sessions.
//!
//! **Correlation affinity** sends every body chunk of a request — and of its response
//! (reference §14 B16 forgot that side) — to the connection that saw the request's headers:
//! the agent keeps the request's state there. **Sticky sessions** pin a caller-chosen
//! session key (a long-lived stream, a WebSocket) to one connection. Both are the same
//! structure, [`AffinityMap`]; [`StickySessions`] is a name for the second use.
//!
//! Entries are bounded by a hard cap (when full, new keys are **refused and counted**,
//! existing keys can still be rebound) and expire after an idle time: a lookup never returns
//! an expired entry, and [`AffinityMap::sweep`] reclaims them.
//!
//! # Why sharded `RwLock<HashMap>` rather than `dashmap`
//! `dashmap` would do the same sharding, but its locks are its own, which loom cannot see:
//! the loom models would then check a different map from the one that ships. A small array
//! of [`crate::sync::RwLock`]-guarded `HashMap`s is the same design in thirty lines, is
//! model-checked as shipped, and costs one uncontended read lock per lookup (the idle-time
//! refresh is an atomic store under the read lock, so lookups never serialise each other).
//! Affinity is consulted on the body-chunk path, not on the per-request admission path of
//! [`crate::pool`], so this lock is not one of the hot path's synchronisation points.

use alloc::boxed::Box;
use alloc::string::String;
use core::hash::BuildHasher;
use core::time::Duration;
use std::collections::HashMap;

/// Keys may come from clients (a request id header), so production maps use a randomly
/// seeded hasher against hash flooding: foldhash, seeded per map from a per-process random
/// seed (a few nanoseconds for a 36-byte UUID, against ≈ 20 for SipHash-1-3; foldhash does
/// not claim SipHash's resistance to an attacker who can observe timings, which the
/// per-map seed, the entry cap and the idle expiry bound). Loom replays every execution
/// and needs each to be deterministic, which random keys (and the shard choice and
/// iteration order they drive) are not: under loom the keys are fixed.
#[cfg(not(loom))]
type KeyHasher = foldhash::fast::RandomState;
#[cfg(loom)]
type KeyHasher = core::hash::BuildHasherDefault<std::hash::DefaultHasher>;

type Shard = HashMap<String, Entry, KeyHasher>;

use super::ConnectionId;
use crate::sync::{self, AtomicU64, AtomicUsize, Ordering, RwLock};
use crate::time::Instant;

/// Tuning of an [`AffinityMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityConfig {
    /// Hard cap on entries (reference default 100 000).
    pub max_entries: usize,
    /// Entries unused for this long expire; `None` keeps them until cleared.
    pub idle_timeout: Option<Duration>,
    /// Number of independently locked shards (rounded up to a power of two, at least 1).
    pub shards: usize,
}

impl Default for AffinityConfig {
    /// The reference's correlation-affinity defaults: 100 000 entries, 5 minutes idle.
    fn default() -> Self {
        AffinityConfig {
            max_entries: 100_000,
            idle_timeout: Some(Duration::from_secs(300)),
            shards: 16,
        }
    }
}

/// What [`AffinityMap::bind`] did.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindOutcome {
    /// A new entry was added.
    Inserted,
    /// The key existed; it now points at the given connection and its idle time restarted.
    Updated,
    /// The map is full: nothing was stored, and the refusal was counted. The request still
    /// works, its later chunks are just load-balanced like the reference's would be.
    Rejected,
}

#[derive(Debug)]
struct Entry {
    connection: ConnectionId,
    /// Milliseconds since the caller's epoch of the latest bind or lookup; atomic so lookups
    /// refresh it under the shared read lock.
    last_used_ms: AtomicU64,
}

/// A sharded, bounded, expiring map from a string key to a [`ConnectionId`] (see the module
/// docs). Share it by reference or `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct AffinityMap {
    shards: Box<[RwLock<Shard>]>,
    /// Picks the shard; a separate hasher from the shards' own so a shard's keys do not all
    /// share the same hash bits inside its table.
    router: KeyHasher,
    len: AtomicUsize,
    max_entries: usize,
    idle_timeout_ms: Option<u64>,
    rejected: AtomicU64,
    evicted: AtomicU64,
}

/// Sticky sessions (session key → connection, expiring when idle): an [`AffinityMap`] used
/// for long-lived streams. Build one with [`AffinityConfig::sticky_sessions`].
pub type StickySessions = AffinityMap;

impl AffinityConfig {
    /// The reference's sticky-session defaults: 5 minutes idle, and the same 100 000 cap.
    #[must_use]
    pub fn sticky_sessions(idle_timeout: Option<Duration>) -> Self {
        AffinityConfig {
            idle_timeout,
            ..AffinityConfig::default()
        }
    }
}

impl AffinityMap {
    /// An empty map.
    #[must_use]
    pub fn new(config: AffinityConfig) -> Self {
        let shards = config.shards.max(1).next_power_of_two();
        AffinityMap {
            shards: (0..shards)
                .map(|_| RwLock::new(Shard::with_hasher(KeyHasher::default())))
                .collect::<alloc::vec::Vec<_>>()
                .into_boxed_slice(),
            router: KeyHasher::default(),
            len: AtomicUsize::new(0),
            max_entries: config.max_entries,
            idle_timeout_ms: config
                .idle_timeout
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            rejected: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        // The shard count is a power of two, so masking the hash is a uniform pick.
        let hash = self.router.hash_one(key) as usize;
        &self.shards[hash & (self.shards.len() - 1)]
    }

    fn is_expired(&self, entry: &Entry, now_ms: u64) -> bool {
        self.idle_timeout_ms.is_some_and(|timeout| {
            now_ms.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed)) >= timeout
        })
    }

    /// Points `key` at `connection` from `now` on. A new key is refused (and counted) when
    /// the map holds `max_entries` already; an existing key is always rebound.
    pub fn bind(&self, key: &str, connection: ConnectionId, now: Instant) -> BindOutcome {
        let now_ms = now.as_millis();
        let mut shard = sync::write(self.shard(key));
        if let Some(entry) = shard.get_mut(key) {
            entry.connection = connection;
            entry.last_used_ms.store(now_ms, Ordering::Relaxed);
            return BindOutcome::Updated;
        }
        // Reserve a place before inserting, so concurrent binds in different shards can
        // never push the total past the cap.
        let reserved = self
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                (len < self.max_entries).then_some(len + 1)
            });
        if reserved.is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return BindOutcome::Rejected;
        }
        shard.insert(
            String::from(key),
            Entry {
                connection,
                last_used_ms: AtomicU64::new(now_ms),
            },
        );
        BindOutcome::Inserted
    }

    /// The connection `key` points at, refreshing its idle time; `None` when absent or
    /// expired (an expired entry is left for [`sweep`](Self::sweep) or the next bind).
    ///
    /// The caller still checks that the connection is alive and usable — see
    /// [`crate::pool::select_preferring`], which falls back to normal selection otherwise.
    #[must_use]
    pub fn get(&self, key: &str, now: Instant) -> Option<ConnectionId> {
        let now_ms = now.as_millis();
        let shard = sync::read(self.shard(key));
        let entry = shard.get(key)?;
        if self.is_expired(entry, now_ms) {
            return None;
        }
        // A load and, at most once per millisecond, a store: no read-modify-write. Two racing
        // refreshes may keep the earlier of two close times, which expiry does not mind.
        if now_ms > entry.last_used_ms.load(Ordering::Relaxed) {
            entry.last_used_ms.store(now_ms, Ordering::Relaxed);
        }
        Some(entry.connection)
    }

    /// Removes `key` (the caller's duty when the request or session ends); returns where it
    /// pointed.
    ///
    /// An empty map answers from one load, without taking a lock (a bind racing with it has
    /// not finished, so it simply happens after the clear).
    pub fn clear(&self, key: &str) -> Option<ConnectionId> {
        if self.is_empty() {
            return None;
        }
        let removed = sync::write(self.shard(key)).remove(key)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(removed.connection)
    }

    /// Removes every entry pointing at `connection` (call it when the connection leaves the
    /// pool, so its keys fall back at once instead of waiting for expiry). Returns how many.
    pub fn clear_connection(&self, connection: ConnectionId) -> usize {
        self.remove_where(|entry| entry.connection == connection)
    }

    /// Removes every entry idle for the idle timeout or longer at `now`; returns how many
    /// and adds them to [`evicted_total`](Self::evicted_total). Takes each shard's write lock
    /// in turn, never two at once.
    pub fn sweep(&self, now: Instant) -> usize {
        if self.idle_timeout_ms.is_none() {
            return 0;
        }
        let now_ms = now.as_millis();
        let evicted = self.remove_where(|entry| self.is_expired(entry, now_ms));
        self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    fn remove_where(&self, mut doomed: impl FnMut(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in &*self.shards {
            let mut shard = sync::write(shard);
            let before = shard.len();
            shard.retain(|_, entry| !doomed(entry));
            let gone = before - shard.len();
            self.len.fetch_sub(gone, Ordering::Relaxed);
            removed += gone;
        }
        removed
    }

    /// Entries currently stored (expired ones included until swept).
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no entry is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hard cap.
    #[must_use]
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// New keys refused because the map was full, over its life.
    #[must_use]
    pub fn rejected_total(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Entries reclaimed by [`sweep`](Self::sweep), over its life.
    #[must_use]
    pub fn evicted_total(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn map(max_entries: usize, idle_ms: Option<u64>) -> AffinityMap {
        AffinityMap::new(AffinityConfig {
            max_entries,
            idle_timeout: idle_ms.map(Duration::from_millis),
            shards: 4,
        })
    }

    #[test]
    fn bind_get_clear_round_trip() {
        let m = map(10, Some(1_000));
        assert_eq!(
            m.bind("req-1", ConnectionId(3), at(0)),
            BindOutcome::Inserted
        );
        assert_eq!(m.get("req-1", at(10)), Some(ConnectionId(3)));
        assert_eq!(
            m.bind("req-1", ConnectionId(4), at(20)),
            BindOutcome::Updated
        );
        assert_eq!(m.get("req-1", at(30)), Some(ConnectionId(4)));
        assert_eq!(m.len(), 1);
        assert_eq!(m.clear("req-1"), Some(ConnectionId(4)));
        assert_eq!(m.clear("req-1"), None);
        assert_eq!(m.get("req-1", at(40)), None);
        assert!(m.is_empty());
    }

    #[test]
    fn full_map_refuses_and_counts_new_keys_but_rebinds_old_ones() {
        let m = map(2, None);
        assert_eq!(m.bind("a", ConnectionId(1), at(0)), BindOutcome::Inserted);
        assert_eq!(m.bind("b", ConnectionId(1), at(0)), BindOutcome::Inserted);
        assert_eq!(m.bind("c", ConnectionId(1), at(0)), BindOutcome::Rejected);
        assert_eq!(m.bind("d", ConnectionId(1), at(0)), BindOutcome::Rejected);
        assert_eq!(m.rejected_total(), 2);
        assert_eq!(m.get("c", at(0)), None);
        assert_eq!(m.bind("a", ConnectionId(2), at(0)), BindOutcome::Updated);
        assert_eq!(m.len(), 2);
        let _ = m.clear("b");
        assert_eq!(m.bind("c", ConnectionId(1), at(0)), BindOutcome::Inserted);
    }

    #[test]
    fn lookups_refresh_idle_time_and_expired_entries_are_invisible_then_swept() {
        let m = map(10, Some(100));
        let _ = m.bind("busy", ConnectionId(1), at(0));
        let _ = m.bind("idle", ConnectionId(2), at(0));
        assert_eq!(m.get("busy", at(90)), Some(ConnectionId(1)));
        assert_eq!(m.get("busy", at(180)), Some(ConnectionId(1)));
        // "idle" was last used at 0: expired at 100 even before any sweep.
        assert_eq!(m.get("idle", at(100)), None);
        assert_eq!(m.len(), 2);
        assert_eq!(m.sweep(at(200)), 1);
        assert_eq!(m.evicted_total(), 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get("busy", at(279)), Some(ConnectionId(1)));
        assert_eq!(m.sweep(at(1_000)), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn without_idle_timeout_nothing_expires() {
        let m = map(10, None);
        let _ = m.bind("k", ConnectionId(1), at(0));
        assert_eq!(m.sweep(Instant::from_nanos(u64::MAX)), 0);
        assert_eq!(
            m.get("k", Instant::from_nanos(u64::MAX)),
            Some(ConnectionId(1))
        );
    }

    #[test]
    fn clearing_a_connection_drops_only_its_keys() {
        let m = map(100, None);
        for i in 0..20_u64 {
            let key = alloc::format!("k{i}");
            let _ = m.bind(&key, ConnectionId(i % 2), at(0));
        }
        assert_eq!(m.clear_connection(ConnectionId(1)), 10);
        assert_eq!(m.len(), 10);
        assert_eq!(m.get("k3", at(0)), None);
        assert_eq!(m.get("k4", at(0)), Some(ConnectionId(0)));
    }

    #[test]
    fn the_cap_holds_under_concurrent_binds() {
        let m = std::sync::Arc::new(map(50, None));
        let handles: alloc::vec::Vec<_> = (0..4)
            .map(|t| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let _ = m.bind(&alloc::format!("{t}-{i}"), ConnectionId(t), at(0));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(m.len(), 50);
        assert_eq!(m.rejected_total(), 350);
    }

    #[test]
    fn shard_count_is_a_power_of_two() {
        for (asked, got) in [(0, 1), (1, 1), (3, 4), (16, 16)] {
            let m = AffinityMap::new(AffinityConfig {
                shards: asked,
                ..AffinityConfig::default()
            });
            assert_eq!(m.shards.len(), got);
        }
    }

    #[test]
    fn sticky_session_preset_keeps_the_cap_and_sets_the_timeout() {
        let config = AffinityConfig::sticky_sessions(None);
        assert_eq!(config.idle_timeout, None);
        assert_eq!(config.max_entries, 100_000);
        let sessions: StickySessions = AffinityMap::new(config);
        let _ = sessions.bind("ws-1", ConnectionId(9), at(0));
        assert_eq!(
            sessions.get("ws-1", at(u64::MAX / 2_000_000)),
            Some(ConnectionId(9))
        );
    }
}
