//! A real Pingora server with the agent gateway, in front of a tiny HTTP/1.1 upstream, asking
//! the demo agent (and test agents) over Unix sockets in a temporary directory.

use agentwire_cli::demo::DemoAgent;
use agentwire_core::message::{
    AgentResponse, BodyChunk, Decision, RequestComplete, RequestHeaders, ResponseHeaders,
};
use agentwire_pingora::gateway::{GatewayStop, serve};
use agentwire_pingora::{AgentGateway, CallMode, GatewayAgent, GatewayConfig, Route};
use agentwire_pool::{AgentOptions, AgentPool, FailurePolicy, PoolConfig};
use agentwire_tokio::{AgentHandler, Shutdown, TokioRuntime, UdsServer, UdsServerConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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

    /// Replaces the upstream (before [`start`](Self::start)) by one that answers every request
    /// with a chunked body written as `parts`, pausing `pause` after each.
    fn stream_upstream(&mut self, parts: Vec<String>, pause: Duration) {
        self.upstream = self
            .rt
            .block_on(start_streaming_upstream(parts, pause, true));
    }

    /// Like [`stream_upstream`](Self::stream_upstream), with a `content-length` body.
    fn stream_upstream_with_length(&mut self, parts: Vec<String>, pause: Duration) {
        self.upstream = self
            .rt
            .block_on(start_streaming_upstream(parts, pause, false));
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

/// An HTTP/1.1 upstream that answers each request head with `200` and a body sent as `parts`
/// (one write each, one HTTP chunk each if `chunked`, else a `content-length` body), pausing
/// `pause` after each part.
async fn start_streaming_upstream(
    parts: Vec<String>,
    pause: Duration,
    chunked: bool,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let parts = Arc::new(parts);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let parts = parts.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_until(&mut stream, &mut buf, b"\r\n\r\n", None).await {
                    buf.drain(..end + 4);
                    let framing = if chunked {
                        "transfer-encoding: chunked".to_string()
                    } else {
                        format!(
                            "content-length: {}",
                            parts.iter().map(String::len).sum::<usize>()
                        )
                    };
                    let head =
                        format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n{framing}\r\n\r\n");
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    for part in parts.iter() {
                        let chunk = if chunked {
                            format!("{:x}\r\n{part}\r\n", part.len())
                        } else {
                            part.clone()
                        };
                        // The gateway may drop the connection mid-body (an aborted response).
                        if stream.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    if chunked && stream.write_all(b"0\r\n\r\n").await.is_err() {
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

/// The payload of a chunked body, or `None` if it does not end with the last (empty) chunk.
fn dechunk(body: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return after.starts_with("\r\n").then_some(out);
        }
        if after.len() < n + 2 {
            return None;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

/// Polls `done` every 10 ms until it holds; fails after `secs`.
fn wait_until(secs: u64, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
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

/// What a [`RecordingAgent`] saw.
#[derive(Debug, Default)]
struct Recorded {
    request_ids: Vec<String>,
    chunks: Vec<BodyChunk>,
    /// Each RequestComplete with the number of response body chunks seen before it.
    completes: Vec<(RequestComplete, usize)>,
}

/// Agent that records request ids, response body chunks and completions; answers each
/// response body chunk after `delay`, with 403 if it contains `block_on`.
struct RecordingAgent {
    seen: Arc<Mutex<Recorded>>,
    delay: Duration,
    block_on: Option<&'static str>,
}

impl RecordingAgent {
    fn new(delay: Duration, block_on: Option<&'static str>) -> (Self, Arc<Mutex<Recorded>>) {
        let seen = Arc::new(Mutex::new(Recorded::default()));
        let agent = RecordingAgent {
            seen: seen.clone(),
            delay,
            block_on,
        };
        (agent, seen)
    }
}

impl AgentHandler for RecordingAgent {
    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        let id = event.metadata.correlation_id;
        self.seen.lock().unwrap().request_ids.push(id);
        AgentResponse::allow()
    }

    async fn on_response_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        tokio::time::sleep(self.delay).await;
        let hit = self
            .block_on
            .is_some_and(|m| event.data.windows(m.len()).any(|w| w == m.as_bytes()));
        self.seen.lock().unwrap().chunks.push(event);
        if hit {
            AgentResponse::block(403)
        } else {
            AgentResponse::allow()
        }
    }

    async fn on_request_complete(&self, event: RequestComplete) -> AgentResponse {
        let mut seen = self.seen.lock().unwrap();
        let chunks = seen.chunks.len();
        seen.completes.push((event, chunks));
        AgentResponse::allow()
    }
}

fn parts(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_string()).collect()
}

#[test]
fn response_body_chunks_reach_the_agent_in_order() {
    with_timeout(60, || {
        let mut world = World::new();
        let body = ["alpha-", "beta-", "gamma-", "delta"];
        world.stream_upstream(parts(&body), Duration::from_millis(50));
        let (rec, seen) = RecordingAgent::new(Duration::ZERO, None);
        world.agent("rec", rec, AgentOptions::default());
        // Inspection of response bodies is off by default.
        let (quiet, quiet_seen) = RecordingAgent::new(Duration::ZERO, None);
        world.agent("quiet", quiet, AgentOptions::default());
        let addr = world.start(
            Route::new("/", CallMode::Sequential)
                .agent(GatewayAgent::new("rec").inspect_response_body(true))
                .agent(GatewayAgent::new("quiet")),
        );
        let r = get(addr, "/stream");
        assert_eq!(r.status, 200, "{r:?}");
        let expected = body.concat();
        assert_eq!(
            dechunk(&r.body).as_deref(),
            Some(expected.as_str()),
            "{r:?}"
        );

        wait_until(10, "request complete", || {
            !seen.lock().unwrap().completes.is_empty()
        });
        let seen = seen.lock().unwrap();
        let chunks = &seen.chunks;
        assert!(chunks.len() >= 2, "the body came in one chunk: {chunks:?}");
        let mut data = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.chunk_index as usize, i, "{chunks:?}");
            assert_eq!(c.correlation_id, seen.request_ids[0]);
            assert_eq!(c.is_last, i + 1 == chunks.len(), "{chunks:?}");
            data.extend_from_slice(&c.data);
            assert_eq!(c.bytes_transferred, data.len() as u64, "{chunks:?}");
        }
        assert_eq!(String::from_utf8(data).unwrap(), expected);
        let (complete, chunks_before) = &seen.completes[0];
        assert_eq!(
            *chunks_before,
            chunks.len(),
            "completion before the last chunk"
        );
        assert_eq!(complete.correlation_id, seen.request_ids[0]);
        assert_eq!(complete.response_body_size, expected.len() as u64);
        assert_eq!(complete.status, 200);

        wait_until(10, "request complete (quiet)", || {
            !quiet_seen.lock().unwrap().completes.is_empty()
        });
        assert!(quiet_seen.lock().unwrap().chunks.is_empty());
    });
}

#[test]
fn response_body_block_aborts_the_response_at_the_next_chunk() {
    with_timeout(60, || {
        let mut world = World::new();
        let body = [
            "part-1;",
            "part-2 STOP;",
            "part-3;",
            "part-4;",
            "part-5 end",
        ];
        // Pauses long enough for the agent's verdict to arrive before the next chunk.
        world.stream_upstream(parts(&body), Duration::from_millis(500));
        let (rec, seen) = RecordingAgent::new(Duration::ZERO, Some("STOP"));
        // Fail-open: only the Block itself can end the response.
        let options = AgentOptions {
            failure_policy: FailurePolicy::FailOpen,
            ..AgentOptions::default()
        };
        world.agent("rec", rec, options);
        let addr = world.start(
            Route::new("/", CallMode::Sequential)
                .agent(GatewayAgent::new("rec").inspect_response_body(true)),
        );
        let started = Instant::now();
        let r = get(addr, "/stream");
        assert_eq!(r.status, 200, "the status line was already out: {r:?}");
        assert!(r.body.contains("part-2 STOP;"), "{r:?}");
        assert!(
            !r.body.contains("part-3"),
            "not aborted at the next chunk: {r:?}"
        );
        assert!(!r.body.contains("part-5"), "{r:?}");
        assert_eq!(dechunk(&r.body), None, "the body must end cut short: {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the connection was not closed: {:?}",
            started.elapsed()
        );
        wait_until(10, "request complete", || {
            !seen.lock().unwrap().completes.is_empty()
        });
        let seen = seen.lock().unwrap();
        assert!(seen.chunks.iter().all(|c| !c.is_last), "{:?}", seen.chunks);
        assert!(seen.completes[0].0.error.is_some(), "{:?}", seen.completes);
    });
}

/// Agent that blocks every response at its headers with 451, a body and a header.
struct ResponseHeaderBlockAgent;

impl AgentHandler for ResponseHeaderBlockAgent {
    async fn on_response_headers(&self, _event: ResponseHeaders) -> AgentResponse {
        let mut headers = BTreeMap::new();
        headers.insert("x-blocked-by".to_string(), "test-agent".to_string());
        AgentResponse::with_decision(Decision::Block {
            status: 451,
            body: Some("response withheld".into()),
            headers: Some(headers),
        })
    }
}

#[test]
fn block_on_response_headers_replaces_the_response() {
    with_timeout(60, || {
        let mut world = World::new();
        world.agent("rb", ResponseHeaderBlockAgent, AgentOptions::default());
        let addr = world.start(
            Route::new("/", CallMode::Sequential)
                .agent(GatewayAgent::new("rb").inspect_response_body(true)),
        );
        let r = get(addr, "/hello");
        assert_eq!(r.status, 451, "{r:?}");
        assert_eq!(r.body, "response withheld", "{r:?}");
        assert_eq!(r.header("x-blocked-by").as_deref(), Some("test-agent"));
        assert!(
            !r.body.contains("body-bytes"),
            "upstream body delivered: {r:?}"
        );
    });
}

/// Agent that challenges `/basic` with a `WWW-Authenticate` parameter and `/captcha` without.
struct ChallengeAgent;

impl AgentHandler for ChallengeAgent {
    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        let mut params = BTreeMap::new();
        let challenge_type = if event.uri.starts_with("/basic") {
            params.insert(
                "www-authenticate".to_string(),
                "Basic realm=\"agentwire\"".to_string(),
            );
            "basic"
        } else if event.uri.starts_with("/captcha") {
            params.insert("body".to_string(), "solve me".to_string());
            "captcha"
        } else {
            return AgentResponse::allow();
        };
        AgentResponse::with_decision(Decision::Challenge {
            challenge_type: challenge_type.to_string(),
            params,
        })
    }
}

#[test]
fn challenge_is_401_with_www_authenticate_else_403() {
    with_timeout(60, || {
        let mut world = World::new();
        world.agent("ch", ChallengeAgent, AgentOptions::default());
        let addr =
            world.start(Route::new("/", CallMode::Sequential).agent(GatewayAgent::new("ch")));
        let r = get(addr, "/basic/x");
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Basic realm=\"agentwire\"")
        );
        assert!(!r.body.contains("body-bytes"), "{r:?}");

        let r = get(addr, "/captcha");
        assert_eq!(r.status, 403, "{r:?}");
        assert_eq!(r.header("www-authenticate"), None, "{r:?}");
        assert_eq!(r.body, "solve me", "{r:?}");

        let r = get(addr, "/open");
        assert_eq!(r.status, 200, "{r:?}");
    });
}

