//! The agent side: dial the proxy, register, serve, reconnect.

use crate::wire::{DEFAULT_MAX_REGISTRATION_FRAME, ReadError, decode_json, json_frame, read_frame};
use agentwire_core::encoding::WireFormat;
use agentwire_core::frame::MessageType;
use agentwire_core::message::{
    AnyValue, Capabilities, Encoding, PROTOCOL_VERSION, RegistrationRequest, RegistrationResponse,
};
use agentwire_core::pool::Backoff;
use agentwire_core::session::AgentSession;
use agentwire_runtime::server::{
    AgentHandler, ConnectionSummary, ServeConfig, Shutdown, serve_session,
};
use agentwire_runtime::{BoxReader, BoxWriter, Notify, Runtime, race, timeout};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the proxy listens.
#[derive(Clone)]
#[non_exhaustive]
pub enum ReverseEndpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// Plain TCP.
    Tcp(SocketAddr),
    /// TCP with TLS (add a client certificate to `config` for mutual TLS).
    #[cfg(feature = "tls")]
    Tls {
        /// The proxy's address.
        addr: SocketAddr,
        /// The name to verify the proxy's certificate against (DNS name or IP address).
        server_name: String,
        /// The TLS client settings.
        config: Arc<rustls::ClientConfig>,
    },
}

impl fmt::Debug for ReverseEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReverseEndpoint::Unix(p) => f.debug_tuple("Unix").field(p).finish(),
            ReverseEndpoint::Tcp(a) => f.debug_tuple("Tcp").field(a).finish(),
            #[cfg(feature = "tls")]
            ReverseEndpoint::Tls {
                addr, server_name, ..
            } => f
                .debug_struct("Tls")
                .field("addr", addr)
                .field("server_name", server_name)
                .finish_non_exhaustive(),
        }
    }
}

/// Settings of a [`ReverseConnector`].
#[derive(Clone)]
pub struct ConnectorConfig {
    /// The id to register under.
    pub agent_id: String,
    /// The token, when the proxy requires one.
    pub auth_token: Option<String>,
    /// What the agent declares; `agent_id` is set to [`Self::agent_id`] when empty.
    pub capabilities: Capabilities,
    /// Free-form metadata sent with the registration.
    pub metadata: AnyValue,
    /// Encodings offered in agentwire's `agentwire_encodings` key, in preference order. An
    /// agentwire proxy may pick a binary one; a reference proxy ignores the key and speaks
    /// JSON. Empty: the key is not sent (exactly the reference's registration).
    pub encodings: Vec<Encoding>,
    /// Connections to keep open (default 1).
    pub connections: usize,
    /// How each connection is served (concurrency, drain time, agent session settings).
    pub serve: ServeConfig,
    /// Delay between attempts after failures or dropped connections (exponential, jittered).
    pub backoff: Backoff,
    /// A connection that lived at least this long is considered healthy: the next reconnect
    /// starts the backoff from the beginning (default 10 s).
    pub stable_after: Duration,
    /// Bound on dialling, TLS and the registration exchange (default 10 s).
    pub registration_timeout: Duration,
    /// Largest registration answer accepted (default 64 KiB).
    pub max_registration_frame: u32,
}

impl fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("agent_id", &self.agent_id)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("encodings", &self.encodings)
            .field("connections", &self.connections)
            .field("backoff", &self.backoff)
            .field("registration_timeout", &self.registration_timeout)
            .finish_non_exhaustive()
    }
}

impl ConnectorConfig {
    /// Defaults for `agent_id`: one connection, every available encoding offered, backoff
    /// from 500 ms to 30 s with 50 % jitter.
    #[must_use]
    pub fn new(agent_id: impl Into<String>) -> Self {
        ConnectorConfig {
            agent_id: agent_id.into(),
            auth_token: None,
            capabilities: Capabilities::default(),
            metadata: AnyValue::default(),
            encodings: [Encoding::Postcard, Encoding::Msgpack, Encoding::Json]
                .into_iter()
                .filter(|e| e.is_available())
                .collect(),
            connections: 1,
            serve: ServeConfig::default(),
            backoff: Backoff {
                base: Duration::from_millis(500),
                max_delay: Duration::from_secs(30),
                max_doublings: 6,
                jitter_permille: 500,
            },
            stable_after: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(10),
            max_registration_frame: DEFAULT_MAX_REGISTRATION_FRAME,
        }
    }

    /// Sets the token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }
}

