//! Shared by the multi-process fault tests (`agent_process.rs`, `soak.rs`): the pool
//! configuration, one request through the pool, and a ledger that accounts for every
//! request exactly once.

#![allow(dead_code)] // each test binary uses a different part

use agentwire_pool::{AgentPool, PoolConfig, PoolError, PoolOutcome};
use agentwire_tests::{chunk, request};
use agentwire_tokio::TokioRuntime;
use agentwire_tokio::core::message::{AgentResponse, HeaderOp, RequestComplete};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The child agent binary, built by cargo for these tests.
pub(crate) const AGENT_BIN: &str = env!("CARGO_BIN_EXE_aw-test-agent");

/// The pool's request deadline in these tests.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Slack past the deadline before a request counts as hung (a loaded two-core machine).
pub(crate) const SLACK: Duration = Duration::from_secs(3);

/// A pool with fast maintenance, reconnects and breaker resets, and a 3 s deadline.
pub(crate) fn pool_config() -> PoolConfig {
    let mut config = PoolConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: REQUEST_TIMEOUT,
        health_check_interval: Duration::from_millis(50),
        drain_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    };
    config.backoff.base = Duration::from_millis(20);
    config.backoff.max_delay = Duration::from_millis(200);
    config.breaker.reset_timeout = Duration::from_millis(200);
    config.agent_breaker.reset_timeout = Duration::from_millis(200);
    config
}

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Answered by the agent, with the request's own id echoed.
    Answered,
    /// A typed pool error (its `kind()`), or a fail-open skip (`skipped:<reason>`).
    Failed(String),
}

/// The answer's `x-agent-saw` header: the correlation id the agent saw.
fn saw(response: &AgentResponse) -> Option<&str> {
    response.request_headers.iter().find_map(|op| match op {
        HeaderOp::Set { name, value } if name == "x-agent-saw" => Some(value.as_str()),
        _ => None,
    })
}

/// One request through the pool: headers (`/delay/<ms>`), then for every third one a body
/// chunk and a RequestComplete on the same connection. Returns how it ended; an answer for
/// another request is a failure of the test, not an outcome.
pub(crate) async fn one_request(pool: &AgentPool<TokioRuntime>, id: &str, delay_ms: u64) -> End {
    let end = |r: Result<PoolOutcome, PoolError>| match r {
        Ok(PoolOutcome::Answered(answer)) => Ok(answer),
        Ok(PoolOutcome::Skipped { reason }) => Err(End::Failed(format!("skipped:{reason}"))),
        Err(e) => Err(End::Failed(e.kind().to_owned())),
    };
    let answer = match end(pool
        .send_request_headers("agent", request(id, &format!("/delay/{delay_ms}")))
        .await)
    {
        Ok(a) => a,
        Err(failed) => return failed,
    };
    assert_eq!(saw(&answer), Some(id), "an answer for another request");
    let hash = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    if hash % 3 == 0 {
        let data = id.as_bytes();
        let answer = match end(pool
            .send_request_body_chunk("agent", chunk(id, 0, data, true))
            .await)
        {
            Ok(a) => a,
            Err(failed) => return failed,
        };
        assert_eq!(
            answer.routing_metadata.get("hex").map(String::as_str),
            Some(agentwire_tests::hex(data).as_str()),
            "a body answer for another chunk"
        );
        let complete = RequestComplete {
            correlation_id: id.to_owned(),
            status: 200,
            ..RequestComplete::default()
        };
        if let Err(failed) = end(pool.send_request_complete("agent", complete).await) {
            return failed;
        }
    } else {
        pool.clear_affinity(id);
    }
    End::Answered
}

/// Every request's outcome, recorded exactly once.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    ends: Mutex<BTreeMap<u64, End>>,
    duplicates: AtomicUsize,
    late: AtomicUsize,
    /// Requests answered.
    pub(crate) answered: AtomicUsize,
}

impl Ledger {
    /// Records request `n`'s end and how long it took.
    pub(crate) fn record(&self, n: u64, end: End, took: Duration, limit: Duration) {
        if took > limit {
            eprintln!("request {n} took {took:?} ({end:?})");
            self.late.fetch_add(1, Ordering::AcqRel);
        }
        if end == End::Answered {
            self.answered.fetch_add(1, Ordering::AcqRel);
        }
        if self.ends.lock().unwrap().insert(n, end).is_some() {
            self.duplicates.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Asserts requests `0..started` each ended exactly once, none late; returns the
    /// tally of ends.
    pub(crate) fn check(&self, started: u64) -> BTreeMap<String, usize> {
        let ends = self.ends.lock().unwrap();
        assert_eq!(
            self.duplicates.load(Ordering::Acquire),
            0,
            "a request ended twice"
        );
        assert_eq!(
            self.late.load(Ordering::Acquire),
            0,
            "requests ended past their deadline"
        );
        let missing: Vec<u64> = (0..started)
            .filter(|n| !ends.contains_key(n))
            .take(10)
            .collect();
        assert!(missing.is_empty(), "requests never ended: {missing:?}…");
        assert_eq!(
            ends.len() as u64,
            started,
            "ends recorded for requests never started"
        );
        let mut tally = BTreeMap::new();
        for end in ends.values() {
            let key = match end {
                End::Answered => "answered".to_owned(),
                End::Failed(kind) => kind.clone(),
            };
            *tally.entry(key).or_default() += 1;
        }
        tally
    }
}

/// The time limit of one request: up to three events, each within the deadline.
pub(crate) fn request_limit() -> Duration {
    3 * REQUEST_TIMEOUT + SLACK
}

/// Waits (bounded) until `condition` holds, polling every 10 ms.
pub(crate) async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Sends requests (50 ms apart) until one is answered or `limit` passes: after a restart the
/// agent-level breaker may still be open and half-opens only after its reset timeout.
pub(crate) async fn answered_again(
    pool: &AgentPool<TokioRuntime>,
    id: &str,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if one_request(pool, id, 0).await == End::Answered {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
