//! The pool against real agents on Unix sockets in a temporary directory, on every runtime.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_core::message::{CancelReason, Decision};
use agentwire_core::pool::FlowControlMode;
use agentwire_core::sync::Ordering;
use agentwire_pool::{
    AgentConnection, AgentOptions, AgentPool, BoxFuture, ClientError, ConnectSettings, Connector,
    Endpoint, FailurePolicy, PoolConfig, PoolError, PoolOutcome, SkipReason,
};
use agentwire_runtime::Runtime;
use agentwire_runtime::client::AgentClient;
use common::*;

/// Generates one `#[test]` per runtime (tokio, smol, async-std) for each scenario
/// `fn name<R: Runtime>(rt: R)`.
macro_rules! runtime_tests {
    ($($name:ident),* $(,)?) => {
        mod tokio_rt {
            $(
                #[test]
                fn $name() {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    runtime.block_on(async {
                        let rt = agentwire_tokio::runtime();
                        crate::common::with_deadline(&rt, Box::pin(super::$name(rt.clone()))).await;
                    });
                }
            )*
        }
        mod smol_rt {
            $(
                #[test]
                fn $name() {
                    smol::block_on(async {
                        let rt = agentwire_smol::runtime();
                        crate::common::with_deadline(&rt, Box::pin(super::$name(rt.clone()))).await;
                    });
                }
            )*
        }
        mod async_std_rt {
            $(
                #[test]
                fn $name() {
                    async_std::task::block_on(async {
                        let rt = agentwire_async_std::runtime();
                        crate::common::with_deadline(&rt, Box::pin(super::$name(rt.clone()))).await;
                    });
                }
            )*
        }
    };
}

runtime_tests!(
    round_trip_every_event_type,
    affinity_keeps_a_request_on_its_connection,
    affinity_falls_back_when_its_connection_dies,
    websocket_frames_stick_to_one_connection,
    agent_restart_fails_fast_then_reconnects,
    flow_control_fail_closed,
    flow_control_fail_open,
    flow_control_wait_and_retry,
    flow_control_wait_queue_is_bounded,
    agent_health_report_steers_selection,
    agent_killed_under_load,
    circuit_opens_on_dead_agent_and_recovers,
    timeouts_count_and_release,
    cancel_request_ends_the_call,
    failure_policies,
    shutdown_drains_then_refuses,
    shutdown_cancels_after_drain_timeout,
    prometheus_output_parses,
    custom_connector_and_grpc_gate,
    attach_connection_serves_requests,
    remove_and_replace_agents,
);

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

async fn round_trip_every_event_type<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    assert_eq!(pool.agent_ids(), ["echo"]);
    assert_eq!(pool.healthy_connections("echo"), 4);

    let out = pool.send_request_headers("echo", headers("r1", "/")).await;
    assert_eq!(op(out.as_ref().unwrap(), EVENT_HEADER), "request_headers");
    assert_eq!(op(out.as_ref().unwrap(), CID_HEADER), "r1");
    let out = pool
        .send_request_body_chunk("echo", chunk("r1", 0, true))
        .await;
    assert_eq!(
        op(out.as_ref().unwrap(), EVENT_HEADER),
        "request_body_chunk"
    );
    let out = pool
        .send_response_headers("echo", response_headers("r1"))
        .await;
    assert_eq!(op(out.as_ref().unwrap(), EVENT_HEADER), "response_headers");
    let out = pool
        .send_response_body_chunk("echo", chunk("r1", 0, true))
        .await;
    assert_eq!(
        op(out.as_ref().unwrap(), EVENT_HEADER),
        "response_body_chunk"
    );
    let out = pool.send_request_complete("echo", complete("r1")).await;
    assert_eq!(op(out.as_ref().unwrap(), EVENT_HEADER), "request_complete");
    let out = pool
        .send_websocket_frame("echo", frame("ws1", 0))
        .await
        .unwrap();
    assert_eq!(op(&out, EVENT_HEADER), "websocket_frame");
    assert!(out.response().unwrap().websocket_decision.is_some());
    let out = pool.send_guardrail_inspect("echo", guardrail("g1")).await;
    assert_eq!(op(out.as_ref().unwrap(), EVENT_HEADER), "guardrail_inspect");
    // A Block is an answer, not a failure.
    let blocked = pool
        .send_request_headers("echo", headers("r2", "/block"))
        .await
        .unwrap();
    assert!(matches!(
        blocked.response().unwrap().decision,
        Decision::Block { status: 403, .. }
    ));
    pool.clear_affinity("r2");
    pool.clear_affinity("ws1");

    let m = pool.metrics().snapshot();
    assert_eq!((m.requests, m.responses), (8, 8));
    assert_eq!(
        (m.timeouts, m.connection_errors, m.circuit_opened),
        (0, 0, 0)
    );
    assert_eq!(m.in_flight_requests, 0);
    assert_eq!(
        m.correlation_affinities, 0,
        "complete and clear_affinity emptied the maps"
    );
    assert_eq!(m.request_duration.count(), 8);
    assert!(matches!(
        pool.send_request_headers("nobody", headers("r3", "/")).await,
        Err(PoolError::UnknownAgent(id)) if id == "nobody"
    ));
    pool.shutdown().await;
}

