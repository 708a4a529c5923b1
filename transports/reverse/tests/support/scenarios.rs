//! The scenarios, each `async fn(R)` for any runtime.

use super::*;
use agentwire_runtime::client::{ClientConfig, ClientError};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

/// Several agents, several connections each, over a Unix socket: registration, encodings,
/// requests with binary bodies, per-agent counts, graceful shutdown frees every slot.
pub async fn happy_path_unix<R: Runtime>(rt: R) {
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        auth: Auth::tokens(["s3cret", "second-token"]),
        ..listener_config()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket is owner-only");
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, accept_done) = start(&rt, listener, &shutdown);

    // waf-1: agentwire agent (binary encodings offered), two connections.
    let mut waf = connector_config("waf-1", "s3cret");
    waf.connections = 2;
    let waf = ReverseConnector::new(rt.clone(), ReverseEndpoint::Unix(path.clone()), waf);
    // auth: registers like a reference agent (no extension key): JSON.
    let mut auth = connector_config("auth", "second-token");
    auth.encodings.clear();
    let auth = ReverseConnector::new(rt.clone(), ReverseEndpoint::Unix(path.clone()), auth);
    let waf_stats = waf.stats();
    let waf_done = spawn_tracked(&rt, waf.run(TestAgent::new(&rt, "waf-1"), shutdown.clone()));
    let auth_done = spawn_tracked(&rt, auth.run(TestAgent::new(&rt, "auth"), shutdown.clone()));

    let mut agents = Vec::new();
    for _ in 0..3 {
        agents.push(next_agent(&rt, &mut regs).await);
    }
    let ids: HashSet<&str> = agents.iter().map(|a| a.connection_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "connection ids are unique");
    assert_eq!(handle.connections_of("waf-1"), 2);
    assert_eq!(handle.connections_of("auth"), 1);
    assert_eq!(handle.stats().live, 3);
    assert_eq!(handle.stats().registered, 3);
    for agent in &agents {
        assert!(
            agent
                .connection_id
                .starts_with(&format!("{}-", agent.agent_id))
        );
        assert_eq!(agent.peer, Peer::Unix);
        assert_eq!(agent.client.agent_id(), agent.agent_id);
        assert_eq!(agent.capabilities.agent_id, agent.agent_id);
        let expected = if agent.agent_id == "waf-1" {
            Encoding::Postcard
        } else {
            Encoding::Json
        };
        assert_eq!(agent.encoding, expected, "{}", agent.agent_id);
    }

    // Requests on every connection, concurrently, with a binary (non-UTF-8) body.
    let body: &[u8] = &[0x00, 0x9f, 0x92, 0x96, 0xff, b'x'];
    for (n, agent) in agents.iter().enumerate() {
        let sends: Vec<_> = (0..20)
            .map(|i| {
                let client = agent.client.clone();
                spawn_result(&rt, async move {
                    let id = format!("req-{n}-{i}");
                    client
                        .send_request_headers(request_headers(&id, &format!("/p/{i}")))
                        .await
                })
            })
            .collect();
        for (i, send) in sends.into_iter().enumerate() {
            let answer = within(&rt, STEP, "answer", send.recv()).await.unwrap();
            assert_eq!(header(&answer, "x-agent"), Some(agent.agent_id.as_str()));
            assert_eq!(header(&answer, "x-uri"), Some(format!("/p/{i}").as_str()));
        }
        let chunk = BodyChunk {
            correlation_id: format!("body-{n}"),
            data: Bytes::from_static(body),
            is_last: true,
            total_size: Some(body.len() as u64),
            chunk_index: 0,
            bytes_transferred: body.len() as u64,
        };
        let answer = within(
            &rt,
            STEP,
            "body answer",
            agent.client.send_request_body_chunk(chunk),
        )
        .await
        .unwrap();
        assert_eq!(header(&answer, "x-body"), Some(hex(body).as_str()));
    }
    assert_eq!(waf_stats.registrations(), 2);
    assert_eq!(waf_stats.live(), 2);

    // Shutdown: agents drain and close, the proxy side sees every connection end and frees
    // its slot; the accept loop ends and removes the socket file.
    shutdown.trigger();
    for agent in &agents {
        within(&rt, STEP, "connection closes", agent.closed.wait()).await;
        assert!(!agent.client.is_connected());
    }
    within(&rt, STEP, "waf connector stops", waf_done.wait()).await;
    within(&rt, STEP, "auth connector stops", auth_done.wait()).await;
    within(&rt, STEP, "accept loop stops", accept_done.wait()).await;
    assert_eq!(handle.stats().live, 0);
    assert_eq!(handle.connections_of("waf-1"), 0);
    assert!(!path.exists(), "socket file removed");
    assert!(
        within(&rt, STEP, "stream ends", regs.recv())
            .await
            .is_none()
    );
}

