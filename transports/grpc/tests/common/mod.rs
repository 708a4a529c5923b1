//! Shared pieces of the integration tests: a recording handler, a server on an ephemeral
//! 127.0.0.1 port, and hard timeouts.

#![allow(dead_code, unreachable_pub)]

use agentwire_core::message::{
    AgentResponse, AnyValue, BodyChunk, BodyMutation, CancelReason, Configure, Decision, Event,
    GuardrailInspect, HandshakeRequest, HeaderOp, RequestComplete, RequestHeaders, ResponseHeaders,
    WebSocketDecision, WebSocketFrame,
};
use agentwire_core::sync::Mutex;
use agentwire_grpc::{AgentHandler, GrpcServer, GrpcServerConfig, Shutdown};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs `f`, failing the test if it takes longer than `secs`.
pub async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("test exceeded its hard timeout of {secs} s"),
    }
}

/// What the handler saw (a test record: size does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    Connect(HandshakeRequest),
    Event(Event),
    Cancel(String, CancelReason),
    /// A handler future was dropped before finishing (aborted).
    Dropped(String),
}

/// An agent whose answers depend on the request URI, recording everything it sees.
#[derive(Default)]
pub struct Recorder {
    pub seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    pub fn record(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for what was seen.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) {
        for _ in 0..500 {
            if pred(&self.snapshot()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never saw {what}: {:?}", self.snapshot());
    }

    pub fn events(&self) -> Vec<Event> {
        self.snapshot()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }
}

struct DropFlag<'a> {
    recorder: &'a Recorder,
    id: String,
    armed: bool,
}

impl Drop for DropFlag<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.recorder
                .record(Seen::Dropped(std::mem::take(&mut self.id)));
        }
    }
}

/// The rich Allow of `/allow-rich`: every field agentwire can carry over gRPC.
pub fn rich_allow() -> AgentResponse {
    let mut r = AgentResponse::allow();
    r.request_headers = vec![
        HeaderOp::Set {
            name: "x-agent".into(),
            value: "grpc".into(),
        },
        HeaderOp::Add {
            name: "x-tag".into(),
            value: "a".into(),
        },
        HeaderOp::Remove {
            name: "cookie".into(),
        },
    ];
    r.response_headers = vec![HeaderOp::Set {
        name: "x-frame-options".into(),
        value: "DENY".into(),
    }];
    r.routing_metadata = BTreeMap::from([("upstream".into(), "canary".into())]);
    r.audit.tags = vec!["waf".into()];
    r.audit.rule_ids = vec!["942100".into()];
    r.audit.confidence = Some(0.75);
    r.audit.reason_codes = vec!["SQLI".into()];
    r.audit.custom = BTreeMap::from([
        ("source".into(), AnyValue::from("unit")),
        ("quoted".into(), AnyValue::from("\"q\"")),
        ("score".into(), AnyValue(serde_json::json!(7))),
        (
            "detail".into(),
            AnyValue(serde_json::json!({"a": [1, true, null]})),
        ),
    ]);
    r.needs_more = true;
    r.request_body_mutation = Some(BodyMutation {
        data: Some("bmV3".into()),
        chunk_index: 3,
    });
    r.response_body_mutation = Some(BodyMutation {
        data: None,
        chunk_index: 1,
    });
    r.websocket_decision = Some(WebSocketDecision::Close {
        code: 1008,
        reason: "policy".into(),
    });
    r
}

pub fn decision_for(uri: &str) -> AgentResponse {
    match uri {
        "/allow-rich" => rich_allow(),
        "/block" => AgentResponse::with_decision(Decision::Block {
            status: 403,
            body: Some("Forbidden".into()),
            headers: Some(BTreeMap::from([("x-block-reason".into(), "waf".into())])),
        }),
        "/redirect" => AgentResponse::with_decision(Decision::Redirect {
            url: "https://login.example/".into(),
            status: 302,
        }),
        "/challenge" => AgentResponse::with_decision(Decision::Challenge {
            challenge_type: "captcha".into(),
            params: BTreeMap::from([("site-key".into(), "k".into())]),
        }),
        "/huge" => {
            let mut r = AgentResponse::allow();
            r.audit
                .custom
                .insert("blob".into(), AnyValue::from("x".repeat(5 * 1024 * 1024)));
            r
        }
        other => {
            let mut r = AgentResponse::allow();
            r.audit.tags = vec![other.to_owned()];
            r
        }
    }
}

