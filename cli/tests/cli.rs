//! End-to-end tests of the `agentwire` binary: every subcommand, success and error exits.
//!
//! Every child process gets a timeout (assert_cmd's, or a kill-on-drop guard for `serve`),
//! every socket lives in a temporary directory.

use assert_cmd::Command;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn agentwire() -> Command {
    let mut cmd = Command::cargo_bin("agentwire").expect("binary built");
    cmd.timeout(TIMEOUT);
    cmd
}

/// A running `agentwire serve`, killed when dropped.
struct Server {
    child: Child,
    path: PathBuf,
    /// The gRPC endpoint it printed, when started with `--grpc`.
    grpc: Option<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// `agentwire serve --uds <tmp>/agent.sock` with `extra` arguments; returns once every
    /// listener has printed its line.
    fn start_with(extra: &[&str], dir: tempfile::TempDir) -> Server {
        let path = dir.path().join("agent.sock");
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("agentwire"))
            .args(["serve", "--uds"])
            .arg(&path)
            .args(["--agent-id", "test-agent", "--drain-timeout", "2s"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let listeners = 1 + usize::from(extra.contains(&"--grpc"));
        let mut server = Server {
            child,
            path,
            grpc: None,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..listeners {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("serve printed its listeners");
            if let Some(url) = line.strip_prefix("grpc ") {
                server.grpc = Some(url.to_owned());
            }
        }
        assert!(std::os::unix::net::UnixStream::connect(&server.path).is_ok());
        server
    }

    fn start() -> Server {
        Server::start_with(&[], tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Sends SIGINT and waits (bounded) for the exit status.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout_json(output: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = agentwire().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["bench", "serve", "probe", "conform"] {
        assert!(text.contains(sub), "{sub} missing from --help:\n{text}");
    }
    let out = agentwire().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for rule in [
        "/admin",
        "/old/",
        "DROP TABLE",
        "x-agentwire-agent",
        "x-agentwire-inspected",
    ] {
        assert!(text.contains(rule), "{rule} missing from serve --help");
    }
}

#[test]
fn probe_of_a_missing_socket_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = agentwire()
        .arg("probe")
        .arg(dir.path().join("missing.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cannot connect") && err.contains("missing.sock"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn probe_of_something_that_is_not_an_agent_fails_with_one_line() {
    // A listener that answers every connection with bytes that are not a handshake.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("http.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let fake = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let deadline = Instant::now() + TIMEOUT;
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("probe never connected: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        std::thread::sleep(Duration::from_millis(200));
    });
    let out = agentwire()
        .arg("probe")
        .arg(&path)
        .args(["--timeout", "3s"])
        .output()
        .unwrap();
    fake.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("does not speak"), "{err}");
}

#[test]
fn probe_of_a_closed_grpc_port_fails_with_one_line() {
    let out = agentwire()
        .args(["probe", "http://127.0.0.1:9", "--timeout", "2s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cannot connect to http://127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn serve_answers_probes_by_its_rules_and_exits_cleanly_on_sigint() {
    let mut server = Server::start();
    let probe = |args: &[&str]| {
        let out = agentwire()
            .arg("probe")
            .arg(server.path())
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_json(&out)
    };
    let admin = probe(&["--uri", "/admin/users"]);
    assert_eq!(admin["decision"]["block"]["status"], 403, "{admin}");
    assert_eq!(admin["capabilities"]["agent_id"], "test-agent");
    assert_eq!(admin["protocol_version"], 2);

    let old = probe(&["--uri", "/old/page?x=1"]);
    assert_eq!(old["decision"]["redirect"]["url"], "/new/page?x=1");
    assert_eq!(old["decision"]["redirect"]["status"], 301);

    let ok = probe(&[
        "--uri",
        "/shop",
        "--header",
        "Host: shop.example",
        "--encoding",
        "msgpack",
    ]);
    assert_eq!(ok["decision"], "allow");
    assert_eq!(ok["encoding"], "msgpack");
    assert_eq!(
        ok["responses"]["request_headers"]["request_headers"][0]["set"]["value"],
        "test-agent"
    );

    let sql = probe(&[
        "--method",
        "POST",
        "--uri",
        "/search",
        "--body",
        "q=1; drop table users",
    ]);
    assert_eq!(sql["decision"]["block"]["status"], 403, "{sql}");

    // Human-readable form shows the handshake and the decision.
    let out = agentwire()
        .arg("probe")
        .arg(server.path())
        .args(["--uri", "/admin"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("protocol version  2") && text.contains("\"status\": 403"),
        "{text}"
    );

    let status = server.interrupt();
    assert!(status.success(), "serve exit status {status:?}");
    assert!(!server.path().exists(), "socket removed on exit");
}

#[test]
fn conform_passes_against_serve() {
    let server = Server::start();
    let out = agentwire()
        .arg("conform")
        .arg(server.path())
        .arg("--json")
        .output()
        .unwrap();
    let report = stdout_json(&out);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["failed"], 0);
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 11, "{report:#}");
    assert!(checks.iter().all(|c| c["passed"] == true));

    let out = agentwire()
        .arg("conform")
        .arg(server.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("checks passed") && !table.contains("FAIL"),
        "{table}"
    );
}

#[test]
fn conform_fails_against_an_agent_that_fails_open() {
    // An agent that completes the handshake, then answers every frame with an Allow for id
    // "" (what the reference does with undecodable events, S1), and never answers guardrails.
    use agentwire_core::encoding::encode_frame_of;
    use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, MessageType};
    use agentwire_core::message::{AgentResponse, Encoding, HandshakeResponse};
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(agentwire_core::sync::AtomicBool::new(false));
    let flag = stop.clone();
    let fake = std::thread::spawn(move || {
        let deadline = Instant::now() + TIMEOUT;
        while !flag.load(agentwire_core::sync::Ordering::Relaxed) && Instant::now() < deadline {
            let Ok((mut s, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    decoder.extend(&buf[..n]);
                    while let Ok(Some(frame)) = decoder.decode() {
                        let mut out = bytes::BytesMut::new();
                        let encoded = match frame.kind {
                            MessageType::HandshakeRequest => {
                                let r = HandshakeResponse {
                                    protocol_version: 2,
                                    success: true,
                                    ..Default::default()
                                };
                                encode_frame_of(
                                    MessageType::HandshakeResponse,
                                    &r,
                                    Encoding::Json,
                                    DEFAULT_MAX_FRAME_LEN,
                                    &mut out,
                                )
                            }
                            MessageType::GuardrailInspect | MessageType::Cancel => continue,
                            _ => encode_frame_of(
                                MessageType::AgentResponse,
                                &AgentResponse::allow(),
                                Encoding::Json,
                                DEFAULT_MAX_FRAME_LEN,
                                &mut out,
                            ),
                        };
                        encoded.unwrap();
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let out = agentwire()
        .arg("conform")
        .arg(&path)
        .args(["--timeout", "1s", "--json"])
        .output()
        .unwrap();
    stop.store(true, agentwire_core::sync::Ordering::Relaxed);
    fake.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "a failing agent fails conform");
    let report = stdout_json(&out);
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.iter().any(|n| n.contains("S1")), "{report:#}");
    assert!(failed.iter().any(|n| n.contains("B2")), "{report:#}");
}

#[test]
fn bench_requests_json_has_every_key() {
    let out = agentwire()
        .args(["bench", "--requests", "2000", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    for key in [
        "decisions_per_s",
        "mb_per_s",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "requests",
        "errors",
    ] {
        assert!(report.get(key).is_some(), "{key} missing: {report}");
    }
    assert_eq!(report["requests"], 2000);
    assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
    assert!(report["decisions_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        report.get("allocs_per_request").is_some(),
        cfg!(feature = "count-allocs")
    );
}

#[test]
fn bench_streams_bodies_and_prints_a_table() {
    let out = agentwire()
        .args([
            "bench",
            "--requests",
            "200",
            "--body-bytes",
            "100000",
            "--chunk-bytes",
            "32768",
            "--encoding",
            "json",
            "--connections",
            "2",
            "--concurrency",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["decisions/s", "body MB/s", "p99.9", "json"] {
        assert!(text.contains(word), "{word} missing:\n{text}");
    }
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn bench_against_an_external_agent() {
    let server = Server::start();
    let out = agentwire()
        .args(["bench", "--requests", "300", "--json", "--target"])
        .arg(server.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    assert_eq!(report["requests"], 300);
    assert_eq!(report["transport"], "uds (external)");
}

#[test]
fn impossible_choices_fail_with_a_clear_reason() {
    for args in [
        &["bench", "--transport", "grpc", "--runtime", "smol"][..],
        &[
            "bench",
            "--target",
            "http://127.0.0.1:9",
            "--runtime",
            "async-std",
        ],
        &["bench", "--target", "http://127.0.0.1:9", "--requests", "1"],
        &["serve", "--reverse", "tcp://not-an-address"],
        &["serve"],
    ] {
        let out = agentwire().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    // Usage errors are clap's (exit status 2).
    let out = agentwire()
        .args(["bench", "--encoding", "cbor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_runs_on_async_std_and_smol() {
    for runtime in ["async-std", "smol"] {
        let out = agentwire()
            .args(["bench", "--requests", "500", "--json", "--runtime", runtime])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{runtime}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = stdout_json(&out);
        assert_eq!(report["runtime"], runtime);
        assert_eq!(report["requests"], 500);
    }
}

fn probe_json(endpoint: &str, args: &[&str]) -> Value {
    let out = agentwire()
        .args(["probe", endpoint, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

#[test]
fn serve_over_grpc_h2c_answers_probes() {
    let server = Server::start_with(&["--grpc", "127.0.0.1:0"], tempfile::tempdir().unwrap());
    let url = server.grpc.clone().expect("grpc endpoint printed");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let admin = probe_json(&url, &["--uri", "/admin"]);
    assert_eq!(admin["decision"]["block"]["status"], 403, "{admin}");
    assert_eq!(admin["encoding"], "protobuf");
    let sql = probe_json(&url, &["--uri", "/q", "--body", "1;DROP table t"]);
    assert_eq!(sql["decision"]["block"]["status"], 403, "{sql}");
    // The Unix socket serves at the same time.
    let uds = probe_json(server.path().to_str().unwrap(), &["--uri", "/ok"]);
    assert_eq!(uds["decision"], "allow");
}

#[test]
fn serve_over_grpc_tls_answers_probes_that_trust_its_ca() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "agentwire test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let file = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca_pem, cert_pem, key_pem) = (
        file("ca.pem", ca.pem()),
        file("cert.pem", cert.pem()),
        file("key.pem", key.serialize_pem()),
    );
    let server = Server::start_with(
        &[
            "--grpc",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_pem,
            "--tls-key",
            &key_pem,
        ],
        dir,
    );
    let url = server.grpc.clone().expect("grpc endpoint printed");
    assert!(url.starts_with("https://"), "{url}");
    let ok = probe_json(&url, &["--uri", "/fine", "--tls-ca", &ca_pem]);
    assert_eq!(ok["decision"], "allow", "{ok}");
    // Without trusting the CA the probe fails, with one line.
    let out = agentwire().args(["probe", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}

#[test]
fn bench_over_embedded_grpc_and_reverse_connections() {
    for transport in ["grpc", "reverse"] {
        let out = agentwire()
            .args([
                "bench",
                "--requests",
                "400",
                "--json",
                "--transport",
                transport,
            ])
            .args(["--body-bytes", "3000", "--chunk-bytes", "1000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = stdout_json(&out);
        assert_eq!(report["transport"], transport);
        assert_eq!(report["requests"], 400, "{report}");
        assert_eq!(report["decisions"], 1600, "{report}");
    }
}

#[test]
fn bench_against_an_external_grpc_agent() {
    let server = Server::start_with(&["--grpc", "127.0.0.1:0"], tempfile::tempdir().unwrap());
    let url = server.grpc.clone().unwrap();
    let out = agentwire()
        .args(["bench", "--requests", "300", "--json", "--target", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    assert_eq!(report["requests"], 300);
    assert_eq!(report["encoding"], "protobuf");
}

#[test]
fn serve_over_reverse_connections_registers_and_answers() {
    use agentwire_core::message::{Decision, RequestHeaders};
    use agentwire_reverse::{Auth, ReverseListener, ReverseListenerConfig};
    use agentwire_runtime::server::Shutdown;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.sock");
    let shutdown = Shutdown::new();
    let mut registrations = rt.block_on(async {
        let config = ReverseListenerConfig {
            auth: Auth::tokens(["t0ken"]),
            ..ReverseListenerConfig::default()
        };
        let listener = ReverseListener::bind_unix(agentwire_tokio::runtime(), &path, config)
            .expect("listener binds");
        let (accept, registrations) = listener.serve(shutdown.clone());
        tokio::spawn(accept);
        registrations
    });
    let uds = dir.path().join("agent.sock");
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("agentwire"))
        .args([
            "serve",
            "--agent-id",
            "rev-agent",
            "--token",
            "t0ken",
            "--reverse",
        ])
        .arg(&path)
        .arg("--uds")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = KillOnDrop(child);
    rt.block_on(async {
        let agent = tokio::time::timeout(Duration::from_secs(30), registrations.recv())
            .await
            .expect("the agent registers in time")
            .expect("a registration");
        assert_eq!(agent.agent_id, "rev-agent");
        let mut request = RequestHeaders {
            method: "GET".into(),
            uri: "/admin/panel".into(),
            ..Default::default()
        };
        request.metadata.correlation_id = "rev-1".into();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            agent.client.send_request_headers(request),
        )
        .await
        .expect("answered in time")
        .expect("answered");
        assert!(matches!(
            answer.decision,
            Decision::Block { status: 403, .. }
        ));
    });
    shutdown.trigger();
    let _ = guard.0.kill();
}

/// Kills the child when dropped (the test failed or finished).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
