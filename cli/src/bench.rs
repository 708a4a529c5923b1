//! `agentwire bench`: a load generator that drives an agent through the proxy-side client
//! stack and reports throughput and latency.
//!
//! C workers (`--concurrency`) share N connections (`--connections`). Each worker sends one
//! request at a time: its headers (a browser-like GET with 20 headers, about 1 KB), then, with
//! `--body-bytes`, the body in `--chunk-bytes` chunks, each event waiting for its decision.
//! Every event's round trip goes into the latency histogram; `decisions` counts answered
//! events, `requests` requests whose every event was answered.

use crate::backend::{Backend, ErrorKind, Pool, PoolSettings};
use crate::demo::DemoAgent;
use crate::{CliError, Endpoint, RuntimeKind, TransportKind, WireEncoding};
use agentwire_core::message::{
    BodyChunk, Decision, Encoding, Headers, RequestHeaders, RequestMetadata,
};
use agentwire_core::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use agentwire_grpc::{GrpcServer, GrpcServerConfig};
use agentwire_reverse::{
    ConnectorConfig, Registrations, ReverseConnector, ReverseEndpoint, ReverseListener,
    ReverseListenerConfig,
};
use agentwire_runtime::Runtime;
use agentwire_runtime::server::Shutdown;
use agentwire_uds::{UdsServer, UdsServerConfig};
use bytes::Bytes;
use futures_channel::oneshot;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this long (requests in flight then finish).
    Duration(Duration),
    /// After this many requests.
    Requests(u64),
}

/// Where the load goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A demo agent started inside this process, on this transport.
    Embedded(TransportKind),
    /// An agent somewhere else.
    External(Endpoint),
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Where the load goes.
    pub target: Target,
    /// The async runtime of the client side (and of the embedded agent).
    pub runtime: RuntimeKind,
    /// The only encoding offered to the agent.
    pub encoding: WireEncoding,
    /// Agent connections.
    pub connections: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// When to stop.
    pub limit: Limit,
    /// Request body size (0: headers only).
    pub body_bytes: usize,
    /// Body chunk size.
    pub chunk_bytes: usize,
    /// Deadline of each event.
    pub request_timeout: Duration,
    /// Show a progress bar on stderr (only if stderr is a terminal).
    pub progress: bool,
    /// Certificate authorities (PEM) trusted for an `https://` target.
    pub tls_ca: Option<PathBuf>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            target: Target::Embedded(TransportKind::Uds),
            runtime: RuntimeKind::Tokio,
            encoding: WireEncoding::Postcard,
            connections: 4,
            concurrency: 64,
            limit: Limit::Duration(Duration::from_secs(5)),
            body_bytes: 0,
            chunk_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            progress: false,
            tls_ca: None,
        }
    }
}

/// The result of a run; [`Report::to_json_line`] is what `--json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Transport used.
    pub transport: String,
    /// Runtime used.
    pub runtime: String,
    /// Encoding the connections negotiated.
    pub encoding: String,
    /// Connections.
    pub connections: usize,
    /// Concurrency.
    pub concurrency: usize,
    /// Body bytes per request.
    pub body_bytes: usize,
    /// Wall time of the measured part, seconds.
    pub elapsed_s: f64,
    /// Requests whose every event was answered.
    pub requests: u64,
    /// Events answered.
    pub decisions: u64,
    /// Answers that were not Allow.
    pub non_allow: u64,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Events answered per second.
    pub decisions_per_s: f64,
    /// Request body megabytes (10^6 bytes) per second that were answered.
    pub mb_per_s: f64,
    /// Mean event round trip, µs.
    pub mean_us: f64,
    /// Median event round trip, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Slowest event, µs.
    pub max_us: f64,
    /// Failed events by kind.
    pub errors: BTreeMap<String, u64>,
    /// Heap allocations per request in the whole process (both ends when the agent is
    /// embedded); only with the `count-allocs` feature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocs_per_request: Option<f64>,
}

