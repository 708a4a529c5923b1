//! A model test of the pool's bookkeeping at the async level: random sequences of agent
//! registration and removal, requests (headers, body chunks, completion), answers, failures,
//! connection deaths, pauses and resumes, driven through the real `AgentPool` over in-memory
//! connections plugged in as a `Connector`.
//!
//! Invariants checked on every send and at the end:
//! * nothing is sent on a dead, paused or circuit-open connection (by a model of the
//!   breaker: 3 consecutive failures open it, and it stays open for the test);
//! * a body chunk goes to its request's connection whenever that connection is alive and
//!   closed-circuit, and falls back to a live one otherwise;
//! * every call ends exactly once with an answer carrying its own correlation id or a typed
//!   error, none is lost, and the pool's in-flight counts return to zero.
//!
//! The core's own model test (`core/tests/pool_model.rs`) covers the atomic decisions; this
//! one covers the async wiring around them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_core::message::{
    AgentResponse, BodyChunk, CancelReason, Capabilities, Event, FlowAction, FlowControlSignal,
    HeaderOp, RequestComplete, RequestHeaders, RequestMetadata,
};
use agentwire_core::pool::{BreakerConfig, FlowControlMode, Strategy as Balance};
use agentwire_pool::{
    AgentConnection, AgentOptions, AgentPool, BoxFuture, ClientError, ConnectSettings, Connector,
    Endpoint, PoolConfig, PoolError, PoolOutcome, PooledConnection,
};
use agentwire_runtime::client::{AgentNotice, NoticeCallback};
use futures_util::FutureExt;
use proptest::prelude::*;

const AGENTS: usize = 2;
const FAILURE_THRESHOLD: u32 = 2;

type Reply = Result<AgentResponse, ClientError>;

struct Pending {
    conn: usize,
    cid: String,
    tx: tokio::sync::oneshot::Sender<Reply>,
}

#[derive(Default)]
struct ConnModel {
    connected: bool,
    paused: bool,
    consecutive_failures: u32,
    open: bool,
}

#[derive(Default)]
struct World {
    conns: Vec<ConnModel>,
    notices: Vec<NoticeCallback>,
    pending: Vec<Pending>,
    /// The connection that last received an event of each request (`None` after an error,
    /// which drops the pool's binding).
    bound: HashMap<String, Option<usize>>,
    violations: Vec<String>,
}

impl World {
    fn usable(&self, conn: usize) -> bool {
        self.conns[conn].connected && !self.conns[conn].open
    }

    fn kill(&mut self, conn: usize) {
        self.conns[conn].connected = false;
        let (dead, alive): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.conn == conn);
        self.pending = alive;
        for p in dead {
            let _ = p.tx.send(Err(ClientError::ConnectionClosed(None)));
        }
    }

    /// Settles a pending answer, updating the breaker model as the pool's breaker sees it.
    fn settle(&mut self, index: usize, ok: bool) {
        let p = self.pending.remove(index);
        let model = &mut self.conns[p.conn];
        if ok {
            if !model.open {
                model.consecutive_failures = 0;
            }
            let mut response = AgentResponse::allow();
            response.request_headers.push(HeaderOp::Set {
                name: String::from("x-cid"),
                value: p.cid.clone(),
            });
            let _ = p.tx.send(Ok(response));
        } else {
            if !model.open {
                model.consecutive_failures += 1;
                model.open = model.consecutive_failures >= FAILURE_THRESHOLD;
            }
            let _ = p.tx.send(Err(ClientError::ConnectionClosed(None)));
        }
    }
}

type Shared = Arc<Mutex<World>>;

#[derive(Debug)]
struct MockConn {
    id: usize,
    world: SharedDebug,
}

/// `World` behind a lock, with a Debug the traits require.
#[derive(Clone)]
struct SharedDebug(Shared);

impl std::fmt::Debug for SharedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("World")
    }
}