/// A body of `n` numbered lines sent as one part each, 10 ms apart, behind an agent taking
/// 200 ms per response chunk: the agent falls far behind the body (the queue fills after
/// about 20 of them).
fn slow_response_agent_world(
    policy: FailurePolicy,
    n: usize,
) -> (World, SocketAddr, Arc<Mutex<Recorded>>, String) {
    let mut world = World::new();
    let lines: Vec<String> = (0..n).map(|i| format!("line {i:04}\n")).collect();
    let expected = lines.concat();
    world.stream_upstream(lines, Duration::from_millis(10));
    let (rec, seen) = RecordingAgent::new(Duration::from_millis(200), None);
    let options = AgentOptions {
        failure_policy: policy,
        request_timeout: Some(Duration::from_secs(2)),
        ..AgentOptions::default()
    };
    world.agent("slow", rec, options);
    let addr = world.start(
        Route::new("/", CallMode::Sequential)
            .agent(GatewayAgent::new("slow").inspect_response_body(true)),
    );
    (world, addr, seen, expected)
}

#[test]
fn slow_fail_open_agent_does_not_stall_the_response() {
    with_timeout(60, || {
        let n = 80;
        let (_world, addr, seen, expected) = slow_response_agent_world(FailurePolicy::FailOpen, n);
        let started = Instant::now();
        let r = get(addr, "/stream");
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(dechunk(&r.body).as_deref(), Some(expected.as_str()));
        // The upstream alone takes ~0.8 s; paced by the agent it would take 16 s.
        assert!(took < Duration::from_secs(4), "response stalled: {took:?}");
        // The agent judges what was queued, then gets nothing more of this body.
        wait_until(20, "request complete", || {
            !seen.lock().unwrap().completes.is_empty()
        });
        let seen = seen.lock().unwrap();
        let bytes: usize = seen.chunks.iter().map(|c| c.data.len()).sum();
        assert!(bytes < expected.len(), "inspection never stopped");
        assert!(seen.chunks.iter().all(|c| !c.is_last));
        assert!(seen.completes[0].0.error.is_none(), "{:?}", seen.completes);
    });
}

