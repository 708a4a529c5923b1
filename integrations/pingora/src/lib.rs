//! # agentwire-pingora
//!
//! Plugs an agentwire [`AgentPool`] into [Pingora](https://github.com/cloudflare/pingora)'s
//! [`ProxyHttp`] phases, so a Pingora reverse proxy asks Zentinel v2 agents what to do with
//! every request it forwards.
//!
//! | Pingora phase | agent event | what the gateway does with the answers |
//! |---|---|---|
//! | `request_filter` | RequestHeaders | Allow → continue; Block → the agent's status, headers and body; Redirect → status + `Location`; Challenge → 401 + `WWW-Authenticate` when the params carry `www-authenticate`, else 403 |
//! | `upstream_request_filter` | — | applies the agents' request header mutations (`set`/`add`/`remove`, in agent order) |
//! | `request_body_filter` | RequestBodyChunk | streams each chunk to the agents (up to each agent's [`GatewayAgent::max_body_bytes`]); a Block ends the request with its status; `needs_more` holds the body back from the upstream until every agent is final; `request_body_mutation` replaces or drops the chunk |
//! | `response_filter` | ResponseHeaders | applies the response header mutations of both phases; a Block replaces the response; starts the response body forwarder |
//! | `response_body_filter` | ResponseBodyChunk | queues each chunk for the forwarder without waiting (agents with [`GatewayAgent::inspect_response_body`], up to their [`GatewayAgent::max_body_bytes`]); a Block seen by then aborts the response |
//! | `logging` | RequestComplete | sent in the background once the forwarder is done, then the request's pool bindings are dropped |
//!
//! ## Response bodies
//!
//! Pingora 0.9 calls `response_body_filter` synchronously, so the gateway cannot hold a chunk
//! until the agents have judged it. Response body inspection is therefore *streamed*, like
//! Envoy ext_proc's streamed mode: when an agent of the route has
//! [`inspect_response_body`](GatewayAgent::inspect_response_body) on (off by default) and the
//! response headers were allowed, `response_filter` starts a forwarder task per response with
//! a queue of [`QUEUE_CHUNKS`] chunks. The filter hands every chunk to the queue (`try_send`, a
//! cheap `Bytes` clone) and passes it on to the client at once; the forwarder sends the chunks
//! as ResponseBodyChunk events (same correlation id as the request, `chunk_index` from 0,
//! `bytes_transferred`, `total_size` from the upstream's `content-length`, `is_last` on the
//! last one or where the agent's byte limit cuts the body) to each such agent in order, with
//! the route's call mode and each agent's timeout and failure policy.
//!
//! * An agent answering a chunk with anything but Allow (or a fail-closed agent failing on
//!   one) aborts the response at the next chunk boundary: the filter returns an error, Pingora
//!   closes the client connection, and the client sees the body cut short (a missing final
//!   chunk, or fewer bytes than `content-length`). **Bytes already sent cannot be recalled**:
//!   a pattern in the last chunk, or one judged after the body is through, is reported too
//!   late to stop anything.
//! * If the queue is full (the agents are slower than the body) or the forwarder is gone: with
//!   a fail-closed agent among them the response is aborted; with fail-open agents only,
//!   inspection of that response stops (logged), the agents still judge what is queued.
//! * `response_body_mutation` (and header mutations) in answers to response body chunks are
//!   ignored (logged at debug): the chunk they refer to has already been passed on.
//! * `logging` waits (in the background, so the client is not held) for the forwarder to
//!   finish the queued chunks before sending RequestComplete, for at most one deadline of the
//!   agents per chunk it can hold; past that it is aborted (cancelling its call). A response
//!   that failed aborts it at once.
//!
//! Agents of one [`Route`] are asked [in order](CallMode::Sequential) (the first non-Allow
//! answer wins and the later agents are not asked) or [in parallel](CallMode::Parallel) (the
//! first non-Allow answer wins and the calls still in flight are dropped at once, which cancels
//! them in agentwire). An agent that cannot be asked or does not answer within its
//! `request_timeout` is handled by its [`FailurePolicy`] (set in
//! [`AgentOptions`](agentwire_pool::AgentOptions) when it is added to the pool): fail-open
//! skips it, fail-closed answers the client with its status.
//!
//! Agent header mutations never touch the headers in [`HeaderPolicy`] (hop-by-hop and
//! proxy-internal ones: `connection`, `keep-alive`, `proxy-*`, `te`, `trailer`,
//! `transfer-encoding`, `upgrade`, `host`, `content-length`, …); the reference applies them
//! unchecked. Names or values that are not valid HTTP are skipped too.
//!
//! ## Example
//!
//! ```no_run
//! use agentwire_pingora::{AgentGateway, CallMode, GatewayAgent, GatewayConfig, Route};
//! use agentwire_pool::{AgentOptions, AgentPool, FailurePolicy, PoolConfig};
//! use std::time::Duration;
//!
//! // The pool lives on its own small tokio runtime; Pingora runs its own.
//! let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
//! let pool = rt.block_on(async {
//!     let pool = AgentPool::new(agentwire_tokio::runtime(), PoolConfig::default());
//!     let options = AgentOptions {
//!         request_timeout: Some(Duration::from_millis(50)),
//!         failure_policy: FailurePolicy::FailOpen,
//!         ..AgentOptions::default()
//!     };
//!     pool.add_agent("waf", "/run/waf.sock", options).await.map(|()| pool)
//! })?;
//!
//! let config = GatewayConfig::new("127.0.0.1:8000".parse()?)
//!     .route(Route::new("/", CallMode::Parallel).agent(GatewayAgent::new("waf")));
//! let gateway = AgentGateway::new(pool, config);
//!
//! let mut server = pingora::server::Server::new(None)?;
//! server.bootstrap();
//! let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, gateway);
//! proxy.add_tcp("127.0.0.1:8080");
//! server.add_service(proxy);
//! server.run_forever();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`gateway::run`] does all of this (it is what `agentwire gateway` runs).