impl Report {
    /// Total failed events.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The report as one line of JSON.
    #[must_use]
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as a table for people.
    #[must_use]
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "agentwire bench: {} on {}, {}, {} connection(s), concurrency {}, body {} B",
            self.transport,
            self.runtime,
            self.encoding,
            self.connections,
            self.concurrency,
            self.body_bytes
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<14}{:>14}  in {:.2} s",
            "requests", self.requests, self.elapsed_s
        );
        let _ = writeln!(
            s,
            "  {:<14}{:>14.0}  ({} decisions, {} not Allow)",
            "decisions/s", self.decisions_per_s, self.decisions, self.non_allow
        );
        let _ = writeln!(s, "  {:<14}{:>14.0}", "requests/s", self.requests_per_s);
        if self.body_bytes > 0 {
            let _ = writeln!(s, "  {:<14}{:>14.1}", "body MB/s", self.mb_per_s);
        }
        if let Some(a) = self.allocs_per_request {
            let _ = writeln!(s, "  {:<14}{:>14.1}", "allocs/req", a);
        }
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "  {:<14}{:>14}", "errors", errors);
        let _ = writeln!(s);
        let _ = writeln!(s, "  latency per decision (µs)");
        let _ = writeln!(
            s,
            "  {:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let _ = writeln!(
            s,
            "  {:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
            self.mean_us, self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        );
        s
    }
}

/// Runs a benchmark to completion on the configured runtime.
pub fn run(config: &BenchConfig) -> Result<Report, CliError> {
    validate(config)?;
    match config.runtime {
        RuntimeKind::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::new(format!("cannot start the tokio runtime: {e}")))?;
            let runtime = agentwire_tokio::TokioRuntime::from_handle(rt.handle().clone());
            rt.block_on(run_on(runtime, config))
        }
        // Both run their executors on their own threads: blocking on the driver is enough.
        RuntimeKind::AsyncStd => {
            futures_lite::future::block_on(run_on(agentwire_async_std::runtime(), config))
        }
        RuntimeKind::Smol => {
            futures_lite::future::block_on(run_on(agentwire_smol::runtime(), config))
        }
    }
}

fn validate(config: &BenchConfig) -> Result<(), CliError> {
    if config.connections == 0 || config.concurrency == 0 {
        return Err(CliError::new(
            "--connections and --concurrency must be at least 1",
        ));
    }
    if config.body_bytes > 0 && config.chunk_bytes == 0 {
        return Err(CliError::new("--chunk-bytes must be at least 1"));
    }
    if config.limit == Limit::Requests(0) || config.limit == Limit::Duration(Duration::ZERO) {
        return Err(CliError::new("nothing to do: the run has no length"));
    }
    Ok(())
}

/// An agent running inside this process for the length of a run.
struct Embedded {
    shutdown: Shutdown,
    done: oneshot::Receiver<()>,
    /// Where the agent listens; for reverse connections, where the proxy side listens.
    endpoint: Endpoint,
    /// Reverse connections: the agent's registered connections, as the proxy receives them.
    registrations: Option<Registrations>,
    _dir: Option<tempfile::TempDir>,
}

