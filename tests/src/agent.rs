//! The suite's configurable agent: its answers echo what it saw, so a round trip through any
//! encoding can be checked field by field, and it records what happened to its handlers.

use crate::support::hex;
use agentwire_core::message::*;
use agentwire_runtime::Runtime;
use agentwire_runtime::server::AgentHandler;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A Cancel the agent received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRecord {
    /// The request.
    pub correlation_id: String,
    /// The proxy's reason.
    pub reason: CancelReason,
    /// Whether that request's handler future had already been dropped when `on_cancel` ran.
    pub handler_dropped_first: bool,
}

/// What happened inside the agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Handlers started.
    pub started: AtomicUsize,
    /// Handlers that returned an answer.
    pub finished: AtomicUsize,
    /// Handler futures dropped before they finished.
    pub dropped: AtomicUsize,
    /// Most handlers running at once.
    pub max_running: AtomicUsize,
    running: AtomicUsize,
    dropped_ids: Mutex<Vec<String>>,
    /// Cancels received, in order.
    pub cancels: Mutex<Vec<CancelRecord>>,
    /// Configurations received (handshake delivery and explicit ones).
    pub configs: Mutex<Vec<Configure>>,
    /// Proxies that connected.
    pub connects: AtomicUsize,
}

impl AgentStats {
    /// Handlers started.
    #[must_use]
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Acquire)
    }

    /// Handlers finished.
    #[must_use]
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::Acquire)
    }

    /// Handler futures dropped unfinished.
    #[must_use]
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::Acquire)
    }

    /// The cancels received so far.
    #[must_use]
    pub fn cancels(&self) -> Vec<CancelRecord> {
        self.cancels.lock().unwrap().clone()
    }
}

/// Counts one handler's life; counts a drop when it is dropped before [`Running::finish`].
struct Running<'a> {
    stats: &'a AgentStats,
    id: String,
    finished: bool,
}

impl<'a> Running<'a> {
    fn start(stats: &'a AgentStats, id: &str) -> Self {
        stats.started.fetch_add(1, Ordering::AcqRel);
        let now = stats.running.fetch_add(1, Ordering::AcqRel) + 1;
        stats.max_running.fetch_max(now, Ordering::AcqRel);
        Running {
            stats,
            id: id.to_owned(),
            finished: false,
        }
    }

    fn finish(mut self, response: AgentResponse) -> AgentResponse {
        self.finished = true;
        self.stats.finished.fetch_add(1, Ordering::AcqRel);
        response
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.stats.running.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            self.stats
                .dropped_ids
                .lock()
                .unwrap()
                .push(std::mem::take(&mut self.id));
            self.stats.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The suite's agent.
///
/// Request headers are answered by URI:
/// * `/slow…` — never answers (sleeps a minute; for cancel, timeout and crash tests);
/// * `/block`, `/redirect`, `/challenge` — that decision;
/// * `/delay/<ms>` — like anything else, but after `<ms>` milliseconds;
/// * anything else — Allow after [`TestAgent::delay`], with `x-agent-saw: <correlation id>`
///   set on the upstream request and the method, URI and headers echoed in
///   `routing_metadata`.
///
/// Body chunks, WebSocket frames and guardrail inspections echo their bytes (hex) and
/// indexes; see each method.
#[derive(Debug)]
pub struct TestAgent<R> {
    runtime: R,
    /// What happened.
    pub stats: std::sync::Arc<AgentStats>,
    /// Time an ordinary request-headers handler takes.
    pub delay: Duration,
    /// Refuse every configuration (answer Block).
    pub reject_config: bool,
    /// Bytes of padding (`audit.reason_codes`) in every answer to request headers.
    pub padding: usize,
}

impl<R: Runtime> TestAgent<R> {
    /// An agent answering at once.
    #[must_use]
    pub fn new(runtime: R) -> Self {
        TestAgent {
            runtime,
            stats: std::sync::Arc::default(),
            delay: Duration::ZERO,
            reject_config: false,
            padding: 0,
        }
    }

    /// With ordinary handlers taking `delay`.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    async fn sleep(&self, duration: Duration) {
        self.runtime.sleep_until(Instant::now() + duration).await;
    }
}

fn metadata(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

impl<R: Runtime> AgentHandler for TestAgent<R> {
    fn on_connect(&self, _request: &HandshakeRequest) {
        self.stats.connects.fetch_add(1, Ordering::AcqRel);
    }

    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        let id = event.metadata.correlation_id.clone();
        let running = Running::start(&self.stats, &id);
        let uri = event.uri.as_str();
        let response = if uri.starts_with("/slow") {
            self.sleep(Duration::from_secs(60)).await;
            AgentResponse::allow()
        } else if uri == "/block" {
            AgentResponse::with_decision(Decision::Block {
                status: 403,
                body: Some("blocked by test agent".into()),
                headers: Some(BTreeMap::from([("x-blocked".into(), "yes".into())])),
            })
        } else if uri == "/redirect" {
            AgentResponse::with_decision(Decision::Redirect {
                url: "https://login.example.invalid/?next=%2F".into(),
                status: 302,
            })
        } else if uri == "/challenge" {
            AgentResponse::with_decision(Decision::Challenge {
                challenge_type: "basic".into(),
                params: BTreeMap::from([("realm".into(), "agentwire".into())]),
            })
        } else {
            let delay = uri
                .strip_prefix("/delay/")
                .and_then(|ms| ms.parse().ok())
                .map_or(self.delay, Duration::from_millis);
            if !delay.is_zero() {
                self.sleep(delay).await;
            }
            let headers: Vec<String> = event
                .headers
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let mut response = AgentResponse::allow();
            response.request_headers = vec![
                HeaderOp::Set {
                    name: "x-agent-saw".into(),
                    value: id.clone(),
                },
                HeaderOp::Remove {
                    name: "x-internal".into(),
                },
            ];
            response.response_headers = vec![HeaderOp::Add {
                name: "x-agent".into(),
                value: "test".into(),
            }];
            response.routing_metadata = metadata(&[
                ("method", event.method.clone()),
                ("uri", event.uri.clone()),
                ("headers", headers.join("&")),
                ("client_ip", event.metadata.client_ip.clone()),
            ]);
            if self.padding > 0 {
                response.audit.reason_codes = vec!["p".repeat(self.padding)];
            }
            response
        };
        running.finish(response)
    }

    async fn on_request_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        let mut response = AgentResponse::allow();
        response.needs_more = !event.is_last;
        response.request_body_mutation = Some(BodyMutation {
            data: None,
            chunk_index: event.chunk_index,
        });
        response.routing_metadata = metadata(&[
            ("hex", hex(&event.data)),
            ("len", event.data.len().to_string()),
            ("index", event.chunk_index.to_string()),
            ("last", event.is_last.to_string()),
        ]);
        running.finish(response)
    }