async fn affinity_keeps_a_request_on_its_connection<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    let mut used = BTreeSet::new();
    for r in 0..8 {
        let cid = format!("req-{r}");
        let home = served_by(&pool.send_request_headers("echo", headers(&cid, "/")).await);
        used.insert(home.clone());
        for i in 0..3 {
            let c = chunk(&cid, i, i == 2);
            assert_eq!(
                served_by(&pool.send_request_body_chunk("echo", c).await),
                home
            );
        }
        assert_eq!(
            served_by(
                &pool
                    .send_response_headers("echo", response_headers(&cid))
                    .await
            ),
            home,
            "response headers follow the request (B16)"
        );
        for i in 0..3 {
            let c = chunk(&cid, i, i == 2);
            assert_eq!(
                served_by(&pool.send_response_body_chunk("echo", c).await),
                home,
                "response chunks follow the request (B16)"
            );
        }
        assert_eq!(
            served_by(&pool.send_request_complete("echo", complete(&cid)).await),
            home
        );
    }
    // Round robin spread the requests, so sticking to one connection was not an accident.
    assert!(
        used.len() >= 3,
        "requests should spread over connections: {used:?}"
    );
    assert_eq!(pool.metrics().snapshot().correlation_affinities, 0);

    // Concurrent requests keep their affinity too.
    let mut tasks = Vec::new();
    for r in 0..16 {
        let pool = pool.clone();
        tasks.push(async move {
            let cid = format!("conc-{r}");
            let home = served_by(&pool.send_request_headers("echo", headers(&cid, "/")).await);
            for i in 0..4 {
                let c = chunk(&cid, i, i == 3);
                assert_eq!(
                    served_by(&pool.send_request_body_chunk("echo", c).await),
                    home
                );
            }
            assert_eq!(
                served_by(&pool.send_request_complete("echo", complete(&cid)).await),
                home
            );
        });
    }
    futures_util::future::join_all(tasks).await;

    pool.shutdown().await;
}

async fn affinity_falls_back_when_its_connection_dies<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = AgentPool::new(rt.clone(), fast_config());
    pool.register_agent("echo", AgentOptions::default())
        .unwrap();
    // Connect one at a time, so client i is the agent's connection i.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let client = AgentClient::connect_unix(&rt, &agent.path, Default::default())
            .await
            .unwrap();
        pool.attach_connection("echo", client.clone()).unwrap();
        clients.push(client);
    }
    let home = served_by(
        &pool
            .send_request_headers("echo", headers("moved", "/"))
            .await,
    );
    assert_eq!(
        served_by(
            &pool
                .send_request_body_chunk("echo", chunk("moved", 0, false))
                .await
        ),
        home
    );
    clients[home.parse::<usize>().unwrap()].close();
    let other = if home == "0" { "1" } else { "0" };
    for i in 1..4 {
        assert_eq!(
            served_by(
                &pool
                    .send_request_body_chunk("echo", chunk("moved", i, i == 3))
                    .await
            ),
            other,
            "chunks fall back to the live connection and stay there"
        );
    }
    assert_eq!(
        served_by(&pool.send_request_complete("echo", complete("moved")).await),
        other
    );
    assert_eq!(pool.metrics().snapshot().correlation_affinities, 0);
    pool.shutdown().await;
}

async fn websocket_frames_stick_to_one_connection<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    let mut homes = BTreeSet::new();
    for ws in 0..6 {
        let cid = format!("ws-{ws}");
        let home = served_by(&pool.send_websocket_frame("echo", frame(&cid, 0)).await);
        homes.insert(home.clone());
        for i in 1..6 {
            assert_eq!(
                served_by(&pool.send_websocket_frame("echo", frame(&cid, i)).await),
                home
            );
        }
        pool.clear_affinity(&cid);
    }
    assert!(homes.len() >= 2, "sessions should spread: {homes:?}");
    pool.shutdown().await;
}