/// Why one registration attempt failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RegisterError {
    /// Dialling (or the TLS handshake) failed.
    Connect(io::Error),
    /// Dialling and registering took longer than the registration timeout.
    Timeout,
    /// The proxy answered `success: false`.
    Rejected {
        /// The proxy's reason.
        error: Option<String>,
    },
    /// The proxy closed the connection or answered something unreadable.
    Protocol(String),
    /// The proxy chose an encoding this agent did not offer.
    UnsupportedEncoding(Encoding),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Connect(e) => write!(f, "connect failed: {e}"),
            RegisterError::Timeout => f.write_str("registration timed out"),
            RegisterError::Rejected { error } => write!(
                f,
                "registration rejected: {}",
                error.as_deref().unwrap_or("no reason given")
            ),
            RegisterError::Protocol(e) => write!(f, "registration failed: {e}"),
            RegisterError::UnsupportedEncoding(e) => {
                write!(
                    f,
                    "proxy chose encoding {} that was not offered",
                    e.as_str()
                )
            }
        }
    }
}

impl std::error::Error for RegisterError {}

/// A registered connection, not yet served.
#[non_exhaustive]
pub struct Registration {
    /// The read half.
    pub reader: BoxReader,
    /// The write half.
    pub writer: BoxWriter,
    /// The id the proxy gave the connection.
    pub connection_id: String,
    /// The proxy's id.
    pub proxy_id: String,
    /// The format of every later frame.
    pub format: WireFormat,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("connection_id", &self.connection_id)
            .field("proxy_id", &self.proxy_id)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Counters of a connector, shared with its workers.
#[derive(Debug, Default)]
pub struct ConnectorStats {
    attempts: AtomicU64,
    registrations: AtomicU64,
    failures: AtomicU64,
    rejections: AtomicU64,
    live: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

impl ConnectorStats {
    /// Registration attempts started.
    #[must_use]
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Successful registrations.
    #[must_use]
    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::Relaxed)
    }