    async fn on_response_headers(&self, event: ResponseHeaders) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        let mut response = AgentResponse::allow();
        response.response_headers = vec![
            HeaderOp::Set {
                name: "x-frame-options".into(),
                value: "DENY".into(),
            },
            HeaderOp::Remove {
                name: "server".into(),
            },
        ];
        response.routing_metadata = metadata(&[
            ("status", event.status.to_string()),
            (
                "content-type",
                event.headers.get("content-type").unwrap_or("").to_owned(),
            ),
        ]);
        running.finish(response)
    }

    async fn on_response_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        let mut response = AgentResponse::allow();
        // "" drops the chunk (spec §6.5).
        response.response_body_mutation = Some(BodyMutation {
            data: Some(String::new()),
            chunk_index: event.chunk_index,
        });
        response.routing_metadata = metadata(&[
            ("hex", hex(&event.data)),
            ("index", event.chunk_index.to_string()),
        ]);
        running.finish(response)
    }

    async fn on_request_complete(&self, event: RequestComplete) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        let mut response = AgentResponse::allow();
        response.routing_metadata = metadata(&[
            ("status", event.status.to_string()),
            ("duration_ms", event.duration_ms.to_string()),
            ("error", event.error.clone().unwrap_or_default()),
        ]);
        running.finish(response)
    }

    async fn on_websocket_frame(&self, event: WebSocketFrame) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        let mut response = AgentResponse::allow();
        response.websocket_decision = Some(if event.data.as_ref() == b"close" {
            WebSocketDecision::Close {
                code: 1008,
                reason: "policy".into(),
            }
        } else if event.data.first() == Some(&0xff) {
            WebSocketDecision::Drop
        } else {
            WebSocketDecision::Allow
        });
        response.routing_metadata = metadata(&[
            ("hex", hex(&event.data)),
            ("opcode", event.opcode.clone()),
            ("frame_index", event.frame_index.to_string()),
        ]);
        running.finish(response)
    }

    async fn on_guardrail_inspect(&self, event: GuardrailInspect) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        let response = if event
            .content
            .to_lowercase()
            .contains("ignore previous instructions")
        {
            let mut r = AgentResponse::block(400);
            r.audit.tags = vec!["prompt_injection".into()];
            r.audit.confidence = Some(0.5);
            r
        } else {
            AgentResponse::allow()
        };
        running.finish(response)
    }

    async fn on_configure(&self, event: Configure) -> AgentResponse {
        let running = Running::start(&self.stats, &event.correlation_id);
        self.stats.configs.lock().unwrap().push(event);
        let response = if self.reject_config {
            AgentResponse::block(500)
        } else {
            AgentResponse::allow()
        };
        running.finish(response)
    }

    fn on_cancel(&self, correlation_id: &str, reason: CancelReason) {
        let handler_dropped_first = self
            .stats
            .dropped_ids
            .lock()
            .unwrap()
            .iter()
            .any(|id| id == correlation_id);
        self.stats.cancels.lock().unwrap().push(CancelRecord {
            correlation_id: correlation_id.to_owned(),
            reason,
            handler_dropped_first,
        });
    }
}
