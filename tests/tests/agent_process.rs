//! Issue #9: the agent is a separate process killed with SIGKILL in the middle of load
//! through an `AgentPool`, then restarted on the same socket (tokio only: the pool and the
//! accounting are runtime-generic, the process handling is not what is tested).

mod common;

use agentwire_pool::AgentPool;
use agentwire_tests::{AgentProcess, TestDir};
use agentwire_tokio::TokioRuntime;
use common::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn start_agent(socket: &Path) -> AgentProcess {
    AgentProcess::start(Path::new(AGENT_BIN), socket, Duration::from_secs(20))
}

/// `workers` tasks take request numbers from `next` until `stop_at`, each recorded once.
async fn load(
    pool: &AgentPool<TokioRuntime>,
    ledger: &Arc<Ledger>,
    next: &Arc<AtomicU64>,
    stop_at: u64,
    workers: usize,
    prefix: &str,
) {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (pool, ledger, next) = (pool.clone(), ledger.clone(), next.clone());
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::AcqRel);
                    if n >= stop_at {
                        return;
                    }
                    let started = Instant::now();
                    let end = one_request(&pool, &format!("{prefix}-{n}"), n % 5).await;
                    ledger.record(n, end, started.elapsed(), request_limit());
                    // Failures while the agent is down return without yielding; let the
                    // connections' tasks run between requests.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a load task panicked");
    }
}

#[test]
fn sigkill_under_load_then_restart_recovers_without_a_pool_restart() {
    let (tokio, runtime) = agentwire_tests::two_worker_tokio();
    let test = async move {
        let dir = TestDir::new();
        let socket = dir.socket("agent");
        let agent = start_agent(&socket);
        let pool = AgentPool::new(runtime, pool_config());
        pool.add_agent("agent", socket.to_str().unwrap(), Default::default())
            .await
            .expect("add agent");
        assert_eq!(pool.healthy_connections("agent"), 4);

        // 10 000 requests from 200 concurrent callers; SIGKILL once 1 000 are answered (most
        // of the load is still to come, however late the killer runs on a busy machine).
        let total = 10_000;
        let ledger = Arc::new(Ledger::default());
        let next = Arc::new(AtomicU64::new(0));
        let killer = {
            let ledger = ledger.clone();
            async move {
                assert!(
                    eventually(Duration::from_secs(60), || {
                        ledger.answered.load(Ordering::Acquire) >= 1000
                    })
                    .await,
                    "the load never got going"
                );
                let pid = agent.id();
                let at = Instant::now();
                agent.kill9();
                eprintln!("SIGKILLed agent pid {pid}");
                at
            }
        };
        let started = Instant::now();
        let (killed_at, ()) = tokio::join!(killer, async {
            tokio::time::timeout(
                Duration::from_secs(120),
                load(&pool, &ledger, &next, total, 200, "k"),
            )
            .await
            .expect("the load hung");
        });
        eprintln!(
            "load of {total} requests ended {:?} after the kill ({:?} in all)",
            killed_at.elapsed(),
            started.elapsed()
        );
        let tally = ledger.check(total);
        eprintln!("outcomes: {tally:?}");
        assert!(tally["answered"] >= 1000);
        assert!(
            tally.len() > 1,
            "nothing failed although the agent was killed mid-load"
        );
        for kind in tally.keys() {
            assert!(
                [
                    "answered",
                    "connection_closed",
                    "no_healthy_connection",
                    "circuit_open",
                    "connect",
                    "timeout",
                ]
                .contains(&kind.as_str()),
                "unexpected outcome {kind}"
            );
        }
        // Nothing leaked: the pool's own count and the exported gauge are back to zero.
        assert_eq!(pool.in_flight("agent"), 0);
        assert_eq!(pool.metrics().in_flight_requests.get(), 0);

        // Restart on the same socket (the dead agent's file is stale and replaced): the pool's
        // maintenance reconnects on its own.
        let restarted_at = Instant::now();
        let agent = start_agent(&socket);
        assert!(
            eventually(Duration::from_secs(20), || pool
                .healthy_connections("agent")
                == 4)
            .await,
            "the pool did not reconnect: {} healthy",
            pool.healthy_connections("agent")
        );
        eprintln!(
            "pool reconnected {:?} after the restart",
            restarted_at.elapsed()
        );
        // The agent-level breaker may still be open from the failures: it half-opens after
        // its reset timeout, and the first success closes it.
        assert!(
            answered_again(&pool, "probe", Duration::from_secs(10)).await,
            "no request succeeded after the restart"
        );
        let after = Arc::new(Ledger::default());
        let next = Arc::new(AtomicU64::new(0));
        tokio::time::timeout(
            Duration::from_secs(60),
            load(&pool, &after, &next, 1000, 50, "r"),
        )
        .await
        .expect("the load after the restart hung");
        let tally = after.check(1000);
        assert_eq!(
            tally.get("answered"),
            Some(&1000),
            "after the restart: {tally:?}"
        );
        assert_eq!(pool.in_flight("agent"), 0);
        assert_eq!(pool.metrics().in_flight_requests.get(), 0);
        pool.shutdown().await;
        drop(agent);
    };
    tokio.block_on(async {
        tokio::time::timeout(Duration::from_secs(240), test)
            .await
            .expect("the test did not finish in 4 minutes");
    });
}
