//! Runtime-generic scenarios of the reverse transport; `tests/reverse.rs` runs each one on
//! every runtime.

#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "tls")]
pub mod pki;
pub mod scenarios;
pub mod vectors;

use agentwire_core::encoding::{decode_event, encode_frame_of};
use agentwire_core::frame::MessageType;
use agentwire_core::message::*;
use agentwire_reverse::*;
use agentwire_runtime::server::{AgentHandler, Shutdown};
use agentwire_runtime::{BoxReader, BoxWriter, Runtime};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Every scenario's hard limit.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(90);
/// Limit of one expected step (a registration arriving, an answer, a close).
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `scenario` with a hard timeout on the runtime's own timer.
pub async fn bounded<R: Runtime, F, Fut>(rt: R, scenario: F)
where
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = ()>,
{
    let limit = SCENARIO_LIMIT;
    // On the heap: scenario futures are large in debug builds, and a `block_on` polls them
    // on the test thread's small stack.
    let scenario = Box::pin(scenario(rt.clone()));
    if agentwire_runtime::timeout(&rt, limit, scenario)
        .await
        .is_none()
    {
        panic!("scenario did not finish within {limit:?}");
    }
}

/// `future` must complete within `limit`.
pub async fn within<R: Runtime, T>(
    rt: &R,
    limit: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> T {
    match agentwire_runtime::timeout(rt, limit, future).await {
        Some(v) => v,
        None => panic!("{what}: not done within {limit:?}"),
    }
}

pub async fn sleep<R: Runtime>(rt: &R, d: Duration) {
    rt.sleep_until(Instant::now() + d).await;
}

/// Polls `cond` every 10 ms until it holds, or panics after `limit`.
pub async fn eventually<R: Runtime>(
    rt: &R,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {limit:?}"
        );
        sleep(rt, Duration::from_millis(10)).await;
    }
}

/// A private temporary directory for sockets.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("aw-rev")
        .tempdir()
        .expect("temp dir")
}

/// A spawned future's completion flag.
pub fn spawn_tracked<R: Runtime>(
    rt: &R,
    future: impl Future<Output = ()> + Send + 'static,
) -> Shutdown {
    let done = Shutdown::new();
    let flag = done.clone();
    rt.spawn(async move {
        future.await;
        flag.trigger();
    });
    done
}

/// Starts `listener`; returns the registrations and the accept loop's completion flag.
pub fn start<R: Runtime>(
    rt: &R,
    listener: ReverseListener<R>,
    shutdown: &Shutdown,
) -> (Registrations, Shutdown) {
    let (accept, registrations) = listener.serve(shutdown.clone());
    let done = spawn_tracked(rt, async move {
        accept.await.expect("accept loop");
    });
    (registrations, done)
}

/// The next registration, within [`STEP`].
pub async fn next_agent<R: Runtime>(rt: &R, regs: &mut Registrations) -> RegisteredAgent {
    within(rt, STEP, "next registration", regs.recv())
        .await
        .expect("registration stream ended")
}

/// Asserts no registration arrives within `quiet`.
pub async fn no_agent<R: Runtime>(rt: &R, regs: &mut Registrations, quiet: Duration) {
    if let Some(Some(agent)) = agentwire_runtime::timeout(rt, quiet, regs.recv()).await {
        panic!("unexpected registration of {}", agent.connection_id);
    }
}

/// The test agent: answers request headers with `x-agent: <name>`, `x-uri: <uri>`, and
/// body chunks with `x-body: <hex of the bytes>`, after an optional delay.
pub struct TestAgent<R: Runtime> {
    pub name: String,
    pub rt: R,
    pub delay: Duration,
    pub handled: AtomicU64,
}

impl<R: Runtime> TestAgent<R> {
    pub fn new(rt: &R, name: &str) -> Arc<Self> {
        TestAgent::slow(rt, name, Duration::ZERO)
    }

    pub fn slow(rt: &R, name: &str, delay: Duration) -> Arc<Self> {
        Arc::new(TestAgent {
            name: name.to_owned(),
            rt: rt.clone(),
            delay,
            handled: AtomicU64::new(0),
        })
    }
}

