//! Small helpers of the suite: temp-dir socket paths, a running server handle, raw peers that
//! misbehave on purpose, bounded waits.

use agentwire_core::encoding::encode_frame_of;
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, MessageType};
use agentwire_core::message::{
    AnyValue, BodyChunk, Capabilities, Encoding, HandshakeRequest, HandshakeResponse, Limits,
    RequestHeaders, RequestMetadata,
};
use agentwire_runtime::client::ClientConfig;
use agentwire_runtime::server::{AgentHandler, Shutdown};
use agentwire_runtime::{BoxReader, BoxWriter, Runtime};
use agentwire_uds::{UdsServer, UdsServerConfig};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one scenario may run before it is failed (raced on the runtime's own timer).
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30);

/// Backstop when the runtime itself is wedged (a blocked executor cannot fire its timer): the
/// whole test process exits.
pub const WATCHDOG_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `scenario` on `runtime`'s timer with [`SCENARIO_TIMEOUT`], panicking when it is late,
/// and with a process-level watchdog thread as a backstop.
pub async fn with_deadline<R: Runtime>(runtime: R, name: &str, scenario: impl Future<Output = ()>) {
    let watchdog = Watchdog::start(name);
    let finished = agentwire_runtime::timeout(&runtime, SCENARIO_TIMEOUT, scenario).await;
    watchdog.finish();
    assert!(
        finished.is_some(),
        "scenario `{name}` did not finish within {SCENARIO_TIMEOUT:?}"
    );
}

struct Watchdog {
    done: Arc<AtomicBool>,
    thread: std::thread::Thread,
}

impl Watchdog {
    fn start(name: &str) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let name = name.to_owned();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + WATCHDOG_TIMEOUT;
            while !flag.load(Ordering::Acquire) {
                let now = Instant::now();
                if now >= deadline {
                    eprintln!(
                        "scenario `{name}` wedged its runtime for {WATCHDOG_TIMEOUT:?}; aborting"
                    );
                    std::process::exit(101);
                }
                std::thread::park_timeout(deadline - now);
            }
        });
        Watchdog {
            done,
            thread: handle.thread().clone(),
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Also on unwinding: a failed scenario must not take the process down later.
        self.finish();
    }
}

/// A private temporary directory for sockets, removed on drop.
#[derive(Debug)]
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    /// A fresh directory.
    ///
    /// # Panics
    /// When no temporary directory can be created.
    #[must_use]
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::Builder::new()
                .prefix("aw-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// A socket path inside the directory.
    #[must_use]
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

/// Sleeps on the runtime's timer.
pub async fn sleep<R: Runtime>(runtime: &R, duration: Duration) {
    runtime.sleep_until(Instant::now() + duration).await;
}

/// Polls `condition` every 5 ms until it holds or `limit` passes; returns its last value.
pub async fn wait_until<R: Runtime>(
    runtime: &R,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(runtime, Duration::from_millis(5)).await;
    }
}

/// Request headers for `uri` with correlation id `id`.
#[must_use]
pub fn request(id: &str, uri: &str) -> RequestHeaders {
    RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: id.into(),
            request_id: format!("rid-{id}"),
            client_ip: "127.0.0.1".into(),
            client_port: 40_000,
            protocol: "HTTP/1.1".into(),
            ..Default::default()
        },
        method: "GET".into(),
        uri: uri.into(),
        ..Default::default()
    }
}

/// A body chunk.
#[must_use]
pub fn chunk(id: &str, index: u32, data: &[u8], is_last: bool) -> BodyChunk {
    BodyChunk {
        correlation_id: id.into(),
        data: bytes::Bytes::copy_from_slice(data),
        is_last,
        total_size: None,
        chunk_index: index,
        bytes_transferred: 0,
    }
}

