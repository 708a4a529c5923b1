//! The demo agent: a handful of fixed rules that show what an agent does, used by
//! `agentwire serve`, by the embedded agent of `agentwire bench` and by the tests.
//!
//! | event | rule | answer |
//! |---|---|---|
//! | request headers | path (the URI up to `?`) starts with `/admin` | Block 403 |
//! | request headers | path starts with `/old/` | Redirect 301 to the same URI with `/new/` in place of `/old/` |
//! | request headers | anything else | Allow, request header `x-agentwire-agent: <agent id>` set |
//! | request body chunk | the body contains `DROP TABLE` (ASCII case-insensitive), even split across chunks | Block 403 |
//! | response headers | always | Allow, response header `x-agentwire-inspected: 1` set |
//! | anything else | — | Allow |
//!
//! Paths are matched literally (no percent-decoding or dot-segment normalisation): this is a
//! demonstration, not a WAF.
//!
//! Finding a pattern that straddles two chunks needs per-request state: the last
//! `len("DROP TABLE") - 1` bytes of the previous chunk, keyed by correlation id. The table is
//! bounded ([`DemoAgent::with_max_tracked`]): when it is full the least recently used entry is
//! dropped (a request that stalls in the middle of its body for that long loses only the
//! boundary check between two of its chunks). An entry is removed on the last chunk, on
//! request complete, on cancel and when its body is blocked; a body sent as one last chunk
//! never creates an entry.

use agentwire_core::message::{
    AgentResponse, BodyChunk, Capabilities, Decision, EventType, Features, HeaderOp, Limits,
    RequestComplete, RequestHeaders, ResponseHeaders,
};
use agentwire_core::sync::Mutex;
use agentwire_runtime::server::{AgentHandler, ServeConfig};
use std::collections::{BTreeMap, HashMap};

/// Agent id of the demo agent unless told otherwise.
pub const DEFAULT_AGENT_ID: &str = "agentwire-demo";
/// Request header the demo agent sets on allowed requests (value: its agent id).
pub const AGENT_HEADER: &str = "x-agentwire-agent";
/// Response header the demo agent sets on every response (value: `1`).
pub const INSPECTED_HEADER: &str = "x-agentwire-inspected";
/// Default bound of the per-request body scan table.
pub const DEFAULT_MAX_TRACKED: usize = 10_000;

/// The pattern blocked in request bodies (compared ASCII case-insensitively).
const NEEDLE: &[u8] = b"DROP TABLE";
/// Bytes of a chunk kept to find a pattern that starts in it and ends in the next one.
const TAIL: usize = NEEDLE.len() - 1;

/// The demo agent (see the [module docs](self) for its rules).
#[derive(Debug)]
pub struct DemoAgent {
    agent_id: String,
    scans: Mutex<BodyScans>,
}

impl DemoAgent {
    /// A demo agent with this id and the default scan table bound.
    #[must_use]
    pub fn new(agent_id: impl Into<String>) -> Self {
        DemoAgent::with_max_tracked(agent_id, DEFAULT_MAX_TRACKED)
    }

    /// A demo agent tracking at most `max_tracked` bodies in flight (at least 1).
    #[must_use]
    pub fn with_max_tracked(agent_id: impl Into<String>, max_tracked: usize) -> Self {
        DemoAgent {
            agent_id: agent_id.into(),
            scans: Mutex::new(BodyScans::new(max_tracked.max(1))),
        }
    }