async fn agent_restart_fails_fast_then_reconnects<R: Runtime>(rt: R) {
    let d = dir();
    let path = d.path().join("a.sock");
    let agent = EchoAgent::start(&rt, &path, Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    assert!(
        pool.send_request_headers("echo", headers("before", "/"))
            .await
            .is_ok()
    );
    pool.clear_affinity("before");

    agent.kill_and_wait(&rt).await;
    drop(agent);
    // Requests fail fast with a typed error while the agent is gone.
    for i in 0..10 {
        let started = Instant::now();
        let result = pool
            .send_request_headers("echo", headers(&format!("down-{i}"), "/"))
            .await;
        assert!(started.elapsed() < Duration::from_secs(1), "failed slowly");
        match result {
            Err(PoolError::NoHealthyConnection { .. })
            | Err(PoolError::CircuitOpen { .. })
            | Err(PoolError::Client(ClientError::ConnectionClosed(_))) => {}
            other => panic!("unexpected result while the agent is down: {other:?}"),
        }
        sleep(&rt, Duration::from_millis(10)).await;
    }
    assert!(
        eventually(&rt, Duration::from_secs(2), || pool
            .healthy_connections("echo")
            == 0)
        .await
    );

    // A new agent on the same path: the pool reconnects by itself.
    let agent = EchoAgent::start(&rt, &path, Behaviour::default());
    let started = Instant::now();
    let mut answered = false;
    for i in 0..300 {
        let cid = format!("after-{i}");
        if let Ok(PoolOutcome::Answered(_)) =
            pool.send_request_headers("echo", headers(&cid, "/")).await
        {
            answered = true;
            pool.clear_affinity(&cid);
            break;
        }
        sleep(&rt, Duration::from_millis(20)).await;
    }
    assert!(answered, "no answer after the restart");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        eventually(&rt, Duration::from_secs(5), || pool
            .healthy_connections("echo")
            == 4)
        .await
    );
    assert!(agent.stats.connections.load(Ordering::Relaxed) >= 4);
    pool.shutdown().await;
}

async fn flow_pool<R: Runtime>(
    rt: &R,
    mode: FlowControlMode,
    agent: &ScriptedAgent,
) -> AgentPool<R> {
    let config = PoolConfig {
        flow_control: mode,
        connections_per_agent: 2,
        ..fast_config()
    };
    let pool = AgentPool::new(rt.clone(), config);
    pool.add_agent("flow", &agent.endpoint(), AgentOptions::default())
        .await
        .expect("add agent");
    pool
}

async fn pause_and_wait<R: Runtime>(rt: &R, pool: &AgentPool<R>, agent: &ScriptedAgent) {
    agent.script.set_paused(true);
    assert!(
        eventually(rt, Duration::from_secs(5), || pool
            .metrics()
            .snapshot()
            .paused_connections
            == 2)
        .await,
        "both connections should be paused"
    );
}

async fn flow_control_fail_closed<R: Runtime>(rt: R) {
    let d = dir();
    let agent = ScriptedAgent::start(&rt, &d.path().join("f.sock"));
    let pool = flow_pool(&rt, FlowControlMode::FailClosed, &agent).await;
    assert!(
        pool.send_guardrail_inspect("flow", guardrail("g0"))
            .await
            .is_ok()
    );
    pause_and_wait(&rt, &pool, &agent).await;
    let before = agent.script.events.load(Ordering::Relaxed);
    let started = Instant::now();
    let result = pool.send_guardrail_inspect("flow", guardrail("g1")).await;
    assert!(
        matches!(result, Err(PoolError::FlowControlPaused { ref agent_id }) if agent_id == "flow"),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fail-closed does not wait"
    );
    assert_eq!(
        agent.script.events.load(Ordering::Relaxed),
        before,
        "nothing reached the agent"
    );
    let m = pool.metrics().snapshot();
    assert_eq!(m.flow_control_pauses, 2);
    assert_eq!(m.flow_control_rejections, 1);
    // Resume: traffic flows again.
    agent.script.set_paused(false);
    assert!(
        eventually(&rt, Duration::from_secs(5), || pool
            .metrics()
            .snapshot()
            .paused_connections
            == 0)
        .await
    );
    assert!(
        pool.send_guardrail_inspect("flow", guardrail("g2"))
            .await
            .unwrap()
            .response()
            .is_some()
    );
    pool.shutdown().await;
}