async fn start_embedded<R: Runtime>(
    runtime: &R,
    config: &BenchConfig,
    transport: TransportKind,
) -> Result<Embedded, CliError> {
    let agent = std::sync::Arc::new(DemoAgent::default());
    let shutdown = Shutdown::new();
    let (tx, done) = oneshot::channel();
    let stop = shutdown.clone();
    match transport {
        TransportKind::Uds => {
            let dir = tempdir()?;
            let path = dir.path().join("agent.sock");
            let uds_config = UdsServerConfig {
                serve: agent.serve_config(),
                ..UdsServerConfig::default()
            };
            let server = UdsServer::bind(runtime.clone(), &path, uds_config).map_err(|e| {
                CliError::new(format!(
                    "cannot bind the demo agent at {}: {e}",
                    path.display()
                ))
            })?;
            runtime.spawn(async move {
                if let Err(e) = server.serve(agent, stop).await {
                    tracing::warn!(error = %e, "embedded agent stopped");
                }
                let _ = tx.send(());
            });
            Ok(Embedded {
                shutdown,
                done,
                endpoint: Endpoint::Uds(path),
                registrations: None,
                _dir: Some(dir),
            })
        }
        TransportKind::Grpc => {
            require_tokio(config)?;
            let grpc_config = GrpcServerConfig {
                capabilities: agent.capabilities(),
                max_concurrent_per_stream: 1024,
                ..GrpcServerConfig::default()
            };
            let localhost = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let server = GrpcServer::bind(localhost, agent, grpc_config)
                .await
                .map_err(|e| CliError::new(format!("cannot bind the demo agent: {e}")))?;
            let endpoint = Endpoint::Grpc(format!("http://{}", server.local_addr()));
            runtime.spawn(async move {
                if let Err(e) = server.serve(stop).await {
                    tracing::warn!(error = %e, "embedded agent stopped");
                }
                let _ = tx.send(());
            });
            Ok(Embedded {
                shutdown,
                done,
                endpoint,
                registrations: None,
                _dir: None,
            })
        }
        TransportKind::Reverse => {
            // The proxy side listens; the demo agent dials it and registers `connections`
            // connections, which the pool then uses as it would any other.
            let dir = tempdir()?;
            let path = dir.path().join("proxy.sock");
            let mut client = agentwire_runtime::client::ClientConfig::default();
            client.session.request_timeout = config.request_timeout;
            client.session.max_in_flight = config.concurrency.max(1024);
            let listener_config = ReverseListenerConfig {
                encodings: vec![config.encoding.into()],
                max_connections_per_agent: config.connections,
                client,
                ..ReverseListenerConfig::default()
            };
            let listener = ReverseListener::bind_unix(runtime.clone(), &path, listener_config)
                .map_err(|e| CliError::new(format!("cannot listen at {}: {e}", path.display())))?;
            let (accept, registrations) = listener.serve(shutdown.clone());
            runtime.spawn(async move {
                if let Err(e) = accept.await {
                    tracing::warn!(error = %e, "reverse listener stopped");
                }
            });
            let mut connector_config = ConnectorConfig::new(crate::demo::DEFAULT_AGENT_ID);
            connector_config.capabilities = agent.capabilities();
            connector_config.connections = config.connections;
            connector_config.serve = agent.serve_config();
            let connector = ReverseConnector::new(
                runtime.clone(),
                ReverseEndpoint::Unix(path.clone()),
                connector_config,
            );
            runtime.spawn(async move {
                connector.run(agent, stop).await;
                let _ = tx.send(());
            });
            Ok(Embedded {
                shutdown,
                done,
                endpoint: Endpoint::Uds(path),
                registrations: Some(registrations),
                _dir: Some(dir),
            })
        }
    }
}

fn tempdir() -> Result<tempfile::TempDir, CliError> {
    tempfile::Builder::new()
        .prefix("agentwire-bench-")
        .tempdir()
        .map_err(|e| CliError::new(format!("cannot create a temporary directory: {e}")))
}

/// gRPC (tonic) runs on tokio only.
fn require_tokio(config: &BenchConfig) -> Result<(), CliError> {
    if config.runtime == RuntimeKind::Tokio {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "the grpc transport runs on tokio only, not on {}",
            config.runtime.name()
        )))
    }
}

/// Runs a benchmark on `runtime` (which must be able to spawn from here).
pub async fn run_on<R: Runtime>(runtime: R, config: &BenchConfig) -> Result<Report, CliError> {
    validate(config)?;
    let (mut embedded, endpoint, transport) = match &config.target {
        Target::Embedded(t) => {
            let e = start_embedded(&runtime, config, *t).await?;
            let endpoint = e.endpoint.clone();
            (Some(e), endpoint, t.name())
        }
        Target::External(endpoint @ Endpoint::Uds(_)) => (None, endpoint.clone(), "uds (external)"),
        Target::External(endpoint @ Endpoint::Grpc(_)) => {
            require_tokio(config)?;
            (None, endpoint.clone(), "grpc (external)")
        }
    };
    let registrations = embedded.as_mut().and_then(|e| e.registrations.take());
    let result = drive(runtime.clone(), config, &endpoint, registrations, transport).await;
    if let Some(e) = embedded {
        e.shutdown.trigger();
        let _ = agentwire_runtime::timeout(&runtime, Duration::from_secs(15), e.done).await;
    }
    result
}

