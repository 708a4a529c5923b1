//! Protocol metrics: lock-free counters, gauges and histograms, rendered as Prometheus text.
//!
//! Recording is one relaxed atomic operation per counter or gauge update and two per
//! histogram observation (its bucket and the sum; the count is derived from the buckets at
//! snapshot time, so `_count` always equals the `+Inf` bucket). Nothing records
//! under a lock; per-agent series are registered once (a write lock on a cold path) and then
//! updated through the returned `Arc` handle.
//!
//! The exposition keeps the reference's names and `# HELP` texts (spec §11.10) for the metrics
//! both have, and fixes what it got wrong: gauges nobody updated are either fed (from
//! [`ConnectionTally`]) or not exported (§14 B15), the prefix and every label name are
//! validated and label values escaped (§14 S4), the number of labelled series is capped,
//! and `+Inf` is only ever the last bucket (§14 B19).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::time::Duration;

use crate::pool::{CircuitTransition, ConnectionTally};
use crate::sync::{self, Arc, AtomicI64, AtomicU64, Ordering, RwLock};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    #[must_use]
    pub fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down. Signed, so a transient imbalance between concurrent
/// increments and decrements reads as a small negative number rather than 2⁶⁴ − 1.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    #[must_use]
    pub fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }

    /// Sets the value (for gauges computed from the truth at scrape time).
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds `delta` (may be negative).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// Adds one now and subtracts it again when the returned guard drops, on every path —
    /// the reference's in-flight gauge leaked when a request failed between the two (§14 B12).
    pub fn track(&self) -> GaugeTrack<'_> {
        self.inc();
        GaugeTrack(self)
    }

    /// The current value.
    #[must_use]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Undoes one [`Gauge::track`] increment when dropped.
#[must_use = "dropping the guard at once undoes the increment"]
#[derive(Debug)]
pub struct GaugeTrack<'a>(&'a Gauge);

impl Drop for GaugeTrack<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Upper bounds of the latency histograms' buckets in microseconds: 10 µs … 1 s, the
/// reference's bounds. An observation equal to a bound falls in that bound's bucket.
pub const LATENCY_BUCKETS_US: [u64; 11] = [
    10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000,
];

const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

