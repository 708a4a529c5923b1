//! `agentwire probe`: connects to an agent, reports what the handshake established and the
//! agent's decision on one request.

use crate::{CliError, Endpoint, WireEncoding};
use agentwire_core::message::{
    AgentResponse, BodyChunk, Capabilities, Decision, EventType, Headers, RequestHeaders,
    RequestMetadata,
};
use agentwire_grpc::{ClientTls, GrpcAgentClient, GrpcClientConfig};
use agentwire_runtime::client::{AgentClient, ClientConfig, ClientError};
use bytes::Bytes;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// What to send.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// The agent.
    pub endpoint: Endpoint,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    /// A request body, sent as one last chunk after the headers (if they are allowed).
    pub body: Option<String>,
    /// Offer only this encoding (default: every encoding, the agent picks).
    pub encoding: Option<WireEncoding>,
    /// Bound on connecting plus handshaking, and on each answer.
    pub timeout: Duration,
    /// Certificate authorities (PEM) trusted for an `https://` gRPC endpoint.
    pub tls_ca: Option<PathBuf>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            endpoint: Endpoint::Uds("agent.sock".into()),
            method: "GET".into(),
            uri: "/".into(),
            headers: Vec::new(),
            body: None,
            encoding: None,
            timeout: Duration::from_secs(5),
            tls_ca: None,
        }
    }
}

/// What the probe learnt.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// The version the agent announced.
    pub protocol_version: u32,
    /// The negotiated encoding.
    pub encoding: String,
    /// The agent's capabilities.
    pub capabilities: Capabilities,
    /// Each event sent (`request_headers`, `request_body_chunk`) with its answer.
    pub responses: Vec<(&'static str, AgentResponse)>,
}

impl ProbeResult {
    /// The decision on the request: the last answer.
    #[must_use]
    pub fn decision(&self) -> Option<&AgentResponse> {
        self.responses.last().map(|(_, r)| r)
    }

    /// Everything as one JSON object.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let responses: serde_json::Map<String, Value> = self
            .responses
            .iter()
            .map(|(k, r)| {
                (
                    (*k).to_owned(),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                )
            })
            .collect();
        json!({
            "protocol_version": self.protocol_version,
            "encoding": self.encoding,
            "capabilities": serde_json::to_value(&self.capabilities).unwrap_or(Value::Null),
            "responses": responses,
            "decision": self
                .decision()
                .map(|r| serde_json::to_value(&r.decision).unwrap_or(Value::Null)),
        })
    }

    /// The handshake as text for people, followed by each answer as pretty JSON.
    #[must_use]
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let c = &self.capabilities;
        let f = &c.features;
        let mut s = String::new();
        let _ = writeln!(s, "protocol version  {}", self.protocol_version);
        let _ = writeln!(s, "encoding          {}", self.encoding);
        let _ = writeln!(
            s,
            "agent             {} ({} {})",
            c.agent_id, c.name, c.version
        );
        let events: Vec<&str> = c.supported_events.iter().map(|n| event_name(*n)).collect();
        let _ = writeln!(s, "events            {}", events.join(", "));
        let flags: Vec<&str> = [
            ("streaming_body", f.streaming_body),
            ("websocket", f.websocket),
            ("guardrails", f.guardrails),
            ("config_push", f.config_push),
            ("metrics_export", f.metrics_export),
            ("cancellation", f.cancellation),
            ("flow_control", f.flow_control),
            ("health_reporting", f.health_reporting),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let _ = writeln!(
            s,
            "features          {}{}concurrent_requests={}",
            flags.join(", "),
            if flags.is_empty() { "" } else { ", " },
            f.concurrent_requests
        );
        let _ = writeln!(
            s,
            "limits            max_body_size={}, max_concurrency={}, preferred_chunk_size={}",
            c.limits.max_body_size, c.limits.max_concurrency, c.limits.preferred_chunk_size
        );
        for (event, response) in &self.responses {
            let pretty = serde_json::to_string_pretty(response).unwrap_or_default();
            let _ = writeln!(s, "\n{event} decision:\n{pretty}");
        }
        s
    }
}

fn event_name(n: i32) -> &'static str {
    match EventType::from_i32(n) {
        Some(EventType::RequestHeaders) => "request_headers",
        Some(EventType::RequestBodyChunk) => "request_body_chunk",
        Some(EventType::ResponseHeaders) => "response_headers",
        Some(EventType::ResponseBodyChunk) => "response_body_chunk",
        Some(EventType::RequestComplete) => "request_complete",
        Some(EventType::WebSocketFrame) => "websocket_frame",
        Some(EventType::GuardrailInspect) => "guardrail_inspect",
        Some(EventType::Configure) => "configure",
        None => "unknown",
    }
}

/// Parses a `name:value` header argument (the name is lower-cased, the value trimmed).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("expected name:value, got {text:?}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("empty header name in {text:?}"));
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_owned()))
}

/// A connection over either transport.
enum Connection {
    Uds(AgentClient),
    Grpc(GrpcAgentClient),
}

