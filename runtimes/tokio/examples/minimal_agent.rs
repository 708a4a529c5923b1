//! A minimal agent: blocks every request under `/admin` with 403, allows the rest.
//!
//! `cargo run -p agentwire-tokio --example minimal_agent -- /tmp/agent.sock` (Ctrl-C stops it,
//! letting in-flight requests finish and removing the socket).

use agentwire_tokio::core::message::{AgentResponse, RequestHeaders};
use agentwire_tokio::{AgentHandler, Shutdown, UdsServer, UdsServerConfig};
use std::sync::Arc;

struct BlockAdmin;

impl AgentHandler for BlockAdmin {
    async fn on_request_headers(&self, event: RequestHeaders) -> AgentResponse {
        if event.uri == "/admin" || event.uri.starts_with("/admin/") {
            AgentResponse::block(403)
        } else {
            AgentResponse::allow()
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/agentwire-minimal.sock".into());
    let mut config = UdsServerConfig::default();
    config.serve.agent.capabilities.agent_id = "block-admin".into();
    let server = UdsServer::bind(agentwire_tokio::runtime(), &path, config)?;
    let shutdown = Shutdown::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.trigger();
    });
    println!("agent listening on {path}");
    server.serve(Arc::new(BlockAdmin), shutdown).await
}
