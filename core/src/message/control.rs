//! Agent-to-proxy control messages (spec §5.9-§5.12): health, metrics, configuration update
//! requests and flow control.
//!
//! The reference proxy reads health and flow control as bare integers while the reference
//! crate's own types write tagged objects; decoders here accept both forms. Tagged enums go
//! through a JSON value on decode (and through JSON text on postcard, which cannot describe
//! them): these messages are rare, so simplicity wins over speed.

use super::AnyValue;
use super::any::{deserialize_value, serialize_via_json_text};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Load figures an agent reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadMetrics {
    /// Requests in flight.
    pub in_flight: u32,
    /// Queued requests.
    pub queue_depth: u32,
    /// Mean latency.
    pub avg_latency_ms: f32,
    /// Median latency.
    pub p50_latency_ms: f32,
    /// 95th percentile latency.
    pub p95_latency_ms: f32,
    /// 99th percentile latency.
    pub p99_latency_ms: f32,
    /// Requests processed.
    pub requests_processed: u64,
    /// Requests rejected.
    pub requests_rejected: u64,
    /// Requests timed out.
    pub requests_timed_out: u64,
}

/// Resource figures an agent reports; every key optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceMetrics {
    /// CPU use.
    #[serde(default)]
    pub cpu_percent: Option<f32>,
    /// Memory use.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Memory limit.
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// Threads.
    #[serde(default)]
    pub active_threads: Option<u32>,
    /// Open descriptors.
    #[serde(default)]
    pub open_fds: Option<u32>,
    /// Descriptor limit.
    #[serde(default)]
    pub fd_limit: Option<u32>,
    /// Open connections.
    #[serde(default)]
    pub connections: Option<u32>,
}

/// An agent's health.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum HealthState {
    /// No state given (or an integer the protocol does not define).
    #[default]
    Unspecified,
    /// Fully working.
    Healthy,
    /// Working with reduced function.
    Degraded {
        /// Features switched off.
        disabled_features: Vec<String>,
        /// How much slower it is.
        timeout_multiplier: f32,
    },
    /// Finishing work, taking no more.
    Draining {
        /// Expected end of the drain.
        eta_ms: Option<u64>,
    },
    /// Not working.
    Unhealthy {
        /// Why.
        reason: String,
        /// Whether it expects to recover.
        recoverable: bool,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum TaggedHealthState {
    Healthy,
    Degraded {
        #[serde(deserialize_with = "super::cap::vec")]
        disabled_features: Vec<String>,
        timeout_multiplier: f32,
    },
    Draining {
        eta_ms: Option<u64>,
    },
    Unhealthy {
        reason: String,
        recoverable: bool,
    },
}

impl HealthState {
    /// The proto numbering used by the reference proxy (1 healthy … 4 unhealthy).
    #[must_use]
    pub fn as_number(&self) -> i32 {
        match self {
            HealthState::Unspecified => 0,
            HealthState::Healthy => 1,
            HealthState::Degraded { .. } => 2,
            HealthState::Draining { .. } => 3,
            HealthState::Unhealthy { .. } => 4,
        }
    }

    /// The state for a proto number.
    #[must_use]
    pub fn from_number(n: i64) -> Self {
        match n {
            1 => HealthState::Healthy,
            2 => HealthState::Degraded {
                disabled_features: Vec::new(),
                timeout_multiplier: 1.0,
            },
            3 => HealthState::Draining { eta_ms: None },
            4 => HealthState::Unhealthy {
                reason: String::new(),
                recoverable: true,
            },
            _ => HealthState::Unspecified,
        }
    }

    fn to_tagged(&self) -> Option<TaggedHealthState> {
        Some(match self.clone() {
            HealthState::Unspecified => return None,
            HealthState::Healthy => TaggedHealthState::Healthy,
            HealthState::Degraded {
                disabled_features,
                timeout_multiplier,
            } => TaggedHealthState::Degraded {
                disabled_features,
                timeout_multiplier,
            },
            HealthState::Draining { eta_ms } => TaggedHealthState::Draining { eta_ms },
            HealthState::Unhealthy {
                reason,
                recoverable,
            } => TaggedHealthState::Unhealthy {
                reason,
                recoverable,
            },
        })
    }

    fn from_value(v: Value) -> Result<Self, serde_json::Error> {
        if let Some(n) = v.as_i64() {
            return Ok(HealthState::from_number(n));
        }
        if v.is_null() {
            return Ok(HealthState::Unspecified);
        }
        Ok(match serde_json::from_value::<TaggedHealthState>(v)? {
            TaggedHealthState::Healthy => HealthState::Healthy,
            TaggedHealthState::Degraded {
                disabled_features,
                timeout_multiplier,
            } => HealthState::Degraded {
                disabled_features,
                timeout_multiplier,
            },
            TaggedHealthState::Draining { eta_ms } => HealthState::Draining { eta_ms },
            TaggedHealthState::Unhealthy {
                reason,
                recoverable,
            } => HealthState::Unhealthy {
                reason,
                recoverable,
            },
        })
    }
}

impl Serialize for HealthState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.to_tagged() {
            Some(tagged) => serialize_via_json_text(&tagged, s),
            None => serialize_via_json_text(&0u8, s),
        }
    }
}

