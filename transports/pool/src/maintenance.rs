//! The maintenance task: refreshes the cached health the hot path reads, removes dead
//! connections, dials replacements on the backoff schedule, expires affinities.
//!
//! It runs every [`PoolConfig::health_check_interval`](crate::PoolConfig::health_check_interval),
//! earlier when a reconnect is due, and at once when woken (a request found a dead transport,
//! an agent reported its health, an agent was added). It holds the pool only weakly between
//! passes, so it ends when the last pool handle is dropped, and at shutdown.

use std::sync::{Arc, Weak};
use std::time::Duration;

use agentwire_core::sync::Ordering;
use agentwire_core::time::Instant;
use agentwire_runtime::{Runtime, core_now, race, to_std};

use crate::agent::Agent;
use crate::{Control, PoolInner};

/// The shortest period between passes, whatever the configuration says.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The task body spawned by [`AgentPool::new`](crate::AgentPool::new).
pub(crate) async fn run<R: Runtime>(runtime: R, pool: Weak<PoolInner<R>>, ctl: Arc<Control>) {
    loop {
        let next = {
            let Some(inner) = pool.upgrade() else {
                return;
            };
            if ctl.is_stopped() {
                return;
            }
            inner.maintain(core_now())
            // The strong reference ends here: the pool is never kept alive while asleep.
        };
        race(ctl.wake.wait(), runtime.sleep_until(to_std(next))).await;
    }
}

impl<R: Runtime> PoolInner<R> {
    /// One maintenance pass at `now`; returns when the next one is due.
    pub(crate) fn maintain(self: &Arc<Self>, now: Instant) -> Instant {
        let interval = self.config.health_check_interval.max(MIN_INTERVAL);
        let mut next = now.saturating_add(interval);
        let agents: Vec<Arc<Agent>> = self.published.load().values().cloned().collect();
        let mut evicted = 0;
        for agent in agents {
            evicted += agent.core.affinity.sweep(now) + agent.core.sticky.sweep(now);
            self.refresh_connections(&agent);
            if let Some(due) = self.schedule_reconnect(&agent, now) {
                next = next.min(due);
            }
        }
        self.metrics.affinity_evictions.add(evicted as u64);
        next
    }

    /// Refreshes each connection's cached health and pause flag; removes dead ones.
    fn refresh_connections(&self, agent: &Agent) {
        let mut dead = Vec::new();
        let mut resumed = false;
        for conn in agent.connections.load().iter() {
            let state = conn.state();
            if state.is_closed() || !conn.transport.is_connected() {
                dead.push(conn.id());
                continue;
            }
            state.set_healthy(!conn.core.reported_unhealthy.load(Ordering::Acquire));
            // Clients attached without the pool's notice callback: their own session state
            // is authoritative. (Copying it for connections that get notices could undo a
            // pause that arrived between the read and the copy.)
            if conn.core.mirror_pause {
                if conn.transport.is_paused() {
                    state.pause();
                } else {
                    resumed |= state.resume();
                }
            }
        }
        for conn in agent.remove_connections(&dead) {
            tracing::debug!(
                agent = agent.id(),
                connection = conn.id().0,
                "removing dead agent connection"
            );
            conn.state().close();
            agent.core.forget_connection(conn.id());
            conn.transport.close();
        }
        if resumed || !dead.is_empty() {
            agent.core.flow.notify();
        }
    }

    /// Starts a reconnect round for an agent short of connections if its backoff allows;
    /// returns when the next round is due if it does not yet.
    fn schedule_reconnect(self: &Arc<Self>, agent: &Arc<Agent>, now: Instant) -> Option<Instant> {
        if agent.endpoint.is_none()
            || agent.is_removed()
            || self.shutting_down.load(Ordering::Acquire)
        {
            return None;
        }
        let live = agent.connections.load().len();
        if live >= agent.target {
            return None;
        }
        let mut schedule = agent.reconnect_state();
        if schedule.in_progress {
            return None;
        }
        if schedule.next_attempt > now {
            return Some(schedule.next_attempt);
        }
        schedule.in_progress = true;
        drop(schedule);
        let missing = agent.target - live;
        let pool = Arc::clone(self);
        let agent = Arc::clone(agent);
        self.runtime.spawn(async move {
            pool.reconnect(&agent, missing).await;
        });
        None
    }

    /// Dials `missing` connections concurrently and adds the ones that open.
    async fn reconnect(&self, agent: &Agent, missing: usize) {
        let attempts = (0..missing).map(|_| self.open_connection(agent));
        let results = futures_util::future::join_all(attempts).await;
        let mut opened = Vec::with_capacity(missing);
        let mut last_error = None;
        for result in results {
            match result {
                Ok(conn) => opened.push(conn),
                Err(error) => last_error = Some(error),
            }
        }
        let now = core_now();
        {
            let mut schedule = agent.reconnect_state();
            schedule.in_progress = false;
            if opened.is_empty() {
                schedule.failures = schedule.failures.saturating_add(1);
                schedule.next_attempt =
                    now.saturating_add(self.backoff_delay(schedule.failures, agent.id()));
            } else {
                schedule.failures = 0;
                schedule.next_attempt = now;
            }
        }
        if let Some(error) = last_error {
            tracing::debug!(agent = agent.id(), %error, reconnected = opened.len(), "agent reconnect attempt failed");
        }
        let closing = || agent.is_removed() || self.shutting_down.load(Ordering::Acquire);
        if closing() {
            for conn in opened {
                conn.transport.close();
            }
        } else if !opened.is_empty() {
            agent.push_connections(opened);
            if closing() {
                // Removed while we were adding: do not leave the connections behind.
                for conn in agent.take_connections() {
                    conn.state().close();
                    conn.transport.close();
                }
            }
            agent.core.flow.notify();
        }
        // Let the next pass schedule the next round (or the backoff's wake-up).
        self.ctl.wake.notify();
    }
}
