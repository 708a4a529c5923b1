//! A real Pingora server with the agent gateway, in front of a tiny HTTP/1.1 upstream, asking
//! the demo agent (and test agents) over Unix sockets in a temporary directory.

use agentwire_cli::demo::DemoAgent;
use agentwire_core::message::{AgentResponse, BodyChunk, RequestHeaders};
use agentwire_pingora::gateway::{GatewayStop, serve};
use agentwire_pingora::{AgentGateway, CallMode, GatewayAgent, GatewayConfig, Route};
use agentwire_pool::{AgentOptions, AgentPool, FailurePolicy, PoolConfig};
use agentwire_tokio::{AgentHandler, Shutdown, TokioRuntime, UdsServer, UdsServerConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `f` on a thread and fails the test if it takes longer than `secs`.
fn with_timeout(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => handle.join().expect("test thread"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test timed out after {secs} s"),
    }
}

/// Agent that answers request headers after a delay.
struct SlowAgent(Duration);

impl AgentHandler for SlowAgent {
    async fn on_request_headers(&self, _event: RequestHeaders) -> AgentResponse {
        tokio::time::sleep(self.0).await;
        AgentResponse::allow()
    }
}

/// Agent that keeps asking for more body (`needs_more`) until the last chunk, where it
/// blocks with 403 (`block_last`) or allows; with `forever` it never stops asking.
struct HoldAgent {
    block_last: bool,
    forever: bool,
}

impl AgentHandler for HoldAgent {
    async fn on_request_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        if event.is_last && !self.forever {
            if self.block_last {
                AgentResponse::block(403)
            } else {
                AgentResponse::allow()
            }
        } else {
            let mut r = AgentResponse::allow();
            r.needs_more = true;
            r
        }
    }
}

/// The test's world: a tokio runtime with the upstream and the agents, a temp dir for the
/// sockets, the pool, and a Pingora gateway on its own thread.
struct World {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    upstream: SocketAddr,
    /// Request body bytes the upstream has received so far.
    upstream_body_bytes: Arc<AtomicUsize>,
    pool: AgentPool<TokioRuntime>,
    agents_stop: Shutdown,
    gateway: Option<(SocketAddr, GatewayStop, thread::JoinHandle<()>)>,
}

impl World {
    fn new() -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let upstream_body_bytes = Arc::new(AtomicUsize::new(0));
        let upstream = rt.block_on(start_upstream(upstream_body_bytes.clone()));
        let pool = rt.block_on(async {
            AgentPool::new(
                TokioRuntime::current(),
                PoolConfig {
                    connections_per_agent: 2,
                    ..PoolConfig::default()
                },
            )
        });
        World {
            rt,
            dir,
            upstream,
            upstream_body_bytes,
            pool,
            agents_stop: Shutdown::new(),
            gateway: None,
        }
    }

    /// Serves `handler` on `<dir>/<name>.sock` and adds it to the pool.
    fn agent<H: AgentHandler>(&self, name: &str, handler: H, options: AgentOptions) {
        let path = self.dir.path().join(format!("{name}.sock"));
        let stop = self.agents_stop.clone();
        self.rt.block_on(async {
            let config = UdsServerConfig {
                serve: DemoAgent::new(name).serve_config(),
                ..UdsServerConfig::default()
            };
            let server = UdsServer::bind(TokioRuntime::current(), &path, config).unwrap();
            tokio::spawn(server.serve(Arc::new(handler), stop));
        });
        self.add(name, &path, options);
    }

    fn add(&self, name: &str, path: &Path, options: AgentOptions) {
        self.rt.block_on(async {
            self.pool
                .add_agent(name, path.to_str().unwrap(), options)
                .await
                .unwrap();
        });
    }

    fn start(&mut self, route: Route) -> SocketAddr {
        // An ephemeral port: bind, read it, release it for Pingora.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = GatewayConfig::new(self.upstream).route(route);
        let gateway = AgentGateway::new(self.pool.clone(), config);
        let stop = GatewayStop::new();
        let s = stop.clone();
        let handle = thread::spawn(move || serve(gateway, &addr.to_string(), 1, Some(s)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "gateway did not start");
            thread::sleep(Duration::from_millis(20));
        }
        self.gateway = Some((addr, stop, handle));
        addr
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some((_, stop, handle)) = self.gateway.take() {
            stop.trigger();
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let _ = handle.join();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
        self.agents_stop.trigger();
        let pool = self.pool.clone();
        let _ = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), pool.shutdown()).await
        });
    }
}