async fn flow_control_fail_open<R: Runtime>(rt: R) {
    let d = dir();
    let agent = ScriptedAgent::start(&rt, &d.path().join("f.sock"));
    let pool = flow_pool(&rt, FlowControlMode::FailOpen, &agent).await;
    pause_and_wait(&rt, &pool, &agent).await;
    let result = pool
        .send_request_headers("flow", headers("r1", "/"))
        .await
        .unwrap();
    assert_eq!(
        result,
        PoolOutcome::Skipped {
            reason: SkipReason::FlowControl
        }
    );
    assert_eq!(pool.metrics().snapshot().flow_control_rejections, 1);
    assert_eq!(agent.script.events.load(Ordering::Relaxed), 0);
    pool.shutdown().await;
}

async fn flow_control_wait_and_retry<R: Runtime>(rt: R) {
    let d = dir();
    let agent = ScriptedAgent::start(&rt, &d.path().join("f.sock"));
    let mode = FlowControlMode::WaitAndRetry {
        max_wait: Duration::from_millis(300),
    };
    let pool = flow_pool(&rt, mode, &agent).await;
    pause_and_wait(&rt, &pool, &agent).await;

    // Nobody resumes: the request waits its max_wait, then fails closed.
    let started = Instant::now();
    let result = pool.send_guardrail_inspect("flow", guardrail("g1")).await;
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(PoolError::FlowControlPaused { .. })),
        "{result:?}"
    );
    assert!(
        waited >= Duration::from_millis(290),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");

    // A resume during the wait lets the request through.
    let (script, rt2) = (agent.script.clone(), rt.clone());
    let resumer = async move {
        sleep(&rt2, Duration::from_millis(100)).await;
        script.set_paused(false);
    };
    let started = Instant::now();
    let (result, ()) = futures_lite::future::zip(
        pool.send_guardrail_inspect("flow", guardrail("g2")),
        resumer,
    )
    .await;
    assert!(
        result.unwrap().response().is_some(),
        "answered after the resume"
    );
    assert!(started.elapsed() >= Duration::from_millis(90));
    assert_eq!(pool.metrics().snapshot().flow_control_rejections, 1);
    pool.shutdown().await;
}

async fn flow_control_wait_queue_is_bounded<R: Runtime>(rt: R) {
    let d = dir();
    let agent = ScriptedAgent::start(&rt, &d.path().join("f.sock"));
    let config = PoolConfig {
        flow_control: FlowControlMode::WaitAndRetry {
            max_wait: Duration::from_secs(5),
        },
        channel_buffer_size: 1,
        connections_per_agent: 2,
        ..fast_config()
    };
    let pool = AgentPool::new(rt.clone(), config);
    pool.add_agent("flow", &agent.endpoint(), AgentOptions::default())
        .await
        .unwrap();
    pause_and_wait(&rt, &pool, &agent).await;
    let waiter = pool.send_guardrail_inspect("flow", guardrail("first"));
    let second = {
        let (rt, pool, script) = (rt.clone(), pool.clone(), agent.script.clone());
        async move {
            let queued = eventually(&rt, Duration::from_secs(5), || {
                pool.waiting_for_flow_control("flow") == 1
            })
            .await;
            assert!(queued, "the first request never queued");
            // The queue (capacity 1) is full: refused at once, not queued.
            let started = Instant::now();
            let refused = pool
                .send_guardrail_inspect("flow", guardrail("second"))
                .await;
            assert!(
                matches!(refused, Err(PoolError::FlowControlPaused { .. })),
                "{refused:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(1));
            script.set_paused(false);
        }
    };
    let (first, ()) = futures_lite::future::zip(waiter, second).await;
    assert!(
        first.unwrap().response().is_some(),
        "the queued request went through"
    );
    assert_eq!(pool.waiting_for_flow_control("flow"), 0);
    pool.shutdown().await;
}

async fn agent_health_report_steers_selection<R: Runtime>(rt: R) {
    let d = dir();
    let agent = ScriptedAgent::start(&rt, &d.path().join("h.sock"));
    let pool = flow_pool(&rt, FlowControlMode::FailClosed, &agent).await;
    agent.script.set_unhealthy(true);
    assert!(
        eventually(&rt, Duration::from_secs(5), || pool
            .healthy_connections("flow")
            == 0)
        .await
    );
    assert!(matches!(
        pool.send_guardrail_inspect("flow", guardrail("g1")).await,
        Err(PoolError::NoHealthyConnection { .. })
    ));
    agent.script.set_unhealthy(false);
    assert!(
        eventually(&rt, Duration::from_secs(5), || pool
            .healthy_connections("flow")
            == 2)
        .await
    );
    assert!(
        pool.send_guardrail_inspect("flow", guardrail("g2"))
            .await
            .is_ok()
    );
    pool.shutdown().await;
}

async fn agent_killed_under_load<R: Runtime>(rt: R) {
    let d = dir();
    let behaviour = Behaviour {
        slow: Duration::from_secs(3),
    };
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), behaviour);
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let pool = pool.clone();
        // Half finish quickly, half are still in flight when the agent dies.
        let cid = if i % 2 == 0 {
            format!("fast-{i}")
        } else {
            format!("slow-{i}")
        };
        calls.push(async move {
            let result = pool.send_guardrail_inspect("echo", guardrail(&cid)).await;
            (cid, result)
        });
    }
    let killer = {
        let (rt, pool) = (rt.clone(), pool.clone());
        async move {
            // Kill once the fast half is answered and the slow half is in flight.
            let settled = eventually(&rt, Duration::from_secs(10), || {
                agent.stats.events.load(Ordering::Relaxed) == 200 && pool.in_flight("echo") == 100
            })
            .await;
            assert!(settled, "load did not build up");
            agent.kill();
            agent
        }
    };
    let started = Instant::now();
    let (results, _agent) =
        futures_lite::future::zip(futures_util::future::join_all(calls), killer).await;
    assert!(started.elapsed() < Duration::from_secs(10), "calls hung");
    let (mut answered, mut failed) = (0, 0);
    for (cid, result) in results {
        match result {
            Ok(PoolOutcome::Answered(response)) => {
                answered += 1;
                let echoed = response.request_headers.iter().any(|op| {
                    matches!(op, agentwire_core::message::HeaderOp::Set { name, value } if name == CID_HEADER && *value == cid)
                });
                assert!(echoed, "answer for {cid} carried another request's id");
            }
            Err(PoolError::Client(ClientError::ConnectionClosed(_)))
            | Err(PoolError::NoHealthyConnection { .. })
            | Err(PoolError::CircuitOpen { .. }) => failed += 1,
            other => panic!("{cid}: unexpected {other:?}"),
        }
    }
    assert_eq!(answered + failed, 200);
    assert_eq!(answered, 100, "the fast half was answered");
    assert_eq!(failed, 100, "the slow half failed with the agent");
    assert_eq!(pool.in_flight("echo"), 0);
    assert_eq!(pool.metrics().snapshot().in_flight_requests, 0);
    pool.shutdown().await;
}

