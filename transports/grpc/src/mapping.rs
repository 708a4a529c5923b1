//! Conversions between agentwire's core message types and the protobuf messages (spec §10.5),
//! both directions.
//!
//! The core types in [`agentwire_core::message`] are the only business types; the prost
//! types in [`crate::pb`] exist only on the wire. The mapping follows the reference's
//! (§10.5) without its avoidable losses:
//!
//! * `audit.custom` values are not JSON-quoted (B9): a JSON string travels as the plain
//!   string, any other JSON value as its compact JSON text, and agentwire marks which keys
//!   hold JSON text (see [`JSON_KEYS_KEY`]) so agentwire ↔ agentwire round trips are exact.
//!   Values from peers without the mark are kept as strings; a value that is a quoted JSON
//!   string (what the reference agent sends, `"\"unit\""`) is unquoted.
//! * What the `AgentResponse` message has no field for — `version`, `routing_metadata`, both
//!   body mutations and `websocket_decision` — travels in `audit.custom` under reserved
//!   `agentwire.*` keys (JSON text), which reference proxies keep as opaque audit strings and
//!   agentwire decodes back into the fields. See [`RESERVED_PREFIX`].
//! * A guardrail inspection's `inspection_type`, `categories`, `route_id` and `metadata`
//!   travel in `context_json` (the proto's free-form context).
//! * WebSocket opcodes map to the frame-type enum and back to their names (`"text"`, not
//!   the reference's `"1"`).
//! * `RequestMetadata.timestamp` (RFC 3339 text) maps to `timestamp_ms` and back to RFC 3339
//!   with milliseconds in UTC; only text that is not a timestamp is replaced by the send
//!   time.
//!
//! What the proto cannot carry at all (proxy → agent) is listed in the crate documentation.

use crate::pb;
use crate::pb::agent_response::Decision as PbDecision;
use crate::pb::proxy_to_agent::Message as PbEvent;
use agentwire_core::message::{
    AgentResponse, AnyValue, Audit, BodyChunk, BodyMutation, Cancel, CancelReason, Capabilities,
    ConfigUpdateRequest, ConfigUpdateType, Configure, CounterMetric, Decision, Event, Features,
    FlowAction, FlowControlSignal, GaugeMetric, GuardrailInspect, HandshakeRequest, HeaderOp,
    Headers, HealthState, HealthStatus, HistogramBucket, HistogramMetric, InspectionType, Limits,
    LoadMetrics, MetricsReport, PROTOCOL_VERSION, Ping, RequestComplete, RequestHeaders,
    RequestMetadata, ResourceMetrics, ResponseHeaders, Rule, Value, WebSocketDecision,
    WebSocketFrame,
};
use std::collections::BTreeMap;

/// Prefix of the `audit.custom` keys agentwire reserves on gRPC for data the proto has no
/// field for. Keys with this prefix that agentwire recognises are removed from `custom` when
/// decoding; a handler should not use the prefix for its own keys.
pub const RESERVED_PREFIX: &str = "agentwire.";
/// `audit.custom` key: JSON array of the `custom` keys whose values are JSON text (not plain
/// strings). Written whenever a value is not a JSON string, or a plain string would otherwise
/// be read as a quoted one.
pub const JSON_KEYS_KEY: &str = "agentwire.json_keys";
/// `audit.custom` key: `AgentResponse.version`, written only when it is not 2.
pub const VERSION_KEY: &str = "agentwire.version";
/// `audit.custom` key: `routing_metadata` as a JSON object, written when not empty.
pub const ROUTING_METADATA_KEY: &str = "agentwire.routing_metadata";
/// `audit.custom` key: `request_body_mutation` as JSON, written when set.
pub const REQUEST_BODY_MUTATION_KEY: &str = "agentwire.request_body_mutation";
/// `audit.custom` key: `response_body_mutation` as JSON, written when set.
pub const RESPONSE_BODY_MUTATION_KEY: &str = "agentwire.response_body_mutation";
/// `audit.custom` key: `websocket_decision` as JSON, written when set.
pub const WEBSOCKET_DECISION_KEY: &str = "agentwire.websocket_decision";

/// The HTTP version sent when the metadata's `protocol` is empty.
const DEFAULT_HTTP_VERSION: &str = "HTTP/1.1";

/// Why a protobuf message could not become a core message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingError {
    /// The oneof was empty (or a variant this build does not know).
    Empty,
    /// The variant is not an event (handshake, cancel, ping).
    NotAnEvent,
    /// An event kind without a protobuf form.
    Unsupported,
    /// A JSON text field did not hold valid JSON.
    InvalidJson {
        /// The field.
        field: &'static str,
    },
}

impl std::fmt::Display for MappingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MappingError::Empty => f.write_str("message carries no variant"),
            MappingError::NotAnEvent => f.write_str("message is not an event"),
            MappingError::Unsupported => f.write_str("event kind has no protobuf form"),
            MappingError::InvalidJson { field } => write!(f, "`{field}` is not valid JSON"),
        }
    }
}

impl std::error::Error for MappingError {}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn headers_to_pb(headers: &Headers) -> Vec<pb::Header> {
    headers
        .iter()
        .map(|(name, value)| pb::Header {
            name: name.to_owned(),
            value: value.to_owned(),
        })
        .collect()
}

fn headers_from_pb(headers: Vec<pb::Header>) -> Headers {
    headers.into_iter().map(|h| (h.name, h.value)).collect()
}

/// Compact JSON text of a value; `null` becomes `fallback`.
fn json_text(value: &AnyValue, fallback: &str) -> String {
    if value.is_null() {
        return fallback.to_owned();
    }
    serde_json::to_string(&value.0).unwrap_or_else(|_| fallback.to_owned())
}