    /// The agent's id.
    #[must_use]
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// What the demo agent announces in the handshake.
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            agent_id: self.agent_id.clone(),
            name: "agentwire demo agent".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            supported_events: [
                EventType::RequestHeaders,
                EventType::RequestBodyChunk,
                EventType::ResponseHeaders,
                EventType::ResponseBodyChunk,
                EventType::RequestComplete,
                EventType::WebSocketFrame,
                EventType::GuardrailInspect,
                EventType::Configure,
            ]
            .iter()
            .map(|e| *e as i32)
            .collect(),
            features: Features {
                streaming_body: true,
                websocket: true,
                guardrails: true,
                config_push: true,
                metrics_export: false,
                concurrent_requests: 1024,
                cancellation: true,
                flow_control: true,
                health_reporting: false,
            },
            limits: Limits {
                max_concurrency: 1024,
                ..Limits::default()
            },
        }
    }

    /// Server settings for the demo agent: its capabilities, and handlers allowed to run as
    /// concurrently as it announces.
    #[must_use]
    pub fn serve_config(&self) -> ServeConfig {
        let mut config = ServeConfig::default();
        config.agent.capabilities = self.capabilities();
        config.max_concurrent_per_connection = 1024;
        config
    }

    /// The decision on request headers.
    #[must_use]
    pub fn decide_request(&self, uri: &str) -> AgentResponse {
        let path = uri.split_once('?').map_or(uri, |(p, _)| p);
        if path.starts_with("/admin") {
            let mut r = AgentResponse::with_decision(Decision::Block {
                status: 403,
                body: Some("blocked by the agentwire demo agent: /admin".into()),
                headers: None,
            });
            r.audit.rule_ids.push("demo-admin".into());
            return r;
        }
        if let Some(rest) = uri.strip_prefix("/old/") {
            let mut r = AgentResponse::with_decision(Decision::Redirect {
                url: format!("/new/{rest}"),
                status: 301,
            });
            r.audit.rule_ids.push("demo-old-path".into());
            return r;
        }
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: AGENT_HEADER.into(),
            value: self.agent_id.clone(),
        });
        r
    }

    /// Scans one request body chunk, remembering its tail for the next one.
    #[must_use]
    pub fn scan_request_chunk(&self, chunk: &BodyChunk) -> AgentResponse {
        let data = &chunk.data[..];
        let mut scans = self.lock();
        let found = match scans.entries.get(chunk.correlation_id.as_str()) {
            Some(entry) => contains_across(entry.tail(), data),
            None => contains_ignore_case(data),
        };
        if found || chunk.is_last {
            scans.remove(&chunk.correlation_id);
        } else {
            scans.advance(&chunk.correlation_id, data);
        }
        drop(scans);
        if found {
            let mut r = AgentResponse::with_decision(Decision::Block {
                status: 403,
                body: Some("blocked by the agentwire demo agent: DROP TABLE in body".into()),
                headers: None,
            });
            r.audit.rule_ids.push("demo-sql-drop-table".into());
            r
        } else {
            AgentResponse::allow()
        }
    }

    /// Forgets the body scan state of a request.
    pub fn forget(&self, correlation_id: &str) {
        self.lock().remove(correlation_id);
    }

    /// Requests whose body scan state is kept right now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }

    fn lock(&self) -> agentwire_core::sync::MutexGuard<'_, BodyScans> {
        // The table stays consistent at every await-free step; a panic elsewhere while
        // holding the lock cannot leave it half-updated.
        self.scans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for DemoAgent {
    fn default() -> Self {
        DemoAgent::new(DEFAULT_AGENT_ID)
    }
}

impl AgentHandler for DemoAgent {
    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        self.decide_request(&event.uri)
    }

    async fn on_request_body_chunk(&self, event: BodyChunk) -> AgentResponse {
        self.scan_request_chunk(&event)
    }

    async fn on_response_headers(&self, event: ResponseHeaders) -> AgentResponse {
        let _ = event;
        let mut r = AgentResponse::allow();
        r.response_headers.push(HeaderOp::Set {
            name: INSPECTED_HEADER.into(),
            value: "1".into(),
        });
        r
    }

    async fn on_request_complete(&self, event: RequestComplete) -> AgentResponse {
        self.forget(&event.correlation_id);
        AgentResponse::allow()
    }

    fn on_cancel(&self, correlation_id: &str, reason: agentwire_core::message::CancelReason) {
        let _ = reason;
        self.forget(correlation_id);
    }
}

/// The last bytes of a body seen so far.
#[derive(Debug)]
struct Entry {
    tail: [u8; TAIL],
    len: usize,
    stamp: u64,
}

impl Entry {
    fn tail(&self) -> &[u8] {
        &self.tail[..self.len]
    }
}

/// Body scan state by correlation id, bounded, least recently used evicted first.
#[derive(Debug)]
struct BodyScans {
    max: usize,
    next_stamp: u64,
    entries: HashMap<String, Entry>,
    /// Use order: stamp → correlation id.
    order: BTreeMap<u64, String>,
}

impl BodyScans {
    fn new(max: usize) -> Self {
        BodyScans {
            max,
            next_stamp: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries.remove(id) {
            self.order.remove(&entry.stamp);
        }
    }

    /// Records `data` as the latest chunk of `id`.
    fn advance(&mut self, id: &str, data: &[u8]) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(entry) = self.entries.get_mut(id) {
            let (tail, len) = next_tail(entry.tail(), data);
            self.order.remove(&entry.stamp);
            *entry = Entry { tail, len, stamp };
            self.order.insert(stamp, id.to_owned());
            return;
        }
        while self.entries.len() >= self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let (tail, len) = next_tail(&[], data);
        self.entries
            .insert(id.to_owned(), Entry { tail, len, stamp });
        self.order.insert(stamp, id.to_owned());
    }
}