/// A tiny HTTP/1.1 upstream: answers 200 with the request head it received as the body, then
/// `body-bytes: N`. Keep-alive; reads Content-Length and chunked bodies.
async fn start_upstream(seen: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(head_end) = read_until(&mut stream, &mut buf, b"\r\n\r\n", None).await
                    else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end + 4);
                    seen.fetch_add(buf.len(), Ordering::SeqCst);
                    let lower = head.to_ascii_lowercase();
                    let body_len = if lower.contains("transfer-encoding: chunked") {
                        let Some(end) =
                            read_until(&mut stream, &mut buf, b"0\r\n\r\n", Some(&seen)).await
                        else {
                            return;
                        };
                        buf.drain(..end + 5);
                        end
                    } else if let Some(n) = lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        while buf.len() < n {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        buf.drain(..n);
                        n
                    } else {
                        0
                    };
                    let body = format!("{head}\r\nbody-bytes: {body_len}\n");
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn read_until(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
    seen: Option<&AtomicUsize>,
) -> Option<usize> {
    loop {
        if let Some(pos) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(pos);
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                if let Some(seen) = seen {
                    seen.fetch_add(n, Ordering::SeqCst);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends raw request bytes in parts (pausing between them), reads the response to EOF.
fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            thread::sleep(Duration::from_millis(100));
        }
        // The gateway may answer (and close) before the whole request is sent.
        if stream.write_all(part).is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    Response {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    exchange(addr, &[req.as_bytes()])
}

fn chunked_post(addr: SocketAddr, chunks: &[&str]) -> Response {
    let head = "POST /submit HTTP/1.1\r\nhost: test\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut parts: Vec<Vec<u8>> = vec![head.as_bytes().to_vec()];
    for (i, c) in chunks.iter().enumerate() {
        let mut p = format!("{:x}\r\n{c}\r\n", c.len()).into_bytes();
        if i + 1 == chunks.len() {
            p.extend_from_slice(b"0\r\n\r\n");
        }
        parts.push(p);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    exchange(addr, &refs)
}

fn demo_world(mode: CallMode) -> (World, SocketAddr) {
    let mut world = World::new();
    world.agent("demo", DemoAgent::new("demo"), AgentOptions::default());
    let addr = world.start(Route::new("/", mode).agent(GatewayAgent::new("demo")));
    (world, addr)
}

#[test]
fn demo_agent_rules_through_the_gateway() {
    with_timeout(60, || {
        let (_world, addr) = demo_world(CallMode::Sequential);

        let r = get(addr, "/admin/users");
        assert_eq!(r.status, 403, "{r:?}");
        assert!(r.body.contains("/admin"), "{r:?}");

        let r = get(addr, "/old/x?q=1");
        assert_eq!(r.status, 301, "{r:?}");
        assert_eq!(r.header("location").as_deref(), Some("/new/x?q=1"));

        let r = get(addr, "/hello");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body
                .to_ascii_lowercase()
                .contains("x-agentwire-agent: demo"),
            "upstream did not see the agent's header: {r:?}"
        );
        assert_eq!(r.header("x-agentwire-inspected").as_deref(), Some("1"));
    });
}

#[test]
fn body_pattern_split_across_chunks_is_blocked() {
    with_timeout(60, || {
        let (_world, addr) = demo_world(CallMode::Sequential);
        let r = chunked_post(addr, &["id=1; DROP TA", "BLE users; --"]);
        assert_eq!(r.status, 403, "{r:?}");
        assert!(
            r.body.contains("DROP TABLE in body"),
            "not the body rule: {r:?}"
        );

        // The same body without the pattern reaches the upstream whole.
        let r = chunked_post(addr, &["id=1; SELECT", " * FROM users"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("body-bytes: "), "{r:?}");
        assert_eq!(r.header("x-agentwire-inspected").as_deref(), Some("1"));
    });
}

#[test]
fn parallel_agents_first_block_wins_and_cancels_the_rest() {
    with_timeout(60, || {
        let mut world = World::new();
        let slow = AgentOptions {
            request_timeout: Some(Duration::from_secs(5)),
            ..AgentOptions::default()
        };
        world.agent("slow", SlowAgent(Duration::from_secs(2)), slow);
        world.agent("demo", DemoAgent::new("demo"), AgentOptions::default());
        let addr = world.start(
            Route::new("/", CallMode::Parallel)
                .agent(GatewayAgent::new("slow"))
                .agent(GatewayAgent::new("demo")),
        );
        let started = Instant::now();
        let r = get(addr, "/admin");
        assert_eq!(r.status, 403, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the block waited for the slow agent: {:?}",
            started.elapsed()
        );
        // The slow agent's call was dropped: nothing stays in flight for it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while world.pool.in_flight("slow") > 0 {
            assert!(Instant::now() < deadline, "slow agent call still in flight");
            thread::sleep(Duration::from_millis(10));
        }
    });
}

fn down_world(policy: FailurePolicy) -> (World, SocketAddr) {
    let mut world = World::new();
    let missing = world.dir.path().join("nobody.sock");
    let options = AgentOptions {
        failure_policy: policy,
        request_timeout: Some(Duration::from_millis(200)),
        ..AgentOptions::default()
    };
    world.add("down", &missing, options);
    let addr = world.start(Route::new("/", CallMode::Sequential).agent(GatewayAgent::new("down")));
    (world, addr)
}

#[test]
fn agent_down_fail_open_passes_traffic() {
    with_timeout(60, || {
        let (_world, addr) = down_world(FailurePolicy::FailOpen);
        let r = get(addr, "/admin");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.body.to_ascii_lowercase().contains("x-agentwire-agent"));
    });
}

#[test]
fn agent_down_fail_closed_returns_the_configured_status() {
    with_timeout(60, || {
        let (_world, addr) = down_world(FailurePolicy::FailClosed { status: 502 });
        let r = get(addr, "/hello");
        assert_eq!(r.status, 502, "{r:?}");
    });
}

fn slow_world(policy: FailurePolicy) -> (World, SocketAddr) {
    let mut world = World::new();
    let options = AgentOptions {
        failure_policy: policy,
        request_timeout: Some(Duration::from_millis(100)),
        ..AgentOptions::default()
    };
    world.agent("slow", SlowAgent(Duration::from_secs(2)), options);
    let addr = world.start(Route::new("/", CallMode::Sequential).agent(GatewayAgent::new("slow")));
    (world, addr)
}

#[test]
fn agent_slower_than_its_timeout_fail_open() {
    with_timeout(60, || {
        let (_world, addr) = slow_world(FailurePolicy::FailOpen);
        let started = Instant::now();
        let r = get(addr, "/hello");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn agent_slower_than_its_timeout_fail_closed() {
    with_timeout(60, || {
        let (_world, addr) = slow_world(FailurePolicy::FailClosed { status: 504 });
        let started = Instant::now();
        let r = get(addr, "/hello");
        assert_eq!(r.status, 504, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    });
}

#[test]
fn body_limit_per_agent_stops_inspection() {
    with_timeout(60, || {
        let mut world = World::new();
        world.agent("demo", DemoAgent::new("demo"), AgentOptions::default());
        let addr = world.start(
            Route::new("/", CallMode::Sequential)
                .agent(GatewayAgent::new("demo").max_body_bytes(16)),
        );
        // The pattern lies beyond the agent's 16 bytes: it is not seen, the request passes.
        let r = chunked_post(addr, &["0123456789abcdef", "x; DROP TABLE users"]);
        assert_eq!(r.status, 200, "{r:?}");
        // Within the limit it is seen.
        let r = chunked_post(addr, &["DROP TABLE"]);
        assert_eq!(r.status, 403, "{r:?}");
    });
}

#[test]
fn needs_more_holds_the_body_back_until_the_agent_is_final() {
    with_timeout(60, || {
        let mut world = World::new();
        let hold = HoldAgent {
            block_last: true,
            forever: false,
        };
        world.agent("hold", hold, AgentOptions::default());
        let addr =
            world.start(Route::new("/", CallMode::Sequential).agent(GatewayAgent::new("hold")));
        // Chunk 1 is answered "needs more": it must not reach the upstream; the final answer
        // on the last chunk blocks, so no body byte ever does.
        let r = chunked_post(addr, &["first part;", "second part"]);
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(world.upstream_body_bytes.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn needs_more_then_allow_forwards_the_whole_body() {
    with_timeout(60, || {
        let mut world = World::new();
        let hold = HoldAgent {
            block_last: false,
            forever: false,
        };
        world.agent("hold", hold, AgentOptions::default());
        let addr =
            world.start(Route::new("/", CallMode::Sequential).agent(GatewayAgent::new("hold")));
        let r = chunked_post(addr, &["first part;", "second part"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("body-bytes: "), "{r:?}");
        assert!(world.upstream_body_bytes.load(Ordering::SeqCst) >= 22);
    });
}

#[test]
fn needs_more_past_the_body_limit_applies_the_failure_policy() {
    with_timeout(60, || {
        let mut world = World::new();
        let hold = HoldAgent {
            block_last: false,
            forever: true,
        };
        let options = AgentOptions {
            failure_policy: FailurePolicy::FailClosed { status: 413 },
            ..AgentOptions::default()
        };
        world.agent("hold", hold, options);
        let addr = world.start(
            Route::new("/", CallMode::Sequential)
                .agent(GatewayAgent::new("hold").max_body_bytes(4)),
        );
        let r = chunked_post(addr, &["more than four bytes"]);
        assert_eq!(r.status, 413, "{r:?}");
    });
}