/// Parses JSON text; empty text is `null`.
fn parse_json(text: &str, field: &'static str) -> Result<AnyValue, MappingError> {
    if text.trim().is_empty() {
        return Ok(AnyValue::NULL);
    }
    serde_json::from_str::<Value>(text)
        .map(AnyValue)
        .map_err(|_| MappingError::InvalidJson { field })
}

// ---------------------------------------------------------------------------------------------
// Handshake

/// The proxy's handshake. `config` becomes `config_json` (compact JSON, `"{}"` when null, as
/// the reference sends).
#[must_use]
pub fn handshake_request_to_pb(request: &HandshakeRequest) -> pb::HandshakeRequest {
    pb::HandshakeRequest {
        supported_versions: request.supported_versions.clone(),
        proxy_id: request.proxy_id.clone(),
        proxy_version: request.proxy_version.clone(),
        config_json: json_text(&request.config, "{}"),
    }
}

/// The proxy's handshake as the core type (`encodings` are empty: gRPC has none).
///
/// # Errors
/// `config_json` is not JSON.
pub fn handshake_request_from_pb(
    request: pb::HandshakeRequest,
) -> Result<HandshakeRequest, MappingError> {
    Ok(HandshakeRequest {
        supported_versions: request.supported_versions,
        proxy_id: request.proxy_id,
        proxy_version: request.proxy_version,
        config: parse_json(&request.config_json, "config_json")?,
        supported_encodings: Vec::new(),
        agentwire_encodings: Vec::new(),
    })
}

/// Capability data the proto carries beyond the core [`Capabilities`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityExtras {
    /// `limits.max_memory`.
    pub max_memory: Option<u64>,
    /// `limits.max_processing_time_ms`.
    pub max_processing_time_ms: Option<u64>,
    /// `health_config`, when present.
    pub health: Option<HealthReporting>,
}

/// How often and with what an agent reports health (`HealthConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReporting {
    /// Report interval; also the ControlStream heartbeat period.
    pub report_interval_ms: u32,
    /// Reports include load figures.
    pub include_load_metrics: bool,
    /// Reports include resource figures.
    pub include_resource_metrics: bool,
}

impl Default for HealthReporting {
    fn default() -> Self {
        HealthReporting {
            report_interval_ms: 10_000,
            include_load_metrics: true,
            include_resource_metrics: false,
        }
    }
}

/// An agent's capabilities on the wire.
#[must_use]
pub fn capabilities_to_pb(
    capabilities: &Capabilities,
    protocol_version: u32,
    extras: &CapabilityExtras,
) -> pb::AgentCapabilities {
    let f = &capabilities.features;
    let l = &capabilities.limits;
    pb::AgentCapabilities {
        protocol_version,
        agent_id: capabilities.agent_id.clone(),
        name: capabilities.name.clone(),
        version: capabilities.version.clone(),
        supported_events: capabilities.supported_events.clone(),
        features: Some(pb::AgentFeatures {
            streaming_body: f.streaming_body,
            websocket: f.websocket,
            guardrails: f.guardrails,
            config_push: f.config_push,
            metrics_export: f.metrics_export,
            concurrent_requests: f.concurrent_requests,
            cancellation: f.cancellation,
            flow_control: f.flow_control,
            health_reporting: f.health_reporting,
        }),
        limits: Some(pb::AgentLimits {
            max_body_size: l.max_body_size,
            max_concurrency: l.max_concurrency,
            preferred_chunk_size: l.preferred_chunk_size,
            max_memory: extras.max_memory,
            max_processing_time_ms: extras.max_processing_time_ms,
        }),
        health_config: extras.health.as_ref().map(|h| pb::HealthConfig {
            report_interval_ms: h.report_interval_ms,
            include_load_metrics: h.include_load_metrics,
            include_resource_metrics: h.include_resource_metrics,
        }),
    }
}

/// An agent's capabilities from the wire; missing `features`/`limits` read as the defaults.
#[must_use]
pub fn capabilities_from_pb(
    capabilities: pb::AgentCapabilities,
) -> (Capabilities, CapabilityExtras) {
    let features = capabilities
        .features
        .map(|f| Features {
            streaming_body: f.streaming_body,
            websocket: f.websocket,
            guardrails: f.guardrails,
            config_push: f.config_push,
            metrics_export: f.metrics_export,
            concurrent_requests: f.concurrent_requests,
            cancellation: f.cancellation,
            flow_control: f.flow_control,
            health_reporting: f.health_reporting,
        })
        .unwrap_or_default();
    let mut extras = CapabilityExtras::default();
    let limits = match capabilities.limits {
        Some(l) => {
            extras.max_memory = l.max_memory;
            extras.max_processing_time_ms = l.max_processing_time_ms;
            Limits {
                max_body_size: l.max_body_size,
                max_concurrency: l.max_concurrency,
                preferred_chunk_size: l.preferred_chunk_size,
            }
        }
        None => Limits::default(),
    };
    extras.health = capabilities.health_config.map(|h| HealthReporting {
        report_interval_ms: h.report_interval_ms,
        include_load_metrics: h.include_load_metrics,
        include_resource_metrics: h.include_resource_metrics,
    });
    (
        Capabilities {
            agent_id: capabilities.agent_id,
            name: capabilities.name,
            version: capabilities.version,
            supported_events: capabilities.supported_events,
            features,
            limits,
        },
        extras,
    )
}

// ---------------------------------------------------------------------------------------------
// Events (proxy → agent)

