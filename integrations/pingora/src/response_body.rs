//! Response body chunks to agents.
//!
//! Pingora 0.9 calls `response_body_filter` synchronously, so it cannot wait for an agent.
//! Each response whose route has agents inspecting response bodies gets a [`ResponseTap`]: a
//! bounded queue ([`QUEUE_CHUNKS`] chunks) the filter feeds with `try_send`, and a forwarder
//! task that sends the chunks through the pool to those agents in order. The forwarder reports
//! a Block (or a fail-closed failure) through a shared status the filter checks at every
//! chunk, so the response is aborted at the next chunk boundary; bytes already sent to the
//! client cannot be recalled.

use crate::{AgentGateway, BodyProgress, CallMode};
use agentwire_core::message::BodyChunk;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;

/// Response body chunks queued per response for its forwarder at most. A chunk is at most
/// what Pingora read from the upstream at once, so this also bounds the bytes a response
/// holds in the queue.
pub const QUEUE_CHUNKS: usize = 16;

/// Slack on top of the agents' deadlines before the gateway gives up waiting for a forwarder
/// (scheduling, the pool's own bookkeeping).
const DRAIN_SLACK: Duration = Duration::from_millis(200);

/// The longest a finished response keeps its forwarder (and RequestComplete) waiting, whatever
/// the agents' deadlines add up to: with the pool's default 30 s per event, 17 chunks of
/// sequential agents would otherwise hold a background task for minutes per request.
const MAX_DRAIN: Duration = Duration::from_secs(30);

/// One queued chunk: the response body bytes and whether the queue ends with it.
#[derive(Debug)]
struct Chunk {
    data: Bytes,
    is_last: bool,
}

/// Why the filter must end the response (`None`: carry on).
fn stop_status(stop: &AtomicU16) -> Option<u16> {
    match stop.load(Ordering::Acquire) {
        0 => None,
        status => Some(status),
    }
}

/// The per-response state of response body inspection (lives in the request's context).
#[derive(Debug)]
pub(crate) struct ResponseTap {
    /// `None` once the filter stopped feeding the forwarder (end of body, byte limit reached,
    /// or a fail-open agent fell behind).
    tx: Option<mpsc::Sender<Chunk>>,
    /// Set by the forwarder (before it stops reading) to the status of a Block or of a
    /// fail-closed failure; 0 while the response may go on.
    stop: Arc<AtomicU16>,
    task: JoinHandle<()>,
    /// Body bytes queued so far.
    queued: u64,
    /// The most body bytes any inspecting agent will see.
    limit: u64,
    /// The status to abort with if the queue cannot take a chunk: `Some` as soon as one
    /// inspecting agent is fail-closed.
    overflow_status: Option<u16>,
    /// How long the forwarder may need for the chunks it still holds.
    drain: Duration,
}

impl ResponseTap {
    /// Starts the forwarder for the response of request `correlation_id` on the current tokio
    /// runtime; `targets` are the route's agent indices that inspect the response body.
    /// `None` (logged) if there is no runtime to run it on.
    pub(crate) fn start(
        gateway: &AgentGateway,
        route: usize,
        targets: Vec<usize>,
        correlation_id: String,
        total_size: Option<u64>,
    ) -> Option<ResponseTap> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: response body not inspected");
            return None;
        };
        let config = &gateway.config.routes[route];
        let mut limit = 0;
        let mut overflow_status = None;
        let mut per_chunk = Duration::ZERO;
        for &i in &targets {
            let id = config.agents[i].id.as_str();
            limit = limit.max(config.agents[i].max_body_bytes);
            if overflow_status.is_none() {
                overflow_status = gateway.policy_reply(id).map(|reply| reply.status);
            }
            let timeout = gateway.pool.request_timeout(id).unwrap_or_default();
            per_chunk = match config.mode {
                CallMode::Sequential => per_chunk.saturating_add(timeout),
                CallMode::Parallel => per_chunk.max(timeout),
            };
        }
        // Every chunk the forwarder may still hold (the queue and the one in hand) can take
        // one deadline of each agent; past that the forwarder is stuck and is aborted.
        let drain = per_chunk
            .saturating_mul(QUEUE_CHUNKS as u32 + 1)
            .saturating_add(DRAIN_SLACK)
            .min(MAX_DRAIN);
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let stop = Arc::new(AtomicU16::new(0));
        let forwarder = Forwarder {
            gateway: gateway.clone(),
            route,
            targets,
            correlation_id,
            total_size,
        };
        let task = runtime.spawn(forwarder.run(rx, Arc::clone(&stop)));
        Some(ResponseTap {
            tx: Some(tx),
            stop,
            task,
            queued: 0,
            limit,
            overflow_status,
            drain,
        })
    }

    /// Hands one response body chunk (`end`: the last one) to the forwarder without waiting.
    /// `Err(status)`: the response must be aborted (an agent blocked, or a fail-closed agent
    /// cannot keep up or failed).
    pub(crate) fn on_chunk(&mut self, data: &Bytes, end: bool) -> Result<(), u16> {
        if let Some(status) = stop_status(&self.stop) {
            self.tx = None;
            return Err(status);
        }
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if data.is_empty() && !end {
            return Ok(());
        }
        let room = self.limit.saturating_sub(self.queued);
        let cut = data.len() as u64 > room;
        // `room` is below `data.len()` when cut, so it fits in usize.
        let take = if cut { room as usize } else { data.len() };
        let chunk = Chunk {
            data: data.slice(..take),
            is_last: end || cut,
        };
        match tx.try_send(chunk) {
            Ok(()) => {
                self.queued += take as u64;
                if end || cut {
                    self.tx = None;
                }
                Ok(())
            }
            Err(error) => {
                self.tx = None;
                // The forwarder records its verdict before it stops reading, so a closed
                // queue may just mean it blocked.
                if let Some(status) = stop_status(&self.stop) {
                    return Err(status);
                }
                let why = match error {
                    TrySendError::Full(_) => "agents fell behind the response body",
                    TrySendError::Closed(_) => "response body forwarder ended",
                };
                match self.overflow_status {
                    Some(status) => {
                        tracing::warn!(why, status, "response aborted (fail-closed agent)");
                        self.task.abort();
                        Err(status)
                    }
                    None => {
                        // Fail-open: the agents still judge what is queued (a Block still
                        // aborts the response), but get nothing more of this body.
                        tracing::warn!(why, "response body inspection stopped (fail-open)");
                        Ok(())
                    }
                }
            }
        }
    }

    /// After the response: lets the forwarder finish the chunks it holds (bounded by the
    /// agents' deadlines; aborted past that, which cancels its call). With `failed` (the
    /// response did not complete) it is aborted at once: nobody needs its answers any more.
    pub(crate) async fn finish(mut self, failed: bool) {
        self.tx = None;
        if failed {
            self.task.abort();
            return;
        }
        if tokio::time::timeout(self.drain, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                drain_ms = self.drain.as_millis() as u64,
                "response body forwarder did not finish in time; aborted"
            );
            self.task.abort();
        }
    }

    /// Stops the forwarder now (no runtime left to wait on).
    pub(crate) fn abort(&self) {
        self.task.abort();
    }
}