pub mod gateway;
mod headers;
mod response_body;

use agentwire_core::message::{
    AgentResponse, BodyChunk, Decision, HeaderOp, RequestComplete, RequestHeaders, RequestMetadata,
    ResponseHeaders,
};
use agentwire_pool::{AgentPool, FailurePolicy, PoolError, PoolOutcome};
use agentwire_tokio::TokioRuntime;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use headers::HeaderPolicy;
pub use response_body::QUEUE_CHUNKS;
use response_body::ResponseTap;

/// Default per-agent body inspection limit (1 MiB), for request and response bodies each.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// How the agents of one route are asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallMode {
    /// One after the other in route order; the first non-Allow answer stops the chain.
    #[default]
    Sequential,
    /// All at once; the first non-Allow answer wins and the other calls are dropped
    /// (cancelled).
    Parallel,
}

/// One agent of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAgent {
    /// The agent's id in the pool.
    pub id: String,
    /// Send request body chunks to this agent.
    pub inspect_request_body: bool,
    /// Body bytes this agent sees at most, of the request body and of the response body
    /// each; the chunk that crosses the limit is cut and sent as the last one. An agent still
    /// asking for more request body (`needs_more`) at its limit is handled by its failure
    /// policy.
    pub max_body_bytes: u64,
    /// Send response headers to this agent.
    pub inspect_response_headers: bool,
    /// Send response body chunks to this agent (streamed: see the crate doc, *Response
    /// bodies*). Off by default: it costs a task and an agent round trip per chunk on every
    /// response, and an agent can only cut a response short, not stop bytes already sent.
    pub inspect_response_body: bool,
}

impl GatewayAgent {
    /// An agent that sees request headers, up to [`DEFAULT_MAX_BODY_BYTES`] of the request
    /// body, and response headers (not the response body).
    #[must_use]
    pub fn new(id: impl Into<String>) -> Self {
        GatewayAgent {
            id: id.into(),
            inspect_request_body: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            inspect_response_headers: true,
            inspect_response_body: false,
        }
    }

