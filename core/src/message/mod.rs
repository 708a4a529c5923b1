//! Every message of the agent protocol v2 (spec §4, §5, §9), with the exact keys of the wire.
//!
//! Struct fields are declared in the reference's declaration order, which is the key order of
//! MessagePack maps and of JSON the reference writes directly (spec §3.1). Proxy-to-agent
//! events in JSON use sorted keys and a top-level `correlation_id`; that form and the body
//! byte forms are produced by [`crate::encoding`], which is the only place that writes
//! events. Decoders ignore unknown keys and accept missing optional keys, as the reference's
//! do.

mod any;
mod cap;
mod control;
mod headers;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::any::{AnyValue, Value};
pub use self::cap::MAX_COLLECTION_LEN;
pub(crate) use self::cap::{TOO_MANY, take_refusal};
pub use self::control::*;
#[allow(unused_imports)]
pub(crate) use self::headers::{DecodedEntries, DecodedEntry, count_one, name_from_str};
pub use self::headers::{HeaderValues, Headers};
use crate::frame::MessageType;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 2;

/// A payload encoding (spec §3). The handshake is always JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Compact JSON text.
    #[default]
    Json,
    /// MessagePack, structs as maps keyed by field name.
    Msgpack,
    /// postcard; agentwire's own extension, offered only through
    /// [`HandshakeRequest::agentwire_encodings`] so reference agents never see the name.
    Postcard,
}

impl Encoding {
    /// The name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
            Encoding::Postcard => "postcard",
        }
    }

    /// The encoding for a wire name, `None` for names this crate does not know.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Encoding::Json),
            "msgpack" => Some(Encoding::Msgpack),
            "postcard" => Some(Encoding::Postcard),
            _ => None,
        }
    }

    /// Whether this build can encode and decode it.
    #[must_use]
    pub const fn is_available(self) -> bool {
        match self {
            Encoding::Json => true,
            Encoding::Msgpack => cfg!(feature = "msgpack"),
            Encoding::Postcard => cfg!(feature = "postcard"),
        }
    }
}

/// Decodes a list of encoding names, dropping names it does not know instead of failing (the
/// reference fails the whole handshake on one unknown name, B11).
fn lenient_encodings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Encoding>, D::Error> {
    let names = cap::vec_or_null::<D, String>(d)?;
    Ok(names
        .iter()
        .filter_map(|n| Encoding::from_name(n))
        .collect())
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    // Postcard (not human-readable) writes the plain value; only JSON and MessagePack peers
    // write `null` where a default is meant.
    if d.is_human_readable() {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    } else {
        T::deserialize(d)
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake (spec §4)

/// `0x01` from the proxy: always JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// Protocol versions the proxy speaks.
    #[serde(deserialize_with = "cap::vec")]
    pub supported_versions: Vec<u32>,
    /// The proxy's name.
    pub proxy_id: String,
    /// The proxy's version.
    pub proxy_version: String,
    /// The agent's configuration block, `null` when none.
    #[serde(default)]
    pub config: AnyValue,
    /// Encodings in preference order; only `json` and `msgpack` are ever written here.
    #[serde(
        default,
        deserialize_with = "lenient_encodings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub supported_encodings: Vec<Encoding>,
    /// agentwire's extension: every encoding the proxy accepts, postcard included, in
    /// preference order. Reference agents ignore the unknown key.
    #[serde(
        default,
        deserialize_with = "lenient_encodings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub agentwire_encodings: Vec<Encoding>,
}

/// Boolean capabilities of an agent; all nine keys are required on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// Handles body chunks as a stream.
    pub streaming_body: bool,
    /// Handles WebSocket frames.
    pub websocket: bool,
    /// Handles guardrail inspections.
    pub guardrails: bool,
    /// Accepts configuration pushes.
    pub config_push: bool,
    /// Sends metrics reports.
    pub metrics_export: bool,
    /// How many requests it processes at once (0: unspecified).
    pub concurrent_requests: u32,
    /// Honours Cancel.
    pub cancellation: bool,
    /// Sends flow-control signals.
    pub flow_control: bool,
    /// Sends health reports.
    pub health_reporting: bool,
}

/// Limits an agent declares; all three keys are required on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest body it wants to see.
    pub max_body_size: u64,
    /// Most requests it accepts in flight on one connection.
    pub max_concurrency: u32,
    /// Preferred body chunk size.
    pub preferred_chunk_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: 10 * 1024 * 1024,
            max_concurrency: 100,
            preferred_chunk_size: 64 * 1024,
        }
    }
}