async fn circuit_opens_on_dead_agent_and_recovers<R: Runtime>(rt: R) {
    let d = dir();
    let path = d.path().join("a.sock");
    let agent = EchoAgent::start(&rt, &path, Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    agent.kill_and_wait(&rt).await;
    drop(agent);
    // Each request that finds no connection is an agent failure; the fifth opens the
    // agent's breaker and later ones are refused by it.
    let mut saw_open = false;
    for i in 0..50 {
        match pool
            .send_guardrail_inspect("echo", guardrail(&format!("g{i}")))
            .await
        {
            Err(PoolError::CircuitOpen { .. }) => {
                saw_open = true;
                break;
            }
            Err(_) => {}
            Ok(other) => panic!("dead agent answered: {other:?}"),
        }
        sleep(&rt, Duration::from_millis(5)).await;
    }
    assert!(saw_open, "the agent's circuit never opened");
    assert!(pool.metrics().snapshot().circuit_opened >= 1);

    let _agent = EchoAgent::start(&rt, &path, Behaviour::default());
    let mut recovered = false;
    for i in 0..300 {
        if let Ok(PoolOutcome::Answered(_)) = pool
            .send_guardrail_inspect("echo", guardrail(&format!("h{i}")))
            .await
        {
            recovered = true;
            break;
        }
        sleep(&rt, Duration::from_millis(20)).await;
    }
    assert!(recovered, "the agent never recovered");
    let m = pool.metrics().snapshot();
    assert!(m.circuit_half_opened >= 1, "{m:?}");
    assert!(m.circuit_closed >= 1, "{m:?}");
    pool.shutdown().await;
}

async fn timeouts_count_and_release<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = AgentPool::new(
        rt.clone(),
        PoolConfig {
            connections_per_agent: 1,
            ..fast_config()
        },
    );
    let options = AgentOptions {
        request_timeout: Some(Duration::from_millis(100)),
        ..AgentOptions::default()
    };
    pool.add_agent("echo", &agent.endpoint(), options)
        .await
        .unwrap();
    // Three timeouts in a row open the connection's breaker.
    for i in 0..3 {
        let started = Instant::now();
        let result = pool
            .send_guardrail_inspect("echo", guardrail(&format!("hang-{i}")))
            .await;
        assert!(
            matches!(result, Err(PoolError::Client(ClientError::Timeout))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let m = pool.metrics().snapshot();
    assert_eq!(m.timeouts, 3);
    assert_eq!(m.in_flight_requests, 0);
    assert_eq!(m.circuit_opened, 1, "{m:?}");
    assert!(matches!(
        pool.send_guardrail_inspect("echo", guardrail("next")).await,
        Err(PoolError::CircuitOpen { .. })
    ));
    // The agent was told to stop working on them (cancel on timeout).
    assert!(
        eventually(&rt, Duration::from_secs(2), || agent
            .stats
            .cancelled
            .load(Ordering::Relaxed)
            == 3)
        .await
    );
    // After the reset timeout a probe goes through and closes the breaker.
    sleep(&rt, Duration::from_millis(250)).await;
    assert!(
        pool.send_guardrail_inspect("echo", guardrail("probe"))
            .await
            .is_ok()
    );
    assert_eq!(pool.metrics().snapshot().circuit_closed, 1);
    pool.shutdown().await;
}

async fn cancel_request_ends_the_call<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    let canceller = {
        let (rt, pool, stats) = (rt.clone(), pool.clone(), agent.stats.clone());
        async move {
            let started = eventually(&rt, Duration::from_secs(5), || {
                pool.in_flight("echo") == 1 && stats.events.load(Ordering::Relaxed) == 1
            })
            .await;
            assert!(started, "the request never reached the agent");
            pool.cancel_request("echo", "hang-1", CancelReason::ClientDisconnect);
        }
    };
    let (result, ()) = futures_lite::future::zip(
        pool.send_request_headers("echo", headers("hang-1", "/")),
        canceller,
    )
    .await;
    assert!(
        matches!(result, Err(PoolError::Client(ClientError::Cancelled))),
        "{result:?}"
    );
    assert_eq!(pool.in_flight("echo"), 0);
    let m = pool.metrics().snapshot();
    assert_eq!(
        (
            m.circuit_opened,
            m.connection_errors,
            m.correlation_affinities
        ),
        (0, 0, 0)
    );
    assert!(
        eventually(&rt, Duration::from_secs(2), || agent
            .stats
            .cancelled
            .load(Ordering::Relaxed)
            >= 1)
        .await
    );

    // A caller that drops the future releases its slot too.
    let dropped = futures_lite::future::or(
        async {
            let _ = pool
                .send_request_headers("echo", headers("hang-2", "/"))
                .await;
        },
        sleep(&rt, Duration::from_millis(50)),
    );
    dropped.await;
    assert_eq!(pool.in_flight("echo"), 0);
    pool.clear_affinity("hang-2");
    pool.shutdown().await;
}

async fn failure_policies<R: Runtime>(rt: R) {
    let d = dir();
    let missing = d.path().join("nobody.sock");
    let pool = AgentPool::new(rt.clone(), fast_config());
    let open = AgentOptions {
        failure_policy: FailurePolicy::FailOpen,
        ..AgentOptions::default()
    };
    let closed = AgentOptions {
        failure_policy: FailurePolicy::FailClosed { status: 502 },
        ..AgentOptions::default()
    };
    // Agents whose endpoint is down are still registered.
    pool.add_agent("open", missing.to_str().unwrap(), open)
        .await
        .unwrap();
    pool.add_agent("closed", missing.to_str().unwrap(), closed)
        .await
        .unwrap();
    assert_eq!(pool.agent_ids(), ["closed", "open"]);
    assert_eq!(pool.healthy_connections("open"), 0);
    assert_eq!(
        pool.send_request_headers("open", headers("r1", "/"))
            .await
            .unwrap(),
        PoolOutcome::Skipped {
            reason: SkipReason::NoHealthyConnection
        }
    );
    assert!(matches!(
        pool.send_request_headers("closed", headers("r1", "/"))
            .await,
        Err(PoolError::NoHealthyConnection { .. })
    ));
    assert_eq!(
        pool.failure_policy("closed"),
        Some(FailurePolicy::FailClosed { status: 502 })
    );
    assert_eq!(pool.failure_policy("nobody"), None);

    // The agent comes up later: maintenance connects it without any call.
    let agent = EchoAgent::start(&rt, &missing, Behaviour::default());
    assert!(
        eventually(&rt, Duration::from_secs(5), || pool
            .healthy_connections("closed")
            == 4)
        .await
    );
    let _ = agent;
    pool.shutdown().await;
}

async fn shutdown_drains_then_refuses<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(
        &rt,
        &d.path().join("a.sock"),
        Behaviour {
            slow: Duration::from_millis(300),
        },
    );
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let pool = pool.clone();
        calls.push(async move {
            pool.send_guardrail_inspect("echo", guardrail(&format!("slow-{i}")))
                .await
        });
    }
    let stopper = {
        let (rt, pool, stats) = (rt.clone(), pool.clone(), agent.stats.clone());
        async move {
            let loaded = eventually(&rt, Duration::from_secs(5), || {
                pool.in_flight("echo") == 10 && stats.events.load(Ordering::Relaxed) == 10
            })
            .await;
            assert!(loaded, "the requests never reached the agent");
            let started = Instant::now();
            let shutdown = pool.shutdown();
            let refused = async {
                sleep(&rt, Duration::from_millis(20)).await;
                pool.send_guardrail_inspect("echo", guardrail("late")).await
            };
            let ((), refused) = futures_lite::future::zip(shutdown, refused).await;
            (started.elapsed(), refused)
        }
    };
    let (results, (took, refused)) =
        futures_lite::future::zip(futures_util::future::join_all(calls), stopper).await;
    assert!(
        matches!(refused, Err(PoolError::ShuttingDown)),
        "{refused:?}"
    );
    for result in results {
        assert!(
            result.unwrap().response().is_some(),
            "in-flight requests drained"
        );
    }
    // Every request was answered although shutdown closed the connections: it drained first.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(pool.agent_ids().is_empty());
    assert!(matches!(
        pool.add_agent("again", &agent.endpoint(), AgentOptions::default())
            .await,
        Err(PoolError::ShuttingDown)
    ));
}

