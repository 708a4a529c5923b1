//! gRPC agents through the pool's `grpc` feature: the connector plugs the tonic transport in
//! without the pool's hot path knowing (tokio only, loopback only).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_core::message::{AgentResponse, Event};
use agentwire_grpc::{GrpcServer, GrpcServerConfig, Shutdown};
use agentwire_pool::grpc::GrpcClientConfig;
use agentwire_pool::{AgentOptions, AgentPool, ClientError, PoolError};
use agentwire_runtime::server::AgentHandler;
use common::*;

struct Echo;

impl AgentHandler for Echo {
    async fn handle_event(&self, event: Event) -> AgentResponse {
        echo_response(0, &event)
    }
}

#[test]
fn grpc_agents_serve_every_event_type_and_fail_fast_when_gone() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let rt = agentwire_tokio::runtime();
        with_deadline(&rt, scenario(rt.clone())).await;
    });
}

async fn scenario(rt: agentwire_tokio::TokioRuntime) {
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = GrpcServer::bind(addr, Arc::new(Echo), GrpcServerConfig::default())
        .await
        .expect("bind gRPC agent");
    let port = server.local_addr().port();
    let stop = Shutdown::new();
    tokio::spawn(server.serve(stop.clone()));

    let pool = AgentPool::new(rt.clone(), fast_config());
    pool.enable_grpc(GrpcClientConfig::default());
    let options = AgentOptions {
        connections: Some(2),
        ..AgentOptions::default()
    };
    // A scheme-less host:port is a gRPC endpoint over h2c.
    pool.add_agent("g", &format!("127.0.0.1:{port}"), options)
        .await
        .expect("add gRPC agent");
    assert_eq!(pool.healthy_connections("g"), 2);

    let out = pool
        .send_request_headers("g", headers("r1", "/"))
        .await
        .unwrap();
    assert_eq!(op(&out, CID_HEADER), "r1");
    assert_eq!(op(&out, EVENT_HEADER), "request_headers");
    for i in 0..3 {
        let out = pool
            .send_request_body_chunk("g", chunk("r1", i, i == 2))
            .await
            .unwrap();
        assert_eq!(op(&out, EVENT_HEADER), "request_body_chunk");
    }
    let out = pool
        .send_response_headers("g", response_headers("r1"))
        .await
        .unwrap();
    assert_eq!(op(&out, EVENT_HEADER), "response_headers");
    let out = pool
        .send_response_body_chunk("g", chunk("r1", 0, true))
        .await
        .unwrap();
    assert_eq!(op(&out, EVENT_HEADER), "response_body_chunk");
    let out = pool
        .send_request_complete("g", complete("r1"))
        .await
        .unwrap();
    assert_eq!(op(&out, EVENT_HEADER), "request_complete");
    let out = pool
        .send_websocket_frame("g", frame("ws", 0))
        .await
        .unwrap();
    assert_eq!(op(&out, EVENT_HEADER), "websocket_frame");
    pool.clear_affinity("ws");
    let out = pool
        .send_guardrail_inspect("g", guardrail("gr"))
        .await
        .unwrap();
    assert_eq!(op(&out, CID_HEADER), "gr");
    let m = pool.metrics().snapshot();
    assert_eq!((m.requests, m.responses, m.in_flight_requests), (9, 9, 0));

    // The agent goes away: calls end quickly with typed errors, nothing stays in flight.
    stop.trigger();
    let mut failed = false;
    for i in 0..100 {
        let started = Instant::now();
        match pool
            .send_guardrail_inspect("g", guardrail(&format!("down-{i}")))
            .await
        {
            Ok(_) => sleep(&rt, Duration::from_millis(20)).await,
            Err(
                PoolError::NoHealthyConnection { .. }
                | PoolError::CircuitOpen { .. }
                | PoolError::Client(ClientError::ConnectionClosed(_)),
            ) => {
                assert!(started.elapsed() < Duration::from_secs(2));
                failed = true;
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(failed, "requests kept succeeding after the agent stopped");
    assert_eq!(pool.in_flight("g"), 0);
    pool.shutdown().await;
}