async fn drive<R: Runtime>(
    runtime: R,
    config: &BenchConfig,
    endpoint: &Endpoint,
    registrations: Option<Registrations>,
    transport: &str,
) -> Result<Report, CliError> {
    let settings = PoolSettings {
        connections: config.connections,
        concurrency: config.concurrency,
        request_timeout: config.request_timeout,
        connect_timeout: Duration::from_secs(5),
        encoding: config.encoding.into(),
        tls_ca: config.tls_ca.clone(),
    };
    let (backend, encoding) = match registrations {
        Some(r) => Pool::attach(runtime.clone(), r, &settings).await?,
        None => Pool::connect(runtime.clone(), endpoint, &settings).await?,
    };
    let backend = Arc::new(backend);
    let result = load(runtime.clone(), config, backend.clone()).await;
    backend.shutdown().await;
    let mut report = result?;
    report.transport = transport.to_owned();
    report.encoding = match encoding {
        Some(e) if e == Encoding::from(config.encoding) => e.as_str().to_owned(),
        Some(e) => format!("{} (asked for {})", e.as_str(), config.encoding.name()),
        None => "protobuf".to_owned(),
    };
    Ok(report)
}

/// State shared by the workers of a run.
struct Shared {
    template: RequestHeaders,
    body: Bytes,
    chunk_bytes: usize,
    limit: Limit,
    deadline: Instant,
    issued: AtomicU64,
    completed: AtomicU64,
    histograms: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    /// Takes the next request, `false` once the run is over.
    fn claim(&self) -> bool {
        match self.limit {
            Limit::Requests(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
            Limit::Duration(_) => Instant::now() < self.deadline,
        }
    }
}

/// What one worker did.
#[derive(Default)]
struct Tally {
    requests: u64,
    decisions: u64,
    non_allow: u64,
    body_bytes: u64,
    errors: HashMap<ErrorKind, u64>,
}

/// Histogram shards: workers on one thread never contend, and a few locks keep the memory
/// fixed however many workers there are.
const SHARDS: usize = 8;
/// Samples a worker buffers before taking a shard's lock.
const SAMPLES: usize = 512;
/// Highest latency recorded, ns (longer ones are clamped).
const MAX_NS: u64 = 120_000_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

async fn load<R: Runtime, B: Backend>(
    runtime: R,
    config: &BenchConfig,
    backend: Arc<B>,
) -> Result<Report, CliError> {
    let limit = config.limit;
    let duration = match limit {
        Limit::Duration(d) => d,
        Limit::Requests(_) => Duration::from_secs(365 * 24 * 3600),
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        template: browser_request(),
        body: body(config.body_bytes),
        chunk_bytes: config.chunk_bytes.max(1),
        limit,
        deadline: started + duration,
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        histograms: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
    });
    let progress = Progress::start(config, shared.clone());
    let allocs_before = crate::alloc_count::allocations();
    let mut results = Vec::with_capacity(config.concurrency);
    for worker in 0..config.concurrency {
        let (tx, rx) = oneshot::channel();
        results.push(rx);
        let shared = shared.clone();
        let backend = backend.clone();
        runtime.spawn(async move {
            let tally = work(worker, &shared, &*backend).await;
            let _ = tx.send(tally);
        });
    }
    let mut total = Tally::default();
    for rx in results {
        let tally = rx
            .await
            .map_err(|_| CliError::new("a bench worker stopped unexpectedly"))?;
        total.requests += tally.requests;
        total.decisions += tally.decisions;
        total.non_allow += tally.non_allow;
        total.body_bytes += tally.body_bytes;
        for (k, v) in tally.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    let allocs_after = crate::alloc_count::allocations();
    progress.finish();

    let mut merged = histogram();
    for h in &shared.histograms {
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        // Same bounds everywhere: adding cannot fail.
        let _ = merged.add(&*h);
    }
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    let quantile = |q: f64| {
        if merged.is_empty() {
            0.0
        } else {
            us(merged.value_at_quantile(q))
        }
    };
    let allocs_per_request = match (allocs_before, allocs_after) {
        (Some(a), Some(b)) if total.requests > 0 => {
            Some(((b - a) as f64 / total.requests as f64 * 10.0).round() / 10.0)
        }
        _ => None,
    };
    Ok(Report {
        transport: String::new(),
        runtime: config.runtime.name().to_owned(),
        encoding: String::new(),
        connections: config.connections,
        concurrency: config.concurrency,
        body_bytes: config.body_bytes,
        elapsed_s: (secs * 1000.0).round() / 1000.0,
        requests: total.requests,
        decisions: total.decisions,
        non_allow: total.non_allow,
        requests_per_s: (total.requests as f64 / secs).round(),
        decisions_per_s: (total.decisions as f64 / secs).round(),
        mb_per_s: (total.body_bytes as f64 / 1e6 / secs * 100.0).round() / 100.0,
        mean_us: if merged.is_empty() {
            0.0
        } else {
            (merged.mean() / 100.0).round() / 10.0
        },
        p50_us: quantile(0.5),
        p90_us: quantile(0.9),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: if merged.is_empty() {
            0.0
        } else {
            us(merged.max())
        },
        errors: total
            .errors
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        allocs_per_request,
    })
}

/// One worker: requests one after the other until the run is over.
async fn work<B: Backend>(worker: usize, shared: &Shared, backend: &B) -> Tally {
    let mut tally = Tally::default();
    // Round trips in ns, moved into a shared histogram every `SAMPLES`.
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut seq: u64 = 0;
    while shared.claim() {
        seq += 1;
        let id = format!("bench-{worker}-{seq}");
        let mut request = shared.template.clone();
        request.metadata.correlation_id.clone_from(&id);
        request.metadata.request_id.clone_from(&id);
        let sent = Instant::now();
        let answer = backend.request_headers(request).await;
        samples.push(elapsed_ns(sent));
        // `proceed`: keep sending this request's events; `failed`: one got no answer.
        let (mut proceed, mut failed) = (false, false);
        match answer {
            Ok(r) => {
                tally.decisions += 1;
                if r.decision == Decision::Allow {
                    proceed = true;
                } else {
                    // A proxy stops at a block: so does the bench.
                    tally.non_allow += 1;
                }
            }
            Err(kind) => {
                *tally.errors.entry(kind).or_default() += 1;
                failed = true;
            }
        }
        let total = shared.body.len();
        let mut offset = 0;
        let mut index = 0u32;
        while proceed && offset < total {
            let end = (offset + shared.chunk_bytes).min(total);
            let chunk = BodyChunk {
                correlation_id: id.clone(),
                data: shared.body.slice(offset..end),
                is_last: end == total,
                total_size: Some(total as u64),
                chunk_index: index,
                bytes_transferred: end as u64,
            };
            let sent = Instant::now();
            let answer = backend.request_body_chunk(chunk).await;
            samples.push(elapsed_ns(sent));
            match answer {
                Ok(r) => {
                    tally.decisions += 1;
                    tally.body_bytes += (end - offset) as u64;
                    if r.decision != Decision::Allow {
                        tally.non_allow += 1;
                        proceed = false;
                    }
                }
                Err(kind) => {
                    *tally.errors.entry(kind).or_default() += 1;
                    failed = true;
                    proceed = false;
                }
            }
            offset = end;
            index += 1;
        }
        backend.finish(&id);
        if !failed {
            tally.requests += 1;
        }
        shared.completed.fetch_add(1, Ordering::Relaxed);
        if samples.len() >= SAMPLES {
            flush(shared, worker, &mut samples);
        }
    }
    flush(shared, worker, &mut samples);
    tally
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos())
        .unwrap_or(MAX_NS)
        .clamp(1, MAX_NS)
}