fn set(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Set {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<R: Runtime> AgentHandler for TestAgent<R> {
    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        if !self.delay.is_zero() {
            sleep(&self.rt, self.delay).await;
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
        let mut r = AgentResponse::allow();
        r.request_headers.push(set("x-agent", &self.name));
        r.request_headers.push(set("x-uri", &event.uri));
        r
    }

    async fn on_request_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        self.handled.fetch_add(1, Ordering::Relaxed);
        let mut r = AgentResponse::allow();
        r.request_headers.push(set("x-body", &hex(&event.data)));
        r
    }
}

/// The value of a `set` header mutation in `response`.
pub fn header<'a>(response: &'a AgentResponse, name: &str) -> Option<&'a str> {
    response.request_headers.iter().find_map(|op| match op {
        HeaderOp::Set { name: n, value } if n == name => Some(value.as_str()),
        _ => None,
    })
}

pub fn request_headers(correlation_id: &str, uri: &str) -> RequestHeaders {
    let mut r = RequestHeaders {
        method: "GET".into(),
        uri: uri.into(),
        ..Default::default()
    };
    r.metadata.correlation_id = correlation_id.into();
    r.metadata.client_ip = "127.0.0.1".into();
    r
}

/// Listener settings most scenarios use: token `s3cret`, agents `waf-*` and `auth`.
pub fn listener_config() -> ReverseListenerConfig {
    ReverseListenerConfig {
        auth: Auth::tokens(["s3cret"]),
        allowed_agents: Allowlist::new(["waf-*", "auth"]),
        ..Default::default()
    }
}

/// Connector settings with fast backoff for tests.
pub fn connector_config(agent_id: &str, token: &str) -> ConnectorConfig {
    let mut c = ConnectorConfig::new(agent_id).with_token(token);
    c.backoff.base = Duration::from_millis(20);
    c.backoff.max_delay = Duration::from_millis(400);
    c.registration_timeout = Duration::from_secs(5);
    c.serve.drain_timeout = Duration::from_secs(2);
    c
}

/// A registration request like a reference agent's (no agentwire extension).
pub fn registration(agent_id: &str, token: Option<&str>) -> RegistrationRequest {
    let mut r = RegistrationRequest {
        protocol_version: 2,
        agent_id: agent_id.into(),
        auth_token: token.map(Into::into),
        ..Default::default()
    };
    r.capabilities.agent_id = agent_id.into();
    r.capabilities.name = "test agent".into();
    r.capabilities.version = "1.0.0".into();
    r
}

/// One JSON frame of `kind`.
pub fn json_frame<T: serde::Serialize>(kind: MessageType, value: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame_of(kind, value, Encoding::Json, u32::MAX, &mut out).expect("encode");
    out.to_vec()
}

/// Reads one frame: the type byte and the payload.
pub async fn read_raw_frame(reader: &mut BoxReader) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    assert!(
        (1..1 << 20).contains(&len),
        "implausible frame length {len}"
    );
    let mut payload = vec![0u8; len - 1];
    reader.read_exact(&mut payload).await?;
    Ok((header[4], payload))
}

/// Reads one frame and returns its complete bytes (header included).
pub async fn read_raw_frame_bytes(reader: &mut BoxReader) -> io::Result<Vec<u8>> {
    let (kind, payload) = read_raw_frame(reader).await?;
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&payload);
    Ok(out)
}

pub async fn write_raw(writer: &mut BoxWriter, bytes: &[u8]) {
    writer.write_all(bytes).await.expect("write");
    writer.flush().await.expect("flush");
}

/// Where a raw test client dials.
#[derive(Clone, Debug)]
pub enum Dial {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

pub async fn dial<R: Runtime>(rt: &R, to: &Dial) -> (BoxReader, BoxWriter) {
    // A full accept backlog refuses Unix connects for a moment: retry briefly.
    for _ in 0..400 {
        let result = match to {
            Dial::Unix(p) => rt.connect_unix(p).await,
            Dial::Tcp(a) => rt.connect_tcp(*a).await,
        };
        match result {
            Ok(halves) => return halves,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sleep(rt, Duration::from_millis(5)).await;
            }
            Err(e) => panic!("connect {to:?}: {e}"),
        }
    }
    panic!("connect {to:?}: backlog stayed full");
}