/// The same over TCP on 127.0.0.1, with MessagePack chosen.
pub async fn happy_path_tcp<R: Runtime>(rt: R) {
    let addr = "127.0.0.1:0".parse().unwrap();
    let config = ReverseListenerConfig {
        encodings: vec![Encoding::Msgpack, Encoding::Json],
        ..listener_config()
    };
    let listener = ReverseListener::bind_tcp(rt.clone(), addr, config)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let mut c = connector_config("waf-tcp", "s3cret");
    c.connections = 3;
    let connector = ReverseConnector::new(rt.clone(), ReverseEndpoint::Tcp(addr), c);
    rt.spawn(connector.run(TestAgent::new(&rt, "waf-tcp"), shutdown.clone()));
    for n in 0..3 {
        let agent = next_agent(&rt, &mut regs).await;
        assert_eq!(agent.encoding, Encoding::Msgpack);
        assert!(matches!(agent.peer, Peer::Tcp(a) if a.ip().is_loopback()));
        let answer = within(
            &rt,
            STEP,
            "answer",
            agent
                .client
                .send_request_headers(request_headers(&format!("t{n}"), "/tcp")),
        )
        .await
        .unwrap();
        assert_eq!(header(&answer, "x-agent"), Some("waf-tcp"));
    }
    shutdown.trigger();
}