fn flush(shared: &Shared, worker: usize, samples: &mut Vec<u64>) {
    let mut h = shared.histograms[worker % SHARDS]
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for ns in samples.drain(..) {
        // In bounds by construction (`elapsed_ns` clamps).
        let _ = h.record(ns);
    }
}

/// The progress bar, redrawn from its own thread so it costs the workers nothing.
struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    fn start(config: &BenchConfig, shared: Arc<Shared>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !config.progress || !std::io::stderr().is_terminal() {
            return Progress { stop, thread: None };
        }
        let (len, template) = match config.limit {
            Limit::Requests(n) => (n, "{spinner} [{bar:32}] {pos}/{len} requests  {msg}"),
            Limit::Duration(d) => (
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "{spinner} [{bar:32}] {elapsed}  {msg}",
            ),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let flag = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                let done = shared.completed.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                match shared.limit {
                    Limit::Requests(_) => bar.set_position(done),
                    Limit::Duration(_) => bar.set_position(
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ),
                }
                bar.set_message(format!("{done} requests, {:.0}/s", done as f64 / secs));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request as a browser sends it: 20 headers, about 1 KB.
#[must_use]
pub fn browser_request() -> RequestHeaders {
    let mut headers = Headers::new();
    for (name, value) in [
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.9,de;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "referer",
            "https://shop.example.com/catalog/shoes?sort=price",
        ),
        (
            "cookie",
            "session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; cart=3; theme=dark; consent=analytics:0,ads:0",
        ),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-user", "?1"),
        (
            "sec-ch-ua",
            "\"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\", \"Google Chrome\";v=\"131\"",
        ),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Linux\""),
        ("cache-control", "max-age=0"),
        ("priority", "u=0, i"),
        ("x-forwarded-for", "203.0.113.42"),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ] {
        headers.append(name, value);
    }
    RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: String::new(),
            request_id: String::new(),
            client_ip: "203.0.113.42".into(),
            client_port: 52_344,
            server_name: Some("shop.example.com".into()),
            protocol: "HTTP/1.1".into(),
            tls_version: Some("TLSv1.3".into()),
            tls_cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            route_id: Some("shop".into()),
            upstream_id: Some("shop-backend".into()),
            timestamp: "2026-01-15T10:30:00Z".into(),
            traceparent: None,
        },
        method: "GET".into(),
        uri: "/catalog/shoes/running?size=42&color=blue".into(),
        headers,
    }
}