/// The wire form of an event. `now_ms` fills the proto's send-time fields
/// (`BodyChunkEvent.timestamp_ms`, `ConfigureEvent.timestamp_ms`) and replaces a request
/// timestamp that is not RFC 3339 (or a decimal millisecond count). `is_initial` marks the
/// configuration delivered right after the handshake.
///
/// # Errors
/// [`MappingError::Unsupported`] for an event kind this build has no wire form for.
pub fn event_to_pb(event: Event, now_ms: u64, is_initial: bool) -> Result<PbEvent, MappingError> {
    Ok(match event {
        Event::RequestHeaders(e) => PbEvent::RequestHeaders(request_headers_to_pb(e, now_ms)),
        Event::RequestBodyChunk(c) => PbEvent::RequestBodyChunk(body_chunk_to_pb(c, now_ms)),
        Event::ResponseHeaders(e) => PbEvent::ResponseHeaders(pb::ResponseHeadersEvent {
            status_code: u32::from(e.status),
            headers: headers_to_pb(&e.headers),
            correlation_id: e.correlation_id,
        }),
        Event::ResponseBodyChunk(c) => PbEvent::ResponseBodyChunk(body_chunk_to_pb(c, now_ms)),
        Event::RequestComplete(e) => PbEvent::RequestComplete(pb::RequestCompleteEvent {
            correlation_id: e.correlation_id,
            status_code: u32::from(e.status),
            duration_ms: e.duration_ms,
            bytes_received: e.request_body_size,
            bytes_sent: e.response_body_size,
            upstream: None,
            from_cache: false,
            error: e.error,
        }),
        Event::WebSocketFrame(e) => PbEvent::WebsocketFrame(pb::WebSocketFrameEvent {
            frame_type: opcode_to_frame_type(&e.opcode),
            correlation_id: e.correlation_id,
            client_to_server: e.client_to_server,
            payload: e.data,
        }),
        Event::GuardrailInspect(e) => PbEvent::Guardrail(guardrail_to_pb(e)),
        Event::Configure(c) => PbEvent::Configure(pb::ConfigureEvent {
            config_json: json_text(&c.config, "{}"),
            config_version: c.config_version,
            is_initial,
            timestamp_ms: now_ms,
        }),
        // `Event` is non-exhaustive: a variant added later has no wire form here yet.
        _ => return Err(MappingError::Unsupported),
    })
}

fn request_headers_to_pb(e: RequestHeaders, now_ms: u64) -> pb::RequestHeadersEvent {
    let m = e.metadata;
    let timestamp_ms = crate::time::parse_timestamp_ms(&m.timestamp).unwrap_or(now_ms);
    let http_version = if m.protocol.is_empty() {
        DEFAULT_HTTP_VERSION.to_owned()
    } else {
        m.protocol.clone()
    };
    pb::RequestHeadersEvent {
        metadata: Some(pb::RequestMetadata {
            correlation_id: m.correlation_id,
            request_id: m.request_id,
            client_ip: m.client_ip,
            client_port: u32::from(m.client_port),
            server_name: m.server_name,
            protocol: m.protocol,
            tls_version: m.tls_version,
            route_id: m.route_id,
            upstream_id: m.upstream_id,
            timestamp_ms,
            traceparent: m.traceparent,
        }),
        method: e.method,
        uri: e.uri,
        http_version,
        headers: headers_to_pb(&e.headers),
    }
}

fn body_chunk_to_pb(c: BodyChunk, now_ms: u64) -> pb::BodyChunkEvent {
    pb::BodyChunkEvent {
        correlation_id: c.correlation_id,
        chunk_index: c.chunk_index,
        data: c.data,
        is_last: c.is_last,
        total_size: c.total_size,
        bytes_transferred: c.bytes_transferred,
        proxy_buffer_available: 0,
        timestamp_ms: now_ms,
    }
}

fn body_chunk_from_pb(c: pb::BodyChunkEvent) -> BodyChunk {
    BodyChunk {
        correlation_id: c.correlation_id,
        data: c.data,
        is_last: c.is_last,
        total_size: c.total_size,
        chunk_index: c.chunk_index,
        bytes_transferred: c.bytes_transferred,
    }
}

/// WebSocket opcode name → `FrameType` number (`continuation` and unknown names: 0).
#[must_use]
pub fn opcode_to_frame_type(opcode: &str) -> i32 {
    use pb::web_socket_frame_event::FrameType;
    let t = match opcode {
        "text" => FrameType::Text,
        "binary" => FrameType::Binary,
        "ping" => FrameType::Ping,
        "pong" => FrameType::Pong,
        "close" => FrameType::Close,
        _ => FrameType::Unspecified,
    };
    t as i32
}

/// `FrameType` number → opcode name (0 is `continuation`; other unknown numbers stay decimal).
#[must_use]
pub fn frame_type_to_opcode(frame_type: i32) -> String {
    match frame_type {
        0 => "continuation",
        1 => "text",
        2 => "binary",
        3 => "ping",
        4 => "pong",
        5 => "close",
        other => return other.to_string(),
    }
    .to_owned()
}

const GUARDRAIL_CONTENT_TYPES: [(&str, i32); 5] = [
    ("prompt", 1),
    ("response", 2),
    ("system", 3),
    ("tool_call", 4),
    ("tool_result", 5),
];
const CONTENT_TYPE_KEY: &str = "content_type";

fn inspection_type_name(t: InspectionType) -> &'static str {
    match t {
        InspectionType::PromptInjection => "prompt_injection",
        InspectionType::PiiDetection => "pii_detection",
    }
}

fn guardrail_to_pb(e: GuardrailInspect) -> pb::GuardrailInspectEvent {
    let mut metadata = e.metadata;
    // A known content type travels in the proto's own field (and comes back into metadata).
    let content_type = match metadata.get(CONTENT_TYPE_KEY).and_then(|name| {
        GUARDRAIL_CONTENT_TYPES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }) {
        Some(n) => {
            metadata.remove(CONTENT_TYPE_KEY);
            n
        }
        None => 0,
    };
    // Only what differs from the defaults, so a plain inspection sends `{}` as the
    // reference does.
    let mut context = serde_json::Map::new();
    if e.inspection_type != InspectionType::default() {
        context.insert(
            "inspection_type".into(),
            Value::String(inspection_type_name(e.inspection_type).into()),
        );
    }
    if !e.categories.is_empty() {
        context.insert(
            "categories".into(),
            Value::Array(e.categories.into_iter().map(Value::String).collect()),
        );
    }
    if let Some(route) = e.route_id {
        context.insert("route_id".into(), Value::String(route));
    }
    if !metadata.is_empty() {
        context.insert(
            "metadata".into(),
            Value::Object(
                metadata
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ),
        );
    }
    pb::GuardrailInspectEvent {
        correlation_id: e.correlation_id,
        content: e.content,
        content_type,
        model: e.model,
        context_json: Value::Object(context).to_string(),
    }
}