/// Wrong token, id not allowed, both, no token, mismatched capabilities: one identical
/// answer, then the socket closes. Wildcards admit what they should.
pub async fn rejections_are_uniform<R: Runtime>(rt: R) {
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        allowed_agents: Allowlist::new(["waf-*", "*-edge", "auth"]),
        ..listener_config()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let to = Dial::Unix(path.clone());

    let mut mismatch = registration("waf-1", Some("s3cret"));
    mismatch.capabilities.agent_id = "waf-2".into();
    let refused = [
        registration("waf-1", Some("wrong")),
        registration("other", Some("s3cret")),
        registration("other", Some("wrong")),
        registration("waf-1", None),
        registration("edge", Some("s3cret")),
        registration("authx", Some("s3cret")),
        mismatch,
    ];
    let mut payloads = HashSet::new();
    for request in &refused {
        let (mut r, _w, response, payload) = raw_register(&rt, &to, request).await;
        assert!(!response.success, "{request:?}");
        assert_eq!(response.error.as_deref(), Some(REJECTED), "{request:?}");
        assert_eq!(response.connection_id, "");
        assert_eq!(
            json_keys_in_order(&payload),
            [
                "success",
                "error",
                "proxy_id",
                "proxy_version",
                "connection_id"
            ]
        );
        assert!(
            closed_without_data(&rt, &mut r, STEP).await,
            "closed after rejection"
        );
        payloads.insert(payload);
    }
    assert_eq!(payloads.len(), 1, "every refusal is byte-identical");

    let mut bad_version = registration("waf-1", Some("s3cret"));
    bad_version.protocol_version = 3;
    let (_r, _w, response, _) = raw_register(&rt, &to, &bad_version).await;
    assert_eq!(
        response.error.as_deref(),
        Some("Protocol version mismatch: expected 2, got 3")
    );
    let (_r, _w, response, _) = raw_register(&rt, &to, &registration("", Some("s3cret"))).await;
    assert_eq!(
        response.error.as_deref(),
        Some("Invalid message format: Agent ID cannot be empty")
    );
    no_agent(&rt, &mut regs, Duration::from_millis(100)).await;

    // Wildcards and exact names that are allowed.
    let mut open = Vec::new();
    for id in ["waf-", "waf-9", "eu-edge", "-edge", "auth"] {
        let (r, w, response, _) = raw_register(&rt, &to, &registration(id, Some("s3cret"))).await;
        assert!(response.success, "{id}: {:?}", response.error);
        assert_eq!(response.error, None);
        let agent = next_agent(&rt, &mut regs).await;
        assert_eq!(agent.agent_id, id);
        assert_eq!(agent.connection_id, response.connection_id);
        assert_eq!(
            agent.encoding,
            Encoding::Json,
            "reference-style agents get JSON"
        );
        open.push((r, w, agent));
    }
    let stats = handle.stats();
    assert_eq!(stats.rejected, refused.len() as u64 + 2);
    assert_eq!(stats.registered, 5);

    // A connector with a wrong token keeps retrying with backoff and never registers.
    let mut bad = connector_config("waf-bad", "wrong");
    bad.backoff.base = Duration::from_millis(10);
    let bad = ReverseConnector::new(rt.clone(), ReverseEndpoint::Unix(path.clone()), bad);
    let bad_stats = bad.stats();
    rt.spawn(bad.run(TestAgent::new(&rt, "waf-bad"), shutdown.clone()));
    eventually(&rt, STEP, "connector retries", || {
        bad_stats.rejections() >= 2
    })
    .await;
    assert_eq!(bad_stats.registrations(), 0);
    assert!(bad_stats.last_error().unwrap().contains(REJECTED));
    no_agent(&rt, &mut regs, Duration::from_millis(100)).await;
    shutdown.trigger();
}

/// The per-agent limit refuses (success:false) instead of accepting and dropping; a dead
/// connection fails its waiters at once and frees its slot for the returning agent.
pub async fn per_agent_limit<R: Runtime>(rt: R) {
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        max_connections_per_agent: 2,
        client: ClientConfig {
            session: agentwire_core::session::ProxyConfig {
                request_timeout: Duration::from_secs(60),
                ..Default::default()
            },
            ..Default::default()
        },
        ..listener_config()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let to = Dial::Unix(path.clone());
    let req = registration("waf-1", Some("s3cret"));

    let (r1, w1, first, _) = raw_register(&rt, &to, &req).await;
    assert!(first.success);
    let a1 = next_agent(&rt, &mut regs).await;
    let (mut r2, mut w2, second, _) = raw_register(&rt, &to, &req).await;
    assert!(second.success);
    let a2 = next_agent(&rt, &mut regs).await;
    assert_eq!(handle.connections_of("waf-1"), 2);

    let (mut r3, _w3, third, _) = raw_register(&rt, &to, &req).await;
    assert!(
        !third.success,
        "over the limit: refused, not accepted-then-dropped"
    );
    assert_eq!(
        third.error.as_deref(),
        Some("Invalid message format: Too many connections for this agent")
    );
    assert!(closed_without_data(&rt, &mut r3, STEP).await);
    no_agent(&rt, &mut regs, Duration::from_millis(100)).await;
    // The limit is per agent.
    let (_r, _w, other, _) = raw_register(&rt, &to, &registration("waf-2", Some("s3cret"))).await;
    assert!(other.success);
    let _other = next_agent(&rt, &mut regs).await;

    // A request pending on connection 1 when its agent dies fails at once.
    let client = a1.client.clone();
    let pending = spawn_result(&rt, async move {
        let started = Instant::now();
        let result = client
            .send_request_headers(request_headers("doomed", "/"))
            .await;
        (result, started.elapsed())
    });
    sleep(&rt, Duration::from_millis(100)).await;
    drop((r1, w1));
    within(&rt, STEP, "connection 1 marked dead", a1.closed.wait()).await;
    assert!(!a1.client.is_connected());
    let (result, elapsed) = within(&rt, STEP, "waiter fails", pending.recv()).await;
    assert!(
        matches!(result, Err(ClientError::ConnectionClosed(_))),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "failed fast: {elapsed:?}");
    assert_eq!(handle.connections_of("waf-1"), 1, "slot freed");

    // The returning agent is accepted and actually served.
    let (mut r4, mut w4, fourth, _) = raw_register(&rt, &to, &req).await;
    assert!(fourth.success, "{:?}", fourth.error);
    let a4 = next_agent(&rt, &mut regs).await;
    assert_ne!(a4.connection_id, a1.connection_id);
    assert_ne!(a4.connection_id, a2.connection_id);
    let client = a4.client.clone();
    let answer = spawn_result(&rt, async move {
        client
            .send_request_headers(request_headers("back", "/"))
            .await
    });
    assert_eq!(raw_answer_one(&rt, &mut r4, &mut w4).await, "back");
    let answer = within(&rt, STEP, "answer", answer.recv()).await.unwrap();
    assert_eq!(header(&answer, "x-raw"), Some("1"));
    // Connection 2 was never disturbed.
    let client = a2.client.clone();
    let answer = spawn_result(&rt, async move {
        client
            .send_request_headers(request_headers("two", "/"))
            .await
    });
    assert_eq!(raw_answer_one(&rt, &mut r2, &mut w2).await, "two");
    assert!(within(&rt, STEP, "answer", answer.recv()).await.is_ok());
    shutdown.trigger();
}

