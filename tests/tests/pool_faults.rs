//! Issue #9 through an `AgentPool` (tokio): a cancel storm leaves no in-flight count or
//! gauge behind, and an agent that stops reading gets typed errors within the deadline
//! while another agent of the same pool keeps being served, with the bytes queued for the
//! deaf agent bounded.

mod common;

use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder};
use agentwire_core::message::{CancelReason, Encoding};
use agentwire_pool::{AgentPool, PoolError};
use agentwire_tests::*;
use agentwire_tokio::TokioRuntime;
use common::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn block_on(test: impl std::future::Future<Output = ()>) {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        tokio::time::timeout(Duration::from_secs(90), test)
            .await
            .expect("the test did not finish in 90 s");
    });
}

#[test]
fn pool_cancel_storm_leaves_no_gauge_behind() {
    block_on(async {
        let runtime = agentwire_tokio::runtime();
        let dir = TestDir::new();
        let agent = Arc::new(TestAgent::new(runtime.clone()));
        let config = server_config(&[Encoding::Postcard, Encoding::Json]);
        let server = start_server(&runtime, &dir.socket("agent"), config, agent.clone());
        let mut pool_config = pool_config();
        // Room for the whole storm at once: admission is not what is tested here.
        pool_config.max_in_flight_per_connection = 1000;
        pool_config.request_timeout = Duration::from_secs(20);
        let pool = AgentPool::new(runtime.clone(), pool_config);
        pool.add_agent("agent", server.path().to_str().unwrap(), Default::default())
            .await
            .unwrap();

        // 3 000 requests: two in three never answered (`/slow`), the rest at once; even ones
        // dropped after 0–49 ms, odd ones cancelled through the pool.
        const N: usize = 3000;
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let slow = i % 3 != 2;
                    let id = format!("ps-{i}");
                    let uri = if slow { "/slow" } else { "/" };
                    let send = pool.send_request_headers("agent", request(&id, uri));
                    let wait = Duration::from_millis((i * 7 % 50) as u64);
                    let ended = if i % 2 == 0 {
                        match tokio::time::timeout(wait, send).await {
                            Ok(r) => Some(r.map(|_| ())),
                            Err(_) => None,
                        }
                    } else {
                        let cancel = async {
                            tokio::time::sleep(wait).await;
                            pool.cancel_request("agent", &id, CancelReason::ClientDisconnect);
                        };
                        let (r, ()) = tokio::join!(send, cancel);
                        Some(r.map(|_| ()))
                    };
                    pool.clear_affinity(&id);
                    (i, slow, ended)
                })
            })
            .collect();
        let mut slow_ids = HashSet::new();
        let (mut dropped, mut cancelled, mut answered) = (0, 0, 0);
        for task in tasks {
            let (i, slow, ended) = task.await.expect("a storm task panicked");
            match ended {
                None => dropped += 1,
                Some(Ok(())) => {
                    assert!(!slow, "ps-{i}: a /slow request was answered");
                    answered += 1;
                }
                Some(Err(PoolError::Client(agentwire_runtime::client::ClientError::Cancelled))) => {
                    cancelled += 1;
                }
                Some(Err(e)) => panic!("ps-{i}: {e:?}"),
            }
            if slow {
                slow_ids.insert(format!("ps-{i}"));
            }
        }
        eprintln!(
            "pool cancel storm: {dropped} dropped, {cancelled} cancelled, {answered} answered"
        );
        assert_eq!(dropped + cancelled + answered, N);
        assert_eq!(pool.in_flight("agent"), 0, "the pool still counts requests");
        assert_eq!(
            pool.metrics().in_flight_requests.get(),
            0,
            "the gauge leaked"
        );
        // The agent heard about every slow request (an explicit cancel goes to every
        // connection of the agent, so some ids are told more than once).
        assert!(
            eventually(Duration::from_secs(20), || {
                let told: HashSet<String> = agent
                    .stats
                    .cancels()
                    .into_iter()
                    .map(|c| c.correlation_id)
                    .collect();
                slow_ids.iter().all(|id| told.contains(id))
            })
            .await,
            "the agent did not see every cancel"
        );
        assert!(
            eventually(Duration::from_secs(5), || {
                agent.stats.started() == agent.stats.finished() + agent.stats.dropped()
            })
            .await,
            "agent handlers still running"
        );
        // And the pool serves as before.
        for i in 0..200 {
            let id = format!("after-{i}");
            let r = pool.send_request_headers("agent", request(&id, "/")).await;
            assert!(
                matches!(r, Ok(agentwire_pool::PoolOutcome::Answered(_))),
                "{r:?}"
            );
            pool.clear_affinity(&id);
        }
        assert_eq!(pool.in_flight("agent"), 0);
        pool.shutdown().await;
        server.stop(&runtime).await;
    });
}