fn guardrail_from_pb(e: pb::GuardrailInspectEvent) -> GuardrailInspect {
    let mut inspection_type = InspectionType::default();
    let mut categories = Vec::new();
    let mut route_id = None;
    let mut metadata = BTreeMap::new();
    // Lenient: the context is free-form; what is not agentwire's shape is kept as metadata.
    if let Ok(Value::Object(context)) = serde_json::from_str::<Value>(&e.context_json) {
        for (key, value) in context {
            match (key.as_str(), value) {
                ("inspection_type", Value::String(s)) if s == "pii_detection" => {
                    inspection_type = InspectionType::PiiDetection;
                }
                ("inspection_type", Value::String(_)) => {}
                ("categories", Value::Array(items)) => {
                    categories = items
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::String(s) => Some(s),
                            _ => None,
                        })
                        .collect();
                }
                ("route_id", Value::String(s)) => route_id = Some(s),
                ("metadata", Value::Object(m)) => {
                    for (k, v) in m {
                        metadata.insert(k, value_to_plain_string(v));
                    }
                }
                (_, v) => {
                    metadata.insert(key, value_to_plain_string(v));
                }
            }
        }
    }
    if e.content_type != 0 && !metadata.contains_key(CONTENT_TYPE_KEY) {
        let name = GUARDRAIL_CONTENT_TYPES
            .iter()
            .find(|(_, v)| *v == e.content_type)
            .map_or_else(|| e.content_type.to_string(), |(n, _)| (*n).to_owned());
        metadata.insert(CONTENT_TYPE_KEY.to_owned(), name);
    }
    GuardrailInspect {
        correlation_id: e.correlation_id,
        inspection_type,
        content: e.content,
        model: e.model,
        categories,
        route_id,
        metadata,
    }
}

fn value_to_plain_string(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// The core event for a protobuf event variant.
///
/// # Errors
/// [`MappingError::NotAnEvent`] for handshake, cancel and ping;
/// [`MappingError::InvalidJson`] for a configure whose `config_json` is not JSON.
pub fn event_from_pb(message: PbEvent) -> Result<Event, MappingError> {
    Ok(match message {
        PbEvent::RequestHeaders(e) => Event::RequestHeaders(request_headers_from_pb(e)),
        PbEvent::RequestBodyChunk(c) => Event::RequestBodyChunk(body_chunk_from_pb(c)),
        PbEvent::ResponseHeaders(e) => Event::ResponseHeaders(ResponseHeaders {
            correlation_id: e.correlation_id,
            status: saturate_u16(e.status_code),
            headers: headers_from_pb(e.headers),
        }),
        PbEvent::ResponseBodyChunk(c) => Event::ResponseBodyChunk(body_chunk_from_pb(c)),
        PbEvent::RequestComplete(e) => Event::RequestComplete(RequestComplete {
            correlation_id: e.correlation_id,
            status: saturate_u16(e.status_code),
            duration_ms: e.duration_ms,
            request_body_size: e.bytes_received,
            response_body_size: e.bytes_sent,
            upstream_attempts: 1,
            error: e.error,
        }),
        PbEvent::WebsocketFrame(e) => Event::WebSocketFrame(WebSocketFrame {
            correlation_id: e.correlation_id,
            opcode: frame_type_to_opcode(e.frame_type),
            data: e.payload,
            client_to_server: e.client_to_server,
            frame_index: 0,
            fin: true,
            route_id: None,
            client_ip: String::new(),
        }),
        PbEvent::Guardrail(e) => Event::GuardrailInspect(guardrail_from_pb(e)),
        PbEvent::Configure(c) => Event::Configure(Configure {
            config: parse_json(&c.config_json, "config_json")?,
            config_version: c.config_version,
            correlation_id: String::new(),
        }),
        PbEvent::Handshake(_) | PbEvent::Cancel(_) | PbEvent::Ping(_) => {
            return Err(MappingError::NotAnEvent);
        }
    })
}

fn saturate_u16(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn request_headers_from_pb(e: pb::RequestHeadersEvent) -> RequestHeaders {
    let m = e.metadata.unwrap_or_default();
    let protocol = if m.protocol.is_empty() {
        e.http_version
    } else {
        m.protocol
    };
    RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: m.correlation_id,
            request_id: m.request_id,
            client_ip: m.client_ip,
            // Not the reference's truncating cast: an impossible port reads as 0.
            client_port: u16::try_from(m.client_port).unwrap_or(0),
            server_name: m.server_name,
            protocol,
            tls_version: m.tls_version,
            tls_cipher: None,
            route_id: m.route_id,
            upstream_id: m.upstream_id,
            timestamp: crate::time::format_timestamp_ms(m.timestamp_ms),
            traceparent: m.traceparent,
        },
        method: e.method,
        uri: e.uri,
        headers: headers_from_pb(e.headers),
    }
}

/// Cancel reason → proto number (the UDS index + 1).
#[must_use]
pub fn cancel_reason_to_pb(reason: CancelReason) -> i32 {
    i32::from(reason as u8) + 1
}