/// A fixed-bucket latency histogram in whole microseconds, recorded lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts; the last bucket is the `+Inf` overflow.
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram with [`LATENCY_BUCKETS_US`].
    #[must_use]
    pub fn new() -> Self {
        Histogram {
            buckets: core::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation of `micros` microseconds: two relaxed `fetch_add`s.
    pub fn record_micros(&self, micros: u64) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records `duration`, truncated to whole microseconds (saturating).
    pub fn record(&self, duration: Duration) {
        self.record_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// The current counts.
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: core::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_micros: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A [`Histogram`]'s counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, **not** cumulative: `buckets[i]` for `i <`
    /// [`LATENCY_BUCKETS_US`]`.len()` counts observations in `(bound[i-1], bound[i]]`, the last
    /// one those above the largest bound.
    pub buckets: [u64; BUCKETS],
    /// Sum of all observations in microseconds.
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    /// Number of observations (always the sum of the buckets).
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Cumulative counts as Prometheus wants them: `(upper bound in µs or None for +Inf,
    /// observations ≤ bound)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = LATENCY_BUCKETS_US.iter().map(|&b| Some(b)).chain([None]);
        bounds.zip(self.buckets.iter().scan(0_u64, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// Counters of one agent, labelled `agent_id` in the exposition. Obtain with
/// [`ProtocolMetrics::agent`] once and keep the `Arc`: updates then take no lock.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Requests sent to the agent.
    pub requests: Counter,
    /// Requests that failed (errors and timeouts).
    pub errors: Counter,
    /// Requests that timed out.
    pub timeouts: Counter,
}

/// Tuning of [`ProtocolMetrics`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Most agents with their own labelled series (each agent contributes a fixed set of
    /// three series). Registrations beyond it are refused and counted, so a flood of agent
    /// ids cannot grow the exposition without bound.
    pub max_agent_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_agent_series: 1_000,
        }
    }
}

/// The pool's protocol metrics. Share one per pool (`Arc<ProtocolMetrics>`); every field is
/// updated with `&self`.
#[derive(Debug)]
pub struct ProtocolMetrics {
    /// Requests sent to agents.
    pub requests: Counter,
    /// Responses received from agents.
    pub responses: Counter,
    /// Requests that timed out.
    pub timeouts: Counter,
    /// Connection errors.
    pub connection_errors: Counter,
    /// Pause signals received from agents (count only real transitions:
    /// [`ConnectionState::pause`](crate::pool::ConnectionState::pause) returns whether it was one).
    pub flow_control_pauses: Counter,
    /// Resume signals received from agents.
    pub flow_control_resumes: Counter,
    /// Requests refused or answered without the agent because of flow control.
    pub flow_control_rejections: Counter,
    /// Circuit breakers opened (closed → open and half-open → open).
    pub circuit_opened: Counter,
    /// Circuit breakers that let a probe through (open → half-open).
    pub circuit_half_opened: Counter,
    /// Circuit breakers closed by a successful probe.
    pub circuit_closed: Counter,
    /// Correlation affinities reclaimed by the TTL sweep.
    pub affinity_evictions: Counter,
    /// Affinities dropped because the map was at capacity.
    pub affinity_rejections: Counter,
    /// Requests in flight (best set from [`ConnectionTally`] at scrape time).
    pub in_flight_requests: Gauge,
    /// Correlation-affinity entries.
    pub correlation_affinities: Gauge,
    /// Healthy connections.
    pub healthy_connections: Gauge,
    /// Connections paused by flow control.
    pub paused_connections: Gauge,
    /// Time to serialize one message.
    pub serialization_time: Histogram,
    /// Time from sending a request to its response.
    pub request_duration: Histogram,
    agents: RwLock<BTreeMap<String, Arc<AgentMetrics>>>,
    max_agent_series: usize,
    agent_series_rejected: Counter,
}

impl Default for ProtocolMetrics {
    fn default() -> Self {
        ProtocolMetrics::new(MetricsConfig::default())
    }
}

impl ProtocolMetrics {
    /// All metrics at zero.
    #[must_use]
    pub fn new(config: MetricsConfig) -> Self {
        ProtocolMetrics {
            requests: Counter::new(),
            responses: Counter::new(),
            timeouts: Counter::new(),
            connection_errors: Counter::new(),
            flow_control_pauses: Counter::new(),
            flow_control_resumes: Counter::new(),
            flow_control_rejections: Counter::new(),
            circuit_opened: Counter::new(),
            circuit_half_opened: Counter::new(),
            circuit_closed: Counter::new(),
            affinity_evictions: Counter::new(),
            affinity_rejections: Counter::new(),
            in_flight_requests: Gauge::new(),
            correlation_affinities: Gauge::new(),
            healthy_connections: Gauge::new(),
            paused_connections: Gauge::new(),
            serialization_time: Histogram::new(),
            request_duration: Histogram::new(),
            agents: RwLock::new(BTreeMap::new()),
            max_agent_series: config.max_agent_series,
            agent_series_rejected: Counter::new(),
        }
    }

    /// Counts a circuit transition reported by the pool.
    pub fn record_circuit_transition(&self, transition: CircuitTransition) {
        match transition {
            CircuitTransition::Opened | CircuitTransition::Reopened => self.circuit_opened.inc(),
            CircuitTransition::HalfOpened => self.circuit_half_opened.inc(),
            CircuitTransition::Closed => self.circuit_closed.inc(),
        }
    }

    /// Sets the connection gauges from a tally of the pool's connections (call it before
    /// rendering: gauges derived from the connections cannot drift or leak).
    pub fn set_connection_gauges(&self, tally: &ConnectionTally) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.in_flight_requests.set(clamp(tally.in_flight));
        self.healthy_connections.set(clamp(tally.healthy));
        self.paused_connections.set(clamp(tally.paused));
    }

    /// The labelled counters of `agent_id`, registering them on first use. `None` (and one
    /// more `agent_series_rejected_total`) when `max_agent_series` agents are registered
    /// already.
    #[must_use]
    pub fn agent(&self, agent_id: &str) -> Option<Arc<AgentMetrics>> {
        if let Some(existing) = sync::read(&self.agents).get(agent_id) {
            return Some(Arc::clone(existing));
        }
        let mut agents = sync::write(&self.agents);
        if let Some(existing) = agents.get(agent_id) {
            return Some(Arc::clone(existing));
        }
        if agents.len() >= self.max_agent_series {
            self.agent_series_rejected.inc();
            return None;
        }
        let metrics = Arc::new(AgentMetrics::default());
        agents.insert(String::from(agent_id), Arc::clone(&metrics));
        Some(metrics)
    }

    /// Drops `agent_id`'s series (when the agent leaves the pool). Returns whether it had any.
    pub fn remove_agent(&self, agent_id: &str) -> bool {
        sync::write(&self.agents).remove(agent_id).is_some()
    }

    /// Every value at one moment (each value is read atomically; the set is not a
    /// transaction, which Prometheus does not expect either).
    #[must_use]
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            requests: self.requests.get(),
            responses: self.responses.get(),
            timeouts: self.timeouts.get(),
            connection_errors: self.connection_errors.get(),
            flow_control_pauses: self.flow_control_pauses.get(),
            flow_control_resumes: self.flow_control_resumes.get(),
            flow_control_rejections: self.flow_control_rejections.get(),
            circuit_opened: self.circuit_opened.get(),
            circuit_half_opened: self.circuit_half_opened.get(),
            circuit_closed: self.circuit_closed.get(),
            affinity_evictions: self.affinity_evictions.get(),
            affinity_rejections: self.affinity_rejections.get(),
            agent_series_rejected: self.agent_series_rejected.get(),
            in_flight_requests: self.in_flight_requests.get(),
            correlation_affinities: self.correlation_affinities.get(),
            healthy_connections: self.healthy_connections.get(),
            paused_connections: self.paused_connections.get(),
            serialization_time: self.serialization_time.snapshot(),
            request_duration: self.request_duration.snapshot(),
            agents: sync::read(&self.agents)
                .iter()
                .map(|(id, m)| AgentSnapshot {
                    agent_id: id.clone(),
                    requests: m.requests.get(),
                    errors: m.errors.get(),
                    timeouts: m.timeouts.get(),
                })
                .collect(),
        }
    }

    /// Renders [`snapshot`](Self::snapshot) as Prometheus text (see
    /// [`MetricsSnapshot::write_prometheus`]).
    ///
    /// # Errors
    /// [`ExpositionError::InvalidName`] when `prefix` is not a valid metric name.
    pub fn to_prometheus(&self, prefix: &str) -> Result<String, ExpositionError> {
        let mut out = String::new();
        self.snapshot().write_prometheus(prefix, &mut out)?;
        Ok(out)
    }
}

/// One agent's labelled counters in a [`MetricsSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSnapshot {
    /// The agent id (the `agent_id` label value, escaped on output).
    pub agent_id: String,
    /// Requests sent.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Timed-out requests.
    pub timeouts: u64,
}

/// Every value of a [`ProtocolMetrics`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// [`ProtocolMetrics::requests`].
    pub requests: u64,
    /// [`ProtocolMetrics::responses`].
    pub responses: u64,
    /// [`ProtocolMetrics::timeouts`].
    pub timeouts: u64,
    /// [`ProtocolMetrics::connection_errors`].
    pub connection_errors: u64,
    /// [`ProtocolMetrics::flow_control_pauses`].
    pub flow_control_pauses: u64,
    /// [`ProtocolMetrics::flow_control_resumes`].
    pub flow_control_resumes: u64,
    /// [`ProtocolMetrics::flow_control_rejections`].
    pub flow_control_rejections: u64,
    /// [`ProtocolMetrics::circuit_opened`].
    pub circuit_opened: u64,
    /// [`ProtocolMetrics::circuit_half_opened`].
    pub circuit_half_opened: u64,
    /// [`ProtocolMetrics::circuit_closed`].
    pub circuit_closed: u64,
    /// [`ProtocolMetrics::affinity_evictions`].
    pub affinity_evictions: u64,
    /// [`ProtocolMetrics::affinity_rejections`].
    pub affinity_rejections: u64,
    /// Agent registrations refused by the series cap.
    pub agent_series_rejected: u64,
    /// [`ProtocolMetrics::in_flight_requests`].
    pub in_flight_requests: i64,
    /// [`ProtocolMetrics::correlation_affinities`].
    pub correlation_affinities: i64,
    /// [`ProtocolMetrics::healthy_connections`].
    pub healthy_connections: i64,
    /// [`ProtocolMetrics::paused_connections`].
    pub paused_connections: i64,
    /// [`ProtocolMetrics::serialization_time`].
    pub serialization_time: HistogramSnapshot,
    /// [`ProtocolMetrics::request_duration`].
    pub request_duration: HistogramSnapshot,
    /// Per-agent series, sorted by agent id.
    pub agents: Vec<AgentSnapshot>,
}

/// Why the exposition could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpositionError {
    /// The prefix is not a valid Prometheus metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    InvalidName,
    /// The output sink refused a write.
    Write,
}

impl fmt::Display for ExpositionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExpositionError::InvalidName => "invalid Prometheus metric name prefix",
            ExpositionError::Write => "the output sink refused a write",
        })
    }
}