    /// Failed attempts (rejections included).
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Attempts the proxy answered with `success: false`.
    #[must_use]
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Registered connections being served now.
    #[must_use]
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// The last failure, as text.
    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn fail(&self, e: &RegisterError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if matches!(e, RegisterError::Rejected { .. }) {
            self.rejections.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

/// The agent side of reverse connections: dials the proxy, registers, serves the proxy's
/// events with an [`AgentHandler`] (the same trait as every other transport), and keeps
/// [`ConnectorConfig::connections`] connections open, reconnecting with jittered
/// exponential backoff whenever one drops or an attempt fails, until the shutdown signal.
#[derive(Debug)]
pub struct ReverseConnector<R: Runtime> {
    runtime: R,
    endpoint: ReverseEndpoint,
    config: Arc<ConnectorConfig>,
    serve: Arc<ServeConfig>,
    stats: Arc<ConnectorStats>,
}

impl<R: Runtime> Clone for ReverseConnector<R> {
    fn clone(&self) -> Self {
        ReverseConnector {
            runtime: self.runtime.clone(),
            endpoint: self.endpoint.clone(),
            config: self.config.clone(),
            serve: self.serve.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<R: Runtime> ReverseConnector<R> {
    /// A connector to `endpoint`.
    #[must_use]
    pub fn new(runtime: R, endpoint: ReverseEndpoint, mut config: ConnectorConfig) -> Self {
        if config.capabilities.agent_id.is_empty() {
            config.capabilities.agent_id = config.agent_id.clone();
        }
        let mut serve = config.serve.clone();
        serve.agent.capabilities = config.capabilities.clone();
        ReverseConnector {
            runtime,
            endpoint,
            serve: Arc::new(serve),
            config: Arc::new(config),
            stats: Arc::new(ConnectorStats::default()),
        }
    }

    /// The connector's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<ConnectorStats> {
        self.stats.clone()
    }

    async fn dial(&self) -> io::Result<(BoxReader, BoxWriter)> {
        match &self.endpoint {
            ReverseEndpoint::Unix(path) => self.runtime.connect_unix(path).await,
            ReverseEndpoint::Tcp(addr) => self.runtime.connect_tcp(*addr).await,
            #[cfg(feature = "tls")]
            ReverseEndpoint::Tls {
                addr,
                server_name,
                config,
            } => {
                let (r, w) = self.runtime.connect_tcp(*addr).await?;
                crate::tls::connect(config.clone(), server_name, r, w).await
            }
        }
    }

    /// Dials the proxy and registers once, within the registration timeout.
    pub async fn register(&self) -> Result<Registration, RegisterError> {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let result = timeout(
            &self.runtime,
            self.config.registration_timeout,
            self.register_inner(),
        )
        .await
        .unwrap_or(Err(RegisterError::Timeout));
        match &result {
            Ok(_) => {
                self.stats.registrations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.stats.fail(e),
        }
        result
    }

    async fn register_inner(&self) -> Result<Registration, RegisterError> {
        let (mut reader, mut writer) = self.dial().await.map_err(RegisterError::Connect)?;
        let config = &self.config;
        let offered: Vec<Encoding> = config
            .encodings
            .iter()
            .copied()
            .filter(|e| e.is_available())
            .collect();
        let request = RegistrationRequest {
            protocol_version: PROTOCOL_VERSION,
            agent_id: config.agent_id.clone(),
            capabilities: config.capabilities.clone(),
            auth_token: config.auth_token.clone(),
            metadata: config.metadata.clone(),
            agentwire_encodings: offered.clone(),
        };
        let frame = json_frame(
            MessageType::HandshakeRequest,
            &request,
            agentwire_core::frame::DEFAULT_MAX_FRAME_LEN,
        )
        .map_err(|e| RegisterError::Protocol(e.to_string()))?;
        crate::wire::write_all(&mut writer, &frame)
            .await
            .map_err(|e| RegisterError::Protocol(format!("sending the registration: {e}")))?;
        let (kind, payload) = read_frame(&mut reader, config.max_registration_frame)
            .await
            .map_err(|e| match e {
                ReadError::Eof => {
                    RegisterError::Protocol(String::from("proxy closed the connection"))
                }
                other => RegisterError::Protocol(other.to_string()),
            })?;
        if kind != MessageType::HandshakeResponse {
            return Err(RegisterError::Protocol(format!(
                "expected a registration answer, got {kind}"
            )));
        }
        let response: RegistrationResponse =
            decode_json(kind, &payload).map_err(|e| RegisterError::Protocol(e.to_string()))?;
        if !response.success {
            return Err(RegisterError::Rejected {
                error: response.error,
            });
        }
        let encoding = response.encoding.unwrap_or(Encoding::Json);
        if encoding != Encoding::Json && !(offered.contains(&encoding) && encoding.is_available()) {
            return Err(RegisterError::UnsupportedEncoding(encoding));
        }
        Ok(Registration {
            reader,
            writer,
            connection_id: response.connection_id,
            proxy_id: response.proxy_id,
            format: WireFormat {
                encoding,
                raw_body_bytes: encoding != Encoding::Json,
            },
        })
    }

    /// Serves one registered connection until it ends (or `shutdown` drains it).
    pub async fn serve<H: AgentHandler>(
        &self,
        registration: Registration,
        handler: Arc<H>,
        shutdown: Shutdown,
    ) -> ConnectionSummary {
        let session = AgentSession::new_established(self.serve.agent.clone(), registration.format);
        self.stats.live.fetch_add(1, Ordering::AcqRel);
        let summary = serve_session(
            self.runtime.clone(),
            registration.reader,
            registration.writer,
            self.serve.clone(),
            handler,
            shutdown,
            session,
        )
        .await;
        self.stats.live.fetch_sub(1, Ordering::AcqRel);
        summary
    }

    /// Keeps [`ConnectorConfig::connections`] connections registered and served until
    /// `shutdown` is triggered; returns once every connection has drained.
    pub async fn run<H: AgentHandler>(self, handler: Arc<H>, shutdown: Shutdown) {
        let workers = self.config.connections.max(1);
        let done = Arc::new(WorkersDone {
            left: AtomicUsize::new(workers),
            notify: Notify::new(),
        });
        for index in 0..workers {
            let connector = self.clone();
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            let done = done.clone();
            self.runtime.spawn(async move {
                connector.worker(index, handler, shutdown).await;
                done.left.fetch_sub(1, Ordering::AcqRel);
                done.notify.notify();
            });
        }
        while done.left.load(Ordering::Acquire) > 0 {
            done.notify.wait().await;
        }
    }

    async fn worker<H: AgentHandler>(&self, index: usize, handler: Arc<H>, shutdown: Shutdown) {
        let mut failures: u32 = 0;
        let mut attempt: u64 = 0;
        let seed_base = seed_base(&self.config.agent_id, index);
        while !shutdown.is_triggered() {
            attempt += 1;
            let delay = self.config.backoff.next_delay(
                failures,
                seed_base ^ attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            if !delay.is_zero() {
                let sleep = self.runtime.sleep_until(Instant::now() + delay);
                race(sleep, shutdown.wait()).await;
                if shutdown.is_triggered() {
                    break;
                }
            }
            let registered = race(async { Some(self.register().await) }, async {
                shutdown.wait().await;
                None
            })
            .await;
            match registered {
                None => break,
                Some(Err(e)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(agent_id = %self.config.agent_id, error = %e, failures, "reverse registration failed");
                }
                Some(Ok(registration)) => {
                    let since = Instant::now();
                    let id = registration.connection_id.clone();
                    tracing::info!(agent_id = %self.config.agent_id, connection_id = %id, "registered with the proxy");
                    let summary = self
                        .serve(registration, handler.clone(), shutdown.clone())
                        .await;
                    tracing::info!(connection_id = %id, reason = ?summary.close_reason, "reverse connection ended");
                    failures = if since.elapsed() >= self.config.stable_after {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                }
            }
        }
    }
}

struct WorkersDone {
    left: AtomicUsize,
    notify: Notify,
}

fn seed_base(agent_id: &str, index: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in agent_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ nanos ^ ((index as u64) << 48) ^ u64::from(std::process::id())
}