/// Proto number → cancel reason (0 and unknown numbers read as `Manual`).
#[must_use]
pub fn cancel_reason_from_pb(reason: i32) -> CancelReason {
    match reason {
        1..=6 => CancelReason::from_wire(u64::from(reason.unsigned_abs() - 1)),
        _ => CancelReason::Manual,
    }
}

/// A cancel on the wire (`blocking_agent_id` and `manual_reason` have no core field and
/// stay unset, as the reference proxy leaves them).
#[must_use]
pub fn cancel_to_pb(cancel: &Cancel) -> pb::CancelRequest {
    pb::CancelRequest {
        correlation_id: cancel.correlation_id.clone(),
        reason: cancel_reason_to_pb(cancel.reason),
        timestamp_ms: cancel.timestamp_ms,
        blocking_agent_id: None,
        manual_reason: None,
    }
}

/// A cancel from the wire.
#[must_use]
pub fn cancel_from_pb(cancel: pb::CancelRequest) -> Cancel {
    Cancel {
        correlation_id: cancel.correlation_id,
        reason: cancel_reason_from_pb(cancel.reason),
        timestamp_ms: cancel.timestamp_ms,
    }
}

/// A ping on the wire.
#[must_use]
pub fn ping_to_pb(ping: Ping) -> pb::Ping {
    pb::Ping {
        sequence: ping.sequence,
        timestamp_ms: ping.timestamp_ms,
    }
}

/// A ping from the wire.
#[must_use]
pub fn ping_from_pb(ping: &pb::Ping) -> Ping {
    Ping {
        sequence: ping.sequence,
        timestamp_ms: ping.timestamp_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// Agent response

/// The wire form of an agent's answer to the event `correlation_id`.
///
/// `audit` is always present (as the reference sends it); data without a proto field goes
/// into `audit.custom` under the `agentwire.*` keys.
#[must_use]
pub fn response_to_pb(
    correlation_id: String,
    response: AgentResponse,
    processing_time_ms: Option<u64>,
) -> pb::AgentResponse {
    let decision = match response.decision {
        Decision::Allow => PbDecision::Allow(pb::AllowDecision {}),
        Decision::Block {
            status,
            body,
            headers,
        } => PbDecision::Block(pb::BlockDecision {
            status: u32::from(status),
            body,
            headers: headers
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| pb::Header { name, value })
                .collect(),
        }),
        Decision::Redirect { url, status } => PbDecision::Redirect(pb::RedirectDecision {
            url,
            status: u32::from(status),
        }),
        Decision::Challenge {
            challenge_type,
            params,
        } => PbDecision::Challenge(pb::ChallengeDecision {
            challenge_type,
            params,
        }),
    };
    let mut custom = encode_custom(response.audit.custom);
    if response.version != PROTOCOL_VERSION {
        custom.insert(VERSION_KEY.into(), response.version.to_string());
    }
    if !response.routing_metadata.is_empty() {
        custom.insert(
            ROUTING_METADATA_KEY.into(),
            to_json_or_empty(&response.routing_metadata),
        );
    }
    if let Some(m) = &response.request_body_mutation {
        custom.insert(REQUEST_BODY_MUTATION_KEY.into(), to_json_or_empty(m));
    }
    if let Some(m) = &response.response_body_mutation {
        custom.insert(RESPONSE_BODY_MUTATION_KEY.into(), to_json_or_empty(m));
    }
    if let Some(d) = &response.websocket_decision {
        custom.insert(WEBSOCKET_DECISION_KEY.into(), to_json_or_empty(d));
    }
    pb::AgentResponse {
        correlation_id,
        decision: Some(decision),
        request_headers: response
            .request_headers
            .into_iter()
            .map(header_op_to_pb)
            .collect(),
        response_headers: response
            .response_headers
            .into_iter()
            .map(header_op_to_pb)
            .collect(),
        audit: Some(pb::AuditMetadata {
            tags: response.audit.tags,
            rule_ids: response.audit.rule_ids,
            confidence: response.audit.confidence,
            reason_codes: response.audit.reason_codes,
            custom,
        }),
        processing_time_ms,
        needs_more: response.needs_more,
    }
}

fn to_json_or_empty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `audit.custom` values as strings (B9 fixed): strings plain, other values as JSON text,
/// with the [`JSON_KEYS_KEY`] mark when a decoder could misread a value.
fn encode_custom(custom: BTreeMap<String, AnyValue>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut json_keys = Vec::new();
    let mut needs_mark = false;
    for (key, AnyValue(value)) in custom {
        match value {
            Value::String(s) => {
                // An unmarked string that parses as a JSON string would be unquoted on decode.
                needs_mark |= is_quoted_json_string(&s);
                out.insert(key, s);
            }
            other => {
                needs_mark = true;
                json_keys.push(Value::String(key.clone()));
                out.insert(key, other.to_string());
            }
        }
    }
    if needs_mark {
        out.insert(JSON_KEYS_KEY.into(), Value::Array(json_keys).to_string());
    }
    out
}

fn is_quoted_json_string(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with('"')
        && s.ends_with('"')
        && serde_json::from_str::<String>(s).is_ok()
}

fn decode_custom(mut custom: BTreeMap<String, String>) -> BTreeMap<String, AnyValue> {
    let marked: Option<Vec<String>> = custom
        .remove(JSON_KEYS_KEY)
        .and_then(|text| serde_json::from_str(&text).ok());
    let mut out = BTreeMap::new();
    match marked {
        Some(json_keys) => {
            for (key, text) in custom {
                let value = if json_keys.contains(&key) {
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))
                } else {
                    Value::String(text)
                };
                out.insert(key, AnyValue(value));
            }
        }
        None => {
            for (key, text) in custom {
                // The reference quotes every value (B9): undo that for strings; everything
                // else stays the plain string it is.
                let value = if is_quoted_json_string(&text) {
                    serde_json::from_str::<String>(&text).map_or(Value::String(text), Value::String)
                } else {
                    Value::String(text)
                };
                out.insert(key, AnyValue(value));
            }
        }
    }
    out
}