fn tagged(tag: &str) -> AgentResponse {
    let mut r = AgentResponse::allow();
    r.audit.tags = vec![tag.to_owned()];
    r
}

impl AgentHandler for Recorder {
    fn on_connect(&self, request: &HandshakeRequest) {
        self.record(Seen::Connect(request.clone()));
    }

    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        self.record(Seen::Event(Event::RequestHeaders(event.clone())));
        let mut flag = DropFlag {
            recorder: self,
            id: event.metadata.correlation_id.clone(),
            armed: true,
        };
        match event.uri.as_str() {
            "/slow" => tokio::time::sleep(Duration::from_secs(10)).await,
            "/sleep20" => tokio::time::sleep(Duration::from_millis(20)).await,
            "/sleep300" => tokio::time::sleep(Duration::from_millis(300)).await,
            _ => {}
        }
        flag.armed = false;
        decision_for(&event.uri)
    }

    async fn on_request_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        self.record(Seen::Event(Event::RequestBodyChunk(event)));
        tagged("request_body_chunk")
    }

    async fn on_response_headers(&self, event: ResponseHeaders) -> AgentResponse {
        self.record(Seen::Event(Event::ResponseHeaders(event)));
        tagged("response_headers")
    }

    async fn on_response_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        self.record(Seen::Event(Event::ResponseBodyChunk(event)));
        tagged("response_body_chunk")
    }

    async fn on_request_complete(&self, event: RequestComplete) -> AgentResponse {
        self.record(Seen::Event(Event::RequestComplete(event)));
        tagged("request_complete")
    }

    async fn on_websocket_frame(&self, event: WebSocketFrame) -> AgentResponse {
        self.record(Seen::Event(Event::WebSocketFrame(event)));
        let mut r = tagged("websocket_frame");
        r.websocket_decision = Some(WebSocketDecision::Drop);
        r
    }

    async fn on_guardrail_inspect(&self, event: GuardrailInspect) -> AgentResponse {
        self.record(Seen::Event(Event::GuardrailInspect(event)));
        let mut r = AgentResponse::block(451);
        r.audit.tags = vec!["guardrail".into()];
        r
    }

    async fn on_configure(&self, event: Configure) -> AgentResponse {
        let reject = event.config.0.get("reject").is_some();
        self.record(Seen::Event(Event::Configure(event)));
        if reject {
            AgentResponse::block(400)
        } else {
            AgentResponse::allow()
        }
    }

    fn on_cancel(&self, correlation_id: &str, reason: CancelReason) {
        self.record(Seen::Cancel(correlation_id.to_owned(), reason));
    }
}

/// A server config for tests: an agent that declares room for 512 concurrent requests.
pub fn server_config() -> GrpcServerConfig {
    let mut config = GrpcServerConfig::default();
    config.capabilities.agent_id = "test-agent".into();
    config.capabilities.name = "Test Agent".into();
    config.capabilities.version = "1.0.0".into();
    config.capabilities.supported_events = (1..=8).collect();
    config.capabilities.limits.max_concurrency = 512;
    config.max_concurrent_per_stream = 512;
    config.drain_timeout = Duration::from_secs(2);
    config
}

pub struct Running {
    pub endpoint: String,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), agentwire_grpc::ServeError>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = within(10, self.task).await;
    }
}

/// Serves `handler` on 127.0.0.1 with an ephemeral port.
pub async fn start<H: AgentHandler>(handler: Arc<H>, config: GrpcServerConfig) -> Running {
    let server = GrpcServer::bind("127.0.0.1:0".parse().unwrap(), handler, config)
        .await
        .expect("bind 127.0.0.1:0");
    let endpoint = format!("http://{}", server.local_addr());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(server.serve(shutdown.clone()));
    Running {
        endpoint,
        shutdown,
        task,
    }
}

pub fn headers_event(id: &str, uri: &str) -> RequestHeaders {
    let mut e = RequestHeaders {
        method: "GET".into(),
        uri: uri.into(),
        ..RequestHeaders::default()
    };
    e.metadata.correlation_id = id.into();
    e.metadata.request_id = format!("rid-{id}");
    e.metadata.client_ip = "203.0.113.7".into();
    e.metadata.client_port = 54321;
    e.metadata.protocol = "HTTP/2".into();
    e.metadata.timestamp = "2025-01-01T00:00:00.000Z".into();
    e.headers.append("accept", "text/html");
    e
}