/// What an agent says about itself in the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The agent's id.
    pub agent_id: String,
    /// Human-readable name.
    pub name: String,
    /// The agent's version.
    pub version: String,
    /// Event types it handles ([`EventType`] numbers).
    #[serde(deserialize_with = "cap::vec")]
    pub supported_events: Vec<i32>,
    /// Feature flags.
    pub features: Features,
    /// Declared limits.
    pub limits: Limits,
}

/// agentwire's extension key in a [`HandshakeResponse`]: present only when the agent is an
/// agentwire agent. Reference proxies ignore it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentwireExtensions {
    /// The agent decodes body `data` sent as raw bytes (MessagePack `bin`), not only as base64
    /// text, so the proxy may skip base64 on binary encodings.
    #[serde(default)]
    pub raw_body_bytes: bool,
}

/// `0x02` from the agent: always JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// The version the agent will speak (`0` on failure).
    pub protocol_version: u32,
    /// The agent's capabilities (present even on failure).
    pub capabilities: Capabilities,
    /// Whether the agent accepted the handshake.
    pub success: bool,
    /// Why it refused.
    #[serde(default)]
    pub error: Option<String>,
    /// The encoding of every later frame.
    #[serde(default)]
    pub encoding: Encoding,
    /// agentwire's extension, absent from reference agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agentwire: Option<AgentwireExtensions>,
}

// ---------------------------------------------------------------------------------------------
// Events (spec §5.1-§5.7)

/// Event type numbers as used in `supported_events` and gRPC (spec §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum EventType {
    /// Request headers.
    RequestHeaders = 1,
    /// Request body chunk.
    RequestBodyChunk = 2,
    /// Response headers.
    ResponseHeaders = 3,
    /// Response body chunk.
    ResponseBodyChunk = 4,
    /// Request complete.
    RequestComplete = 5,
    /// WebSocket frame.
    WebSocketFrame = 6,
    /// Guardrail inspection.
    GuardrailInspect = 7,
    /// Configuration.
    Configure = 8,
}

impl EventType {
    /// The type for a number; `0` also means configure (the reference UDS client's table, B8).
    #[must_use]
    pub const fn from_i32(n: i32) -> Option<Self> {
        Some(match n {
            1 => EventType::RequestHeaders,
            2 => EventType::RequestBodyChunk,
            3 => EventType::ResponseHeaders,
            4 => EventType::ResponseBodyChunk,
            5 => EventType::RequestComplete,
            6 => EventType::WebSocketFrame,
            7 => EventType::GuardrailInspect,
            0 | 8 => EventType::Configure,
            _ => return None,
        })
    }
}

/// Facts about the HTTP request, sent with its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMetadata {
    /// The routing key of this request.
    pub correlation_id: String,
    /// Informational request id.
    pub request_id: String,
    /// Client address.
    pub client_ip: String,
    /// Client port.
    pub client_port: u16,
    /// SNI or Host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// E.g. `HTTP/1.1`.
    pub protocol: String,
    /// TLS version, when TLS.
    #[serde(default)]
    pub tls_version: Option<String>,
    /// TLS cipher, when TLS.
    #[serde(default)]
    pub tls_cipher: Option<String>,
    /// The proxy's route.
    #[serde(default)]
    pub route_id: Option<String>,
    /// The chosen upstream.
    #[serde(default)]
    pub upstream_id: Option<String>,
    /// Intended RFC 3339; any string is accepted.
    pub timestamp: String,
    /// W3C trace context. (Omitted when absent in JSON and MessagePack events, spec §5.1;
    /// written as `None` in postcard, whose positional layout needs every field.)
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// `0x10`: the request line and headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeaders {
    /// Request facts; `metadata.correlation_id` is the routing key.
    pub metadata: RequestMetadata,
    /// HTTP method.
    pub method: String,
    /// Path and query as received.
    pub uri: String,
    /// Request headers.
    pub headers: Headers,
}

/// `0x11` / `0x13`: one chunk of a request or response body.
///
/// The wire names the cumulative counter `bytes_received` for requests and `bytes_sent` for
/// responses; here it is one field and the message type says which.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyChunk {
    /// The request this chunk belongs to.
    pub correlation_id: String,
    /// The chunk's bytes: base64 text only in JSON, raw on binary encodings toward agentwire
    /// agents, and a zero-copy slice of the frame whenever the encoding carries raw bytes.
    pub data: Bytes,
    /// Last chunk of the body.
    pub is_last: bool,
    /// Total body length, when known.
    pub total_size: Option<u64>,
    /// 0-based index of this chunk.
    pub chunk_index: u32,
    /// Bytes of this body so far, this chunk included.
    pub bytes_transferred: u64,
}