impl core::error::Error for ExpositionError {}

impl From<fmt::Error> for ExpositionError {
    fn from(_: fmt::Error) -> Self {
        ExpositionError::Write
    }
}

/// Whether `name` is a valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
#[must_use]
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting
/// with the reserved `__`.
#[must_use]
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes `value` as a label value: `\` → `\\`, `"` → `\"`, newline → `\n` (the exposition
/// format's three escapes; everything else, UTF-8 included, is literal).
pub fn write_escaped_label_value<W: Write>(out: &mut W, value: &str) -> fmt::Result {
    let mut rest = value;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..at])?;
        out.write_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[at + 1..];
    }
    out.write_str(rest)
}

/// Writes `micros` as seconds with six decimals, exactly (no float rounding).
fn write_seconds<W: Write>(out: &mut W, micros: u64) -> fmt::Result {
    write!(out, "{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// The label names this module emits; checked by a test, so a typo cannot produce an
/// unparseable exposition.
const AGENT_LABEL: &str = "agent_id";
const TRANSITION_LABEL: &str = "to";

struct Exposition<'a, W> {
    out: &'a mut W,
    prefix: &'a str,
}

impl<W: Write> Exposition<'_, W> {
    fn header(&mut self, name: &str, kind: &str, help: &str) -> fmt::Result {
        let p = self.prefix;
        writeln!(self.out, "# HELP {p}_{name} {help}")?;
        writeln!(self.out, "# TYPE {p}_{name} {kind}")
    }

    fn scalar(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl fmt::Display,
    ) -> fmt::Result {
        self.header(name, kind, help)?;
        writeln!(self.out, "{}_{name} {value}", self.prefix)?;
        writeln!(self.out)
    }

    fn labelled<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> fmt::Result {
        self.header(name, "counter", help)?;
        for (label_value, value) in series {
            write!(self.out, "{}_{name}{{{label}=\"", self.prefix)?;
            write_escaped_label_value(self.out, label_value)?;
            writeln!(self.out, "\"}} {value}")?;
        }
        writeln!(self.out)
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) -> fmt::Result {
        self.header(name, "histogram", help)?;
        let p = self.prefix;
        for (bound, count) in histogram.cumulative() {
            write!(self.out, "{p}_{name}_bucket{{le=\"")?;
            match bound {
                Some(micros) => write_seconds(self.out, micros)?,
                None => self.out.write_str("+Inf")?,
            }
            writeln!(self.out, "\"}} {count}")?;
        }
        write!(self.out, "{p}_{name}_sum ")?;
        write_seconds(self.out, histogram.sum_micros)?;
        writeln!(self.out)?;
        writeln!(self.out, "{p}_{name}_count {}", histogram.count())?;
        writeln!(self.out)
    }
}

