//! What every cell shares: the catalogue of cases (every event type, every decision type,
//! header mutation and body mutation), a scripted agent on each side that answers from the
//! catalogue and records what it was handed, converters between agentwire's and the
//! reference's message types, and a hard deadline per test.

use agentwire_core::message::{
    AgentResponse, AnyValue, Audit, BodyChunk, BodyMutation, Capabilities, Configure, Decision,
    Event, Features, GuardrailInspect, HandshakeRequest, HeaderOp, Headers, InspectionType, Limits,
    RequestComplete, RequestHeaders, RequestMetadata, ResponseHeaders, Value, WebSocketDecision,
    WebSocketFrame,
};
use agentwire_runtime::server::AgentHandler;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;

/// Hard deadline of one test (each cell also bounds every single wait far below this).
pub(crate) const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// How long a request waits for an answer the peer is known never to send.
pub(crate) const NO_ANSWER: Duration = Duration::from_millis(400);

/// Runs `f` and panics when it does not finish within [`TEST_DEADLINE`].
pub(crate) async fn within<F: Future>(name: &str, f: F) -> F::Output {
    match tokio::time::timeout(TEST_DEADLINE, f).await {
        Ok(v) => v,
        Err(_) => panic!("{name}: did not finish within {TEST_DEADLINE:?}"),
    }
}

/// Bounds one await of a test; a hang is a failure, not a stuck CI.
pub(crate) async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(15), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within 15 s"),
    }
}

// ---------------------------------------------------------------------------------------------
// The catalogue

/// One event and the answer the scripted agent gives to it.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    /// What the proxy sends.
    pub(crate) event: Event,
    /// What the agent answers (without the routing id in `audit.custom`).
    pub(crate) answer: AgentResponse,
}

impl Case {
    /// The correlation id.
    pub(crate) fn id(&self) -> &str {
        self.event.correlation_id()
    }
}

/// Event kinds, to pick the cases a path can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    RequestHeaders,
    RequestBodyChunk,
    ResponseHeaders,
    ResponseBodyChunk,
    RequestComplete,
    WebSocketFrame,
    GuardrailInspect,
    Configure,
}

/// The kind of an event.
pub(crate) fn kind(event: &Event) -> Kind {
    match event {
        Event::RequestHeaders(_) => Kind::RequestHeaders,
        Event::RequestBodyChunk(_) => Kind::RequestBodyChunk,
        Event::ResponseHeaders(_) => Kind::ResponseHeaders,
        Event::ResponseBodyChunk(_) => Kind::ResponseBodyChunk,
        Event::RequestComplete(_) => Kind::RequestComplete,
        Event::WebSocketFrame(_) => Kind::WebSocketFrame,
        Event::GuardrailInspect(_) => Kind::GuardrailInspect,
        Event::Configure(_) => Kind::Configure,
        _ => unreachable!("an event kind this matrix does not know"),
    }
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut h = Headers::new();
    for (n, v) in pairs {
        h.append(*n, *v);
    }
    h
}