    /// Sets [`inspect_response_body`](Self::inspect_response_body).
    #[must_use]
    pub fn inspect_response_body(mut self, inspect: bool) -> Self {
        self.inspect_response_body = inspect;
        self
    }

    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    #[must_use]
    pub fn max_body_bytes(mut self, limit: u64) -> Self {
        self.max_body_bytes = limit;
        self
    }
}

/// Agents for requests whose path starts with a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Path prefix (the longest matching prefix wins).
    pub prefix: String,
    /// Sent to the agents as `metadata.route_id`.
    pub id: String,
    /// How the agents are asked.
    pub mode: CallMode,
    /// The agents, in order.
    pub agents: Vec<GatewayAgent>,
}

impl Route {
    /// A route with no agents yet, its id being its prefix.
    #[must_use]
    pub fn new(prefix: impl Into<String>, mode: CallMode) -> Self {
        let prefix = prefix.into();
        Route {
            id: prefix.clone(),
            prefix,
            mode,
            agents: Vec::new(),
        }
    }

    /// Adds an agent at the end.
    #[must_use]
    pub fn agent(mut self, agent: GatewayAgent) -> Self {
        self.agents.push(agent);
        self
    }
}

/// What the gateway forwards where, and to which agents.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The upstream HTTP/1.1 server (plain TCP).
    pub upstream: SocketAddr,
    /// Routes; a request no route matches is forwarded without asking any agent.
    pub routes: Vec<Route>,
    /// Which headers agents may not mutate.
    pub header_policy: HeaderPolicy,
}

impl GatewayConfig {
    /// Forward to `upstream`, no routes yet, the default [`HeaderPolicy`].
    #[must_use]
    pub fn new(upstream: SocketAddr) -> Self {
        GatewayConfig {
            upstream,
            routes: Vec::new(),
            header_policy: HeaderPolicy::default(),
        }
    }

    /// Adds a route.
    #[must_use]
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    fn route_for(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| path.starts_with(r.prefix.as_str()))
            .max_by_key(|(_, r)| r.prefix.len())
            .map(|(i, _)| i)
    }
}

/// The answer the gateway gives the client in place of the upstream's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers (already checked against the [`HeaderPolicy`]).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// The reply a non-Allow decision asks for (`None` for Allow).
    #[must_use]
    pub fn from_decision(decision: &Decision, policy: &HeaderPolicy) -> Option<Reply> {
        match decision {
            Decision::Allow => None,
            Decision::Block {
                status,
                body,
                headers,
            } => {
                let mut reply = Reply::status(checked_status(*status, 403));
                for (name, value) in headers.iter().flatten() {
                    if policy.allows(name) {
                        reply.headers.push((name.clone(), value.clone()));
                    }
                }
                reply.body = body.clone().map(Bytes::from).unwrap_or_default();
                Some(reply)
            }
            Decision::Redirect { url, status } => {
                let mut reply = Reply::status(checked_status(*status, 302));
                reply.headers.push(("location".into(), url.clone()));
                Some(reply)
            }
            Decision::Challenge { params, .. } => {
                let param = |key: &str| {
                    params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.clone())
                };
                let mut reply = match param("www-authenticate") {
                    Some(value) => {
                        let mut reply = Reply::status(401);
                        reply.headers.push(("www-authenticate".into(), value));
                        reply
                    }
                    None => Reply::status(403),
                };
                if let Some(content_type) = param("content-type") {
                    reply.headers.push(("content-type".into(), content_type));
                }
                reply.body = param("body").map(Bytes::from).unwrap_or_default();
                Some(reply)
            }
        }
    }
}

/// A status a client can be sent (100..=599), else `fallback`.
fn checked_status(status: u16, fallback: u16) -> u16 {
    if (100..=599).contains(&status) {
        status
    } else {
        fallback
    }
}

