//! What `agentwire bench` drives: the agent connections behind one small interface, so the
//! load generator does not care how requests reach the agent.

use agentwire_core::message::{AgentResponse, BodyChunk, Encoding, RequestHeaders};
use agentwire_core::sync::{AtomicUsize, Mutex, Ordering};
use agentwire_runtime::Runtime;
use agentwire_runtime::client::{AgentClient, ClientConfig, ClientError};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// A short stable name of why an event failed (`ClientError::kind`, pool error kinds).
pub(crate) type ErrorKind = &'static str;

/// Sends a request's events to one agent.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Sends request headers; the request's later events go where these went.
    fn request_headers(
        &self,
        event: RequestHeaders,
    ) -> impl Future<Output = Result<AgentResponse, ErrorKind>> + Send;

    /// Sends one request body chunk.
    fn request_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> impl Future<Output = Result<AgentResponse, ErrorKind>> + Send;

    /// The request is over: forget where it went.
    fn finish(&self, correlation_id: &str);

    /// The encoding the connections speak, when known.
    fn encoding(&self) -> Option<Encoding>;

    /// Closes every connection, letting requests in flight finish briefly.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// `connections` [`AgentClient`]s used round-robin, a request's body chunks pinned to the
/// connection that carried its headers.
#[derive(Debug)]
pub(crate) struct Clients<R: Runtime> {
    runtime: R,
    clients: Vec<AgentClient>,
    next: AtomicUsize,
    /// Connection of each request with a body in flight (`None`: no bodies are sent).
    affinity: Option<Mutex<HashMap<String, usize>>>,
}

impl<R: Runtime> Clients<R> {
    /// Opens `connections` connections to the agent at `path`.
    pub(crate) async fn connect(
        runtime: R,
        path: &Path,
        connections: usize,
        config: ClientConfig,
        bodies: bool,
    ) -> Result<Self, ClientError> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            clients.push(AgentClient::connect_unix(&runtime, path, config.clone()).await?);
        }
        Ok(Clients {
            runtime,
            clients,
            next: AtomicUsize::new(0),
            affinity: bodies.then(|| Mutex::new(HashMap::new())),
        })
    }

    fn affinity(&self) -> Option<agentwire_core::sync::MutexGuard<'_, HashMap<String, usize>>> {
        self.affinity
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl<R: Runtime> Backend for Clients<R> {
    fn request_headers(
        &self,
        event: RequestHeaders,
    ) -> impl Future<Output = Result<AgentResponse, ErrorKind>> + Send {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        if let Some(mut affinity) = self.affinity() {
            affinity.insert(event.metadata.correlation_id.clone(), index);
        }
        let client = &self.clients[index];
        async move {
            client
                .send_request_headers(event)
                .await
                .map_err(|e| e.kind())
        }
    }

    fn request_body_chunk(
        &self,
        chunk: BodyChunk,
    ) -> impl Future<Output = Result<AgentResponse, ErrorKind>> + Send {
        let index = self
            .affinity()
            .and_then(|a| a.get(&chunk.correlation_id).copied())
            .unwrap_or(0);
        let client = &self.clients[index];
        async move {
            client
                .send_request_body_chunk(chunk)
                .await
                .map_err(|e| e.kind())
        }
    }

    fn finish(&self, correlation_id: &str) {
        if let Some(mut affinity) = self.affinity() {
            affinity.remove(correlation_id);
        }
    }

    fn encoding(&self) -> Option<Encoding> {
        self.clients.first()?.info().map(|i| i.encoding)
    }

    async fn shutdown(&self) {
        for client in &self.clients {
            client.shutdown(&self.runtime, Duration::from_secs(1)).await;
        }
    }
}