impl PooledConnection for MockConn {
    fn send(&self, event: Event, _timeout: Duration) -> BoxFuture<'_, Reply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut w = self.world.0.lock().unwrap();
            let cid = event.correlation_id().to_owned();
            let me = &w.conns[self.id];
            let (connected, paused, open) = (me.connected, me.paused, me.open);
            if !connected {
                w.violations
                    .push(format!("{cid}: sent on dead connection {}", self.id));
            }
            if paused {
                w.violations
                    .push(format!("{cid}: sent on paused connection {}", self.id));
            }
            if open {
                w.violations.push(format!(
                    "{cid}: sent on open-circuit connection {}",
                    self.id
                ));
            }
            if let Event::RequestBodyChunk(_) | Event::RequestComplete(_) = event
                && let Some(Some(bound)) = w.bound.get(&cid).copied()
                && bound != self.id
                && w.usable(bound)
            {
                w.violations.push(format!(
                    "{cid}: went to {} although its connection {bound} is usable",
                    self.id
                ));
            }
            w.bound.insert(cid.clone(), Some(self.id));
            if w.conns[self.id].connected {
                w.pending.push(Pending {
                    conn: self.id,
                    cid,
                    tx,
                });
            } else {
                let _ = tx.send(Err(ClientError::ConnectionClosed(None)));
            }
        }
        Box::pin(async move { rx.await.unwrap_or(Err(ClientError::ConnectionClosed(None))) })
    }

    fn cancel(&self, correlation_id: &str, _reason: CancelReason) {
        let mut w = self.world.0.lock().unwrap();
        if let Some(i) = w
            .pending
            .iter()
            .position(|p| p.conn == self.id && p.cid == correlation_id)
        {
            let p = w.pending.remove(i);
            let _ = p.tx.send(Err(ClientError::Cancelled));
        }
    }

    fn cancel_all(&self, _reason: CancelReason) {
        let mut w = self.world.0.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut w.pending)
            .into_iter()
            .partition(|p| p.conn == self.id);
        w.pending = rest;
        for p in mine {
            let _ = p.tx.send(Err(ClientError::Cancelled));
        }
    }

    fn is_connected(&self) -> bool {
        self.world.0.lock().unwrap().conns[self.id].connected
    }

    fn in_flight(&self) -> usize {
        self.world
            .0
            .lock()
            .unwrap()
            .pending
            .iter()
            .filter(|p| p.conn == self.id)
            .count()
    }

    fn capabilities(&self) -> Option<Capabilities> {
        None
    }

    fn close(&self) {
        self.world.0.lock().unwrap().kill(self.id);
    }
}

#[derive(Debug)]
struct MockConnector(SharedDebug);

impl Connector for MockConnector {
    fn connect(
        &self,
        _endpoint: &Endpoint,
        settings: ConnectSettings,
    ) -> BoxFuture<'static, Result<AgentConnection, ClientError>> {
        let world = self.0.clone();
        let id = {
            let mut w = world.0.lock().unwrap();
            w.conns.push(ConnModel {
                connected: true,
                ..ConnModel::default()
            });
            w.notices.push(settings.notices);
            w.conns.len() - 1
        };
        let conn: Arc<dyn PooledConnection> = Arc::new(MockConn { id, world });
        Box::pin(async move { Ok(AgentConnection::Custom(conn)) })
    }
}

#[derive(Clone, Debug)]
enum Op {
    AddAgent(usize),
    RemoveAgent(usize),
    Headers(usize),
    Chunk(usize),
    Finish(usize),
    Answer(usize),
    Fail(usize),
    Kill(usize),
    Pause(usize),
    Resume(usize),
    Maintain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..AGENTS).prop_map(Op::AddAgent),
        1 => (0..AGENTS).prop_map(Op::RemoveAgent),
        4 => (0..AGENTS).prop_map(Op::Headers),
        4 => any::<usize>().prop_map(Op::Chunk),
        2 => any::<usize>().prop_map(Op::Finish),
        6 => any::<usize>().prop_map(Op::Answer),
        4 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Kill),
        1 => any::<usize>().prop_map(Op::Pause),
        1 => any::<usize>().prop_map(Op::Resume),
        1 => Just(Op::Maintain),
    ]
}