/// `0x12`: the upstream's response status and headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeaders {
    /// The request.
    pub correlation_id: String,
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
}

/// `0x14`: the request finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestComplete {
    /// The request.
    pub correlation_id: String,
    /// Final status.
    pub status: u16,
    /// Total duration.
    pub duration_ms: u64,
    /// Request body bytes.
    pub request_body_size: u64,
    /// Response body bytes.
    pub response_body_size: u64,
    /// Upstream attempts.
    pub upstream_attempts: u32,
    /// Error text, if the request failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `0x15`: one WebSocket frame of an upgraded request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebSocketFrame {
    /// The upgrade request's id.
    pub correlation_id: String,
    /// `text`, `binary`, `ping`, `pong`, `close` or `continuation`.
    pub opcode: String,
    /// Frame payload (base64 text in JSON, raw toward agentwire agents on binary encodings).
    pub data: Bytes,
    /// Direction.
    pub client_to_server: bool,
    /// 0-based per direction.
    pub frame_index: u64,
    /// FIN bit.
    pub fin: bool,
    /// The proxy's route.
    pub route_id: Option<String>,
    /// Client address.
    pub client_ip: String,
}

/// The kind of a guardrail inspection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InspectionType {
    /// Prompt injection.
    #[default]
    PromptInjection,
    /// Personal data.
    PiiDetection,
}

/// `0x16`: content to inspect (LLM prompts and answers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardrailInspect {
    /// The request.
    pub correlation_id: String,
    /// What to look for.
    pub inspection_type: InspectionType,
    /// The content.
    pub content: String,
    /// Model name (omitted when absent in JSON and MessagePack, spec §5.6).
    #[serde(default)]
    pub model: Option<String>,
    /// Categories, e.g. `ssn`.
    #[serde(default, deserialize_with = "cap::vec_or_null")]
    pub categories: Vec<String>,
    /// The proxy's route (omitted when absent in JSON and MessagePack, spec §5.6).
    #[serde(default)]
    pub route_id: Option<String>,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "cap::map_or_null")]
    pub metadata: BTreeMap<String, String>,
}

/// `0x17`: the agent's configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Configure {
    /// The configuration.
    #[serde(default)]
    pub config: AnyValue,
    /// Its version, `null` for the on-connect delivery.
    #[serde(default)]
    pub config_version: Option<String>,
    /// The id the answer carries.
    #[serde(default)]
    pub correlation_id: String,
}

/// A proxy-to-agent message that expects an [`AgentResponse`].
// Request headers dominate the size (their header map keeps 8 names inline); an event is moved
// a couple of times per request, which is cheaper than the allocation boxing would add.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// `0x10`.
    RequestHeaders(RequestHeaders),
    /// `0x11`.
    RequestBodyChunk(BodyChunk),
    /// `0x12`.
    ResponseHeaders(ResponseHeaders),
    /// `0x13`.
    ResponseBodyChunk(BodyChunk),
    /// `0x14`.
    RequestComplete(RequestComplete),
    /// `0x15`.
    WebSocketFrame(WebSocketFrame),
    /// `0x16`.
    GuardrailInspect(GuardrailInspect),
    /// `0x17`.
    Configure(Configure),
}

impl Event {
    /// The id the answer will carry.
    #[must_use]
    pub fn correlation_id(&self) -> &str {
        match self {
            Event::RequestHeaders(e) => &e.metadata.correlation_id,
            Event::RequestBodyChunk(e) | Event::ResponseBodyChunk(e) => &e.correlation_id,
            Event::ResponseHeaders(e) => &e.correlation_id,
            Event::RequestComplete(e) => &e.correlation_id,
            Event::WebSocketFrame(e) => &e.correlation_id,
            Event::GuardrailInspect(e) => &e.correlation_id,
            Event::Configure(e) => &e.correlation_id,
        }
    }

    /// The frame type that carries it.
    #[must_use]
    pub fn message_type(&self) -> MessageType {
        match self {
            Event::RequestHeaders(_) => MessageType::RequestHeaders,
            Event::RequestBodyChunk(_) => MessageType::RequestBodyChunk,
            Event::ResponseHeaders(_) => MessageType::ResponseHeaders,
            Event::ResponseBodyChunk(_) => MessageType::ResponseBodyChunk,
            Event::RequestComplete(_) => MessageType::RequestComplete,
            Event::WebSocketFrame(_) => MessageType::WebSocketFrame,
            Event::GuardrailInspect(_) => MessageType::GuardrailInspect,
            Event::Configure(_) => MessageType::Configure,
        }
    }