/// The last [`TAIL`] bytes of `tail` followed by `data`.
fn next_tail(tail: &[u8], data: &[u8]) -> ([u8; TAIL], usize) {
    let mut out = [0u8; TAIL];
    if data.len() >= TAIL {
        out.copy_from_slice(&data[data.len() - TAIL..]);
        return (out, TAIL);
    }
    let keep = (TAIL - data.len()).min(tail.len());
    out[..keep].copy_from_slice(&tail[tail.len() - keep..]);
    out[keep..keep + data.len()].copy_from_slice(data);
    (out, keep + data.len())
}

/// True when the pattern occurs in `tail` followed by `data` (`tail` is shorter than the
/// pattern, so a match either lies in `data` or starts in `tail`).
fn contains_across(tail: &[u8], data: &[u8]) -> bool {
    if !tail.is_empty() {
        let mut window = [0u8; 2 * TAIL];
        let take = data.len().min(TAIL);
        window[..tail.len()].copy_from_slice(tail);
        window[tail.len()..tail.len() + take].copy_from_slice(&data[..take]);
        if contains_ignore_case(&window[..tail.len() + take]) {
            return true;
        }
    }
    contains_ignore_case(data)
}

/// ASCII case-insensitive search for the pattern.
fn contains_ignore_case(haystack: &[u8]) -> bool {
    let first = NEEDLE[0].to_ascii_lowercase();
    haystack.len() >= NEEDLE.len()
        && (0..=haystack.len() - NEEDLE.len()).any(|i| {
            haystack[i].to_ascii_lowercase() == first
                && haystack[i..i + NEEDLE.len()].eq_ignore_ascii_case(NEEDLE)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(id: &str, data: &[u8], index: u32, is_last: bool) -> BodyChunk {
        BodyChunk {
            correlation_id: id.into(),
            data: Bytes::copy_from_slice(data),
            is_last,
            total_size: None,
            chunk_index: index,
            bytes_transferred: 0,
        }
    }

    fn is_block(r: &AgentResponse, status: u16) -> bool {
        matches!(r.decision, Decision::Block { status: s, .. } if s == status)
    }

    /// Feeds `body` cut at `cuts` and returns whether any chunk was blocked.
    fn blocked(agent: &DemoAgent, id: &str, body: &[u8], cuts: &[usize]) -> bool {
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(body.len());
        let n = bounds.len() - 1;
        (0..n).any(|i| {
            let last = i + 1 == n;
            let part = &body[bounds[i]..bounds[i + 1]];
            is_block(
                &agent.scan_request_chunk(&chunk(id, part, i as u32, last)),
                403,
            )
        })
    }

    #[test]
    fn admin_is_blocked_old_is_redirected_rest_allowed_with_header() {
        let agent = DemoAgent::new("a1");
        assert!(is_block(&agent.decide_request("/admin"), 403));
        assert!(is_block(&agent.decide_request("/admin/users?x=1"), 403));
        let r = agent.decide_request("/old/a/b?q=1");
        assert_eq!(
            r.decision,
            Decision::Redirect {
                url: "/new/a/b?q=1".into(),
                status: 301
            }
        );
        // Only the path counts, and `/old` without a slash is not `/old/...`.
        for uri in ["/index.html?next=/admin", "/old", "/", "/x/admin"] {
            let r = agent.decide_request(uri);
            assert_eq!(r.decision, Decision::Allow, "{uri}");
            assert_eq!(
                r.request_headers,
                vec![HeaderOp::Set {
                    name: AGENT_HEADER.into(),
                    value: "a1".into()
                }]
            );
        }
    }

    #[test]
    fn response_headers_are_marked_inspected() {
        let agent = DemoAgent::default();
        let r = futures_lite::future::block_on(agent.on_response_headers(ResponseHeaders {
            correlation_id: "r".into(),
            status: 200,
            ..Default::default()
        }));
        assert_eq!(r.decision, Decision::Allow);
        assert_eq!(
            r.response_headers,
            vec![HeaderOp::Set {
                name: INSPECTED_HEADER.into(),
                value: "1".into()
            }]
        );
    }

    #[test]
    fn drop_table_is_found_wherever_the_chunks_split_it() {
        let body = b"name=x&q=1; DROP TABLE users;--&more=stuff";
        let start = body
            .windows(NEEDLE.len())
            .position(|w| w == NEEDLE)
            .unwrap();
        let agent = DemoAgent::default();
        // One cut at every position, before, inside and after the pattern.
        for cut in 1..body.len() {
            assert!(blocked(&agent, "one", body, &[cut]), "cut at {cut}");
        }
        // Two cuts inside the pattern, including a one-byte middle chunk.
        for a in start + 1..start + NEEDLE.len() {
            for b in a + 1..start + NEEDLE.len() {
                assert!(blocked(&agent, "two", body, &[a, b]), "cuts at {a},{b}");
            }
        }
        // Every byte its own chunk.
        let cuts: Vec<usize> = (1..body.len()).collect();
        assert!(blocked(&agent, "bytes", body, &cuts));
        assert_eq!(
            agent.tracked(),
            0,
            "state is gone after the block or last chunk"
        );
    }

    #[test]
    fn matching_ignores_ascii_case_and_clean_bodies_pass() {
        let agent = DemoAgent::default();
        assert!(blocked(&agent, "c1", b"x drop table y", &[4]));
        assert!(blocked(&agent, "c2", b"x DrOp TaBlE y", &[7]));
        assert!(blocked(&agent, "c3", b"dRoP tAbLe", &[]));
        for (i, clean) in [
            &b"DROP  TABLE"[..],
            b"DROPTABLE",
            b"DROP TABL",
            b"ROP TABLE",
            b"",
        ]
        .iter()
        .enumerate()
        {
            assert!(!blocked(&agent, &format!("ok{i}"), clean, &[]), "{i}");
        }
        // A pattern spread over two different requests is not a match.
        let a = agent.scan_request_chunk(&chunk("ra", b"... DROP ", 0, false));
        let b = agent.scan_request_chunk(&chunk("rb", b"TABLE x", 0, false));
        assert_eq!((a.decision, b.decision), (Decision::Allow, Decision::Allow));
        assert_eq!(agent.tracked(), 2);
    }

    #[test]
    fn short_chunks_keep_enough_history() {
        // Chunks shorter than the tail: the tail must span several of them.
        let agent = DemoAgent::default();
        let parts: [&[u8]; 5] = [b"xx DR", b"O", b"P T", b"AB", b"LE;"];
        let results: Vec<bool> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                is_block(
                    &agent.scan_request_chunk(&chunk("s", p, i as u32, false)),
                    403,
                )
            })
            .collect();
        assert_eq!(results, vec![false, false, false, false, true]);
    }

    #[test]
    fn state_is_bounded_and_cleared() {
        let agent = DemoAgent::with_max_tracked("a", 3);
        for i in 0..10 {
            let _ = agent.scan_request_chunk(&chunk(&format!("r{i}"), b"abc", 0, false));
            assert!(agent.tracked() <= 3);
        }
        assert_eq!(agent.tracked(), 3);
        // The least recently used went first: r7..r9 remain; touching r7 keeps it.
        let _ = agent.scan_request_chunk(&chunk("r7", b"more", 1, false));
        let _ = agent.scan_request_chunk(&chunk("new", b"x", 0, false));
        let scans = agent.lock();
        let mut ids: Vec<&str> = scans.entries.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec!["new", "r7", "r9"]);
        assert_eq!(scans.order.len(), 3);
        drop(scans);
        // Last chunk, complete and cancel each clear their request.
        let _ = agent.scan_request_chunk(&chunk("new", b"y", 1, true));
        futures_lite::future::block_on(agent.on_request_complete(RequestComplete {
            correlation_id: "r7".into(),
            ..Default::default()
        }));
        agent.on_cancel(
            "r9",
            agentwire_core::message::CancelReason::ClientDisconnect,
        );
        assert_eq!(agent.tracked(), 0);
        assert!(agent.lock().order.is_empty());
        // A body sent as a single last chunk never creates state.
        let _ = agent.scan_request_chunk(&chunk("single", b"hello", 0, true));
        assert_eq!(agent.tracked(), 0);
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        assert_eq!(next_tail(b"", b"abc"), (*b"abc\0\0\0\0\0\0", 3));
        let (t, n) = next_tail(b"123456789", b"ab");
        assert_eq!(&t[..n], b"3456789ab");
        let (t, n) = next_tail(b"12", b"0123456789xyz");
        assert_eq!(&t[..n], b"456789xyz");
    }
}