fn metadata(id: &str) -> RequestMetadata {
    RequestMetadata {
        correlation_id: id.into(),
        request_id: format!("req-{id}"),
        client_ip: "127.0.0.1".into(),
        client_port: 54_321,
        server_name: Some("shop.example".into()),
        protocol: "HTTP/2".into(),
        tls_version: Some("TLSv1.3".into()),
        tls_cipher: Some("TLS_AES_128_GCM_SHA256".into()),
        route_id: Some("api".into()),
        upstream_id: Some("backend-1".into()),
        timestamp: "2026-01-02T03:04:05.678Z".into(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

fn request_headers(id: &str, method: &str, uri: &str) -> Event {
    Event::RequestHeaders(RequestHeaders {
        metadata: metadata(id),
        method: method.into(),
        uri: uri.into(),
        headers: headers(&[
            ("host", "shop.example"),
            ("accept", "text/html"),
            ("accept", "application/json"),
            ("cookie", "session=abc; theme=dark"),
            ("x-forwarded-for", "127.0.0.1"),
        ]),
    })
}

fn set(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Set {
        name: name.into(),
        value: value.into(),
    }
}

fn add(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Add {
        name: name.into(),
        value: value.into(),
    }
}

fn remove(name: &str) -> HeaderOp {
    HeaderOp::Remove { name: name.into() }
}

fn custom(pairs: Value) -> BTreeMap<String, AnyValue> {
    match pairs {
        Value::Object(map) => map.into_iter().map(|(k, v)| (k, AnyValue(v))).collect(),
        _ => BTreeMap::new(),
    }
}

fn allow() -> AgentResponse {
    AgentResponse::allow()
}

/// A configuration as a proxy would deliver it.
pub(crate) fn sample_config() -> AnyValue {
    AnyValue(json!({
        "mode": "block",
        "paranoia": 2,
        "rules": ["942100", "941100"],
        "exclusions": {"paths": ["/health"], "enabled": true},
    }))
}

/// Every case: each event type, each decision type, every header op, body mutations
/// (replace, drop, pass through), `needs_more`, routing metadata, every audit field and each
/// WebSocket decision. Correlation ids are unique, so the cases can go in any order.
pub(crate) fn catalogue() -> Vec<Case> {
    let mut out = Vec::new();
    let mut case = |event: Event, answer: AgentResponse| out.push(Case { event, answer });

    // Request headers: Block with body, headers and a full audit record.
    let mut block = AgentResponse::with_decision(Decision::Block {
        status: 403,
        body: Some("blocked by interop agent".into()),
        headers: Some(
            [("x-block-reason", "sqli"), ("retry-after", "30")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    });
    block.response_headers = vec![set("x-frame-options", "DENY")];
    block.audit = Audit {
        tags: vec!["sqli".into(), "owasp-crs".into()],
        rule_ids: vec!["942100".into(), "942190".into()],
        confidence: Some(0.75),
        reason_codes: vec!["SQL_INJECTION".into()],
        custom: custom(json!({
            "rule": "sqli-union",
            "score": 7,
            "detail": {"field": "q", "matched": ["union", "select"]},
        })),
    };
    case(
        request_headers("rh-block", "GET", "/search?q=1%20union%20select"),
        block,
    );

    // Redirect.
    case(
        request_headers("rh-redirect", "GET", "/admin"),
        AgentResponse::with_decision(Decision::Redirect {
            url: "https://login.example/?next=%2Fadmin".into(),
            status: 302,
        }),
    );

    // Challenge.
    case(
        request_headers("rh-challenge", "POST", "/login"),
        AgentResponse::with_decision(Decision::Challenge {
            challenge_type: "captcha".into(),
            params: [
                ("site_key", "k-1"),
                ("www-authenticate", "Basic realm=\"shop\""),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        }),
    );

    // Allow with every request-header op, a response-header op and routing metadata.
    let mut mutate = allow();
    mutate.request_headers = vec![
        set("x-agent", "interop"),
        add("x-tags", "a"),
        add("x-tags", "b"),
        remove("cookie"),
    ];
    mutate.response_headers = vec![remove("server")];
    mutate.routing_metadata = [("upstream", "canary"), ("weight", "10")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    case(request_headers("rh-allow", "PUT", "/items/7"), mutate);

    // Request headers with every optional field absent, no headers at all, non-ASCII text
    // and the largest port; answered by a bare Block (no body, no headers) whose audit has a
    // confidence that is not exact in binary and custom values of every JSON type.
    let mut bare = AgentResponse::block(418);
    bare.audit.confidence = Some(0.1);
    bare.audit.custom = custom(json!({
        "null": null,
        "flag": false,
        "ratio": 0.5,
        "big": 9_007_199_254_740_993_u64,
        "negative": -3,
        "list": [1, "two", null],
        "unicode": "naïve ☃ \u{1F980}",
        "quoted": "\"already quoted\"",
    }));
    case(
        Event::RequestHeaders(RequestHeaders {
            metadata: RequestMetadata {
                correlation_id: "rh-minimal".into(),
                request_id: String::new(),
                client_ip: "::1".into(),
                client_port: u16::MAX,
                protocol: "HTTP/1.0".into(),
                timestamp: "not a timestamp".into(),
                ..RequestMetadata::default()
            },
            method: "GET".into(),
            uri: "/caf\u{e9}?q=\u{2603}&x=%00".into(),
            headers: Headers::new(),
        }),
        bare,
    );
    let mut unicode = allow();
    unicode.request_headers = vec![set("x-greeting", "grüß dich ☃"), remove("x-empty")];
    case(
        Event::RequestHeaders(RequestHeaders {
            headers: headers(&[
                ("x-greeting", "hello \u{1F980}"),
                ("x-empty", ""),
                ("x-quote", "\"q\" \\ back\\slash\ttab"),
            ]),
            ..match request_headers("rh-unicode", "PATCH", "/ünïcödé") {
                Event::RequestHeaders(h) => h,
                _ => unreachable!(),
            }
        }),
        unicode,
    );

    // Request body: a first chunk of non-UTF-8 bytes, answered provisionally (needs_more)
    // with a replacement; then an empty last chunk, dropped.
    let mut first = allow();
    first.needs_more = true;
    first.request_body_mutation = Some(BodyMutation {
        data: Some(BASE64.encode(b"redacted")),
        chunk_index: 0,
    });
    case(
        Event::RequestBodyChunk(BodyChunk {
            correlation_id: "rb-0".into(),
            data: Bytes::from_static(b"\x00\x01\xfe\xffpass=\xc3\x28secret\x80"),
            is_last: false,
            total_size: Some(64),
            chunk_index: 0,
            bytes_transferred: 19,
        }),
        first,
    );
    let mut last = allow();
    last.request_body_mutation = Some(BodyMutation {
        data: Some(String::new()),
        chunk_index: 1,
    });
    case(
        Event::RequestBodyChunk(BodyChunk {
            correlation_id: "rb-1".into(),
            data: Bytes::new(),
            is_last: true,
            total_size: None,
            chunk_index: 1,
            bytes_transferred: 19,
        }),
        last,
    );

    // A large chunk (320 KiB, every byte value): multi-byte length prefixes in every
    // encoding (MessagePack `str32`/`bin32`).
    let mut big_answer = allow();
    big_answer.needs_more = true;
    case(
        Event::RequestBodyChunk(BodyChunk {
            correlation_id: "rb-big".into(),
            data: Bytes::from(
                (0..320 * 1024)
                    .map(|i| (i * 7 % 256) as u8)
                    .collect::<Vec<u8>>(),
            ),
            is_last: false,
            total_size: Some(10 * 1024 * 1024),
            chunk_index: 7,
            bytes_transferred: 8 * 320 * 1024,
        }),
        big_answer,
    );

    // Response headers with response-header ops.
    let mut resp = allow();
    resp.response_headers = vec![add("set-cookie", "c=3"), set("cache-control", "no-store")];
    case(
        Event::ResponseHeaders(ResponseHeaders {
            correlation_id: "resp-h".into(),
            status: 201,
            headers: headers(&[
                ("content-type", "application/json"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
            ]),
        }),
        resp,
    );

    // Response body: a replacement, and a pass-through (data null).
    let mut masked = allow();
    masked.response_body_mutation = Some(BodyMutation {
        data: Some(BASE64.encode(br#"{"card":"****"}"#)),
        chunk_index: 2,
    });
    case(
        Event::ResponseBodyChunk(BodyChunk {
            correlation_id: "resp-b".into(),
            data: Bytes::from_static(br#"{"card":"4111111111111111"}"#),
            is_last: true,
            total_size: Some(27),
            chunk_index: 2,
            bytes_transferred: 27,
        }),
        masked,
    );
    let mut pass = allow();
    pass.needs_more = true;
    pass.response_body_mutation = Some(BodyMutation {
        data: None,
        chunk_index: 0,
    });
    case(
        Event::ResponseBodyChunk(BodyChunk {
            correlation_id: "resp-b-pass".into(),
            data: Bytes::from(vec![0xffu8; 300]),
            is_last: false,
            total_size: None,
            chunk_index: 0,
            bytes_transferred: 300,
        }),
        pass,
    );

    // Request complete.
    let mut logged = allow();
    logged.audit.tags = vec!["logged".into()];
    case(
        Event::RequestComplete(RequestComplete {
            correlation_id: "done".into(),
            status: 502,
            duration_ms: 9_007_199_254_740_993,
            request_body_size: 19,
            response_body_size: 27,
            upstream_attempts: 3,
            error: Some("upstream reset".into()),
        }),
        logged,
    );

    // WebSocket frames: each decision.
    let ws = |id: &str, opcode: &str, data: &'static [u8], c2s: bool, index: u64, fin: bool| {
        Event::WebSocketFrame(WebSocketFrame {
            correlation_id: id.into(),
            opcode: opcode.into(),
            data: Bytes::from_static(data),
            client_to_server: c2s,
            frame_index: index,
            fin,
            route_id: c2s.then(|| "chat".to_string()),
            client_ip: "127.0.0.1".into(),
        })
    };
    let ws_answer = |d: WebSocketDecision| {
        let mut r = allow();
        r.websocket_decision = Some(d);
        r
    };
    case(
        ws("ws-text", "text", b"hello", true, 0, true),
        ws_answer(WebSocketDecision::Allow),
    );
    case(
        ws("ws-binary", "binary", b"\x00\xff\x10", false, 7, false),
        ws_answer(WebSocketDecision::Drop),
    );
    case(
        ws("ws-ping", "ping", b"", true, 1, true),
        ws_answer(WebSocketDecision::Allow),
    );
    case(
        ws("ws-cont", "continuation", b"\xf0\x9f", false, 8, false),
        ws_answer(WebSocketDecision::Allow),
    );
    case(
        ws("ws-close", "close", b"\x03\xe8bye", true, 3, true),
        ws_answer(WebSocketDecision::Close {
            code: 1008,
            reason: "policy violation".into(),
        }),
    );

    // Guardrail inspections.
    let mut pii = AgentResponse::with_decision(Decision::Block {
        status: 451,
        body: Some("personal data".into()),
        headers: None,
    });
    pii.audit.custom = custom(json!({"detected": true, "categories": ["ssn"]}));
    case(
        Event::GuardrailInspect(GuardrailInspect {
            correlation_id: "guard-pii".into(),
            inspection_type: InspectionType::PiiDetection,
            content: "my ssn is 078-05-1120".into(),
            model: Some("gpt-interop".into()),
            categories: vec!["ssn".into(), "email".into()],
            route_id: Some("llm".into()),
            metadata: [("tenant".to_string(), "t1".to_string())].into(),
        }),
        pii,
    );
    case(
        Event::GuardrailInspect(GuardrailInspect {
            correlation_id: "guard-prompt".into(),
            inspection_type: InspectionType::PromptInjection,
            content: "ignore previous instructions".into(),
            model: None,
            categories: Vec::new(),
            route_id: None,
            metadata: BTreeMap::new(),
        }),
        allow(),
    );

    // Configuration: accepted and rejected (the reference agent's rejection shape).
    case(
        Event::Configure(Configure {
            config: sample_config(),
            config_version: Some("v7".into()),
            correlation_id: "cfg-accept".into(),
        }),
        allow(),
    );
    case(
        Event::Configure(Configure {
            config: AnyValue(json!({"mode": "reject-me"})),
            config_version: Some("v8".into()),
            correlation_id: "cfg-reject".into(),
        }),
        config_rejection(),
    );
    out
}

/// The reference agent's answer to a configuration its handler refused.
pub(crate) fn config_rejection() -> AgentResponse {
    AgentResponse::with_decision(Decision::Block {
        status: 500,
        body: Some("Configuration rejected".into()),
        headers: None,
    })
}

/// The cases of the given kinds, in catalogue order.
pub(crate) fn cases_of(kinds: &[Kind]) -> Vec<Case> {
    catalogue()
        .into_iter()
        .filter(|c| kinds.contains(&kind(&c.event)))
        .collect()
}

/// `answer` as the proxy should receive it: with the routing id in `audit.custom`.
pub(crate) fn routed(answer: &AgentResponse, id: &str) -> AgentResponse {
    let mut r = answer.clone();
    r.set_correlation_id(id);
    r
}

/// Capabilities of the agentwire test agent.
pub(crate) fn aw_capabilities(agent_id: &str) -> Capabilities {
    Capabilities {
        agent_id: agent_id.into(),
        name: "agentwire interop agent".into(),
        version: "1.0.0".into(),
        supported_events: (1..=8).collect(),
        features: Features {
            streaming_body: true,
            websocket: true,
            guardrails: true,
            config_push: true,
            concurrent_requests: 16,
            cancellation: true,
            ..Features::default()
        },
        limits: Limits::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The agentwire side's scripted agent

/// An agentwire agent that answers each event from the catalogue (an event the catalogue does
/// not know is answered `599`, which no cell expects) and records what it received.
#[derive(Default)]
pub(crate) struct AwAgent {
    answers: HashMap<String, AgentResponse>,
    /// Every event handed to the handler, in order.
    pub(crate) seen: Mutex<Vec<Event>>,
    /// Every handshake the agent answered.
    pub(crate) connects: Mutex<Vec<HandshakeRequest>>,
    /// Every cancel: id and reason number.
    pub(crate) cancels: Mutex<Vec<(String, u8)>>,
    /// How long each answer takes.
    delay: Duration,
}

impl AwAgent {
    /// An agent scripted with `cases`.
    pub(crate) fn new(cases: &[Case]) -> Arc<Self> {
        Arc::new(AwAgent {
            answers: cases
                .iter()
                .map(|c| (c.id().to_string(), c.answer.clone()))
                .collect(),
            ..AwAgent::default()
        })
    }

    /// An agent scripted with `cases` that takes `delay` over each answer.
    pub(crate) fn slow(cases: &[Case], delay: Duration) -> Arc<Self> {
        let mut agent = Arc::into_inner(AwAgent::new(cases)).expect("sole owner");
        agent.delay = delay;
        Arc::new(agent)
    }

    /// The events received so far.
    pub(crate) fn seen(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    /// The event received for `id` (panics if none or several).
    pub(crate) fn received(&self, id: &str) -> Event {
        let seen = self.seen();
        let mut hits = seen.iter().filter(|e| e.correlation_id() == id);
        let first = hits
            .next()
            .unwrap_or_else(|| panic!("the agent never received {id}; it saw {seen:#?}"))
            .clone();
        assert!(hits.next().is_none(), "{id} was received more than once");
        first
    }
}

impl AgentHandler for AwAgent {
    fn on_connect(&self, request: &HandshakeRequest) {
        self.connects.lock().unwrap().push(request.clone());
    }

    fn on_cancel(&self, correlation_id: &str, reason: agentwire_core::message::CancelReason) {
        self.cancels
            .lock()
            .unwrap()
            .push((correlation_id.to_string(), reason as u8));
    }

    fn handle_event(&self, event: Event) -> impl Future<Output = AgentResponse> + Send {
        let answer = self
            .answers
            .get(event.correlation_id())
            .cloned()
            .unwrap_or_else(|| AgentResponse::block(599));
        self.seen.lock().unwrap().push(event);
        let delay = self.delay;
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference side's scripted agent

/// A reference event, one variant per type the reference handler sees.
#[derive(Clone, Debug)]
pub(crate) enum RefEvent {
    RequestHeaders(zref::RequestHeadersEvent),
    RequestBodyChunk(zref::RequestBodyChunkEvent),
    ResponseHeaders(zref::ResponseHeadersEvent),
    ResponseBodyChunk(zref::ResponseBodyChunkEvent),
    RequestComplete(zref::RequestCompleteEvent),
    WebSocketFrame(zref::WebSocketFrameEvent),
    GuardrailInspect(zref::GuardrailInspectEvent),
    /// A configure payload as `send_configure` takes it: `{config, config_version}` (the
    /// reference client adds `correlation_id` itself).
    Configure(Value),
}

/// A reference agent (`AgentHandlerV2`) that answers from the catalogue and records every
/// event (converted to agentwire's types), handshake and configuration.
pub(crate) struct RefAgent {
    agent_id: String,
    answers: HashMap<String, zref::AgentResponse>,
    accept_config: Option<bool>,
    refuse_handshake: Option<String>,
    /// Events handed to the handler, in agentwire's types.
    pub(crate) seen: Mutex<Vec<Event>>,
    /// Handshakes: proxy id, proxy version, config.
    pub(crate) handshakes: Mutex<Vec<zv2::HandshakeRequest>>,
    /// Configurations: config and version.
    pub(crate) configs: Mutex<Vec<(Value, Option<String>)>>,
}

impl RefAgent {
    /// A reference agent scripted with `cases` that accepts configurations.
    ///
    /// Like the catalogue's agentwire agent, it refuses a configuration whose `mode` is
    /// `reject-me` (the reference handler's verdict is a bool, it never sees the id).
    pub(crate) fn new(agent_id: &str, cases: &[Case]) -> Arc<Self> {
        RefAgent::build(agent_id, cases, None)
    }

    /// A reference agent whose `on_configure` always answers `accept`.
    pub(crate) fn with_config_verdict(agent_id: &str, cases: &[Case], accept: bool) -> Arc<Self> {
        RefAgent::build(agent_id, cases, Some(accept))
    }

    fn build(agent_id: &str, cases: &[Case], accept: Option<bool>) -> Arc<Self> {
        Arc::new(RefAgent {
            agent_id: agent_id.into(),
            answers: cases
                .iter()
                .map(|c| (c.id().to_string(), aw_to_ref_response(&c.answer)))
                .collect(),
            accept_config: accept,
            refuse_handshake: None,
            seen: Mutex::new(Vec::new()),
            handshakes: Mutex::new(Vec::new()),
            configs: Mutex::new(Vec::new()),
        })
    }

    /// A reference agent whose handshake handler refuses every proxy with `reason`.
    pub(crate) fn refusing(agent_id: &str, reason: &str) -> Arc<Self> {
        let mut agent = Arc::into_inner(RefAgent::build(agent_id, &[], None)).expect("sole owner");
        agent.refuse_handshake = Some(reason.into());
        Arc::new(agent)
    }

    fn answer(&self, event: Event) -> zref::AgentResponse {
        let answer = self
            .answers
            .get(event.correlation_id())
            .cloned()
            .unwrap_or_else(|| zref::AgentResponse::block(599, None));
        self.seen.lock().unwrap().push(event);
        answer
    }

    /// The events received so far.
    pub(crate) fn seen(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    /// The event received for `id` (panics if none or several).
    pub(crate) fn received(&self, id: &str) -> Event {
        let seen = self.seen();
        let mut hits = seen.iter().filter(|e| e.correlation_id() == id);
        let first = hits
            .next()
            .unwrap_or_else(|| panic!("the reference agent never received {id}; it saw {seen:#?}"))
            .clone();
        assert!(hits.next().is_none(), "{id} was received more than once");
        first
    }

    /// The reference capabilities this agent announces.
    pub(crate) fn ref_capabilities(agent_id: &str) -> zv2::AgentCapabilities {
        zv2::AgentCapabilities::new(agent_id, "reference interop agent", "0.6.45")
            .with_event(zref::EventType::RequestBodyChunk)
            .with_event(zref::EventType::ResponseHeaders)
            .with_event(zref::EventType::ResponseBodyChunk)
            .with_event(zref::EventType::RequestComplete)
            .with_event(zref::EventType::WebSocketFrame)
            .with_event(zref::EventType::Configure)
    }
}

/// Shares one [`RefAgent`] with a reference server, which wants a `Box<dyn AgentHandlerV2>`.
pub(crate) struct SharedRef(pub Arc<RefAgent>);

#[async_trait::async_trait]
impl zv2::AgentHandlerV2 for SharedRef {
    fn capabilities(&self) -> zv2::AgentCapabilities {
        RefAgent::ref_capabilities(&self.0.agent_id)
    }

    async fn on_handshake(&self, request: zv2::HandshakeRequest) -> zv2::HandshakeResponse {
        self.0.handshakes.lock().unwrap().push(request);
        match &self.0.refuse_handshake {
            Some(reason) => zv2::HandshakeResponse::failure(reason.clone()),
            None => zv2::HandshakeResponse::success(self.capabilities()),
        }
    }

    async fn on_request_headers(&self, event: zref::RequestHeadersEvent) -> zref::AgentResponse {
        self.0
            .answer(ref_to_aw_event(RefEvent::RequestHeaders(event), None))
    }

    async fn on_request_body_chunk(
        &self,
        event: zref::RequestBodyChunkEvent,
    ) -> zref::AgentResponse {
        self.0
            .answer(ref_to_aw_event(RefEvent::RequestBodyChunk(event), None))
    }

    async fn on_response_headers(&self, event: zref::ResponseHeadersEvent) -> zref::AgentResponse {
        self.0
            .answer(ref_to_aw_event(RefEvent::ResponseHeaders(event), None))
    }

    async fn on_response_body_chunk(
        &self,
        event: zref::ResponseBodyChunkEvent,
    ) -> zref::AgentResponse {
        self.0
            .answer(ref_to_aw_event(RefEvent::ResponseBodyChunk(event), None))
    }

    async fn on_request_complete(&self, event: zref::RequestCompleteEvent) -> zref::AgentResponse {
        self.0
            .answer(ref_to_aw_event(RefEvent::RequestComplete(event), None))
    }

    async fn on_websocket_frame(&self, event: zref::WebSocketFrameEvent) -> zref::AgentResponse {
        self.0
            .answer(ref_to_aw_event(RefEvent::WebSocketFrame(event), None))
    }

    async fn on_configure(&self, config: Value, version: Option<String>) -> bool {
        let accept = self
            .0
            .accept_config
            .unwrap_or_else(|| config.get("mode").and_then(Value::as_str) != Some("reject-me"));
        self.0.configs.lock().unwrap().push((config, version));
        accept
    }
}

// ---------------------------------------------------------------------------------------------
// Converters

fn to_hash_headers(h: &Headers) -> HashMap<String, Vec<String>> {
    h.names()
        .map(|(n, vs)| (n.to_string(), vs.to_vec()))
        .collect()
}

fn from_hash_headers(h: &HashMap<String, Vec<String>>) -> Headers {
    let mut out = Headers::new();
    for (n, vs) in h {
        for v in vs {
            out.append(n.as_str(), v.as_str());
        }
    }
    out
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).expect("fits")
}

/// An agentwire event as the reference's typed event.
pub(crate) fn aw_to_ref_event(event: &Event) -> RefEvent {
    match event {
        Event::RequestHeaders(e) => RefEvent::RequestHeaders(zref::RequestHeadersEvent {
            metadata: zref::RequestMetadata {
                correlation_id: e.metadata.correlation_id.clone(),
                request_id: e.metadata.request_id.clone(),
                client_ip: e.metadata.client_ip.clone(),
                client_port: e.metadata.client_port,
                server_name: e.metadata.server_name.clone(),
                protocol: e.metadata.protocol.clone(),
                tls_version: e.metadata.tls_version.clone(),
                tls_cipher: e.metadata.tls_cipher.clone(),
                route_id: e.metadata.route_id.clone(),
                upstream_id: e.metadata.upstream_id.clone(),
                timestamp: e.metadata.timestamp.clone(),
                traceparent: e.metadata.traceparent.clone(),
            },
            method: e.method.clone(),
            uri: e.uri.clone(),
            headers: to_hash_headers(&e.headers),
        }),
        Event::RequestBodyChunk(c) => RefEvent::RequestBodyChunk(zref::RequestBodyChunkEvent {
            correlation_id: c.correlation_id.clone(),
            data: BASE64.encode(&c.data),
            is_last: c.is_last,
            total_size: c.total_size.map(usize_of),
            chunk_index: c.chunk_index,
            bytes_received: usize_of(c.bytes_transferred),
        }),
        Event::ResponseHeaders(e) => RefEvent::ResponseHeaders(zref::ResponseHeadersEvent {
            correlation_id: e.correlation_id.clone(),
            status: e.status,
            headers: to_hash_headers(&e.headers),
        }),
        Event::ResponseBodyChunk(c) => RefEvent::ResponseBodyChunk(zref::ResponseBodyChunkEvent {
            correlation_id: c.correlation_id.clone(),
            data: BASE64.encode(&c.data),
            is_last: c.is_last,
            total_size: c.total_size.map(usize_of),
            chunk_index: c.chunk_index,
            bytes_sent: usize_of(c.bytes_transferred),
        }),
        Event::RequestComplete(e) => RefEvent::RequestComplete(zref::RequestCompleteEvent {
            correlation_id: e.correlation_id.clone(),
            status: e.status,
            duration_ms: e.duration_ms,
            request_body_size: usize_of(e.request_body_size),
            response_body_size: usize_of(e.response_body_size),
            upstream_attempts: e.upstream_attempts,
            error: e.error.clone(),
        }),
        Event::WebSocketFrame(e) => RefEvent::WebSocketFrame(zref::WebSocketFrameEvent {
            correlation_id: e.correlation_id.clone(),
            opcode: e.opcode.clone(),
            data: BASE64.encode(&e.data),
            client_to_server: e.client_to_server,
            frame_index: e.frame_index,
            fin: e.fin,
            route_id: e.route_id.clone(),
            client_ip: e.client_ip.clone(),
        }),
        Event::GuardrailInspect(e) => RefEvent::GuardrailInspect(zref::GuardrailInspectEvent {
            correlation_id: e.correlation_id.clone(),
            inspection_type: match e.inspection_type {
                InspectionType::PromptInjection => zref::GuardrailInspectionType::PromptInjection,
                InspectionType::PiiDetection => zref::GuardrailInspectionType::PiiDetection,
            },
            content: e.content.clone(),
            model: e.model.clone(),
            categories: e.categories.clone(),
            route_id: e.route_id.clone(),
            metadata: e
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }),
        Event::Configure(c) => RefEvent::Configure(json!({
            "config": c.config.0,
            "config_version": c.config_version,
        })),
        _ => unreachable!("an event kind this matrix does not know"),
    }
}

fn decode_b64(text: &str) -> Bytes {
    Bytes::from(
        BASE64
            .decode(text)
            .unwrap_or_else(|e| panic!("body data {text:?} is not base64: {e}")),
    )
}

/// A reference event as agentwire's; a configure payload needs its id (`cid`).
pub(crate) fn ref_to_aw_event(event: RefEvent, cid: Option<&str>) -> Event {
    match event {
        RefEvent::RequestHeaders(e) => Event::RequestHeaders(RequestHeaders {
            metadata: RequestMetadata {
                correlation_id: e.metadata.correlation_id,
                request_id: e.metadata.request_id,
                client_ip: e.metadata.client_ip,
                client_port: e.metadata.client_port,
                server_name: e.metadata.server_name,
                protocol: e.metadata.protocol,
                tls_version: e.metadata.tls_version,
                tls_cipher: e.metadata.tls_cipher,
                route_id: e.metadata.route_id,
                upstream_id: e.metadata.upstream_id,
                timestamp: e.metadata.timestamp,
                traceparent: e.metadata.traceparent,
            },
            method: e.method,
            uri: e.uri,
            headers: from_hash_headers(&e.headers),
        }),
        RefEvent::RequestBodyChunk(c) => Event::RequestBodyChunk(BodyChunk {
            data: decode_b64(&c.data),
            correlation_id: c.correlation_id,
            is_last: c.is_last,
            total_size: c.total_size.map(|n| n as u64),
            chunk_index: c.chunk_index,
            bytes_transferred: c.bytes_received as u64,
        }),
        RefEvent::ResponseHeaders(e) => Event::ResponseHeaders(ResponseHeaders {
            headers: from_hash_headers(&e.headers),
            correlation_id: e.correlation_id,
            status: e.status,
        }),
        RefEvent::ResponseBodyChunk(c) => Event::ResponseBodyChunk(BodyChunk {
            data: decode_b64(&c.data),
            correlation_id: c.correlation_id,
            is_last: c.is_last,
            total_size: c.total_size.map(|n| n as u64),
            chunk_index: c.chunk_index,
            bytes_transferred: c.bytes_sent as u64,
        }),
        RefEvent::RequestComplete(e) => Event::RequestComplete(RequestComplete {
            correlation_id: e.correlation_id,
            status: e.status,
            duration_ms: e.duration_ms,
            request_body_size: e.request_body_size as u64,
            response_body_size: e.response_body_size as u64,
            upstream_attempts: e.upstream_attempts,
            error: e.error,
        }),
        RefEvent::WebSocketFrame(e) => Event::WebSocketFrame(WebSocketFrame {
            data: decode_b64(&e.data),
            correlation_id: e.correlation_id,
            opcode: e.opcode,
            client_to_server: e.client_to_server,
            frame_index: e.frame_index,
            fin: e.fin,
            route_id: e.route_id,
            client_ip: e.client_ip,
        }),
        RefEvent::GuardrailInspect(e) => Event::GuardrailInspect(GuardrailInspect {
            correlation_id: e.correlation_id,
            inspection_type: match e.inspection_type {
                zref::GuardrailInspectionType::PromptInjection => InspectionType::PromptInjection,
                zref::GuardrailInspectionType::PiiDetection => InspectionType::PiiDetection,
            },
            content: e.content,
            model: e.model,
            categories: e.categories,
            route_id: e.route_id,
            metadata: e.metadata.into_iter().collect(),
        }),
        RefEvent::Configure(v) => Event::Configure(Configure {
            config: AnyValue(v.get("config").cloned().unwrap_or(Value::Null)),
            config_version: v
                .get("config_version")
                .and_then(Value::as_str)
                .map(String::from),
            correlation_id: cid.unwrap_or_default().to_string(),
        }),
    }
}

fn to_ref_op(op: &HeaderOp) -> zref::HeaderOp {
    match op {
        HeaderOp::Set { name, value } => zref::HeaderOp::Set {
            name: name.clone(),
            value: value.clone(),
        },
        HeaderOp::Add { name, value } => zref::HeaderOp::Add {
            name: name.clone(),
            value: value.clone(),
        },
        HeaderOp::Remove { name } => zref::HeaderOp::Remove { name: name.clone() },
    }
}

fn from_ref_op(op: &zref::HeaderOp) -> HeaderOp {
    match op {
        zref::HeaderOp::Set { name, value } => set(name, value),
        zref::HeaderOp::Add { name, value } => add(name, value),
        zref::HeaderOp::Remove { name } => remove(name),
    }
}

/// An agentwire answer as the reference's.
pub(crate) fn aw_to_ref_response(r: &AgentResponse) -> zref::AgentResponse {
    zref::AgentResponse {
        version: r.version,
        decision: match &r.decision {
            Decision::Allow => zref::Decision::Allow,
            Decision::Block {
                status,
                body,
                headers,
            } => zref::Decision::Block {
                status: *status,
                body: body.clone(),
                headers: headers
                    .as_ref()
                    .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            },
            Decision::Redirect { url, status } => zref::Decision::Redirect {
                url: url.clone(),
                status: *status,
            },
            Decision::Challenge {
                challenge_type,
                params,
            } => zref::Decision::Challenge {
                challenge_type: challenge_type.clone(),
                params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
        },
        request_headers: r.request_headers.iter().map(to_ref_op).collect(),
        response_headers: r.response_headers.iter().map(to_ref_op).collect(),
        routing_metadata: r
            .routing_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        audit: zref::AuditMetadata {
            tags: r.audit.tags.clone(),
            rule_ids: r.audit.rule_ids.clone(),
            confidence: r.audit.confidence,
            reason_codes: r.audit.reason_codes.clone(),
            custom: r
                .audit
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        },
        needs_more: r.needs_more,
        request_body_mutation: r
            .request_body_mutation
            .as_ref()
            .map(|m| zref::BodyMutation {
                data: m.data.clone(),
                chunk_index: m.chunk_index,
            }),
        response_body_mutation: r
            .response_body_mutation
            .as_ref()
            .map(|m| zref::BodyMutation {
                data: m.data.clone(),
                chunk_index: m.chunk_index,
            }),
        websocket_decision: r.websocket_decision.as_ref().map(|d| match d {
            WebSocketDecision::Allow => zref::WebSocketDecision::Allow,
            WebSocketDecision::Drop => zref::WebSocketDecision::Drop,
            WebSocketDecision::Close { code, reason } => zref::WebSocketDecision::Close {
                code: *code,
                reason: reason.clone(),
            },
        }),
    }
}

/// A reference answer as agentwire's.
pub(crate) fn ref_to_aw_response(r: &zref::AgentResponse) -> AgentResponse {
    AgentResponse {
        version: r.version,
        decision: match &r.decision {
            zref::Decision::Allow => Decision::Allow,
            zref::Decision::Block {
                status,
                body,
                headers,
            } => Decision::Block {
                status: *status,
                body: body.clone(),
                headers: headers
                    .as_ref()
                    .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            },
            zref::Decision::Redirect { url, status } => Decision::Redirect {
                url: url.clone(),
                status: *status,
            },
            zref::Decision::Challenge {
                challenge_type,
                params,
            } => Decision::Challenge {
                challenge_type: challenge_type.clone(),
                params: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
        },
        request_headers: r.request_headers.iter().map(from_ref_op).collect(),
        response_headers: r.response_headers.iter().map(from_ref_op).collect(),
        routing_metadata: r
            .routing_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        audit: Audit {
            tags: r.audit.tags.clone(),
            rule_ids: r.audit.rule_ids.clone(),
            confidence: r.audit.confidence,
            reason_codes: r.audit.reason_codes.clone(),
            custom: r
                .audit
                .custom
                .iter()
                .map(|(k, v)| (k.clone(), AnyValue(v.clone())))
                .collect(),
        },
        needs_more: r.needs_more,
        request_body_mutation: r.request_body_mutation.as_ref().map(|m| BodyMutation {
            data: m.data.clone(),
            chunk_index: m.chunk_index,
        }),
        response_body_mutation: r.response_body_mutation.as_ref().map(|m| BodyMutation {
            data: m.data.clone(),
            chunk_index: m.chunk_index,
        }),
        websocket_decision: r.websocket_decision.as_ref().map(|d| match d {
            zref::WebSocketDecision::Allow => WebSocketDecision::Allow,
            zref::WebSocketDecision::Drop => WebSocketDecision::Drop,
            zref::WebSocketDecision::Close { code, reason } => WebSocketDecision::Close {
                code: *code,
                reason: reason.clone(),
            },
        }),
    }
}

/// Asserts two answers are equal, with a readable diff.
#[track_caller]
pub(crate) fn assert_answer(cell: &str, id: &str, got: &AgentResponse, want: &AgentResponse) {
    assert_eq!(
        got, want,
        "{cell}: answer to {id} differs\n got: {got:#?}\nwant: {want:#?}"
    );
}

/// Asserts two events are equal, with a readable diff.
#[track_caller]
pub(crate) fn assert_event(cell: &str, got: &Event, want: &Event) {
    assert_eq!(
        got,
        want,
        "{cell}: event {} arrived changed\n got: {got:#?}\nwant: {want:#?}",
        want.correlation_id()
    );
}

// ---------------------------------------------------------------------------------------------
// Servers

/// A reference UDS agent server serving `agent` at `path`; aborted when the guard drops.
pub(crate) struct RefUdsServer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefUdsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a reference `UdsAgentServerV2` and waits until its socket accepts.
pub(crate) async fn start_ref_uds_server(
    path: &std::path::Path,
    agent: Arc<RefAgent>,
) -> RefUdsServer {
    let server = zv2::UdsAgentServerV2::new(
        agent.agent_id.clone(),
        path.to_path_buf(),
        Box::new(SharedRef(agent)),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = server.run().await {
            panic!("reference UDS server failed: {e}");
        }
    });
    wait_for_socket(path).await;
    RefUdsServer { task }
}

/// Waits (bounded) until something listens at `path`.
pub(crate) async fn wait_for_socket(path: &std::path::Path) {
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens at {} after 5 s", path.display());
}

/// An agentwire UDS agent server; shut down when dropped.
pub(crate) struct AwUds {
    /// The socket.
    pub(crate) path: std::path::PathBuf,
    shutdown: agentwire_runtime::server::Shutdown,
}

impl Drop for AwUds {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts an agentwire `UdsServer` in `dir` serving `agent`, speaking only `encodings`.
pub(crate) fn start_aw_uds(
    dir: &std::path::Path,
    agent: Arc<AwAgent>,
    encodings: &[agentwire_core::message::Encoding],
) -> AwUds {
    let path = dir.join("aw-agent.sock");
    let mut config = agentwire_tokio::UdsServerConfig::default();
    config.serve.agent.capabilities = aw_capabilities("aw-agent");
    config.serve.agent.encodings = encodings.to_vec();
    let server = agentwire_tokio::UdsServer::bind(agentwire_tokio::runtime(), &path, config)
        .expect("bind the agentwire agent");
    let shutdown = agentwire_runtime::server::Shutdown::new();
    tokio::spawn(server.serve(agent, shutdown.clone()));
    AwUds { path, shutdown }
}

/// Sends `event` through the reference UDS client.
pub(crate) async fn ref_uds_send(
    client: &zv2::AgentClientV2Uds,
    id: &str,
    event: &RefEvent,
) -> Result<zref::AgentResponse, zref::AgentProtocolError> {
    match event {
        RefEvent::RequestHeaders(e) => client.send_request_headers(id, e).await,
        RefEvent::RequestBodyChunk(e) => client.send_request_body_chunk(id, e).await,
        RefEvent::ResponseHeaders(e) => client.send_response_headers(id, e).await,
        RefEvent::ResponseBodyChunk(e) => client.send_response_body_chunk(id, e).await,
        RefEvent::RequestComplete(e) => client.send_request_complete(id, e).await,
        RefEvent::WebSocketFrame(e) => client.send_websocket_frame(id, e).await,
        RefEvent::GuardrailInspect(e) => client.send_guardrail_inspect(id, e).await,
        RefEvent::Configure(v) => client.send_configure(id, v).await,
    }
}

/// Client settings toward a reference agent: `encodings` offered, short connect timeout.
pub(crate) fn aw_client_config(
    encodings: &[agentwire_core::message::Encoding],
    agent_config: Option<AnyValue>,
) -> agentwire_runtime::client::ClientConfig {
    let mut c = agentwire_runtime::client::ClientConfig {
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    c.session.encodings = encodings.to_vec();
    c.session.agent_config = agent_config;
    c.session.request_timeout = Duration::from_secs(5);
    c
}

/// agentwire's default offer: postcard first (through its own key), then MessagePack, JSON.
pub(crate) fn default_offer() -> Vec<agentwire_core::message::Encoding> {
    agentwire_core::session::ProxyConfig::default().encodings
}

/// Sends `event` through an agentwire pool to `agent`.
pub(crate) async fn aw_pool_send<R: agentwire_runtime::Runtime>(
    pool: &agentwire_pool::AgentPool<R>,
    agent: &str,
    event: Event,
) -> Result<agentwire_pool::PoolOutcome, agentwire_pool::PoolError> {
    match event {
        Event::RequestHeaders(e) => pool.send_request_headers(agent, e).await,
        Event::RequestBodyChunk(e) => pool.send_request_body_chunk(agent, e).await,
        Event::ResponseHeaders(e) => pool.send_response_headers(agent, e).await,
        Event::ResponseBodyChunk(e) => pool.send_response_body_chunk(agent, e).await,
        Event::RequestComplete(e) => pool.send_request_complete(agent, e).await,
        Event::WebSocketFrame(e) => pool.send_websocket_frame(agent, e).await,
        Event::GuardrailInspect(e) => pool.send_guardrail_inspect(agent, e).await,
        other => panic!("the pool has no call for {other:?}"),
    }
}

/// Pool settings toward reference agents: `connections` per agent, `offer` of encodings.
pub(crate) fn aw_pool_config(
    connections: usize,
    offer: &[agentwire_core::message::Encoding],
) -> agentwire_pool::PoolConfig {
    agentwire_pool::PoolConfig {
        connections_per_agent: connections,
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        client: aw_client_config(offer, None),
        ..agentwire_pool::PoolConfig::default()
    }
}

/// An agentwire gRPC agent on 127.0.0.1; shut down when dropped.
pub(crate) struct AwGrpc {
    /// `http://127.0.0.1:port`.
    pub(crate) endpoint: String,
    shutdown: agentwire_grpc::Shutdown,
}

impl Drop for AwGrpc {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Starts an agentwire `GrpcServer` (h2c) serving `agent`.
pub(crate) async fn start_aw_grpc(agent: Arc<AwAgent>) -> AwGrpc {
    let config = agentwire_grpc::GrpcServerConfig {
        capabilities: aw_capabilities("aw-agent"),
        ..agentwire_grpc::GrpcServerConfig::default()
    };
    let server = agentwire_grpc::GrpcServer::bind("127.0.0.1:0".parse().unwrap(), agent, config)
        .await
        .expect("bind the agentwire gRPC agent");
    let endpoint = format!("http://{}", server.local_addr());
    let shutdown = agentwire_grpc::Shutdown::new();
    tokio::spawn(server.serve(shutdown.clone()));
    AwGrpc { endpoint, shutdown }
}

/// A reference gRPC agent (`GrpcAgentServerV2`) on 127.0.0.1; aborted when dropped.
pub(crate) struct RefGrpc {
    /// `http://127.0.0.1:port`.
    pub(crate) endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RefGrpc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the reference gRPC agent serving `agent` on a free port of 127.0.0.1.
pub(crate) async fn start_ref_grpc(agent: Arc<RefAgent>) -> RefGrpc {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = zv2::GrpcAgentServerV2::new(agent.agent_id.clone(), Box::new(SharedRef(agent)))
        .into_service();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    RefGrpc { endpoint, task }
}

/// `answer` as a proxy receives it from an agent that quotes every `audit.custom` value, the
/// way the reference gRPC agent does (B9), after agentwire unquoted the strings: string
/// values come back as themselves, every other value as its JSON text.
pub(crate) fn custom_as_strings(answer: &AgentResponse) -> BTreeMap<String, AnyValue> {
    answer
        .audit
        .custom
        .iter()
        .map(|(k, v)| {
            let text = match &v.0 {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), AnyValue(Value::String(text)))
        })
        .collect()
}