// ---------------------------------------------------------------------------------------------
// A scripted fake agent, for behaviour agentwire's own server never shows.

use agentwire_grpc::pb;
use agentwire_grpc::pb::agent_service_v2_server::{AgentServiceV2, AgentServiceV2Server};
use agentwire_grpc::pb::agent_to_proxy::Message as A;
use agentwire_grpc::pb::proxy_to_agent::Message as P;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What the fake agent does after its handshake answer.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    /// Reads `n` events without answering, then ends the stream.
    DropAfter(usize),
    /// Sends pause, health, metrics, config update and a log line; answers events with
    /// Allow; answers a ping with resume + pong.
    Notices,
}

#[derive(Clone, Debug)]
pub struct FakeAgent {
    pub script: Script,
}

fn out(m: A) -> Result<pb::AgentToProxy, Status> {
    Ok(pb::AgentToProxy { message: Some(m) })
}

fn flow(action: i32) -> A {
    A::FlowControl(pb::FlowControlSignal {
        correlation_id: None,
        action,
        buffer_available: None,
        timestamp_ms: 1,
    })
}

type Out<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentServiceV2 for FakeAgent {
    type ProcessStreamStream = Out<pb::AgentToProxy>;

    async fn process_stream(
        &self,
        request: Request<Streaming<pb::ProxyToAgent>>,
    ) -> Result<Response<Self::ProcessStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let script = self.script;
        tokio::spawn(async move {
            let Ok(Some(pb::ProxyToAgent {
                message: Some(P::Handshake(_)),
            })) = inbound.message().await
            else {
                return;
            };
            let caps = pb::AgentCapabilities {
                protocol_version: 2,
                agent_id: "fake".into(),
                ..Default::default()
            };
            let _ = tx
                .send(out(A::Handshake(pb::HandshakeResponse {
                    protocol_version: 2,
                    capabilities: Some(caps),
                    success: true,
                    error: None,
                })))
                .await;
            let mut events = 0;
            if let Script::Notices = script {
                for m in [
                    flow(1),
                    A::Health(pb::HealthStatus {
                        agent_id: "fake".into(),
                        state: 4,
                        unhealthy_reason: Some("disk".into()),
                        recoverable: true,
                        ..Default::default()
                    }),
                    A::Metrics(pb::MetricsReport {
                        agent_id: "fake".into(),
                        counters: vec![pb::CounterMetric {
                            name: "c".into(),
                            value: 3,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    A::ConfigUpdate(pb::ConfigUpdateRequest {
                        request_id: "cu-1".into(),
                        timestamp_ms: 1,
                        update_type: Some(pb::config_update_request::UpdateType::RequestReload(
                            pb::RequestReload {},
                        )),
                    }),
                    A::Log(pb::LogMessage {
                        level: 3,
                        message: "hello from the fake agent".into(),
                        ..Default::default()
                    }),
                ] {
                    let _ = tx.send(out(m)).await;
                }
            }
            while let Ok(Some(m)) = inbound.message().await {
                match m.message {
                    Some(P::Ping(p)) => {
                        if let Script::Notices = script {
                            let _ = tx.send(out(flow(2))).await;
                        }
                        let _ = tx
                            .send(out(A::Pong(pb::Pong {
                                sequence: p.sequence,
                                ping_timestamp_ms: p.timestamp_ms,
                                timestamp_ms: 2,
                            })))
                            .await;
                    }
                    Some(P::RequestHeaders(h)) => {
                        events += 1;
                        match script {
                            Script::DropAfter(n) if events >= n => return,
                            Script::DropAfter(_) => {}
                            Script::Notices => {
                                let id = h.metadata.unwrap_or_default().correlation_id;
                                let _ = tx
                                    .send(out(A::Response(pb::AgentResponse {
                                        correlation_id: id,
                                        ..Default::default()
                                    })))
                                    .await;
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ControlStreamStream = Out<pb::ProxyControl>;

    async fn control_stream(
        &self,
        _request: Request<Streaming<pb::AgentControl>>,
    ) -> Result<Response<Self::ControlStreamStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn process_event(
        &self,
        _request: Request<pb::ProxyToAgent>,
    ) -> Result<Response<pb::AgentToProxy>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves any tonic service for the tests on 127.0.0.1 with an ephemeral port; returns the
/// endpoint. The server runs until the test's runtime ends.
pub async fn start_fake(agent: FakeAgent) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceV2Server::new(agent))
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}