/// Sends one response's body chunks to its agents.
struct Forwarder {
    gateway: AgentGateway,
    route: usize,
    targets: Vec<usize>,
    correlation_id: String,
    total_size: Option<u64>,
}

impl Forwarder {
    async fn run(self, mut rx: mpsc::Receiver<Chunk>, stop: Arc<AtomicU16>) {
        let config = Arc::clone(&self.gateway.config);
        let route = &config.routes[self.route];
        let agents = route.agents.as_slice();
        let mut progress = vec![BodyProgress::default(); agents.len()];
        while let Some(chunk) = rx.recv().await {
            // What each agent still reading sees of this chunk.
            let mut sends = Vec::with_capacity(self.targets.len());
            for &i in &self.targets {
                let p = &mut progress[i];
                if p.finished {
                    continue;
                }
                if chunk.data.is_empty() && p.next_index == 0 {
                    // An empty end of body is only worth sending to an agent that saw a chunk.
                    p.finished |= chunk.is_last;
                    continue;
                }
                let room = agents[i].max_body_bytes.saturating_sub(p.sent);
                let cut = chunk.data.len() as u64 > room;
                let take = if cut { room as usize } else { chunk.data.len() };
                sends.push((i, chunk.data.slice(..take), chunk.is_last || cut));
            }
            if !sends.is_empty() {
                let indices: Vec<usize> = sends.iter().map(|s| s.0).collect();
                let asked = self
                    .gateway
                    .ask(route.mode, agents, &indices, |i| {
                        let (data, is_last) = sends
                            .iter()
                            .find(|s| s.0 == i)
                            .map_or((Bytes::new(), true), |s| (s.1.clone(), s.2));
                        let p = progress[i];
                        let event = BodyChunk {
                            correlation_id: self.correlation_id.clone(),
                            bytes_transferred: p.sent + data.len() as u64,
                            data,
                            is_last,
                            total_size: self.total_size,
                            chunk_index: p.next_index,
                        };
                        let pool = self.gateway.pool.clone();
                        let id = agents[i].id.clone();
                        async move { pool.send_response_body_chunk(&id, event).await }
                    })
                    .await;
                for (i, data, is_last) in &sends {
                    let p = &mut progress[*i];
                    p.sent += data.len() as u64;
                    p.next_index = p.next_index.saturating_add(1);
                    p.finished |= *is_last;
                }
                match asked {
                    Ok(answers) => {
                        for (i, response) in answers {
                            // The chunk may already be on its way to the client (the filter
                            // does not wait), so a replacement cannot be applied where it
                            // belongs; headers are long gone.
                            if response.response_body_mutation.is_some()
                                || !response.response_headers.is_empty()
                            {
                                tracing::debug!(
                                    agent = agents[i].id,
                                    "mutation in a response body chunk answer ignored"
                                );
                            }
                        }
                    }
                    Err(reply) => {
                        tracing::info!(
                            correlation_id = self.correlation_id,
                            status = reply.status,
                            "response body stopped by an agent"
                        );
                        // Before `rx` is dropped: the filter reads the status once it sees
                        // the queue closed.
                        stop.store(reply.status.max(1), Ordering::Release);
                        return;
                    }
                }
            }
            if self.targets.iter().all(|&i| progress[i].finished) {
                return;
            }
        }
    }
}
