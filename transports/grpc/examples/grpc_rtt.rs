//! Sequential round-trip latency of request headers over h2c on 127.0.0.1: an agentwire
//! gRPC agent and client in one process, 2 000 measured round trips after a warm-up.
//!
//! ```text
//! cargo build --release -p agentwire-grpc --example grpc_rtt
//! taskset -c 0 target/release/examples/grpc_rtt            # current-thread runtime
//! taskset -c 0 target/release/examples/grpc_rtt multi      # multi-thread runtime (2 workers)
//! ```

use agentwire_core::message::{AgentResponse, RequestHeaders};
use agentwire_grpc::{
    AgentHandler, GrpcAgentClient, GrpcClientConfig, GrpcServer, GrpcServerConfig, Shutdown,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARMUP: usize = 200;
const ROUNDS: usize = 2_000;

struct Allow;
impl AgentHandler for Allow {
    async fn on_request_headers(&self, _event: RequestHeaders) -> AgentResponse {
        AgentResponse::allow()
    }
}

fn request(i: usize) -> RequestHeaders {
    let mut r = RequestHeaders {
        method: "GET".into(),
        uri: "/api/items?page=2".into(),
        ..RequestHeaders::default()
    };
    r.metadata.correlation_id = format!("req-{i}");
    r.metadata.request_id = format!("rid-{i}");
    r.metadata.client_ip = "203.0.113.7".into();
    r.metadata.client_port = 54321;
    r.metadata.protocol = "HTTP/1.1".into();
    r.metadata.timestamp = "2025-01-01T00:00:00Z".into();
    for (n, v) in [
        ("host", "example.com"),
        ("accept", "application/json"),
        ("user-agent", "bench/1.0"),
        ("x-request-id", "abc"),
    ] {
        r.headers.append(n, v);
    }
    r
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let server = GrpcServer::bind(
        "127.0.0.1:0".parse()?,
        Arc::new(Allow),
        GrpcServerConfig::default(),
    )
    .await?;
    let endpoint = format!("http://{}", server.local_addr());
    let shutdown = Shutdown::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    let client = GrpcAgentClient::connect(&endpoint, GrpcClientConfig::default()).await?;

    for i in 0..WARMUP {
        client.send_request_headers(request(i)).await?;
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    let total = Instant::now();
    for i in 0..ROUNDS {
        let event = request(WARMUP + i);
        let started = Instant::now();
        client.send_request_headers(event).await?;
        samples.push(started.elapsed());
    }
    let total = total.elapsed();
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len())?;
    println!(
        "{ROUNDS} sequential request-headers round trips over h2c 127.0.0.1: \
         p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs, mean {:.1} µs, {:.0} rt/s",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.90).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples[samples.len() - 1].as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6,
        ROUNDS as f64 / total.as_secs_f64(),
    );
    client.close();
    shutdown.trigger();
    serving.await??;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let multi = std::env::args().nth(1).as_deref() == Some("multi");
    let runtime = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    println!(
        "runtime: {}",
        if multi {
            "multi-thread (2 workers)"
        } else {
            "current-thread"
        }
    );
    runtime.block_on(run())
}