/// A one-shot result of a spawned task.
pub struct Spawned<T> {
    rx: futures_channel::oneshot::Receiver<T>,
}

impl<T> Spawned<T> {
    pub async fn recv(self) -> T {
        self.rx.await.expect("task finished")
    }
}

pub fn spawn_result<R: Runtime, T: Send + 'static>(
    rt: &R,
    future: impl Future<Output = T> + Send + 'static,
) -> Spawned<T> {
    let (tx, rx) = futures_channel::oneshot::channel();
    rt.spawn(async move {
        let _ = tx.send(future.await);
    });
    Spawned { rx }
}

/// A socket that never registers is closed at the handshake timeout, without an answer.
pub async fn registration_timeout<R: Runtime>(rt: R) {
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..listener_config()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let to = Dial::Unix(path.clone());

    let started = Instant::now();
    let (mut silent, _w) = dial(&rt, &to).await;
    let (mut partial, mut pw) = dial(&rt, &to).await;
    write_raw(&mut pw, &[0, 0, 1]).await; // half a header
    eventually(&rt, STEP, "both pending", || handle.stats().pending == 2).await;
    assert!(closed_without_data(&rt, &mut silent, STEP).await);
    assert!(closed_without_data(&rt, &mut partial, STEP).await);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed early: {elapsed:?}"
    );
    eventually(&rt, STEP, "pending freed", || handle.stats().pending == 0).await;
    assert_eq!(handle.stats().timed_out, 2);
    no_agent(&rt, &mut regs, Duration::from_millis(50)).await;
    shutdown.trigger();
}