fn header_op_to_pb(op: HeaderOp) -> pb::HeaderOp {
    use pb::header_op::Operation;
    pb::HeaderOp {
        operation: Some(match op {
            HeaderOp::Set { name, value } => Operation::Set(pb::Header { name, value }),
            HeaderOp::Add { name, value } => Operation::Add(pb::Header { name, value }),
            HeaderOp::Remove { name } => Operation::Remove(name),
        }),
    }
}

fn header_op_from_pb(op: pb::HeaderOp) -> Option<HeaderOp> {
    use pb::header_op::Operation;
    Some(match op.operation? {
        Operation::Set(h) => HeaderOp::Set {
            name: h.name,
            value: h.value,
        },
        Operation::Add(h) => HeaderOp::Add {
            name: h.name,
            value: h.value,
        },
        Operation::Remove(name) => HeaderOp::Remove { name },
    })
}

/// An agent's answer from the wire: its correlation id and the core response.
///
/// No decision reads as Allow, empty Block headers as none, a `HeaderOp` without operation
/// is dropped (as the reference does); `processing_time_ms` has no core field and is
/// returned separately. The `agentwire.*` keys are moved out of `audit.custom` into their
/// fields.
#[must_use]
pub fn response_from_pb(response: pb::AgentResponse) -> (String, AgentResponse, Option<u64>) {
    let decision = match response.decision {
        None | Some(PbDecision::Allow(_)) => Decision::Allow,
        Some(PbDecision::Block(b)) => Decision::Block {
            status: saturate_u16(b.status),
            body: b.body,
            headers: if b.headers.is_empty() {
                None
            } else {
                Some(b.headers.into_iter().map(|h| (h.name, h.value)).collect())
            },
        },
        Some(PbDecision::Redirect(r)) => Decision::Redirect {
            url: r.url,
            status: saturate_u16(r.status),
        },
        Some(PbDecision::Challenge(c)) => Decision::Challenge {
            challenge_type: c.challenge_type,
            params: c.params,
        },
    };
    let mut out = AgentResponse::with_decision(decision);
    out.request_headers = response
        .request_headers
        .into_iter()
        .filter_map(header_op_from_pb)
        .collect();
    out.response_headers = response
        .response_headers
        .into_iter()
        .filter_map(header_op_from_pb)
        .collect();
    out.needs_more = response.needs_more;
    if let Some(audit) = response.audit {
        let mut custom = audit.custom;
        if let Some(v) = custom.remove(VERSION_KEY).and_then(|v| v.parse().ok()) {
            out.version = v;
        }
        if let Some(m) = take_json(&mut custom, ROUTING_METADATA_KEY) {
            out.routing_metadata = m;
        }
        out.request_body_mutation =
            take_json::<BodyMutation>(&mut custom, REQUEST_BODY_MUTATION_KEY);
        out.response_body_mutation =
            take_json::<BodyMutation>(&mut custom, RESPONSE_BODY_MUTATION_KEY);
        out.websocket_decision =
            take_json::<WebSocketDecision>(&mut custom, WEBSOCKET_DECISION_KEY);
        out.audit = Audit {
            tags: audit.tags,
            rule_ids: audit.rule_ids,
            confidence: audit.confidence,
            reason_codes: audit.reason_codes,
            custom: decode_custom(custom),
        };
    }
    (response.correlation_id, out, response.processing_time_ms)
}

/// Removes `key` and decodes it; a value that does not decode stays in `custom` untouched.
fn take_json<T: serde::de::DeserializeOwned>(
    custom: &mut BTreeMap<String, String>,
    key: &str,
) -> Option<T> {
    let value = serde_json::from_str(custom.get(key)?).ok()?;
    custom.remove(key);
    Some(value)
}

// ---------------------------------------------------------------------------------------------
// Agent → proxy control messages

/// Health report → wire.
#[must_use]
pub fn health_to_pb(h: &HealthStatus) -> pb::HealthStatus {
    let mut out = pb::HealthStatus {
        agent_id: h.agent_id.clone(),
        state: h.state.as_number(),
        message: h.message.clone(),
        load: h.load.as_ref().map(|l| pb::LoadMetrics {
            in_flight: l.in_flight,
            queue_depth: l.queue_depth,
            avg_latency_ms: l.avg_latency_ms,
            p50_latency_ms: l.p50_latency_ms,
            p95_latency_ms: l.p95_latency_ms,
            p99_latency_ms: l.p99_latency_ms,
            requests_processed: l.requests_processed,
            requests_rejected: l.requests_rejected,
            requests_timed_out: l.requests_timed_out,
        }),
        resources: h.resources.as_ref().map(|r| pb::ResourceMetrics {
            cpu_percent: r.cpu_percent,
            memory_bytes: r.memory_bytes,
            memory_limit: r.memory_limit,
            active_threads: r.active_threads,
            open_fds: r.open_fds,
            fd_limit: r.fd_limit,
            connections: r.connections,
        }),
        valid_until_ms: h.valid_until_ms,
        timestamp_ms: h.timestamp_ms,
        ..Default::default()
    };
    match &h.state {
        HealthState::Degraded {
            disabled_features,
            timeout_multiplier,
        } => {
            out.disabled_features.clone_from(disabled_features);
            out.timeout_multiplier = *timeout_multiplier;
        }
        HealthState::Draining { eta_ms } => out.drain_eta_ms = *eta_ms,
        HealthState::Unhealthy {
            reason,
            recoverable,
        } => {
            out.unhealthy_reason = Some(reason.clone());
            out.recoverable = *recoverable;
        }
        _ => {}
    }
    out
}