impl<'de> Deserialize<'de> for HealthState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HealthState::from_value(deserialize_value(d)?).map_err(D::Error::custom)
    }
}

/// `0x30`: an agent's health report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Reporting agent.
    #[serde(default)]
    pub agent_id: String,
    /// Its state (an integer or a tagged object on input).
    #[serde(default)]
    pub state: HealthState,
    /// Free text.
    #[serde(default)]
    pub message: Option<String>,
    /// Load figures.
    #[serde(default)]
    pub load: Option<LoadMetrics>,
    /// Resource figures.
    #[serde(default)]
    pub resources: Option<ResourceMetrics>,
    /// Until when the report holds.
    #[serde(default)]
    pub valid_until_ms: Option<u64>,
    /// Report time.
    #[serde(default)]
    pub timestamp_ms: u64,
}

/// A counter series.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterMetric {
    /// Metric name.
    pub name: String,
    /// Help text (written as `null` when absent; postcard needs every field).
    #[serde(default)]
    pub help: Option<String>,
    /// Labels.
    #[serde(default, deserialize_with = "super::cap::map_or_null")]
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: u64,
}

/// A gauge series.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GaugeMetric {
    /// Metric name.
    pub name: String,
    /// Help text (written as `null` when absent; postcard needs every field).
    #[serde(default)]
    pub help: Option<String>,
    /// Labels.
    #[serde(default, deserialize_with = "super::cap::map_or_null")]
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// One histogram bucket: `count` observations at most `le`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramBucket {
    /// Upper bound; infinite bounds travel as `"+Inf"` / `"-Inf"`.
    #[serde(serialize_with = "serialize_le", deserialize_with = "deserialize_le")]
    pub le: f64,
    /// Observations.
    pub count: u64,
}

fn serialize_le<S: Serializer>(le: &f64, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() && le.is_infinite() {
        // The reference writes "+Inf" for -inf too (B19); the sign is kept here.
        s.serialize_str(if *le > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        s.serialize_f64(*le)
    }
}

fn deserialize_le<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    if !d.is_human_readable() {
        return f64::deserialize(d);
    }
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| D::Error::custom("bucket bound out of range")),
        Value::String(s) => match s.as_str() {
            "+Inf" | "Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
            "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other
                .parse::<f64>()
                .map_err(|_| D::Error::custom("bucket bound is not a number")),
        },
        _ => Err(D::Error::custom("bucket bound is not a number")),
    }
}

/// A histogram series.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramMetric {
    /// Metric name.
    pub name: String,
    /// Help text (written as `null` when absent; postcard needs every field).
    #[serde(default)]
    pub help: Option<String>,
    /// Labels.
    #[serde(default, deserialize_with = "super::cap::map_or_null")]
    pub labels: BTreeMap<String, String>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Cumulative buckets.
    #[serde(default, deserialize_with = "super::cap::vec_or_null")]
    pub buckets: Vec<HistogramBucket>,
}

/// `0x31`: an agent's metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Reporting agent (the proxy should label by the id it knows, not this one; S4).
    pub agent_id: String,
    /// Report time.
    pub timestamp_ms: u64,
    /// Reporting interval.
    pub interval_ms: u64,
    /// Counters.
    #[serde(default, deserialize_with = "super::cap::vec_or_null")]
    pub counters: Vec<CounterMetric>,
    /// Gauges.
    #[serde(default, deserialize_with = "super::cap::vec_or_null")]
    pub gauges: Vec<GaugeMetric>,
    /// Histograms.
    #[serde(default, deserialize_with = "super::cap::vec_or_null")]
    pub histograms: Vec<HistogramMetric>,
}

