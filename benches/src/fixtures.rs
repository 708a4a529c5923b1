//! Equivalent messages for agentwire and the reference.

use agentwire_core::message as aw;
use bytes::Bytes;
use std::collections::HashMap;
use zentinel_agent_protocol as zr;

/// Which request-headers fixture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// 5 headers.
    Small,
    /// 20 headers, about 1 KB of names and values.
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// `small` / `large`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// The header list of a fixture.
#[must_use]
pub fn header_list(size: Size) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = vec![
        ("host".into(), "api.example.com".into()),
        (
            "user-agent".into(),
            "Mozilla/5.0 (X11; Linux x86_64) bench/1.0".into(),
        ),
        ("accept".into(), "application/json".into()),
        ("accept-encoding".into(), "gzip, deflate, br".into()),
        ("content-type".into(), "application/json".into()),
    ];
    if size == Size::Large {
        h.extend([
            ("accept-language".into(), "en-US,en;q=0.9,de;q=0.8".into()),
            (
                "authorization".into(),
                format!("Bearer {}", "a".repeat(120)),
            ),
            ("cache-control".into(), "no-cache".into()),
            (
                "cookie".into(),
                format!("session={}; theme=dark; lang=en", "s".repeat(96)),
            ),
            ("origin".into(), "https://www.example.com".into()),
            (
                "referer".into(),
                "https://www.example.com/app/dashboard?tab=overview".into(),
            ),
            (
                "x-forwarded-for".into(),
                "203.0.113.7, 198.51.100.23".into(),
            ),
            ("x-forwarded-proto".into(), "https".into()),
            (
                "x-request-id".into(),
                "6f1c2b0e-3d4a-4e5f-9a8b-7c6d5e4f3a2b".into(),
            ),
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("sec-fetch-mode".into(), "cors".into()),
            ("sec-fetch-site".into(), "same-origin".into()),
            (
                "sec-ch-ua".into(),
                "\"Chromium\";v=\"130\", \"Not?A_Brand\";v=\"99\"".into(),
            ),
            ("if-none-match".into(), "W/\"5e15153d-120f\"".into()),
            ("x-api-version".into(), "2026-01-01".into()),
        ]);
    }
    h
}

fn meta_parts(cid: &str) -> (String, String, String, u16, String, String) {
    (
        cid.to_string(),
        format!("req-{cid}"),
        "203.0.113.7".to_string(),
        51234,
        "HTTP/1.1".to_string(),
        "2026-12-04T21:00:00Z".to_string(),
    )
}

/// agentwire request headers.
#[must_use]
pub fn aw_request_headers(size: Size, cid: &str) -> aw::RequestHeaders {
    let (correlation_id, request_id, client_ip, client_port, protocol, timestamp) = meta_parts(cid);
    let mut headers = aw::Headers::new();
    for (n, v) in header_list(size) {
        headers.append(n, v);
    }
    aw::RequestHeaders {
        metadata: aw::RequestMetadata {
            correlation_id,
            request_id,
            client_ip,
            client_port,
            server_name: Some("api.example.com".into()),
            protocol,
            route_id: Some("api".into()),
            upstream_id: Some("backend".into()),
            timestamp,
            ..Default::default()
        },
        method: "POST".into(),
        uri: "/v1/orders?limit=10".into(),
        headers,
    }
}

/// Reference request headers with the same content.
#[must_use]
pub fn zr_request_headers(size: Size, cid: &str) -> zr::RequestHeadersEvent {
    let (correlation_id, request_id, client_ip, client_port, protocol, timestamp) = meta_parts(cid);
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (n, v) in header_list(size) {
        headers.entry(n).or_default().push(v);
    }
    zr::RequestHeadersEvent {
        metadata: zr::RequestMetadata {
            correlation_id,
            request_id,
            client_ip,
            client_port,
            server_name: Some("api.example.com".into()),
            protocol,
            tls_version: None,
            tls_cipher: None,
            route_id: Some("api".into()),
            upstream_id: Some("backend".into()),
            timestamp,
            traceparent: None,
        },
        method: "POST".into(),
        uri: "/v1/orders?limit=10".into(),
        headers,
    }
}

/// An agentwire answer: Allow, one header mutation, a tag, the correlation id.
#[must_use]
pub fn aw_response(cid: &str) -> aw::AgentResponse {
    let mut r = aw::AgentResponse::allow();
    r.request_headers.push(aw::HeaderOp::Set {
        name: "x-agent".into(),
        value: "checked".into(),
    });
    r.audit.tags.push("bench".into());
    r.set_correlation_id(cid);
    r
}

/// The same answer from the reference.
#[must_use]
pub fn zr_response(cid: &str) -> zr::AgentResponse {
    let mut r = zr::AgentResponse::default_allow();
    r.request_headers.push(zr::HeaderOp::Set {
        name: "x-agent".into(),
        value: "checked".into(),
    });
    r.audit.tags.push("bench".into());
    r.audit.custom.insert(
        "correlation_id".into(),
        serde_json::Value::String(cid.into()),
    );
    r
}

/// `len` bytes of body.
#[must_use]
pub fn body(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// An agentwire request body chunk.
#[must_use]
pub fn aw_chunk(data: Bytes) -> aw::Event {
    let len = data.len() as u64;
    aw::Event::RequestBodyChunk(aw::BodyChunk {
        correlation_id: "req-1".into(),
        data,
        is_last: false,
        total_size: None,
        chunk_index: 0,
        bytes_transferred: len,
    })
}
