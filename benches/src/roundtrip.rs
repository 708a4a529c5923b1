//! Request-headers → decision round trips over a real Unix socket, for agentwire (client and
//! agent), the reference (client and agent) and a raw floor (the same bytes over a bare
//! `UnixStream` pair). Everything runs on the caller's tokio runtime; the benches and the
//! counting binaries use a current-thread runtime, so client and agent share one thread.

use crate::fixtures::{self, Size};
use agentwire_core::encoding::{WireFormat, encode_event, encode_frame_of};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, MessageType};
use agentwire_core::message::{AgentResponse, Encoding, Event, RequestHeaders};
use agentwire_tokio::{
    AgentClient, AgentHandler, ClientConfig, Shutdown, UdsServer, UdsServerConfig,
};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use zentinel_agent_protocol as zr;

/// The agentwire agent: the default handler answers every event with Allow.
#[derive(Debug)]
pub struct AllowAll;

impl AgentHandler for AllowAll {}

/// An agentwire agent on a Unix socket and an agentwire client connected to it.
#[derive(Debug)]
pub struct AwPair {
    /// The proxy-side client.
    pub client: AgentClient,
    shutdown: Shutdown,
    _dir: TempDir,
}

impl AwPair {
    /// Starts the agent on the current runtime and connects with `encoding` only.
    ///
    /// # Panics
    /// When the socket cannot be bound or the handshake fails.
    pub async fn start(encoding: Encoding) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("aw.sock");
        let server = UdsServer::bind(
            agentwire_tokio::runtime(),
            &path,
            UdsServerConfig::default(),
        )
        .expect("bind");
        let shutdown = Shutdown::new();
        tokio::spawn(server.serve(Arc::new(AllowAll), shutdown.clone()));
        let mut config = ClientConfig::default();
        config.session.encodings = vec![encoding];
        let client = AgentClient::connect_unix(&agentwire_tokio::runtime(), &path, config)
            .await
            .expect("agentwire connect");
        assert_eq!(
            client.info().map(|i| i.encoding),
            Some(encoding),
            "negotiated encoding"
        );
        AwPair {
            client,
            shutdown,
            _dir: dir,
        }
    }

    /// One round trip.
    ///
    /// # Panics
    /// When the agent does not answer Allow.
    pub async fn round_trip(&self, request: RequestHeaders) -> AgentResponse {
        self.client
            .send_request_headers(request)
            .await
            .expect("agentwire round trip")
    }
}

impl Drop for AwPair {
    fn drop(&mut self) {
        self.client.close();
        self.shutdown.trigger();
    }
}

/// The reference agent: its default handler answers Allow.
#[derive(Debug)]
pub struct RefAgent;

impl zr::v2::AgentHandlerV2 for RefAgent {
    fn capabilities(&self) -> zr::v2::AgentCapabilities {
        zr::v2::AgentCapabilities::new("bench-agent", "bench", "1.0")
    }
}

/// A reference agent (`UdsAgentServerV2`) and a reference client (`AgentClientV2Uds`).
/// With the `binary-uds` feature both prefer MessagePack, so they always negotiate it.
pub struct RefPair {
    /// The proxy-side client.
    pub client: zr::v2::AgentClientV2Uds,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl std::fmt::Debug for RefPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefPair")
    }
}

impl RefPair {
    /// Starts the reference agent on the current runtime and connects the reference client.
    ///
    /// # Panics
    /// When the agent does not come up within a second or the handshake fails.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("zr.sock");
        let server = zr::v2::UdsAgentServerV2::new("bench-agent", path.clone(), Box::new(RefAgent));
        let server = tokio::spawn(async move {
            let _ = server.run().await;
        });
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let client = zr::v2::AgentClientV2Uds::new(
            "bench-agent",
            path.to_str().expect("utf-8 path"),
            Duration::from_secs(5),
        )
        .await
        .expect("reference client");
        client.connect().await.expect("reference connect");
        RefPair {
            client,
            server,
            _dir: dir,
        }
    }

    /// The negotiated encoding.
    pub async fn encoding(&self) -> zr::v2::UdsEncoding {
        self.client.encoding().await
    }

    /// One round trip.
    ///
    /// # Panics
    /// When the agent does not answer.
    pub async fn round_trip(&self, event: &zr::RequestHeadersEvent) -> zr::AgentResponse {
        self.client
            .send_request_headers(&event.metadata.correlation_id, event)
            .await
            .expect("reference round trip")
    }
}

impl Drop for RefPair {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The floor: the bytes of one request-headers frame and of one response frame ping-ponged
/// over a bare `UnixStream` pair, no encoding, no tasks.
#[derive(Debug)]
pub struct RawPair {
    a: UnixStream,
    b: UnixStream,
    request: Vec<u8>,
    response: Vec<u8>,
    buf: Vec<u8>,
}

impl RawPair {
    /// A socket pair and the frames agentwire writes for `size` in `encoding`.
    ///
    /// # Panics
    /// When the socket pair cannot be made.
    #[must_use]
    pub fn new(size: Size, encoding: Encoding) -> Self {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (request, response) = frames(size, encoding);
        let cap = request.len().max(response.len());
        RawPair {
            a,
            b,
            request,
            response,
            buf: vec![0; cap],
        }
    }

    /// Bytes per round trip (both directions).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.request.len() + self.response.len()
    }

    /// One ping-pong.
    ///
    /// # Panics
    /// On an I/O error.
    pub async fn round_trip(&mut self) {
        self.a.write_all(&self.request).await.expect("write");
        self.b
            .read_exact(&mut self.buf[..self.request.len()])
            .await
            .expect("read");
        self.b.write_all(&self.response).await.expect("write");
        self.a
            .read_exact(&mut self.buf[..self.response.len()])
            .await
            .expect("read");
    }
}

/// The request-headers frame and the response frame agentwire writes.
///
/// # Panics
/// When encoding fails (it does not for these fixtures).
#[must_use]
pub fn frames(size: Size, encoding: Encoding) -> (Vec<u8>, Vec<u8>) {
    let mut out = BytesMut::new();
    let event = Event::RequestHeaders(fixtures::aw_request_headers(size, "req-1"));
    encode_event(
        &event,
        WireFormat::new(encoding),
        DEFAULT_MAX_FRAME_LEN,
        &mut out,
    )
    .expect("encode");
    let request = out.split().to_vec();
    let mut response = fixtures::aw_response("req-1");
    response.request_headers.clear();
    response.audit.tags.clear();
    encode_frame_of(
        MessageType::AgentResponse,
        &response,
        encoding,
        DEFAULT_MAX_FRAME_LEN,
        &mut out,
    )
    .expect("encode");
    (request, out.to_vec())
}

/// A current-thread tokio runtime with I/O and timers.
///
/// # Panics
/// When the runtime cannot be built.
#[must_use]
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