impl MetricsSnapshot {
    /// Writes the Prometheus text exposition (format 0.0.4) with every metric name starting
    /// `{prefix}_`. Each family is `# HELP`, `# TYPE`, its samples and a blank line; the
    /// families the reference exports come first with its names and help texts (§11.10).
    ///
    /// # Errors
    /// [`ExpositionError::InvalidName`] for an invalid prefix (checked before anything is
    /// written); [`ExpositionError::Write`] if `out` fails.
    pub fn write_prometheus<W: Write>(
        &self,
        prefix: &str,
        out: &mut W,
    ) -> Result<(), ExpositionError> {
        if !is_valid_metric_name(prefix) {
            return Err(ExpositionError::InvalidName);
        }
        let mut x = Exposition { out, prefix };
        x.scalar(
            "requests_total",
            "counter",
            "Total requests sent to agents",
            self.requests,
        )?;
        x.scalar(
            "responses_total",
            "counter",
            "Total responses received from agents",
            self.responses,
        )?;
        x.scalar(
            "timeouts_total",
            "counter",
            "Total request timeouts",
            self.timeouts,
        )?;
        x.scalar(
            "connection_errors_total",
            "counter",
            "Total connection errors",
            self.connection_errors,
        )?;
        x.scalar(
            "flow_control_pauses_total",
            "counter",
            "Flow control pause events",
            self.flow_control_pauses,
        )?;
        x.scalar(
            "flow_control_rejections_total",
            "counter",
            "Requests rejected due to flow control",
            self.flow_control_rejections,
        )?;
        x.scalar(
            "affinity_evictions_total",
            "counter",
            "Correlation affinities reclaimed by TTL sweep",
            self.affinity_evictions,
        )?;
        x.scalar(
            "affinity_rejections_total",
            "counter",
            "Affinities dropped because the map was at capacity",
            self.affinity_rejections,
        )?;
        x.scalar(
            "in_flight_requests",
            "gauge",
            "Current in-flight requests",
            self.in_flight_requests,
        )?;
        x.scalar(
            "correlation_affinities",
            "gauge",
            "Current correlation affinity entries",
            self.correlation_affinities,
        )?;
        x.scalar(
            "healthy_connections",
            "gauge",
            "Number of healthy agent connections",
            self.healthy_connections,
        )?;
        x.scalar(
            "paused_connections",
            "gauge",
            "Number of flow-control paused connections",
            self.paused_connections,
        )?;
        x.histogram(
            "serialization_seconds",
            "Serialization time in seconds",
            &self.serialization_time,
        )?;
        x.histogram(
            "request_duration_seconds",
            "Request duration in seconds",
            &self.request_duration,
        )?;
        // Families the reference does not have.
        x.scalar(
            "flow_control_resumes_total",
            "counter",
            "Flow control resume events",
            self.flow_control_resumes,
        )?;
        x.labelled(
            "circuit_transitions_total",
            "Circuit breaker transitions by the state entered",
            TRANSITION_LABEL,
            [
                ("open", self.circuit_opened),
                ("half_open", self.circuit_half_opened),
                ("closed", self.circuit_closed),
            ],
        )?;
        x.scalar(
            "agent_series_rejected_total",
            "counter",
            "Agents refused labelled series because the series cap was reached",
            self.agent_series_rejected,
        )?;
        let agents = &self.agents;
        x.labelled(
            "agent_requests_total",
            "Requests sent, per agent",
            AGENT_LABEL,
            agents.iter().map(|a| (a.agent_id.as_str(), a.requests)),
        )?;
        x.labelled(
            "agent_errors_total",
            "Failed requests, per agent",
            AGENT_LABEL,
            agents.iter().map(|a| (a.agent_id.as_str(), a.errors)),
        )?;
        x.labelled(
            "agent_timeouts_total",
            "Timed-out requests, per agent",
            AGENT_LABEL,
            agents.iter().map(|a| (a.agent_id.as_str(), a.timeouts)),
        )?;
        Ok(())
    }