/// Wire → health report. A degraded `timeout_multiplier` of 0 (proto3 cannot tell it from
/// unset) reads as 1.
#[must_use]
pub fn health_from_pb(h: pb::HealthStatus) -> HealthStatus {
    let state = match h.state {
        1 => HealthState::Healthy,
        2 => HealthState::Degraded {
            disabled_features: h.disabled_features,
            timeout_multiplier: if h.timeout_multiplier == 0.0 {
                1.0
            } else {
                h.timeout_multiplier
            },
        },
        3 => HealthState::Draining {
            eta_ms: h.drain_eta_ms,
        },
        4 => HealthState::Unhealthy {
            reason: h.unhealthy_reason.unwrap_or_default(),
            recoverable: h.recoverable,
        },
        _ => HealthState::Unspecified,
    };
    HealthStatus {
        agent_id: h.agent_id,
        state,
        message: h.message,
        load: h.load.map(|l| LoadMetrics {
            in_flight: l.in_flight,
            queue_depth: l.queue_depth,
            avg_latency_ms: l.avg_latency_ms,
            p50_latency_ms: l.p50_latency_ms,
            p95_latency_ms: l.p95_latency_ms,
            p99_latency_ms: l.p99_latency_ms,
            requests_processed: l.requests_processed,
            requests_rejected: l.requests_rejected,
            requests_timed_out: l.requests_timed_out,
        }),
        resources: h.resources.map(|r| ResourceMetrics {
            cpu_percent: r.cpu_percent,
            memory_bytes: r.memory_bytes,
            memory_limit: r.memory_limit,
            active_threads: r.active_threads,
            open_fds: r.open_fds,
            fd_limit: r.fd_limit,
            connections: r.connections,
        }),
        valid_until_ms: h.valid_until_ms,
        timestamp_ms: h.timestamp_ms,
    }
}