/// Dials, registers with `request` and returns the answer and the open stream.
pub async fn raw_register<R: Runtime>(
    rt: &R,
    to: &Dial,
    request: &RegistrationRequest,
) -> (BoxReader, BoxWriter, RegistrationResponse, Vec<u8>) {
    let (mut r, mut w) = dial(rt, to).await;
    write_raw(&mut w, &json_frame(MessageType::HandshakeRequest, request)).await;
    let (kind, payload) = within(rt, STEP, "registration answer", read_raw_frame(&mut r))
        .await
        .expect("registration answer");
    assert_eq!(kind, 0x02, "answer frame type");
    let response: RegistrationResponse = serde_json::from_slice(&payload).expect("answer JSON");
    (r, w, response, payload)
}

/// True when the peer closed (EOF or reset) within `limit` without sending a byte.
pub async fn closed_without_data<R: Runtime>(
    rt: &R,
    reader: &mut BoxReader,
    limit: Duration,
) -> bool {
    let mut buf = [0u8; 64];
    match agentwire_runtime::timeout(rt, limit, reader.read(&mut buf)).await {
        Some(Ok(0)) | Some(Err(_)) => true,
        Some(Ok(n)) => panic!("expected a close, got {n} bytes: {:?}", &buf[..n]),
        None => false,
    }
}

/// Plays a reference agent on a raw stream: answers the next event with an Allow carrying
/// `x-raw: 1`; returns the event's correlation id.
pub async fn raw_answer_one<R: Runtime>(
    rt: &R,
    reader: &mut BoxReader,
    writer: &mut BoxWriter,
) -> String {
    let (kind, payload) = within(rt, STEP, "event on raw agent", read_raw_frame(reader))
        .await
        .expect("event");
    let kind = MessageType::from_byte(kind).expect("known type");
    let event = decode_event(kind, &Bytes::from(payload), Encoding::Json).expect("event JSON");
    let id = event.correlation_id().to_owned();
    let mut response = AgentResponse::allow();
    response.request_headers.push(set("x-raw", "1"));
    response.set_correlation_id(&id);
    write_raw(writer, &json_frame(MessageType::AgentResponse, &response)).await;
    id
}

/// Top-level keys of a JSON object, in document order.
pub fn json_keys_in_order(text: &[u8]) -> Vec<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    de.deserialize_map(Keys).expect("JSON object")
}

/// Live file descriptors of this process, where `/proc` tells.
pub fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Serialises the scenarios that open many descriptors, so their counts do not mix.
pub static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A kill switch for relayed connections: a relay between the agents and the listener that
/// can cut one connection abruptly, like an agent process dying.
pub struct Relay {
    pub path: PathBuf,
    pub kills: Arc<std::sync::Mutex<Vec<Shutdown>>>,
}

impl Relay {
    /// Listens on `path` and forwards every connection to `target`.
    pub fn start<R: Runtime>(rt: &R, path: &Path, target: PathBuf, stop: Shutdown) -> Relay {
        let listener = rt.bind_unix(path).expect("relay bind");
        let kills: Arc<std::sync::Mutex<Vec<Shutdown>>> = Arc::default();
        let list = kills.clone();
        let runtime = rt.clone();
        rt.spawn(async move {
            loop {
                let accepted = agentwire_runtime::race(
                    async { Some(runtime.accept_unix(&listener).await) },
                    async {
                        stop.wait().await;
                        None
                    },
                )
                .await;
                let Some(Ok((r1, w1))) = accepted else { break };
                let Ok((r2, w2)) = runtime.connect_unix(&target).await else {
                    continue;
                };
                let kill = Shutdown::new();
                list.lock().unwrap().push(kill.clone());
                let (k1, k2) = (kill.clone(), kill);
                runtime.spawn(pipe(r1, w2, k1));
                runtime.spawn(pipe(r2, w1, k2));
            }
        });
        Relay {
            path: path.to_path_buf(),
            kills,
        }
    }

    /// Cuts the `index`-th relayed connection in both directions.
    pub fn kill(&self, index: usize) {
        self.kills.lock().unwrap()[index].trigger();
    }

    pub fn connections(&self) -> usize {
        self.kills.lock().unwrap().len()
    }
}

async fn pipe(mut from: BoxReader, mut to: BoxWriter, kill: Shutdown) {
    let copy = async {
        let _ = futures_lite::io::copy(&mut from, &mut to).await;
    };
    agentwire_runtime::race(copy, kill.wait()).await;
    // Either side ended: end the other direction too, then close both halves.
    kill.trigger();
    let _ = to.close().await;
}