/// A body of `len` bytes of form-like text that never contains the demo's blocked pattern.
fn body(len: usize) -> Bytes {
    const PATTERN: &[u8] = b"item=running-shoe&size=42&color=blue&qty=1&note=please+gift+wrap&";
    PATTERN.iter().copied().cycle().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_request_is_realistic() {
        let r = browser_request();
        assert_eq!(r.headers.len(), 20);
        let size: usize = r
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + r.uri.len()
            + r.method.len();
        assert!((850..1300).contains(&size), "about 1 KB, got {size}");
    }

    #[test]
    fn bench_body_passes_the_demo_rules() {
        let agent = DemoAgent::default();
        let body = body(100_000);
        assert_eq!(body.len(), 100_000);
        let chunk = BodyChunk {
            correlation_id: "b".into(),
            data: body,
            is_last: true,
            ..Default::default()
        };
        assert_eq!(agent.scan_request_chunk(&chunk).decision, Decision::Allow);
        assert_eq!(
            agent.decide_request(&browser_request().uri).decision,
            Decision::Allow
        );
    }

    #[test]
    fn invalid_settings_are_refused() {
        for c in [
            BenchConfig {
                connections: 0,
                ..BenchConfig::default()
            },
            BenchConfig {
                limit: Limit::Requests(0),
                ..BenchConfig::default()
            },
            BenchConfig {
                body_bytes: 10,
                chunk_bytes: 0,
                ..BenchConfig::default()
            },
        ] {
            assert!(validate(&c).is_err());
        }
    }

    #[test]
    fn a_short_run_reports_every_request() {
        let config = BenchConfig {
            connections: 2,
            concurrency: 8,
            limit: Limit::Requests(300),
            body_bytes: 40_000,
            chunk_bytes: 16_384,
            encoding: WireEncoding::Msgpack,
            ..BenchConfig::default()
        };
        // Bounded: a hang fails the test instead of stalling the suite.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(run(&config));
        });
        let report = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("bench finished within 60 s")
            .expect("bench runs");
        assert_eq!(report.requests, 300, "{report:?}");
        assert_eq!(report.decisions, 300 * 4, "headers + 3 chunks each");
        assert_eq!(report.error_count(), 0);
        assert_eq!(report.non_allow, 0);
        assert_eq!(report.encoding, "msgpack");
        assert!(report.p50_us > 0.0 && report.p50_us <= report.p99_us);
        assert!(report.p99_us <= report.max_us);
        assert!(report.mb_per_s > 0.0);
    }
}