    /// The event type number.
    #[must_use]
    pub fn event_type(&self) -> EventType {
        match self {
            Event::RequestHeaders(_) => EventType::RequestHeaders,
            Event::RequestBodyChunk(_) => EventType::RequestBodyChunk,
            Event::ResponseHeaders(_) => EventType::ResponseHeaders,
            Event::ResponseBodyChunk(_) => EventType::ResponseBodyChunk,
            Event::RequestComplete(_) => EventType::RequestComplete,
            Event::WebSocketFrame(_) => EventType::WebSocketFrame,
            Event::GuardrailInspect(_) => EventType::GuardrailInspect,
            Event::Configure(_) => EventType::Configure,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Agent response (spec §5.8)

/// What the proxy should do with the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Continue.
    #[default]
    Allow,
    /// Answer the client with this status, body and headers.
    Block {
        /// HTTP status.
        status: u16,
        /// Response body.
        #[serde(default)]
        body: Option<String>,
        /// Response headers.
        #[serde(default, deserialize_with = "cap::opt_map")]
        headers: Option<BTreeMap<String, String>>,
    },
    /// Redirect the client.
    Redirect {
        /// `Location`.
        url: String,
        /// Redirect status.
        status: u16,
    },
    /// Challenge the client (401 with `WWW-Authenticate` or 403).
    Challenge {
        /// Challenge type, e.g. `basic`.
        challenge_type: String,
        /// Parameters.
        #[serde(deserialize_with = "cap::map")]
        params: BTreeMap<String, String>,
    },
}

/// A header mutation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderOp {
    /// Replace every value.
    Set {
        /// Header name.
        name: String,
        /// New value.
        value: String,
    },
    /// Append a value.
    Add {
        /// Header name.
        name: String,
        /// Added value.
        value: String,
    },
    /// Delete the header.
    Remove {
        /// Header name.
        name: String,
    },
}

/// A replacement for one body chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyMutation {
    /// `None` keeps the chunk, `""` drops it, otherwise base64 of the replacement.
    #[serde(default)]
    pub data: Option<String>,
    /// The chunk it applies to.
    #[serde(default)]
    pub chunk_index: u32,
}

/// What to do with a WebSocket frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebSocketDecision {
    /// Forward it.
    Allow,
    /// Drop it.
    Drop,
    /// Close the WebSocket.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// Audit data; `custom["correlation_id"]` routes the response (spec §6.2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// Tags.
    #[serde(default, deserialize_with = "cap::vec_or_null")]
    pub tags: Vec<String>,
    /// Matched rule ids.
    #[serde(default, deserialize_with = "cap::vec_or_null")]
    pub rule_ids: Vec<String>,
    /// Confidence, 0..1.
    #[serde(default)]
    pub confidence: Option<f32>,
    /// Reason codes.
    #[serde(default, deserialize_with = "cap::vec_or_null")]
    pub reason_codes: Vec<String>,
    /// Free-form values (entries and every element nested in them count against one
    /// [`MAX_COLLECTION_LEN`] budget).
    #[serde(default, deserialize_with = "cap::custom_map")]
    pub custom: BTreeMap<String, AnyValue>,
}

/// The audit key that carries the correlation id of a response.
pub const CORRELATION_ID_KEY: &str = "correlation_id";

/// `0x20`: the agent's answer to an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentResponse {
    /// Protocol version (2).
    pub version: u32,
    /// The decision.
    pub decision: Decision,
    /// Mutations of the upstream request's headers.
    #[serde(default, deserialize_with = "cap::vec_or_null")]
    pub request_headers: Vec<HeaderOp>,
    /// Mutations of the client response's headers.
    #[serde(default, deserialize_with = "cap::vec_or_null")]
    pub response_headers: Vec<HeaderOp>,
    /// Routing hints for the proxy.
    #[serde(default, deserialize_with = "cap::map_or_null")]
    pub routing_metadata: BTreeMap<String, String>,
    /// Audit data.
    #[serde(default, deserialize_with = "null_as_default")]
    pub audit: Audit,
    /// The decision is provisional: keep streaming the body.
    #[serde(default, deserialize_with = "null_as_default")]
    pub needs_more: bool,
    /// Replacement of a request body chunk.
    #[serde(default)]
    pub request_body_mutation: Option<BodyMutation>,
    /// Replacement of a response body chunk.
    #[serde(default)]
    pub response_body_mutation: Option<BodyMutation>,
    /// Decision for a WebSocket frame.
    #[serde(default)]
    pub websocket_decision: Option<WebSocketDecision>,
}