impl Connection {
    async fn open(config: &ProbeConfig) -> Result<Connection, CliError> {
        let fail = |e: ClientError| connect_error(&config.endpoint, config.timeout, &e);
        match &config.endpoint {
            Endpoint::Uds(path) => {
                let mut client_config = ClientConfig {
                    connect_timeout: config.timeout,
                    ..ClientConfig::default()
                };
                client_config.session.request_timeout = config.timeout;
                if let Some(e) = config.encoding {
                    client_config.session.encodings = vec![e.into()];
                }
                let runtime = agentwire_tokio::runtime();
                AgentClient::connect_unix(&runtime, path, client_config)
                    .await
                    .map(Connection::Uds)
                    .map_err(fail)
            }
            Endpoint::Grpc(url) => {
                let tls = match &config.tls_ca {
                    Some(path) => Some(ClientTls::with_ca(std::fs::read(path).map_err(|e| {
                        CliError::new(format!("cannot read {}: {e}", path.display()))
                    })?)),
                    None => None,
                };
                let grpc_config = GrpcClientConfig {
                    connect_timeout: config.timeout,
                    request_timeout: config.timeout,
                    tls,
                    ..GrpcClientConfig::default()
                };
                GrpcAgentClient::connect(url, grpc_config)
                    .await
                    .map(Connection::Grpc)
                    .map_err(fail)
            }
        }
    }

    /// Version, encoding and capabilities from the handshake.
    fn info(&self) -> Option<(u32, &'static str, Capabilities)> {
        match self {
            Connection::Uds(c) => c.info().map(|i| {
                (
                    i.protocol_version,
                    i.encoding.as_str(),
                    i.capabilities.clone(),
                )
            }),
            Connection::Grpc(c) => {
                let i = c.info();
                Some((i.protocol_version, "protobuf", i.capabilities.clone()))
            }
        }
    }

    async fn request_headers(&self, e: RequestHeaders) -> Result<AgentResponse, ClientError> {
        match self {
            Connection::Uds(c) => c.send_request_headers(e).await,
            Connection::Grpc(c) => c.send_request_headers(e).await,
        }
    }

    async fn request_body_chunk(&self, e: BodyChunk) -> Result<AgentResponse, ClientError> {
        match self {
            Connection::Uds(c) => c.send_request_body_chunk(e).await,
            Connection::Grpc(c) => c.send_request_body_chunk(e).await,
        }
    }

    async fn close(&self) {
        match self {
            Connection::Uds(c) => {
                c.shutdown(&agentwire_tokio::runtime(), Duration::from_millis(100))
                    .await;
            }
            Connection::Grpc(c) => c.shutdown(Duration::from_millis(100)).await,
        }
    }
}

/// Runs the probe on a fresh tokio runtime.
pub fn run(config: &ProbeConfig) -> Result<ProbeResult, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(async {
        let conn = Connection::open(config).await?;
        let (protocol_version, encoding, capabilities) = conn
            .info()
            .ok_or_else(|| CliError::new("the connection closed right after the handshake"))?;
        let id = "probe-1".to_owned();
        let mut headers = Headers::new();
        for (k, v) in &config.headers {
            headers.append(k.as_str(), v.as_str());
        }
        let request = RequestHeaders {
            metadata: RequestMetadata {
                correlation_id: id.clone(),
                request_id: id.clone(),
                client_ip: "127.0.0.1".into(),
                client_port: 0,
                server_name: headers.get("host").map(str::to_owned),
                protocol: "HTTP/1.1".into(),
                timestamp: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                ..RequestMetadata::default()
            },
            method: config.method.clone(),
            uri: config.uri.clone(),
            headers,
        };
        let answer = |e: ClientError| CliError::new(format!("no decision from the agent: {e}"));
        let mut responses = Vec::new();
        let first = conn.request_headers(request).await.map_err(answer)?;
        let allowed = first.decision == Decision::Allow;
        responses.push(("request_headers", first));
        if let (true, Some(body)) = (allowed, &config.body) {
            let data = Bytes::from(body.clone().into_bytes());
            let chunk = BodyChunk {
                correlation_id: id,
                total_size: Some(data.len() as u64),
                bytes_transferred: data.len() as u64,
                data,
                is_last: true,
                chunk_index: 0,
            };
            let r = conn.request_body_chunk(chunk).await.map_err(answer)?;
            responses.push(("request_body_chunk", r));
        }
        conn.close().await;
        Ok(ProbeResult {
            protocol_version,
            encoding: encoding.to_owned(),
            capabilities,
            responses,
        })
    })
}

/// One line that says why connecting failed.
fn connect_error(endpoint: &Endpoint, timeout: Duration, e: &ClientError) -> CliError {
    match e {
        ClientError::Connect(io) => CliError::new(format!("cannot connect to {endpoint}: {io}")),
        ClientError::ConnectTimeout => CliError::new(format!(
            "{endpoint} did not complete the handshake within {} (not a Zentinel v2 agent?)",
            humantime::format_duration(timeout)
        )),
        ClientError::Handshake(reason) => CliError::new(format!(
            "{endpoint} does not speak the Zentinel agent protocol v2: {reason}"
        )),
        other => CliError::new(format!("cannot talk to {endpoint}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_arguments_are_parsed() {
        assert_eq!(
            parse_header("Content-Type: text/html; q=1").unwrap(),
            ("content-type".into(), "text/html; q=1".into())
        );
        assert_eq!(parse_header("x:").unwrap(), ("x".into(), String::new()));
        assert!(parse_header("novalue").is_err());
        assert!(parse_header(" :v").is_err());
    }
}