async fn shutdown_cancels_after_drain_timeout<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let config = PoolConfig {
        drain_timeout: Duration::from_millis(200),
        ..fast_config()
    };
    let pool = pool_with_agent(&rt, config, &agent).await;
    let call = pool.send_guardrail_inspect("echo", guardrail("hang-1"));
    let stopper = {
        let (rt, pool, stats) = (rt.clone(), pool.clone(), agent.stats.clone());
        async move {
            let started = eventually(&rt, Duration::from_secs(5), || {
                pool.in_flight("echo") == 1 && stats.events.load(Ordering::Relaxed) == 1
            })
            .await;
            assert!(started, "the request never reached the agent");
            let started = Instant::now();
            pool.shutdown().await;
            started.elapsed()
        }
    };
    let (result, took) = futures_lite::future::zip(call, stopper).await;
    assert!(
        matches!(
            result,
            Err(PoolError::Client(
                ClientError::Cancelled | ClientError::ConnectionClosed(_)
            ))
        ),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        eventually(&rt, Duration::from_secs(2), || agent
            .stats
            .cancelled
            .load(Ordering::Relaxed)
            >= 1)
        .await
    );
}

async fn prometheus_output_parses<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &agent).await;
    for i in 0..5 {
        pool.send_guardrail_inspect("echo", guardrail(&format!("g{i}")))
            .await
            .unwrap();
    }
    pool.send_request_headers("echo", headers("open-req", "/"))
        .await
        .unwrap();
    let text = pool.prometheus();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.is_empty())
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
    };
    assert_eq!(value("agent_protocol_requests_total"), 6.0);
    assert_eq!(value("agent_protocol_responses_total"), 6.0);
    assert_eq!(value("agent_protocol_healthy_connections"), 4.0);
    assert_eq!(value("agent_protocol_in_flight_requests"), 0.0);
    assert_eq!(value("agent_protocol_correlation_affinities"), 1.0);
    assert!(
        text.contains("agent_protocol_request_duration_seconds_count 6"),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.labels.get("agent_id") == Some("echo")),
        "per-agent series present:\n{text}"
    );
    pool.shutdown().await;
}