impl Default for AgentResponse {
    fn default() -> Self {
        AgentResponse::allow()
    }
}

impl AgentResponse {
    /// A plain Allow.
    #[must_use]
    pub fn allow() -> Self {
        AgentResponse::with_decision(Decision::Allow)
    }

    /// A Block with `status` and no body.
    #[must_use]
    pub fn block(status: u16) -> Self {
        AgentResponse::with_decision(Decision::Block {
            status,
            body: None,
            headers: None,
        })
    }

    /// A response with this decision and nothing else.
    #[must_use]
    pub fn with_decision(decision: Decision) -> Self {
        AgentResponse {
            version: PROTOCOL_VERSION,
            decision,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            routing_metadata: BTreeMap::new(),
            audit: Audit::default(),
            needs_more: false,
            request_body_mutation: None,
            response_body_mutation: None,
            websocket_decision: None,
        }
    }

    /// The correlation id the agent put in `audit.custom`, if it is a string.
    #[must_use]
    pub fn correlation_id(&self) -> Option<&str> {
        self.audit.custom.get(CORRELATION_ID_KEY)?.as_str()
    }

    /// Sets `audit.custom["correlation_id"]`.
    pub fn set_correlation_id(&mut self, id: &str) {
        self.audit
            .custom
            .insert(String::from(CORRELATION_ID_KEY), AnyValue::from(id));
    }
}

// ---------------------------------------------------------------------------------------------
// Cancel, ping (spec §5.13)

/// Why the proxy cancels a request; the UDS wire number is the declaration index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CancelReason {
    /// The client went away.
    #[default]
    ClientDisconnect = 0,
    /// The proxy's deadline passed.
    Timeout = 1,
    /// Another agent blocked the request.
    BlockedByAgent = 2,
    /// The upstream failed.
    UpstreamError = 3,
    /// The proxy is shutting down.
    ProxyShutdown = 4,
    /// Cancelled by an operator.
    Manual = 5,
}

impl CancelReason {
    /// The reason for a UDS wire number; unknown numbers read as `Manual`.
    #[must_use]
    pub const fn from_wire(n: u64) -> Self {
        match n {
            0 => CancelReason::ClientDisconnect,
            1 => CancelReason::Timeout,
            2 => CancelReason::BlockedByAgent,
            3 => CancelReason::UpstreamError,
            4 => CancelReason::ProxyShutdown,
            _ => CancelReason::Manual,
        }
    }
}

impl Serialize for CancelReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(*self as u8)
    }
}

impl<'de> Deserialize<'de> for CancelReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            u64::deserialize(d).map(CancelReason::from_wire)
        } else {
            u8::deserialize(d).map(|n| CancelReason::from_wire(u64::from(n)))
        }
    }
}

/// `0x40`: the proxy gives up on a request. Never answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request.
    pub correlation_id: String,
    /// Why.
    pub reason: CancelReason,
    /// Milliseconds since the Unix epoch (or the caller's clock).
    #[serde(default)]
    pub timestamp_ms: u64,
}

/// `0x41` Ping and `0x42` Pong (the pong echoes the ping's payload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Per-connection sequence number.
    pub sequence: u64,
    /// Send time in milliseconds.
    #[serde(default)]
    pub timestamp_ms: u64,
}

// ---------------------------------------------------------------------------------------------
// Reverse registration (spec §9)

/// Sent by an agent in a `0x01` frame after it dialled the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrationRequest {
    /// Must be 2.
    pub protocol_version: u32,
    /// The agent's id (non-empty).
    pub agent_id: String,
    /// The agent's capabilities.
    pub capabilities: Capabilities,
    /// Authentication token.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Ignored by the proxy.
    #[serde(default)]
    pub metadata: AnyValue,
    /// agentwire's extension: encodings the agent accepts after registration, in preference
    /// order. Reference proxies ignore it and speak JSON.
    #[serde(
        default,
        deserialize_with = "lenient_encodings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub agentwire_encodings: Vec<Encoding>,
}

/// Sent by the proxy in a `0x02` frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationResponse {
    /// Whether the agent was accepted.
    pub success: bool,
    /// Why not.
    #[serde(default)]
    pub error: Option<String>,
    /// The proxy's name.
    #[serde(default)]
    pub proxy_id: String,
    /// The proxy's version.
    #[serde(default)]
    pub proxy_version: String,
    /// The id the proxy gave this connection (`""` on failure).
    #[serde(default)]
    pub connection_id: String,
    /// agentwire's extension: the encoding chosen from the agent's `agentwire_encodings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
}