/// A raw agent that answers every connection's handshake, then never reads again.
async fn deaf_agent(
    listener: tokio::net::UnixListener,
    held: Arc<std::sync::Mutex<Vec<tokio::net::UnixStream>>>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let mut buf = vec![0u8; 16 * 1024];
        let handshake = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if decoder.decode().ok()?.is_some() {
                    return Some(());
                }
                let n = stream.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                decoder.extend(&buf[..n]);
            }
        })
        .await;
        if matches!(handshake, Ok(Some(()))) {
            let _ = stream.write_all(&handshake_response_frame()).await;
            held.lock().unwrap().push(stream);
        }
    }
}

#[test]
fn pool_with_a_deaf_agent_keeps_serving_the_other() {
    block_on(async {
        let runtime: TokioRuntime = agentwire_tokio::runtime();
        let dir = TestDir::new();
        let healthy = Arc::new(TestAgent::new(runtime.clone()));
        let server = start_server(
            &runtime,
            &dir.socket("healthy"),
            server_config(&[Encoding::Json]),
            healthy,
        );
        let deaf_path = dir.socket("deaf");
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = tokio::net::UnixListener::bind(&deaf_path).unwrap();
        let accept = tokio::spawn(deaf_agent(listener, held.clone()));

        let mut config = pool_config();
        let max_buffered = 1024 * 1024;
        config.client.session.max_buffered_bytes = max_buffered;
        config.request_timeout = Duration::from_millis(800);
        // Keep the deaf agent's connections in play: its timeouts must not just open the
        // breaker and turn every later request into an instant refusal.
        config.breaker.failure_threshold = u16::MAX;
        config.agent_breaker.failure_threshold = u16::MAX;
        let pool = AgentPool::new(runtime.clone(), config);
        pool.add_agent("deaf", deaf_path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        pool.add_agent(
            "healthy",
            server.path().to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(pool.healthy_connections("deaf"), 4);

        // 600 chunks of 64 KiB (37.5 MiB) at the deaf agent, while the healthy one is asked
        // 300 times.
        let data = Arc::new(vec![0x5au8; 64 * 1024]);
        let deaf_calls: Vec<_> = (0..600)
            .map(|i| {
                let (pool, data) = (pool.clone(), data.clone());
                tokio::spawn(async move {
                    let id = format!("deaf-{i}");
                    let start = Instant::now();
                    let r = pool
                        .send_request_body_chunk("deaf", chunk(&id, 0, &data, true))
                        .await;
                    pool.clear_affinity(&id);
                    (r.map(|_| ()).map_err(|e| e.kind()), start.elapsed())
                })
            })
            .collect();
        let healthy_calls: Vec<_> = (0..300)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(i * 3)).await;
                    let id = format!("ok-{i}");
                    let r = pool
                        .send_request_headers("healthy", request(&id, "/"))
                        .await;
                    pool.clear_affinity(&id);
                    r
                })
            })
            .collect();
        let mut kinds = std::collections::BTreeMap::new();
        for call in deaf_calls {
            let (result, took) = call.await.unwrap();
            let kind = match result {
                Ok(()) => panic!("the deaf agent answered"),
                Err(kind) => kind,
            };
            assert!(
                ["timeout", "backpressure"].contains(&kind),
                "unexpected {kind}"
            );
            assert!(
                took < Duration::from_millis(800) + SLACK,
                "{kind} after {took:?}"
            );
            *kinds.entry(kind).or_insert(0) += 1;
        }
        for call in healthy_calls {
            let r = call.await.unwrap();
            assert!(
                matches!(r, Ok(agentwire_pool::PoolOutcome::Answered(_))),
                "{r:?}"
            );
        }
        eprintln!("deaf agent through the pool: {kinds:?}");
        assert!(kinds.contains_key("timeout") && kinds.contains_key("backpressure"));
        assert_eq!(pool.in_flight("deaf"), 0);
        assert_eq!(pool.in_flight("healthy"), 0);
        assert_eq!(pool.metrics().in_flight_requests.get(), 0);

        // What the pool ever queued for the deaf agent, per connection: within two client
        // bounds plus the socket buffers.
        let streams: Vec<_> = std::mem::take(&mut *held.lock().unwrap());
        assert_eq!(streams.len(), 4);
        let bound = 2 * max_buffered + 4 * 1024 * 1024;
        for (n, mut stream) in streams.into_iter().enumerate() {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            while let Ok(Ok(read)) =
                tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
            {
                if read == 0 {
                    break;
                }
                total += read;
            }
            eprintln!("deaf connection {n}: {total} bytes queued (bound {bound})");
            assert!(total < bound, "connection {n} queued {total} bytes");
        }
        accept.abort();
        pool.shutdown().await;
        server.stop(&runtime).await;
    });
}