/// A connector that dials the echo agent's socket for any gRPC endpoint: proves a transport
/// plugs in without the pool knowing it.
#[derive(Debug)]
struct SocketForGrpc<R: Runtime> {
    rt: R,
    path: std::path::PathBuf,
    dialled: Arc<agentwire_core::sync::AtomicUsize>,
}

impl<R: Runtime> Connector for SocketForGrpc<R> {
    fn connect(
        &self,
        endpoint: &Endpoint,
        settings: ConnectSettings,
    ) -> BoxFuture<'static, Result<AgentConnection, ClientError>> {
        assert!(matches!(endpoint, Endpoint::Grpc { tls: false, .. }));
        let (rt, path, dialled) = (self.rt.clone(), self.path.clone(), self.dialled.clone());
        Box::pin(async move {
            dialled.fetch_add(1, Ordering::Relaxed);
            let client = AgentClient::connect_unix_with_notices(
                &rt,
                &path,
                settings.client,
                Some(settings.notices),
            )
            .await?;
            Ok(AgentConnection::Client(client))
        })
    }
}

async fn custom_connector_and_grpc_gate<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = AgentPool::new(rt.clone(), fast_config());
    let refused = pool
        .add_agent("g", "http://127.0.0.1:50051", AgentOptions::default())
        .await;
    assert!(
        matches!(&refused, Err(PoolError::InvalidEndpoint(why)) if why == "grpc transport not enabled"),
        "{refused:?}"
    );
    assert!(matches!(
        pool.add_agent("bad", "ftp://x", AgentOptions::default())
            .await,
        Err(PoolError::InvalidEndpoint(_))
    ));
    let dialled = Arc::new(agentwire_core::sync::AtomicUsize::new(0));
    pool.register_connector(
        "grpc",
        Arc::new(SocketForGrpc {
            rt: rt.clone(),
            path: agent.path.clone(),
            dialled: dialled.clone(),
        }),
    );
    let options = AgentOptions {
        connections: Some(2),
        ..AgentOptions::default()
    };
    pool.add_agent("g", "localhost:50051", options)
        .await
        .unwrap();
    assert_eq!(dialled.load(Ordering::Relaxed), 2);
    assert_eq!(pool.healthy_connections("g"), 2);
    assert!(
        pool.send_guardrail_inspect("g", guardrail("x"))
            .await
            .unwrap()
            .response()
            .is_some()
    );
    pool.shutdown().await;
}