/// A rule in a rule update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Rule id.
    pub id: String,
    /// Priority.
    pub priority: i32,
    /// Rule body.
    pub definition: AnyValue,
    /// Enabled.
    pub enabled: bool,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Tags.
    #[serde(default, deserialize_with = "super::cap::vec_or_null")]
    pub tags: Vec<String>,
}

/// What an agent asks the proxy to change (wire: internally tagged by `type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConfigUpdateType {
    /// Reload the configuration.
    RequestReload,
    /// Replace rules.
    RuleUpdate {
        /// Rule set.
        rule_set: String,
        /// Rules to add or replace.
        #[serde(deserialize_with = "super::cap::vec")]
        rules: Vec<Rule>,
        /// Rule ids to remove.
        #[serde(deserialize_with = "super::cap::vec")]
        remove_rules: Vec<String>,
    },
    /// Change a list.
    ListUpdate {
        /// List id.
        list_id: String,
        /// Entries to add.
        #[serde(deserialize_with = "super::cap::vec")]
        add: Vec<String>,
        /// Entries to remove.
        #[serde(deserialize_with = "super::cap::vec")]
        remove: Vec<String>,
    },
    /// The agent must restart.
    RestartRequired {
        /// Why.
        reason: String,
        /// Grace period.
        grace_period_ms: u64,
    },
    /// The configuration has an error.
    ConfigError {
        /// The error.
        error: String,
        /// The field.
        field: Option<String>,
    },
}

fn serialize_update_type<S: Serializer>(v: &ConfigUpdateType, s: S) -> Result<S::Ok, S::Error> {
    serialize_via_json_text(v, s)
}

fn deserialize_update_type<'de, D: Deserializer<'de>>(d: D) -> Result<ConfigUpdateType, D::Error> {
    serde_json::from_value(deserialize_value(d)?).map_err(D::Error::custom)
}

/// `0x32`: an agent asks for a configuration change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdateRequest {
    /// The change.
    #[serde(
        serialize_with = "serialize_update_type",
        deserialize_with = "deserialize_update_type"
    )]
    pub update_type: ConfigUpdateType,
    /// Request id.
    pub request_id: String,
    /// Request time.
    pub timestamp_ms: u64,
}

/// A flow-control action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlowAction {
    /// No action (integer 0, 3 or missing on the reference's integer form).
    #[default]
    Unspecified,
    /// Stop sending new requests.
    Pause,
    /// Start again.
    Resume,
    /// The agent can take this many more requests.
    UpdateCapacity {
        /// Free buffer slots.
        buffer_available: u64,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum TaggedFlowAction {
    Pause,
    Resume,
    UpdateCapacity { buffer_available: u64 },
}

impl Serialize for FlowAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            FlowAction::Unspecified => serialize_via_json_text(&0u8, s),
            FlowAction::Pause => serialize_via_json_text(&TaggedFlowAction::Pause, s),
            FlowAction::Resume => serialize_via_json_text(&TaggedFlowAction::Resume, s),
            FlowAction::UpdateCapacity { buffer_available } => {
                serialize_via_json_text(&TaggedFlowAction::UpdateCapacity { buffer_available }, s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for FlowAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = deserialize_value(d)?;
        if let Some(n) = v.as_i64() {
            return Ok(match n {
                1 => FlowAction::Pause,
                2 => FlowAction::Resume,
                _ => FlowAction::Unspecified,
            });
        }
        if v.is_null() {
            return Ok(FlowAction::Unspecified);
        }
        Ok(
            match serde_json::from_value::<TaggedFlowAction>(v).map_err(D::Error::custom)? {
                TaggedFlowAction::Pause => FlowAction::Pause,
                TaggedFlowAction::Resume => FlowAction::Resume,
                TaggedFlowAction::UpdateCapacity { buffer_available } => {
                    FlowAction::UpdateCapacity { buffer_available }
                }
            },
        )
    }
}

/// `0x33`: the agent asks the proxy to pause, resume or resize what it sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowControlSignal {
    /// The request concerned; `None` means the whole connection.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// The action.
    #[serde(default)]
    pub action: FlowAction,
    /// Signal time.
    #[serde(default)]
    pub timestamp_ms: u64,
}