/// Lower-case hex of `data`.
#[must_use]
pub fn hex(data: &[u8]) -> String {
    use std::fmt::Write;
    data.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A client configuration offering exactly `encodings`, with short timeouts.
#[must_use]
pub fn client_config(encodings: &[Encoding]) -> ClientConfig {
    let mut config = ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    config.session.encodings = encodings.to_vec();
    config.session.request_timeout = Duration::from_secs(20);
    config
}

/// The agent's capabilities in the suite (concurrency high enough for the pipelining test).
#[must_use]
pub fn capabilities() -> Capabilities {
    Capabilities {
        agent_id: "test-agent".into(),
        name: "agentwire test agent".into(),
        version: "0.0.0".into(),
        supported_events: (1..=8).collect(),
        limits: Limits {
            max_concurrency: 2048,
            ..Limits::default()
        },
        ..Capabilities::default()
    }
}

/// A server configuration accepting `encodings`.
#[must_use]
pub fn server_config(encodings: &[Encoding]) -> UdsServerConfig {
    let mut config = UdsServerConfig::default();
    config.serve.agent.capabilities = capabilities();
    config.serve.agent.encodings = encodings.to_vec();
    config.serve.drain_timeout = Duration::from_secs(5);
    config
}

/// A [`UdsServer`] serving in a background task; triggers its shutdown when dropped.
#[derive(Debug)]
pub struct RunningServer {
    path: PathBuf,
    shutdown: Shutdown,
    result: Arc<Mutex<Option<io::Result<()>>>>,
}

/// Binds `path` and serves `handler` on it in a background task.
///
/// # Panics
/// When the socket cannot be bound.
pub fn start_server<R: Runtime, H: AgentHandler>(
    runtime: &R,
    path: &Path,
    config: UdsServerConfig,
    handler: Arc<H>,
) -> RunningServer {
    let server = UdsServer::bind(runtime.clone(), path, config).expect("bind agent socket");
    let shutdown = Shutdown::new();
    let result = Arc::new(Mutex::new(None));
    let (signal, slot) = (shutdown.clone(), result.clone());
    runtime.spawn(async move {
        let r = server.serve(handler, signal).await;
        *slot.lock().unwrap() = Some(r);
    });
    RunningServer {
        path: path.to_owned(),
        shutdown,
        result,
    }
}

impl RunningServer {
    /// The socket path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's shutdown signal.
    #[must_use]
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// True once `serve` returned.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.result.lock().unwrap().is_some()
    }

    /// Waits up to `limit` for `serve` to return; `None` if it did not.
    pub async fn wait<R: Runtime>(&self, runtime: &R, limit: Duration) -> Option<io::Result<()>> {
        wait_until(runtime, limit, || self.is_done()).await;
        self.result.lock().unwrap().take()
    }

    /// Triggers the shutdown and waits for `serve` to return.
    ///
    /// # Panics
    /// When it does not return within 10 s or returns an error.
    pub async fn stop<R: Runtime>(self, runtime: &R) {
        self.shutdown.trigger();
        let result = self.wait(runtime, Duration::from_secs(10)).await;
        assert!(
            matches!(result, Some(Ok(()))),
            "server did not stop cleanly: {result:?}"
        );
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A frame: length, type byte, payload — written by hand, so it can be anything.
#[must_use]
pub fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len() + 1).expect("small payload");
    let mut out = len.to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// A well-formed frame of `value` (JSON).
///
/// # Panics
/// When `value` cannot be encoded.
#[must_use]
pub fn json_frame<T: serde::Serialize>(kind: MessageType, value: &T) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame_of(kind, value, Encoding::Json, DEFAULT_MAX_FRAME_LEN, &mut out)
        .expect("encode frame");
    out.to_vec()
}

/// A successful handshake answer choosing JSON.
#[must_use]
pub fn handshake_response_frame() -> Vec<u8> {
    json_frame(
        MessageType::HandshakeResponse,
        &HandshakeResponse {
            protocol_version: 2,
            capabilities: Capabilities {
                agent_id: "hostile".into(),
                ..Capabilities::default()
            },
            success: true,
            error: None,
            encoding: Encoding::Json,
            agentwire: None,
        },
    )
}

/// A proxy's handshake offering only JSON.
#[must_use]
pub fn handshake_request_frame() -> Vec<u8> {
    json_frame(
        MessageType::HandshakeRequest,
        &HandshakeRequest {
            supported_versions: vec![2],
            proxy_id: "raw-proxy".into(),
            proxy_version: "0".into(),
            config: AnyValue::NULL,
            supported_encodings: vec![Encoding::Json],
            agentwire_encodings: vec![Encoding::Json],
        },
    )
}