/// Per-request state of the gateway (Pingora's `CTX`).
#[derive(Debug)]
pub struct RequestState {
    correlation_id: String,
    started: Instant,
    route: Option<usize>,
    /// Route agent indices that answered the request headers (they get the later events).
    active: Vec<usize>,
    /// Body progress per route agent.
    body: Vec<BodyProgress>,
    request_ops: Vec<HeaderOp>,
    response_ops: Vec<HeaderOp>,
    /// Request body held back while an agent needs more.
    held: BytesMut,
    reply: Option<Reply>,
    request_body_bytes: u64,
    response_status: u16,
    response_body_bytes: u64,
    /// Response body inspection, when an agent of the route wants the body.
    tap: Option<ResponseTap>,
}

impl RequestState {
    /// The correlation id the agents see for this request.
    #[must_use]
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct BodyProgress {
    sent: u64,
    next_index: u32,
    finished: bool,
    needs_more: bool,
}

/// The outcome of asking one agent.
// `Answer` is the common case: boxing it would cost an allocation per answer.
#[allow(clippy::large_enum_variant)]
enum Asked {
    /// The agent answered (Allow; non-Allow answers become `Stop`).
    Answer(AgentResponse),
    /// Fail-open skip.
    Skipped,
    /// The request ends with this reply.
    Stop(Reply),
}

/// A Pingora [`ProxyHttp`] that asks agentwire agents about every request.
#[derive(Clone, Debug)]
pub struct AgentGateway {
    pool: AgentPool<TokioRuntime>,
    config: Arc<GatewayConfig>,
}

impl AgentGateway {
    /// A gateway asking the agents of `pool` as `config` says.
    #[must_use]
    pub fn new(pool: AgentPool<TokioRuntime>, config: GatewayConfig) -> Self {
        AgentGateway {
            pool,
            config: Arc::new(config),
        }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &AgentPool<TokioRuntime> {
        &self.pool
    }

    fn agents(&self, ctx: &RequestState) -> &[GatewayAgent] {
        ctx.route
            .map_or(&[][..], |r| self.config.routes[r].agents.as_slice())
    }

    /// Forgets the request's affinity on the agents of its route only: `AgentPool::clear_affinity`
    /// would visit every agent of the pool on every request.
    fn forget_affinity(&self, ctx: &RequestState) {
        for agent in self.agents(ctx) {
            self.pool.clear_affinity_of(&agent.id, &ctx.correlation_id);
        }
    }

    fn mode(&self, ctx: &RequestState) -> CallMode {
        ctx.route
            .map_or(CallMode::Sequential, |r| self.config.routes[r].mode)
    }

    /// Turns a pool result into what the gateway does next.
    fn judge(&self, agent_id: &str, result: Result<PoolOutcome, PoolError>) -> Asked {
        match result {
            Ok(PoolOutcome::Answered(response)) => {
                match Reply::from_decision(&response.decision, &self.config.header_policy) {
                    Some(reply) => Asked::Stop(reply),
                    None => Asked::Answer(response),
                }
            }
            Ok(PoolOutcome::Skipped { reason }) => {
                tracing::debug!(agent = agent_id, %reason, "agent skipped (fail-open)");
                Asked::Skipped
            }
            Err(error) => {
                // An error despite fail-open (e.g. the agent is not registered) refuses too.
                let reply = self
                    .policy_reply(agent_id)
                    .unwrap_or_else(|| Reply::status(503));
                tracing::warn!(agent = agent_id, %error, status = reply.status, "agent failed");
                Asked::Stop(reply)
            }
        }
    }

    /// Asks the agents at `indices` (route indices) with `call`, in order or in parallel.
    /// Returns the answers in route order, or the reply that ends the request.
    async fn ask<F, Fut>(
        &self,
        mode: CallMode,
        agents: &[GatewayAgent],
        indices: &[usize],
        call: F,
    ) -> Result<Vec<(usize, AgentResponse)>, Reply>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<PoolOutcome, PoolError>>,
    {
        let mut answers = Vec::with_capacity(indices.len());
        match mode {
            CallMode::Sequential => {
                for &i in indices {
                    match self.judge(&agents[i].id, call(i).await) {
                        Asked::Answer(r) => answers.push((i, r)),
                        Asked::Skipped => {}
                        Asked::Stop(reply) => return Err(reply),
                    }
                }
            }
            CallMode::Parallel => {
                let mut calls: FuturesUnordered<_> = indices
                    .iter()
                    .map(|&i| {
                        let fut = call(i);
                        async move { (i, fut.await) }
                    })
                    .collect();
                while let Some((i, result)) = calls.next().await {
                    match self.judge(&agents[i].id, result) {
                        Asked::Answer(r) => answers.push((i, r)),
                        Asked::Skipped => {}
                        // Returning drops `calls`: the other agents' calls are cancelled.
                        Asked::Stop(reply) => return Err(reply),
                    }
                }
                answers.sort_by_key(|(i, _)| *i);
            }
        }
        Ok(answers)
    }

    /// Sends one request body chunk (or the end of the body) to the agents still reading it.
    /// Returns the bytes to forward upstream, or the reply that ends the request.
    async fn inspect_chunk(
        &self,
        ctx: &mut RequestState,
        data: Bytes,
        end: bool,
    ) -> Result<Bytes, Reply> {
        if data.is_empty() && !end {
            // Pingora may hand over nothing mid-body (chunk parsing); nothing to ask about.
            return Ok(data);
        }
        let agents = self.agents(ctx);
        let mode = self.mode(ctx);
        // Which agents get this chunk, and what each of them sees.
        let mut targets = Vec::new();
        for &i in &ctx.active {
            let agent = &agents[i];
            let progress = ctx.body[i];
            if !agent.inspect_request_body || progress.finished {
                continue;
            }
            // An empty end-of-body is only worth sending to an agent that saw a chunk.
            if data.is_empty() && progress.next_index == 0 {
                continue;
            }
            let room = agent.max_body_bytes.saturating_sub(progress.sent);
            let cut = (data.len() as u64) > room;
            let take = if cut { room as usize } else { data.len() };
            targets.push((i, data.slice(..take), end || cut));
        }
        if targets.is_empty() {
            return Ok(data);
        }
        let cid = ctx.correlation_id.clone();
        let body = ctx.body.clone();
        let by_index = |i: usize| targets.iter().find(|t| t.0 == i).cloned();
        let indices: Vec<usize> = targets.iter().map(|t| t.0).collect();
        let answers = self
            .ask(mode, agents, &indices, |i| {
                let (_, chunk, is_last) = by_index(i).unwrap_or((i, Bytes::new(), true));
                let progress = body[i];
                let event = BodyChunk {
                    correlation_id: cid.clone(),
                    bytes_transferred: progress.sent + chunk.len() as u64,
                    data: chunk,
                    is_last,
                    total_size: None,
                    chunk_index: progress.next_index,
                };
                let pool = self.pool.clone();
                let id = agents[i].id.clone();
                async move { pool.send_request_body_chunk(&id, event).await }
            })
            .await?;
        // Progress of everyone asked (skipped agents included).
        for (i, chunk, is_last) in &targets {
            let p = &mut ctx.body[*i];
            p.sent += chunk.len() as u64;
            p.next_index = p.next_index.saturating_add(1);
            p.finished |= *is_last;
            p.needs_more = false;
        }
        let mut out = data;
        for (i, response) in answers {
            let p = &mut ctx.body[i];
            if response.needs_more {
                if p.finished {
                    // Still not final after the last byte it will see: its policy decides.
                    tracing::warn!(agent = agents[i].id, "agent needs more body than allowed");
                    if let Some(reply) = self.policy_reply(&agents[i].id) {
                        return Err(reply);
                    }
                } else {
                    p.needs_more = true;
                }
            }
            if let Some(mutation) = &response.request_body_mutation
                && mutation.chunk_index == p.next_index.saturating_sub(1)
                && let Some(replacement) = &mutation.data
            {
                out = decode_mutation(replacement).unwrap_or(out);
            }
        }
        Ok(out)
    }

    /// The reply of a fail-closed agent that cannot be followed (`None` when fail-open).
    fn policy_reply(&self, agent_id: &str) -> Option<Reply> {
        match self.pool.failure_policy(agent_id) {
            Some(FailurePolicy::FailOpen) => None,
            Some(FailurePolicy::FailClosed { status }) => {
                Some(Reply::status(checked_status(status, 503)))
            }
            None => Some(Reply::status(503)),
        }
    }

    /// Starts response body inspection if an agent of the route wants the body of this
    /// response (headers allowed, a body that can be non-empty).
    fn start_response_tap(
        &self,
        session: &Session,
        response: &ResponseHeader,
        ctx: &mut RequestState,
    ) {
        let Some(route) = ctx.route else { return };
        let status = response.status.as_u16();
        if ctx.tap.is_some()
            || response.status.is_informational()
            || status == 204
            || status == 304
            || session.req_header().method == http::Method::HEAD
        {
            return;
        }
        let total_size = response
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if total_size == Some(0) {
            return;
        }
        let agents = &self.config.routes[route].agents;
        let targets: Vec<usize> = ctx
            .active
            .iter()
            .copied()
            .filter(|&i| agents[i].inspect_response_body && agents[i].max_body_bytes > 0)
            .collect();
        if targets.is_empty() {
            return;
        }
        ctx.tap = ResponseTap::start(self, route, targets, ctx.correlation_id.clone(), total_size);
    }

    async fn send_complete(&self, ctx: &RequestState, error: Option<String>) {
        let agents = self.agents(ctx);
        let calls = ctx.active.iter().map(|&i| {
            let event = RequestComplete {
                correlation_id: ctx.correlation_id.clone(),
                status: ctx.response_status,
                duration_ms: u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                request_body_size: ctx.request_body_bytes,
                response_body_size: ctx.response_body_bytes,
                upstream_attempts: 1,
                error: error.clone(),
            };
            let pool = self.pool.clone();
            let id = agents[i].id.clone();
            async move {
                let _ = pool.send_request_complete(&id, event).await;
            }
        });
        futures_util::future::join_all(calls).await;
        self.forget_affinity(ctx);
    }
}

/// The bytes of a body mutation (`""` drops the chunk); `None` if it is not valid base64.
fn decode_mutation(data: &str) -> Option<Bytes> {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(data) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::warn!(%error, "agent body mutation is not base64; chunk kept");
            None
        }
    }
}