/// An oversize length prefix is refused at once (no payload read, no answer); a wrong first
/// frame type too; a registration of exactly the limit is accepted.
pub async fn oversize_and_malformed_frames<R: Runtime>(rt: R) {
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        handshake_timeout: Duration::from_secs(30),
        ..listener_config()
    };
    let max = config.max_registration_frame;
    assert_eq!(max, 64 * 1024);
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let to = Dial::Unix(path.clone());

    for len in [max + 1, 16 * 1024 * 1024, u32::MAX] {
        let started = Instant::now();
        let (mut r, mut w) = dial(&rt, &to).await;
        let mut header = len.to_be_bytes().to_vec();
        header.push(0x01);
        write_raw(&mut w, &header).await;
        // Far sooner than the 30 s handshake timeout: the prefix alone was enough.
        assert!(closed_without_data(&rt, &mut r, STEP).await, "len {len}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // Wrong type first, and undecodable JSON: closed without an answer.
    let (mut r, mut w) = dial(&rt, &to).await;
    write_raw(
        &mut w,
        &json_frame(MessageType::RequestHeaders, &request_headers("x", "/")),
    )
    .await;
    assert!(closed_without_data(&rt, &mut r, STEP).await);
    let (mut r, mut w) = dial(&rt, &to).await;
    write_raw(&mut w, &[0, 0, 0, 3, 0x01, b'{', b'x']).await;
    assert!(closed_without_data(&rt, &mut r, STEP).await);
    eventually(&rt, STEP, "counted", || handle.stats().malformed == 5).await;

    // Exactly the limit: a valid registration padded with JSON whitespace.
    let mut frame = json_frame(
        MessageType::HandshakeRequest,
        &registration("waf-big", Some("s3cret")),
    );
    frame.resize(4 + max as usize, b' ');
    frame[..4].copy_from_slice(&max.to_be_bytes());
    let (mut r, mut w) = dial(&rt, &to).await;
    write_raw(&mut w, &frame).await;
    let (kind, payload) = within(&rt, STEP, "answer", read_raw_frame(&mut r))
        .await
        .unwrap();
    assert_eq!(kind, 0x02);
    let response: RegistrationResponse = serde_json::from_slice(&payload).unwrap();
    assert!(response.success, "{:?}", response.error);
    assert_eq!(next_agent(&rt, &mut regs).await.agent_id, "waf-big");
    eventually(&rt, STEP, "pending freed", || handle.stats().pending == 0).await;
    shutdown.trigger();
}

/// 1 000 connections that never register: the listener holds at most `max_pending` of them
/// (the rest are closed at once, and the process's descriptors stay bounded), and a
/// legitimate agent still registers and is served.
pub async fn flood_stays_bounded<R: Runtime>(rt: R) {
    const FLOOD: usize = 1000;
    const PENDING: usize = 16;
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        max_pending: PENDING,
        handshake_timeout: Duration::from_millis(800),
        ..listener_config()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let to = Dial::Unix(path.clone());

    let baseline = open_fds();
    let mut flood = Vec::with_capacity(FLOOD);
    let mut max_pending = 0;
    for i in 0..FLOOD {
        flood.push(dial(&rt, &to).await);
        max_pending = max_pending.max(handle.stats().pending);
        if i % 50 == 0 {
            // Let the accept loop catch up now and then, as a real flood would allow.
            sleep(&rt, Duration::from_millis(1)).await;
        }
    }
    eventually(&rt, STEP, "all accepted", || {
        handle.stats().accepted >= FLOOD as u64
    })
    .await;
    let stats = handle.stats();
    max_pending = max_pending.max(stats.pending);
    assert!(max_pending <= PENDING, "pending {max_pending} > {PENDING}");
    assert!(
        stats.refused_pending as usize >= FLOOD - 4 * PENDING,
        "most of the flood was closed at once: {stats:?}"
    );
    if let (Some(base), Some(now)) = (baseline, open_fds()) {
        // Our 1 000 client ends are open; the listener holds at most PENDING server ends.
        assert!(
            now <= base + FLOOD + PENDING + 150,
            "descriptors: {base} before, {now} during the flood"
        );
    }

    // A legitimate agent still gets in (it retries while the pending slots are taken).
    let connector = ReverseConnector::new(
        rt.clone(),
        ReverseEndpoint::Unix(path.clone()),
        connector_config("waf-legit", "s3cret"),
    );
    rt.spawn(connector.run(TestAgent::new(&rt, "waf-legit"), shutdown.clone()));
    let agent = next_agent(&rt, &mut regs).await;
    assert_eq!(agent.agent_id, "waf-legit");
    let answer = within(
        &rt,
        STEP,
        "answer",
        agent
            .client
            .send_request_headers(request_headers("legit", "/")),
    )
    .await
    .unwrap();
    assert_eq!(header(&answer, "x-agent"), Some("waf-legit"));
    // The flood's sockets were all closed by the listener (at once or at the timeout).
    eventually(&rt, STEP, "flood drained", || handle.stats().pending == 0).await;
    let mut closed = 0;
    for (r, _w) in &mut flood {
        if closed_without_data(&rt, r, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, FLOOD,
        "every flood socket was closed by the listener"
    );
    drop(flood);
    shutdown.trigger();
}

/// An agent connection dies under load: its in-flight requests fail fast, the agent's
/// other connection keeps serving, the connector reconnects and serves again.
pub async fn agent_killed_under_load<R: Runtime>(rt: R) {
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let relay_path = dir.path().join("relay.sock");
    let config = ReverseListenerConfig {
        client: ClientConfig {
            session: agentwire_core::session::ProxyConfig {
                request_timeout: Duration::from_secs(60),
                ..Default::default()
            },
            ..Default::default()
        },
        ..listener_config()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let relay = Relay::start(&rt, &relay_path, path.clone(), shutdown.clone());

    let mut c = connector_config("waf-k", "s3cret");
    c.connections = 2;
    let connector = ReverseConnector::new(rt.clone(), ReverseEndpoint::Unix(relay_path), c);
    let stats = connector.stats();
    let agent_logic = TestAgent::slow(&rt, "waf-k", Duration::from_millis(400));
    rt.spawn(connector.run(agent_logic.clone(), shutdown.clone()));
    let first = next_agent(&rt, &mut regs).await;
    let second = next_agent(&rt, &mut regs).await;
    assert_eq!(handle.connections_of("waf-k"), 2);
    assert_eq!(relay.connections(), 2);

    // Load: 16 slow requests in flight on each connection.
    let mut results = Vec::new();
    for (n, agent) in [&first, &second].into_iter().enumerate() {
        for i in 0..16 {
            let client = agent.client.clone();
            let id = format!("load-{n}-{i}");
            results.push((
                n,
                spawn_result(&rt, async move {
                    let started = Instant::now();
                    let r = client.send_request_headers(request_headers(&id, "/")).await;
                    (r, started.elapsed())
                }),
            ));
        }
    }
    sleep(&rt, Duration::from_millis(100)).await;
    // Kill one of the agent's connections (which one maps to which client is found out from
    // which client dies).
    relay.kill(0);
    let killed_at = Instant::now();
    let dead = within(&rt, STEP, "a connection dies", async {
        agentwire_runtime::race(
            async {
                first.closed.wait().await;
                0
            },
            async {
                second.closed.wait().await;
                1
            },
        )
        .await
    })
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(2),
        "marked dead at once"
    );
    let (mut failed, mut served) = (0, 0);
    for (n, result) in results {
        let (result, elapsed) = within(&rt, STEP, "request outcome", result.recv()).await;
        if n == dead {
            assert!(
                matches!(result, Err(ClientError::ConnectionClosed(_))),
                "{result:?}"
            );
            assert!(elapsed < Duration::from_secs(3), "failed fast: {elapsed:?}");
            failed += 1;
        } else {
            let answer = result.expect("the other connection keeps serving");
            assert_eq!(header(&answer, "x-agent"), Some("waf-k"));
            served += 1;
        }
    }
    assert_eq!((failed, served), (16, 16));
    let survivor = if dead == 0 { &second } else { &first };
    assert!(survivor.client.is_connected());

    // The connector notices and reconnects; the new connection serves.
    let back = next_agent(&rt, &mut regs).await;
    assert_eq!(back.agent_id, "waf-k");
    assert_ne!(back.connection_id, first.connection_id);
    assert_ne!(back.connection_id, second.connection_id);
    let answer = within(
        &rt,
        STEP,
        "answer after reconnect",
        back.client
            .send_request_headers(request_headers("after", "/again")),
    )
    .await
    .unwrap();
    assert_eq!(header(&answer, "x-uri"), Some("/again"));
    assert_eq!(handle.connections_of("waf-k"), 2);
    eventually(&rt, STEP, "connector registrations", || {
        stats.registrations() == 3
    })
    .await;
    eventually(&rt, STEP, "connector live count", || stats.live() == 2).await;
    shutdown.trigger();
}

/// TLS and mutual TLS on TCP: a client with a certificate registers (the validator sees the
/// chain), one without is refused during the TLS handshake.
#[cfg(feature = "tls")]
pub async fn tls_and_mtls<R: Runtime>(rt: R) {
    use agentwire_reverse::rustls;
    let pki = super::pki::Pki::new();
    let validator = |a: &RegistrationAttempt<'_>| {
        a.auth_token == Some("s3cret") && a.peer_certificates.is_some_and(|chain| !chain.is_empty())
    };
    let config = ReverseListenerConfig {
        auth: Auth::custom(validator),
        ..listener_config()
    };
    let listener = ReverseListener::bind_tls(
        rt.clone(),
        "127.0.0.1:0".parse().unwrap(),
        config,
        pki.server_config(true),
    )
    .await
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = listener.handle();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let endpoint = |config: std::sync::Arc<rustls::ClientConfig>| ReverseEndpoint::Tls {
        addr,
        server_name: "localhost".into(),
        config,
    };

    let mut c = connector_config("waf-tls", "s3cret");
    c.connections = 2;
    let connector = ReverseConnector::new(rt.clone(), endpoint(pki.client_config(true)), c);
    rt.spawn(connector.run(TestAgent::new(&rt, "waf-tls"), shutdown.clone()));
    let mut tls_agents = Vec::new();
    for n in 0..2 {
        let agent = next_agent(&rt, &mut regs).await;
        assert_eq!(agent.agent_id, "waf-tls");
        let answer = within(
            &rt,
            STEP,
            "answer over TLS",
            agent
                .client
                .send_request_headers(request_headers(&format!("tls-{n}"), "/tls")),
        )
        .await
        .unwrap();
        assert_eq!(header(&answer, "x-agent"), Some("waf-tls"));
        let body = vec![0xA5u8; 200_000];
        let chunk = BodyChunk {
            correlation_id: format!("tls-body-{n}"),
            data: Bytes::from(body.clone()),
            is_last: true,
            ..Default::default()
        };
        let answer = within(
            &rt,
            STEP,
            "large body over TLS",
            agent.client.send_request_body_chunk(chunk),
        )
        .await
        .unwrap();
        assert_eq!(header(&answer, "x-body").map(str::len), Some(400_000));
        tls_agents.push(agent);
    }

    // No client certificate: the TLS handshake fails, nothing registers.
    let anonymous = ReverseConnector::new(
        rt.clone(),
        endpoint(pki.client_config(false)),
        connector_config("waf-anon", "s3cret"),
    );
    let result = within(&rt, STEP, "anonymous attempt", anonymous.register()).await;
    assert!(result.is_err(), "registered without a client certificate");
    // A plain-TCP client on the TLS port: the handshake fails too.
    let (mut r, mut w) = dial(&rt, &Dial::Tcp(addr)).await;
    write_raw(
        &mut w,
        &json_frame(
            MessageType::HandshakeRequest,
            &registration("waf-plain", Some("s3cret")),
        ),
    )
    .await;
    let mut buf = [0u8; 64];
    // The server may answer with a TLS alert, never with a registration answer.
    if let Some(Ok(n)) = agentwire_runtime::timeout(&rt, STEP, r.read(&mut buf)).await {
        assert!(
            n == 0 || buf[0] == 0x15,
            "TLS alert or close, got {:?}",
            &buf[..n]
        );
    }
    eventually(&rt, STEP, "failed handshakes counted", || {
        handle.stats().malformed >= 2
    })
    .await;
    for a in &tls_agents {
        assert!(a.client.is_connected(), "{:?}", a.client.close_reason());
    }
    no_agent(&rt, &mut regs, Duration::from_millis(100)).await;
    assert_eq!(handle.connections_of("waf-tls"), 2);
    shutdown.trigger();
}