#[test]
fn slow_fail_closed_agent_aborts_the_response() {
    with_timeout(60, || {
        let n = 80;
        let (_world, addr, _seen, expected) =
            slow_response_agent_world(FailurePolicy::FailClosed { status: 503 }, n);
        let r = get(addr, "/stream");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(dechunk(&r.body), None, "the body must end cut short: {r:?}");
        assert!(r.body.len() < expected.len(), "{r:?}");
    });
}

#[test]
fn response_body_limit_cuts_what_the_agent_sees_not_the_response() {
    with_timeout(60, || {
        let mut world = World::new();
        let body = ["alpha-", "beta-", "gamma-", "delta"];
        world.stream_upstream(parts(&body), Duration::from_millis(50));
        let (rec, seen) = RecordingAgent::new(Duration::ZERO, None);
        world.agent("rec", rec, AgentOptions::default());
        let addr = world.start(
            Route::new("/", CallMode::Sequential).agent(
                GatewayAgent::new("rec")
                    .inspect_response_body(true)
                    .max_body_bytes(8),
            ),
        );
        let r = get(addr, "/stream");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(dechunk(&r.body).as_deref(), Some(body.concat().as_str()));
        wait_until(10, "request complete", || {
            !seen.lock().unwrap().completes.is_empty()
        });
        let seen = seen.lock().unwrap();
        let data: Vec<u8> = seen.chunks.iter().flat_map(|c| c.data.to_vec()).collect();
        assert_eq!(&data[..], b"alpha-be", "{:?}", seen.chunks);
        assert!(seen.chunks.last().unwrap().is_last, "{:?}", seen.chunks);
        assert_eq!(seen.chunks.iter().filter(|c| c.is_last).count(), 1);
    });
}

#[test]
fn response_body_block_cuts_a_content_length_body_short() {
    with_timeout(60, || {
        let mut world = World::new();
        let body = ["part-1;", "part-2 STOP;", "part-3;", "part-4 end"];
        world.stream_upstream_with_length(parts(&body), Duration::from_millis(500));
        let (rec, _seen) = RecordingAgent::new(Duration::ZERO, Some("STOP"));
        world.agent("rec", rec, AgentOptions::default());
        let addr = world.start(
            Route::new("/", CallMode::Sequential)
                .agent(GatewayAgent::new("rec").inspect_response_body(true)),
        );
        let r = get(addr, "/stream");
        assert_eq!(r.status, 200, "{r:?}");
        let declared: usize = r.header("content-length").unwrap().parse().unwrap();
        assert_eq!(declared, body.concat().len());
        assert!(r.body.starts_with("part-1;part-2 STOP;"), "{r:?}");
        assert!(r.body.len() < declared, "the full body went through: {r:?}");
    });
}