fn balance() -> impl Strategy<Value = Balance> {
    prop_oneof![
        Just(Balance::RoundRobin),
        Just(Balance::LeastConnections),
        Just(Balance::HealthWeighted),
        Just(Balance::Random),
        Just(Balance::PowerOfTwoChoices),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Busy,
    Idle,
    Done,
}

struct Request {
    agent: usize,
    cid: String,
    stage: Stage,
}

type Call = tokio::task::JoinHandle<(usize, &'static str, Result<PoolOutcome, PoolError>)>;

fn headers(cid: &str) -> RequestHeaders {
    RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: cid.to_owned(),
            ..RequestMetadata::default()
        },
        method: String::from("GET"),
        uri: String::from("/"),
        ..RequestHeaders::default()
    }
}

/// Lets spawned calls and the maintenance task run until nothing moves.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

fn agent_name(a: usize) -> String {
    format!("agent-{a}")
}

async fn scenario(strategy: Balance, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let world: Shared = Arc::default();
    let config = PoolConfig {
        connections_per_agent: 2,
        strategy,
        flow_control: FlowControlMode::FailClosed,
        request_timeout: Duration::from_secs(3600),
        health_check_interval: Duration::from_secs(3600),
        drain_timeout: Duration::ZERO,
        breaker: BreakerConfig {
            failure_threshold: FAILURE_THRESHOLD as u16,
            reset_timeout: Duration::from_secs(3600),
        },
        agent_breaker: BreakerConfig {
            failure_threshold: u16::MAX,
            reset_timeout: Duration::from_secs(3600),
        },
        ..PoolConfig::default()
    };
    let pool = AgentPool::new(agentwire_tokio::runtime(), config);
    pool.register_connector("unix", Arc::new(MockConnector(SharedDebug(world.clone()))));
    let mut present = [false; AGENTS];
    let mut requests: Vec<Request> = Vec::new();
    let mut calls: Vec<Call> = Vec::new();
    let mut ended = 0usize;
    let mut spawned = 0usize;

    // Collects finished calls and checks their results.
    let mut reap = |calls: &mut Vec<Call>,
                    requests: &mut Vec<Request>,
                    world: &Shared|
     -> Result<(), TestCaseError> {
        let mut still = Vec::new();
        for call in calls.drain(..) {
            if !call.is_finished() {
                still.push(call);
                continue;
            }
            let (index, kind, result) = call
                .now_or_never()
                .expect("a finished call has its result")
                .map_err(|e| TestCaseError::fail(format!("call panicked: {e}")))?;
            ended += 1;
            let request = &mut requests[index];
            match &result {
                Ok(PoolOutcome::Answered(response)) => {
                    let echoed = response.request_headers.iter().any(|op| {
                        matches!(op, HeaderOp::Set { name, value } if name == "x-cid" && *value == request.cid)
                    });
                    prop_assert!(echoed, "{} got another request's answer", request.cid);
                    request.stage = if kind == "headers" || kind == "chunk" {
                        Stage::Idle
                    } else {
                        Stage::Done
                    };
                }
                Ok(PoolOutcome::Skipped { reason }) => {
                    prop_assert!(false, "nothing is fail-open here, yet skipped: {reason}");
                }
                Err(error) => {
                    prop_assert!(
                        matches!(
                            error,
                            PoolError::UnknownAgent(_)
                                | PoolError::NoHealthyConnection { .. }
                                | PoolError::CircuitOpen { .. }
                                | PoolError::FlowControlPaused { .. }
                                | PoolError::Client(
                                    ClientError::ConnectionClosed(_) | ClientError::Cancelled
                                )
                        ),
                        "unexpected error {error:?}"
                    );
                    // A transport error drops the binding (refusals before sending keep it).
                    if let PoolError::Client(_) = error {
                        world
                            .lock()
                            .unwrap()
                            .bound
                            .insert(request.cid.clone(), None);
                    }
                    request.stage =
                        if kind == "chunk" && !matches!(error, PoolError::UnknownAgent(_)) {
                            Stage::Idle
                        } else {
                            Stage::Done
                        };
                }
            }
        }
        *calls = still;
        Ok(())
    };

    for op in ops {
        if matches!(op, Op::Headers(_) | Op::Chunk(_) | Op::Finish(_)) {
            spawned += 1;
        }
        match op {
            Op::AddAgent(a) => {
                if !present[a] {
                    pool.add_agent(
                        &agent_name(a),
                        &format!("/model/{a}.sock"),
                        AgentOptions::default(),
                    )
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    present[a] = true;
                }
            }
            Op::RemoveAgent(a) => {
                prop_assert_eq!(pool.remove_agent(&agent_name(a)).await, present[a]);
                present[a] = false;
            }
            Op::Headers(a) => {
                let index = requests.len();
                let cid = format!("r{index}");
                requests.push(Request {
                    agent: a,
                    cid: cid.clone(),
                    stage: Stage::Busy,
                });
                let pool = pool.clone();
                calls.push(tokio::spawn(async move {
                    (
                        index,
                        "headers",
                        pool.send_request_headers(&agent_name(a), headers(&cid))
                            .await,
                    )
                }));
            }
            Op::Chunk(k) | Op::Finish(k) => {
                let idle: Vec<usize> = (0..requests.len())
                    .filter(|&i| requests[i].stage == Stage::Idle)
                    .collect();
                if idle.is_empty() {
                    spawned -= 1;
                    continue;
                }
                let index = idle[k % idle.len()];
                let (agent, cid) = (requests[index].agent, requests[index].cid.clone());
                requests[index].stage = Stage::Busy;
                let pool = pool.clone();
                let finish = matches!(op, Op::Finish(_));
                calls.push(tokio::spawn(async move {
                    let name = agent_name(agent);
                    if finish {
                        let event = RequestComplete {
                            correlation_id: cid,
                            ..RequestComplete::default()
                        };
                        (
                            index,
                            "complete",
                            pool.send_request_complete(&name, event).await,
                        )
                    } else {
                        let chunk = BodyChunk {
                            correlation_id: cid,
                            ..BodyChunk::default()
                        };
                        (
                            index,
                            "chunk",
                            pool.send_request_body_chunk(&name, chunk).await,
                        )
                    }
                }));
            }
            Op::Answer(k) | Op::Fail(k) => {
                let mut w = world.lock().unwrap();
                if !w.pending.is_empty() {
                    let i = k % w.pending.len();
                    w.settle(i, matches!(op, Op::Answer(_)));
                }
            }
            Op::Kill(k) => {
                let mut w = world.lock().unwrap();
                if !w.conns.is_empty() {
                    let c = k % w.conns.len();
                    w.kill(c);
                }
            }
            Op::Pause(k) | Op::Resume(k) => {
                let pause = matches!(op, Op::Pause(_));
                let notice = {
                    let mut w = world.lock().unwrap();
                    if w.conns.is_empty() {
                        continue;
                    }
                    let c = k % w.conns.len();
                    w.conns[c].paused = pause;
                    w.notices[c].clone()
                };
                notice(AgentNotice::FlowControl(FlowControlSignal {
                    correlation_id: None,
                    action: if pause {
                        FlowAction::Pause
                    } else {
                        FlowAction::Resume
                    },
                    timestamp_ms: 0,
                }));
            }
            Op::Maintain => pool.wake_maintenance(),
        }
        settle().await;
        reap(&mut calls, &mut requests, &world)?;
        let violations = std::mem::take(&mut world.lock().unwrap().violations);
        prop_assert!(violations.is_empty(), "{violations:?}");
    }

    // Drain: answer everything still pending until every call has ended (bounded).
    for _ in 0..200 {
        if calls.is_empty() {
            break;
        }
        {
            let mut w = world.lock().unwrap();
            while !w.pending.is_empty() {
                w.settle(0, true);
            }
        }
        settle().await;
        reap(&mut calls, &mut requests, &world)?;
    }
    prop_assert!(calls.is_empty(), "{} calls never ended", calls.len());
    prop_assert_eq!(ended, spawned, "every call ended exactly once");
    let violations = std::mem::take(&mut world.lock().unwrap().violations);
    prop_assert!(violations.is_empty(), "{violations:?}");
    for a in 0..AGENTS {
        prop_assert_eq!(pool.in_flight(&agent_name(a)), 0);
    }
    prop_assert_eq!(pool.metrics().snapshot().in_flight_requests, 0);
    pool.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn pool_bookkeeping_holds_its_invariants(
        strategy in balance(),
        ops in proptest::collection::vec(op(), 1..64),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(30), scenario(strategy, ops)).await {
                Ok(result) => result,
                Err(_) => panic!("model scenario exceeded 30 s"),
            }
        })?;
    }
}