/// A process-unique correlation id.
fn next_correlation_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let boot = *BOOT.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    format!(
        "pg-{boot:x}-{:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn error_with(status: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(status), why)
}

async fn write_reply(session: &mut Session, reply: &Reply) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (name, value) in &reply.headers {
        if let Some((name, value)) = headers::valid(name, value) {
            header.append_header(name, value)?;
        }
    }
    header.insert_header("content-length", reply.body.len().to_string())?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), reply.body.is_empty())
        .await?;
    if !reply.body.is_empty() {
        session
            .write_response_body(Some(reply.body.clone()), true)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for AgentGateway {
    type CTX = RequestState;

    fn new_ctx(&self) -> RequestState {
        RequestState {
            correlation_id: next_correlation_id(),
            started: Instant::now(),
            route: None,
            active: Vec::new(),
            body: Vec::new(),
            request_ops: Vec::new(),
            response_ops: Vec::new(),
            held: BytesMut::new(),
            reply: None,
            request_body_bytes: 0,
            response_status: 0,
            response_body_bytes: 0,
            tap: None,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestState,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.config.upstream,
            false,
            String::new(),
        )))
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestState,
    ) -> pingora::Result<bool> {
        let req = session.req_header();
        ctx.route = self.config.route_for(req.uri.path());
        let agents = self.agents(ctx);
        if agents.is_empty() {
            return Ok(false);
        }
        ctx.body = vec![BodyProgress::default(); agents.len()];
        let event = request_event(session, ctx, &self.config);
        let all: Vec<usize> = (0..agents.len()).collect();
        let asked = self
            .ask(self.mode(ctx), agents, &all, |i| {
                let pool = self.pool.clone();
                let id = agents[i].id.clone();
                let event = event.clone();
                async move { pool.send_request_headers(&id, event).await }
            })
            .await;
        match asked {
            Ok(answers) => {
                for (i, response) in answers {
                    ctx.active.push(i);
                    ctx.request_ops.extend(response.request_headers);
                    ctx.response_ops.extend(response.response_headers);
                }
                Ok(false)
            }
            Err(reply) => {
                ctx.response_status = reply.status;
                write_reply(session, &reply).await?;
                self.forget_affinity(ctx);
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestState,
    ) -> pingora::Result<()> {
        if ctx.active.is_empty() {
            return Ok(());
        }
        let data = body.take().unwrap_or_default();
        ctx.request_body_bytes += data.len() as u64;
        match self.inspect_chunk(ctx, data, end_of_stream).await {
            Ok(out) => {
                let holding = ctx.body.iter().any(|p| p.needs_more);
                if holding && !end_of_stream {
                    ctx.held.extend_from_slice(&out);
                    *body = Some(Bytes::new());
                } else if ctx.held.is_empty() {
                    *body = Some(out);
                } else {
                    ctx.held.extend_from_slice(&out);
                    *body = Some(std::mem::take(&mut ctx.held).freeze());
                }
                Ok(())
            }
            Err(reply) => {
                let status = reply.status;
                ctx.reply = Some(reply);
                Err(error_with(status, "request body blocked by an agent"))
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestState,
    ) -> pingora::Result<()> {
        for op in &ctx.request_ops {
            headers::apply_request(upstream_request, op, &self.config.header_policy);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestState,
    ) -> pingora::Result<()> {
        ctx.response_status = upstream_response.status.as_u16();
        let agents = self.agents(ctx);
        let targets: Vec<usize> = ctx
            .active
            .iter()
            .copied()
            .filter(|&i| agents[i].inspect_response_headers)
            .collect();
        if !targets.is_empty() {
            let mut event = ResponseHeaders {
                correlation_id: ctx.correlation_id.clone(),
                status: ctx.response_status,
                headers: Default::default(),
            };
            headers::copy_into(&upstream_response.headers, &mut event.headers);
            let asked = self
                .ask(self.mode(ctx), agents, &targets, |i| {
                    let pool = self.pool.clone();
                    let id = agents[i].id.clone();
                    let event = event.clone();
                    async move { pool.send_response_headers(&id, event).await }
                })
                .await;
            match asked {
                Ok(answers) => {
                    for (_, response) in answers {
                        ctx.response_ops.extend(response.response_headers);
                    }
                }
                Err(reply) => {
                    let status = reply.status;
                    ctx.reply = Some(reply);
                    return Err(error_with(status, "response blocked by an agent"));
                }
            }
        }
        for op in &ctx.response_ops {
            headers::apply_response(upstream_response, op, &self.config.header_policy);
        }
        self.start_response_tap(session, upstream_response, ctx);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestState,
    ) -> pingora::Result<Option<std::time::Duration>> {
        let empty = Bytes::new();
        let data = body.as_ref().unwrap_or(&empty);
        ctx.response_body_bytes += data.len() as u64;
        if let Some(tap) = &mut ctx.tap
            && let Err(status) = tap.on_chunk(data, end_of_stream)
        {
            // The status line is already out: this error only makes Pingora drop the
            // connection, so the client sees the body cut short.
            return Err(error_with(status, "response body stopped by an agent"));
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestState,
    ) -> FailToProxy {
        if session.response_written().is_some() {
            // The client already has a status line (and maybe part of the body): nothing can
            // be sent in its place, and writing a reply would append it to that body. Closing
            // the connection is what tells the client the response is incomplete.
            let error_code = match e.etype() {
                ErrorType::HTTPStatus(code) => *code,
                _ => 0,
            };
            return FailToProxy {
                error_code,
                can_reuse_downstream: false,
            };
        }
        let reply = match ctx.reply.take() {
            Some(reply) => reply,
            None => {
                let code = match e.etype() {
                    ErrorType::HTTPStatus(code) => *code,
                    _ => match e.esource() {
                        pingora::ErrorSource::Upstream => 502,
                        pingora::ErrorSource::Downstream => match e.etype() {
                            ErrorType::WriteError
                            | ErrorType::ReadError
                            | ErrorType::ConnectionClosed => 0,
                            _ => 400,
                        },
                        _ => 500,
                    },
                };
                Reply::status(code)
            }
        };
        if reply.status > 0 {
            ctx.response_status = reply.status;
            if let Err(error) = write_reply(session, &reply).await {
                tracing::debug!(%error, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: reply.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestState) {
        if ctx.active.is_empty() {
            return;
        }
        // In the background: the client already has its answer, and a keep-alive connection
        // should not wait for the agents to acknowledge the end of the request.
        let gateway = self.clone();
        let error = e.map(|e| e.to_string());
        let mut state = std::mem::replace(ctx, gateway.new_ctx());
        let tap = state.tap.take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                // The agents see the rest of the response body before its completion.
                if let Some(tap) = tap {
                    tap.finish(error.is_some()).await;
                }
                gateway.send_complete(&state, error).await;
            });
        } else {
            if let Some(tap) = tap {
                tap.abort();
            }
            self.forget_affinity(&state);
        }
    }
}

/// The RequestHeaders event for the request in `session`.
fn request_event(session: &Session, ctx: &RequestState, config: &GatewayConfig) -> RequestHeaders {
    let req = session.req_header();
    let (client_ip, client_port) = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or((String::new(), 0), |a| (a.ip().to_string(), a.port()));
    let mut headers = agentwire_core::message::Headers::new();
    headers::copy_into(&req.headers, &mut headers);
    let server_name = req
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(String::from);
    RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: ctx.correlation_id.clone(),
            request_id: ctx.correlation_id.clone(),
            client_ip,
            client_port,
            server_name,
            protocol: format!("{:?}", req.version),
            tls_version: None,
            tls_cipher: None,
            route_id: ctx.route.map(|r| config.routes[r].id.clone()),
            upstream_id: Some(config.upstream.to_string()),
            timestamp: rfc3339_now(),
            traceparent: req
                .headers
                .get("traceparent")
                .and_then(|h| h.to_str().ok())
                .map(String::from),
        },
        method: req.method.as_str().to_string(),
        uri: req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_string(), |pq| pq.as_str().to_string()),
        headers,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for now (UTC).
fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_with_and_without_www_authenticate() {
        let policy = HeaderPolicy::default();
        let mut params = std::collections::BTreeMap::new();
        params.insert("WWW-Authenticate".to_string(), "Basic realm=x".to_string());
        let d = Decision::Challenge {
            challenge_type: "basic".into(),
            params: params.clone(),
        };
        let r = Reply::from_decision(&d, &policy).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.headers,
            vec![("www-authenticate".into(), "Basic realm=x".into())]
        );
        params.clear();
        let d = Decision::Challenge {
            challenge_type: "captcha".into(),
            params,
        };
        assert_eq!(Reply::from_decision(&d, &policy).unwrap().status, 403);
    }

    #[test]
    fn block_headers_are_filtered_and_status_checked() {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("Content-Length".to_string(), "9999".to_string());
        headers.insert("x-reason".to_string(), "waf".to_string());
        let d = Decision::Block {
            status: 42,
            body: Some("no".into()),
            headers: Some(headers),
        };
        let r = Reply::from_decision(&d, &HeaderPolicy::default()).unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(r.headers, vec![("x-reason".into(), "waf".into())]);
        assert_eq!(&r.body[..], b"no");
    }

    #[test]
    fn longest_prefix_route_wins() {
        let c = GatewayConfig::new("127.0.0.1:1".parse().unwrap())
            .route(Route::new("/", CallMode::Sequential))
            .route(Route::new("/api", CallMode::Parallel));
        assert_eq!(c.route_for("/api/x"), Some(1));
        assert_eq!(c.route_for("/web"), Some(0));
        assert_eq!(
            GatewayConfig::new("127.0.0.1:1".parse().unwrap()).route_for("/"),
            None
        );
    }

    #[test]
    fn timestamp_shape() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
