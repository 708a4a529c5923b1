//! One registered agent: its connection list, balancer, breaker, affinity maps and
//! reconnect schedule.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use agentwire_core::metrics::AgentMetrics;
use agentwire_core::pool::{
    AffinityMap, Balancer, CircuitBreaker, ConnectionId, ConnectionTally, StickySessions,
};
use agentwire_core::sync::{AtomicBool, Mutex, MutexGuard, Ordering};
use agentwire_core::time::Instant;

use crate::connection::Conn;
use crate::flow::FlowSignal;
use crate::{AgentOptions, Endpoint, FailurePolicy};

/// What a request needs after its `.await`, shared by the agent and each of its
/// connections.
#[derive(Debug)]
pub(crate) struct AgentCore {
    pub(crate) id: Arc<str>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) affinity: AffinityMap,
    pub(crate) sticky: StickySessions,
    pub(crate) flow: Arc<FlowSignal>,
    pub(crate) metrics: Option<Arc<AgentMetrics>>,
    pub(crate) request_timeout: Duration,
    pub(crate) failure_policy: FailurePolicy,
}

impl AgentCore {
    /// Forgets every affinity and sticky entry of `correlation_id`.
    pub(crate) fn clear_affinity(&self, correlation_id: &str) {
        self.affinity.clear(correlation_id);
        self.sticky.clear(correlation_id);
    }

    /// Forgets every entry pointing at `connection`, so its keys fall back at once.
    pub(crate) fn forget_connection(&self, connection: ConnectionId) {
        self.affinity.clear_connection(connection);
        self.sticky.clear_connection(connection);
    }
}

/// When maintenance may dial the agent again.
#[derive(Debug, Default)]
pub(crate) struct Reconnect {
    /// Consecutive reconnect rounds in which every attempt failed.
    pub(crate) failures: u32,
    /// Earliest time of the next round.
    pub(crate) next_attempt: Instant,
    /// A reconnect task is running.
    pub(crate) in_progress: bool,
}

/// A registered agent.
#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) core: Arc<AgentCore>,
    /// `None`: reverse-only, never dialled.
    pub(crate) endpoint: Option<Endpoint>,
    pub(crate) options: AgentOptions,
    /// Connections to keep open.
    pub(crate) target: usize,
    pub(crate) balancer: Balancer,
    /// Read lock-free on every request; replaced whole (copy-on-write) under `writer`.
    pub(crate) connections: ArcSwap<Vec<Conn>>,
    writer: Mutex<()>,
    pub(crate) reconnect: Mutex<Reconnect>,
    /// Set once the agent left the registry: late reconnects close what they opened.
    pub(crate) removed: AtomicBool,
}

impl Agent {
    pub(crate) fn new(
        core: Arc<AgentCore>,
        endpoint: Option<Endpoint>,
        options: AgentOptions,
        target: usize,
        balancer: Balancer,
    ) -> Self {
        Agent {
            core,
            endpoint,
            options,
            target,
            balancer,
            connections: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(()),
            reconnect: Mutex::new(Reconnect::default()),
            removed: AtomicBool::new(false),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.core.id
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn reconnect_state(&self) -> MutexGuard<'_, Reconnect> {
        self.reconnect
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the connection list with `edit(current)`. Writers are serialised by a lock
    /// held only for the copy (never across an `.await`); readers never wait.
    pub(crate) fn update_connections(&self, edit: impl FnOnce(&mut Vec<Conn>)) {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Vec::clone(&self.connections.load());
        edit(&mut next);
        self.connections.store(Arc::new(next));
    }

    /// Adds connections to the list.
    pub(crate) fn push_connections(&self, added: Vec<Conn>) {
        if added.is_empty() {
            return;
        }
        self.update_connections(|list| list.extend(added));
    }

    /// Removes and returns every connection whose id is in `ids`.
    pub(crate) fn remove_connections(&self, ids: &[ConnectionId]) -> Vec<Conn> {
        let mut removed = Vec::new();
        if ids.is_empty() {
            return removed;
        }
        self.update_connections(|list| {
            list.retain(|c| {
                if ids.contains(&c.id()) {
                    removed.push(c.clone());
                    false
                } else {
                    true
                }
            });
        });
        removed
    }

    /// Removes and returns every connection.
    pub(crate) fn take_connections(&self) -> Vec<Conn> {
        let mut taken = Vec::new();
        self.update_connections(|list| taken = std::mem::take(list));
        taken
    }

    /// Requests in flight on the agent's connections (pool-side count).
    pub(crate) fn in_flight(&self) -> usize {
        self.connections
            .load()
            .iter()
            .map(|c| c.state().in_flight() as usize)
            .sum()
    }

    pub(crate) fn tally(&self) -> ConnectionTally {
        ConnectionTally::of(&self.connections.load())
    }
}