/// Metrics report → wire.
#[must_use]
pub fn metrics_to_pb(m: &MetricsReport) -> pb::MetricsReport {
    pb::MetricsReport {
        agent_id: m.agent_id.clone(),
        timestamp_ms: m.timestamp_ms,
        interval_ms: m.interval_ms,
        counters: m
            .counters
            .iter()
            .map(|c| pb::CounterMetric {
                name: c.name.clone(),
                help: c.help.clone(),
                labels: c.labels.clone(),
                value: c.value,
            })
            .collect(),
        gauges: m
            .gauges
            .iter()
            .map(|g| pb::GaugeMetric {
                name: g.name.clone(),
                help: g.help.clone(),
                labels: g.labels.clone(),
                value: g.value,
            })
            .collect(),
        histograms: m
            .histograms
            .iter()
            .map(|h| pb::HistogramMetric {
                name: h.name.clone(),
                help: h.help.clone(),
                labels: h.labels.clone(),
                sum: h.sum,
                count: h.count,
                buckets: h
                    .buckets
                    .iter()
                    .map(|b| pb::HistogramBucket {
                        le: b.le,
                        count: b.count,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Wire → metrics report (infinite bucket bounds are IEEE infinities, sign kept).
#[must_use]
pub fn metrics_from_pb(m: pb::MetricsReport) -> MetricsReport {
    MetricsReport {
        agent_id: m.agent_id,
        timestamp_ms: m.timestamp_ms,
        interval_ms: m.interval_ms,
        counters: m
            .counters
            .into_iter()
            .map(|c| CounterMetric {
                name: c.name,
                help: c.help,
                labels: c.labels,
                value: c.value,
            })
            .collect(),
        gauges: m
            .gauges
            .into_iter()
            .map(|g| GaugeMetric {
                name: g.name,
                help: g.help,
                labels: g.labels,
                value: g.value,
            })
            .collect(),
        histograms: m
            .histograms
            .into_iter()
            .map(|h| HistogramMetric {
                name: h.name,
                help: h.help,
                labels: h.labels,
                sum: h.sum,
                count: h.count,
                buckets: h
                    .buckets
                    .into_iter()
                    .map(|b| HistogramBucket {
                        le: b.le,
                        count: b.count,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Configuration update request → wire (rule definitions as compact JSON text).
#[must_use]
pub fn config_update_to_pb(c: &ConfigUpdateRequest) -> pb::ConfigUpdateRequest {
    use pb::config_update_request::UpdateType;
    let update = match &c.update_type {
        ConfigUpdateType::RequestReload => UpdateType::RequestReload(pb::RequestReload {}),
        ConfigUpdateType::RuleUpdate {
            rule_set,
            rules,
            remove_rules,
        } => UpdateType::RuleUpdate(pb::RuleUpdate {
            rule_set: rule_set.clone(),
            rules: rules
                .iter()
                .map(|r| pb::RuleDefinition {
                    id: r.id.clone(),
                    priority: r.priority,
                    definition_json: json_text(&r.definition, "null"),
                    enabled: r.enabled,
                    description: r.description.clone(),
                    tags: r.tags.clone(),
                })
                .collect(),
            remove_rules: remove_rules.clone(),
        }),
        ConfigUpdateType::ListUpdate {
            list_id,
            add,
            remove,
        } => UpdateType::ListUpdate(pb::ListUpdate {
            list_id: list_id.clone(),
            add: add.clone(),
            remove: remove.clone(),
        }),
        ConfigUpdateType::RestartRequired {
            reason,
            grace_period_ms,
        } => UpdateType::RestartRequired(pb::RestartRequired {
            reason: reason.clone(),
            grace_period_ms: *grace_period_ms,
        }),
        ConfigUpdateType::ConfigError { error, field } => {
            UpdateType::ConfigError(pb::ConfigError {
                error: error.clone(),
                field: field.clone(),
            })
        }
    };
    pb::ConfigUpdateRequest {
        request_id: c.request_id.clone(),
        timestamp_ms: c.timestamp_ms,
        update_type: Some(update),
    }
}

/// Wire → configuration update request. A missing update type reads as a reload request; a
/// rule definition that is not JSON is kept as a JSON string.
#[must_use]
pub fn config_update_from_pb(c: pb::ConfigUpdateRequest) -> ConfigUpdateRequest {
    use pb::config_update_request::UpdateType;
    let update_type = match c.update_type {
        None | Some(UpdateType::RequestReload(_)) => ConfigUpdateType::RequestReload,
        Some(UpdateType::RuleUpdate(r)) => ConfigUpdateType::RuleUpdate {
            rule_set: r.rule_set,
            rules: r
                .rules
                .into_iter()
                .map(|d| Rule {
                    id: d.id,
                    priority: d.priority,
                    definition: parse_json(&d.definition_json, "definition_json")
                        .unwrap_or(AnyValue(Value::String(d.definition_json))),
                    enabled: d.enabled,
                    description: d.description,
                    tags: d.tags,
                })
                .collect(),
            remove_rules: r.remove_rules,
        },
        Some(UpdateType::ListUpdate(l)) => ConfigUpdateType::ListUpdate {
            list_id: l.list_id,
            add: l.add,
            remove: l.remove,
        },
        Some(UpdateType::RestartRequired(r)) => ConfigUpdateType::RestartRequired {
            reason: r.reason,
            grace_period_ms: r.grace_period_ms,
        },
        Some(UpdateType::ConfigError(e)) => ConfigUpdateType::ConfigError {
            error: e.error,
            field: e.field,
        },
    };
    ConfigUpdateRequest {
        update_type,
        request_id: c.request_id,
        timestamp_ms: c.timestamp_ms,
    }
}

/// Flow-control signal → wire.
#[must_use]
pub fn flow_control_to_pb(s: &FlowControlSignal) -> pb::FlowControlSignal {
    let (action, buffer_available) = match s.action {
        FlowAction::Unspecified => (0, None),
        FlowAction::Pause => (1, None),
        FlowAction::Resume => (2, None),
        FlowAction::UpdateCapacity { buffer_available } => (3, Some(buffer_available)),
    };
    pb::FlowControlSignal {
        correlation_id: s.correlation_id.clone(),
        action,
        buffer_available,
        timestamp_ms: s.timestamp_ms,
    }
}

/// Wire → flow-control signal (unknown actions read as `Unspecified`).
#[must_use]
pub fn flow_control_from_pb(s: pb::FlowControlSignal) -> FlowControlSignal {
    let action = match s.action {
        1 => FlowAction::Pause,
        2 => FlowAction::Resume,
        3 => FlowAction::UpdateCapacity {
            buffer_available: s.buffer_available.unwrap_or(0),
        },
        _ => FlowAction::Unspecified,
    };
    FlowControlSignal {
        correlation_id: s.correlation_id,
        action,
        timestamp_ms: s.timestamp_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(pairs: &[(&str, Value)]) -> BTreeMap<String, AnyValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), AnyValue(v.clone())))
            .collect()
    }

    #[test]
    fn custom_values_round_trip_exactly() {
        let original = custom(&[
            ("plain", Value::String("unit".into())),
            ("quoted", Value::String("\"looks quoted\"".into())),
            ("n", serde_json::json!(5)),
            ("obj", serde_json::json!({"a": [1, true, null]})),
            ("numeric_string", Value::String("5".into())),
        ]);
        let wire = encode_custom(original.clone());
        assert_eq!(wire["plain"], "unit");
        assert_eq!(wire["n"], "5");
        assert_eq!(decode_custom(wire), original);
    }

    #[test]
    fn plain_strings_need_no_mark() {
        let wire = encode_custom(custom(&[("source", Value::String("unit".into()))]));
        assert_eq!(wire.len(), 1);
        assert_eq!(wire["source"], "unit");
    }

    #[test]
    fn reference_quoting_is_undone_and_other_text_kept() {
        let wire: BTreeMap<String, String> = [
            ("source".to_owned(), "\"unit\"".to_owned()),
            ("n".to_owned(), "5".to_owned()),
        ]
        .into();
        let decoded = decode_custom(wire);
        assert_eq!(decoded["source"], AnyValue::from("unit"));
        assert_eq!(decoded["n"], AnyValue::from("5"));
    }

    #[test]
    fn unrepresentable_fields_travel_in_reserved_keys() {
        let mut r = AgentResponse::block(403);
        r.version = 3;
        r.routing_metadata.insert("pool".into(), "b".into());
        r.request_body_mutation = Some(BodyMutation {
            data: Some("eA==".into()),
            chunk_index: 2,
        });
        r.response_body_mutation = Some(BodyMutation {
            data: Some(String::new()),
            chunk_index: 0,
        });
        r.websocket_decision = Some(WebSocketDecision::Close {
            code: 1008,
            reason: "policy".into(),
        });
        r.audit.custom.insert("k".into(), AnyValue::from("v"));
        let wire = response_to_pb("id-1".into(), r.clone(), Some(3));
        let (id, back, time) = response_from_pb(wire);
        assert_eq!(id, "id-1");
        assert_eq!(time, Some(3));
        assert_eq!(back, r);
    }

    #[test]
    fn cancel_reasons_are_offset_by_one() {
        for n in 0..6u64 {
            let r = CancelReason::from_wire(n);
            assert_eq!(cancel_reason_to_pb(r), i32::try_from(n).unwrap() + 1);
            assert_eq!(cancel_reason_from_pb(cancel_reason_to_pb(r)), r);
        }
        assert_eq!(cancel_reason_from_pb(0), CancelReason::Manual);
        assert_eq!(cancel_reason_from_pb(99), CancelReason::Manual);
    }

    #[test]
    fn opcodes_map_to_names() {
        for name in ["continuation", "text", "binary", "ping", "pong", "close"] {
            assert_eq!(frame_type_to_opcode(opcode_to_frame_type(name)), name);
        }
        assert_eq!(frame_type_to_opcode(42), "42");
    }
}