/// One step of a [`HostileAgent`]'s script.
#[derive(Clone, Debug)]
pub enum Step {
    /// Writes these bytes.
    Write(Vec<u8>),
    /// Writes these bytes one at a time, pausing between them.
    Drip(Vec<u8>, Duration),
    /// Waits until the proxy has sent this many frames (handshake included).
    AwaitFrames(usize),
    /// Shuts the connection down for writing (the proxy reads the end of the stream).
    Close,
}

/// A raw Unix listener that plays a script against the first proxy that connects, then holds
/// the connection open until dropped (or 30 s pass). It reads and counts whatever the proxy
/// sends, so the proxy never blocks on writing.
#[derive(Debug)]
pub struct HostileAgent {
    stop: Shutdown,
    frames: Arc<AtomicUsize>,
}

impl HostileAgent {
    /// Binds `path` and plays `script` against the first connection.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub fn start<R: Runtime>(runtime: &R, path: &Path, script: Vec<Step>) -> Self {
        let listener = runtime.bind_unix(path).expect("bind hostile agent");
        let stop = Shutdown::new();
        let frames = Arc::new(AtomicUsize::new(0));
        let rt = runtime.clone();
        let (signal, counter) = (stop.clone(), frames.clone());
        runtime.spawn(async move {
            let accepted =
                agentwire_runtime::race(async { Some(rt.accept_unix(&listener).await) }, async {
                    signal.wait().await;
                    None
                })
                .await;
            let Some(Ok((reader, writer))) = accepted else {
                return;
            };
            rt.spawn(count_frames(
                rt.clone(),
                reader,
                counter.clone(),
                signal.clone(),
            ));
            let play = play(&rt, writer, script, &counter);
            let limit = agentwire_runtime::race(
                async {
                    signal.wait().await;
                },
                async {
                    sleep(&rt, SCENARIO_TIMEOUT).await;
                },
            );
            agentwire_runtime::race(
                async {
                    let writer = play.await;
                    // Hold the connection until the test is done with it.
                    std::future::pending::<()>().await;
                    drop(writer);
                },
                limit,
            )
            .await;
        });
        HostileAgent { stop, frames }
    }

    /// Frames received from the proxy so far.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.frames.load(Ordering::Acquire)
    }
}

impl Drop for HostileAgent {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

async fn play<R: Runtime>(
    runtime: &R,
    mut writer: BoxWriter,
    script: Vec<Step>,
    frames: &AtomicUsize,
) -> Option<BoxWriter> {
    for step in script {
        match step {
            Step::Write(bytes) => {
                writer.write_all(&bytes).await.ok()?;
                writer.flush().await.ok()?;
            }
            Step::Drip(bytes, every) => {
                for b in bytes {
                    writer.write_all(&[b]).await.ok()?;
                    writer.flush().await.ok()?;
                    sleep(runtime, every).await;
                }
            }
            Step::AwaitFrames(n) => {
                let seen = wait_until(runtime, SCENARIO_TIMEOUT, || {
                    frames.load(Ordering::Acquire) >= n
                })
                .await;
                if !seen {
                    return Some(writer);
                }
            }
            Step::Close => {
                let _ = writer.close().await;
            }
        }
    }
    Some(writer)
}

async fn count_frames<R: Runtime>(
    runtime: R,
    mut reader: BoxReader,
    frames: Arc<AtomicUsize>,
    stop: Shutdown,
) {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let mut buf = vec![0u8; 16 * 1024];
    let read_all = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.extend(&buf[..n]),
            }
            while let Ok(Some(_)) = decoder.decode() {
                frames.fetch_add(1, Ordering::AcqRel);
            }
        }
    };
    let limit = async {
        agentwire_runtime::race(stop.wait(), sleep(&runtime, SCENARIO_TIMEOUT)).await;
    };
    agentwire_runtime::race(read_all, limit).await;
}

/// What a raw connection saw before the peer closed it.
#[derive(Debug)]
pub struct Closed {
    /// Everything read.
    pub bytes: Vec<u8>,
    /// When the end of the stream arrived, from the start of the wait.
    pub after: Duration,
}

/// Reads until the peer ends the stream (EOF or error); `None` if still open after `limit`.
pub async fn read_until_closed<R: Runtime>(
    runtime: &R,
    reader: &mut BoxReader,
    limit: Duration,
) -> Option<Closed> {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    agentwire_runtime::timeout(runtime, limit, read).await?;
    Some(Closed {
        bytes,
        after: start.elapsed(),
    })
}