    /// [`write_prometheus`](Self::write_prometheus) into a new `String`.
    ///
    /// # Errors
    /// [`ExpositionError::InvalidName`] for an invalid prefix.
    pub fn to_prometheus(&self, prefix: &str) -> Result<String, ExpositionError> {
        let mut out = String::new();
        self.write_prometheus(prefix, &mut out)?;
        Ok(out)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use alloc::string::ToString;
    use alloc::vec;

    use super::*;

    #[test]
    fn histogram_buckets_include_their_upper_bound() {
        let h = Histogram::new();
        for micros in [0, 10, 11, 50, 1_000_000, 1_000_001, u64::MAX / 4] {
            h.record_micros(micros);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[0], 2, "0 and 10 are ≤ 10 µs");
        assert_eq!(s.buckets[1], 2, "11 and 50 are in (10, 50]");
        assert_eq!(s.buckets[10], 1, "1 s is in the last finite bucket");
        assert_eq!(s.buckets[11], 2, "above 1 s is +Inf only");
        assert_eq!(s.count(), 7);
        let cumulative: Vec<_> = s.cumulative().collect();
        assert_eq!(cumulative.len(), 12);
        assert_eq!(cumulative[0], (Some(10), 2));
        assert_eq!(cumulative[11], (None, 7));
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
        h.record(Duration::from_millis(3));
        assert_eq!(h.snapshot().buckets[5], 1);
    }

    #[test]
    fn gauge_track_undoes_itself_on_every_path() {
        let g = Gauge::new();
        {
            let _a = g.track();
            let _b = g.track();
            assert_eq!(g.get(), 2);
        }
        let result = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
            let _t = g.track();
            panic!("unwind through the guard");
        }));
        assert!(result.is_err());
        assert_eq!(g.get(), 0);
        g.dec();
        assert_eq!(g.get(), -1, "imbalance shows as negative, not as 2^64 - 1");
    }

    #[test]
    fn name_validation_follows_the_exposition_grammar() {
        for good in ["a", "agent_protocol", "ns:sub_1", "_x", ":x"] {
            assert!(is_valid_metric_name(good), "{good}");
        }
        for bad in ["", "1abc", "a-b", "a b", "a\nb", "é", "a{b}"] {
            assert!(!is_valid_metric_name(bad), "{bad:?}");
        }
        for good in ["agent_id", "le", "to", "_x", "a1"] {
            assert!(is_valid_label_name(good), "{good}");
        }
        for bad in ["", "__reserved", "a:b", "1a", "a-b"] {
            assert!(!is_valid_label_name(bad), "{bad:?}");
        }
        assert!(is_valid_label_name(AGENT_LABEL) && is_valid_label_name(TRANSITION_LABEL));
        let err = ProtocolMetrics::default().to_prometheus("bad prefix");
        assert_eq!(err, Err(ExpositionError::InvalidName));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        write_escaped_label_value(&mut out, "a\\b\"c\nd é").unwrap();
        assert_eq!(out, "a\\\\b\\\"c\\nd é");
    }

    #[test]
    fn agent_series_are_capped_and_counted() {
        let m = ProtocolMetrics::new(MetricsConfig {
            max_agent_series: 2,
        });
        let a = m.agent("a").unwrap();
        a.requests.inc();
        assert!(m.agent("b").is_some());
        assert!(m.agent("c").is_none());
        assert!(m.agent("d").is_none());
        // Existing agents are still served at the cap, and share counters.
        m.agent("a").unwrap().requests.inc();
        assert_eq!(a.requests.get(), 2);
        let s = m.snapshot();
        assert_eq!(s.agent_series_rejected, 2);
        assert_eq!(s.agents.len(), 2);
        assert!(m.remove_agent("b"));
        assert!(!m.remove_agent("b"));
        assert!(m.agent("c").is_some());
    }

    #[test]
    fn circuit_transitions_and_tally_feed_the_right_metrics() {
        let m = ProtocolMetrics::default();
        for t in [
            CircuitTransition::Opened,
            CircuitTransition::HalfOpened,
            CircuitTransition::Reopened,
            CircuitTransition::HalfOpened,
            CircuitTransition::Closed,
        ] {
            m.record_circuit_transition(t);
        }
        let s = m.snapshot();
        assert_eq!(
            (s.circuit_opened, s.circuit_half_opened, s.circuit_closed),
            (2, 2, 1)
        );
        m.set_connection_gauges(&ConnectionTally {
            total: 4,
            healthy: 3,
            paused: 1,
            in_flight: 7,
        });
        let s = m.snapshot();
        assert_eq!(
            (
                s.healthy_connections,
                s.paused_connections,
                s.in_flight_requests
            ),
            (3, 1, 7)
        );
    }

    /// Parses the exposition with a real Prometheus text parser and checks values.
    #[test]
    fn exposition_parses_with_prometheus_parse() {
        use prometheus_parse::{Scrape, Value};

        let m = ProtocolMetrics::default();
        m.requests.add(42);
        m.responses.add(40);
        m.timeouts.inc();
        m.flow_control_rejections.add(3);
        m.affinity_rejections.add(2);
        m.correlation_affinities.set(17);
        m.record_circuit_transition(CircuitTransition::Opened);
        for micros in [5, 10, 700, 2_000_000] {
            m.request_duration.record_micros(micros);
        }
        m.agent("alpha").unwrap().requests.add(5);
        // A value needing every escape except those the parser cannot split (`,` `=` `}`).
        m.agent("we\"ird\\agent\nx").unwrap().errors.add(9);

        let text = m.to_prometheus("agent_protocol").unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = Scrape::parse(lines).expect("exposition parses");

        let value = |name: &str, label: Option<(&str, &str)>| -> Value {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
                .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
                .value
                .clone()
        };
        assert_eq!(
            value("agent_protocol_requests_total", None),
            Value::Counter(42.0)
        );
        assert_eq!(
            value("agent_protocol_responses_total", None),
            Value::Counter(40.0)
        );
        assert_eq!(
            value("agent_protocol_timeouts_total", None),
            Value::Counter(1.0)
        );
        assert_eq!(
            value("agent_protocol_flow_control_rejections_total", None),
            Value::Counter(3.0)
        );
        assert_eq!(
            value("agent_protocol_correlation_affinities", None),
            Value::Gauge(17.0)
        );
        assert_eq!(
            value(
                "agent_protocol_circuit_transitions_total",
                Some(("to", "open"))
            ),
            Value::Counter(1.0)
        );
        assert_eq!(
            value(
                "agent_protocol_agent_requests_total",
                Some(("agent_id", "alpha"))
            ),
            Value::Counter(5.0)
        );
        // The parser hands label values back still escaped; unescaping must give the original.
        let weird = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "agent_protocol_agent_errors_total"
                    && s.labels.get("agent_id") != Some("alpha")
            })
            .unwrap();
        assert_eq!(weird.value, Value::Counter(9.0));
        assert_eq!(
            unescape(weird.labels.get("agent_id").unwrap()),
            "we\"ird\\agent\nx"
        );

        let Value::Histogram(buckets) = value("agent_protocol_request_duration_seconds", None)
        else {
            panic!("request duration is not a histogram");
        };
        let counts: Vec<_> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        assert_eq!(counts.len(), 12);
        assert_eq!(counts[0], (0.00001, 2.0));
        assert_eq!(counts[3], (0.0005, 2.0));
        assert_eq!(counts[4], (0.001, 3.0));
        assert_eq!(counts[10], (1.0, 3.0));
        assert_eq!(counts[11], (f64::INFINITY, 4.0));
        // The parser types only the `_bucket` lines of a histogram; `_sum` and `_count` come
        // back untyped.
        assert_eq!(
            value("agent_protocol_request_duration_seconds_sum", None),
            Value::Untyped(2.000_715)
        );
        assert_eq!(
            value("agent_protocol_request_duration_seconds_count", None),
            Value::Untyped(4.0)
        );
        assert_eq!(
            value("agent_protocol_serialization_seconds_count", None),
            Value::Untyped(0.0)
        );

        // Every family is documented and typed exactly once.
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
        assert_eq!(scrape.docs.len(), helps);
        assert_eq!(
            scrape
                .docs
                .get("agent_protocol_requests_total")
                .map(String::as_str),
            Some("Total requests sent to agents")
        );
    }

    /// The inverse of the exposition's label-value escaping, per the format's definition.
    fn unescape(escaped: &str) -> String {
        let mut out = String::new();
        let mut chars = escaped.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn exposition_layout_matches_the_reference() {
        let text = ProtocolMetrics::default().to_prometheus("p").unwrap();
        let expected_start = vec![
            "# HELP p_requests_total Total requests sent to agents",
            "# TYPE p_requests_total counter",
            "p_requests_total 0",
            "",
            "# HELP p_responses_total Total responses received from agents",
        ];
        assert_eq!(text.lines().take(5).collect::<Vec<_>>(), expected_start);
        let buckets: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("p_request_duration_seconds_bucket"))
            .collect();
        assert_eq!(
            buckets.first(),
            Some(&"p_request_duration_seconds_bucket{le=\"0.000010\"} 0")
        );
        assert_eq!(
            buckets.get(10),
            Some(&"p_request_duration_seconds_bucket{le=\"1.000000\"} 0")
        );
        assert_eq!(
            buckets.last(),
            Some(&"p_request_duration_seconds_bucket{le=\"+Inf\"} 0")
        );
        assert!(text.ends_with("\n\n"));
        assert!(
            !text.contains("buffer_utilization"),
            "never-updated gauges are not exported"
        );
    }
}