async fn attach_connection_serves_requests<R: Runtime>(rt: R) {
    let d = dir();
    let agent = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let pool = AgentPool::new(rt.clone(), fast_config());
    let client = AgentClient::connect_unix(&rt, &agent.path, Default::default())
        .await
        .unwrap();
    assert!(matches!(
        pool.attach_connection("rev", client.clone()),
        Err(PoolError::UnknownAgent(_))
    ));
    pool.register_agent("rev", AgentOptions::default()).unwrap();
    assert!(matches!(
        pool.send_guardrail_inspect("rev", guardrail("g0")).await,
        Err(PoolError::NoHealthyConnection { .. })
    ));
    pool.attach_connection("rev", client.clone()).unwrap();
    assert_eq!(pool.healthy_connections("rev"), 1);
    assert!(
        pool.send_guardrail_inspect("rev", guardrail("g1"))
            .await
            .unwrap()
            .response()
            .is_some()
    );
    // A dead reverse connection is removed, never "reconnected" (B5).
    client.close();
    assert!(
        eventually(&rt, Duration::from_secs(2), || pool
            .metrics()
            .snapshot()
            .healthy_connections
            == 0)
        .await
    );
    sleep(&rt, Duration::from_millis(150)).await;
    assert_eq!(
        agent.stats.connections.load(Ordering::Relaxed),
        1,
        "the pool never dialled"
    );
    pool.shutdown().await;
}

async fn remove_and_replace_agents<R: Runtime>(rt: R) {
    let d = dir();
    let a = EchoAgent::start(&rt, &d.path().join("a.sock"), Behaviour::default());
    let b = EchoAgent::start(&rt, &d.path().join("b.sock"), Behaviour::default());
    let pool = pool_with_agent(&rt, fast_config(), &a).await;
    assert!(
        pool.send_guardrail_inspect("echo", guardrail("g1"))
            .await
            .is_ok()
    );
    // Replacing moves traffic to the new endpoint.
    pool.add_agent(
        "echo",
        &b.endpoint(),
        AgentOptions {
            connections: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(pool.healthy_connections("echo"), 1);
    let before = b.stats.events.load(Ordering::Relaxed);
    assert!(
        pool.send_guardrail_inspect("echo", guardrail("g2"))
            .await
            .is_ok()
    );
    assert_eq!(b.stats.events.load(Ordering::Relaxed), before + 1);
    assert!(pool.remove_agent("echo").await);
    assert!(!pool.remove_agent("echo").await);
    assert!(pool.agent_ids().is_empty());
    assert!(matches!(
        pool.send_guardrail_inspect("echo", guardrail("g3")).await,
        Err(PoolError::UnknownAgent(_))
    ));
    assert!(!pool.prometheus().contains("agent_id=\"echo\""));
    pool.shutdown().await;
}
