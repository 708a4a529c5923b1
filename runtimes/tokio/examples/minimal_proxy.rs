//! A minimal proxy: asks the agent at a socket path what to do with one request and prints
//! the decision.
//!
//! `cargo run -p agentwire-tokio --example minimal_proxy -- /tmp/agent.sock /admin/users`

use agentwire_tokio::core::message::{Decision, RequestHeaders, RequestMetadata};
use agentwire_tokio::{AgentClient, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: minimal_proxy SOCKET [URI]")?;
    let uri = args.next().unwrap_or_else(|| "/admin/users".into());

    let runtime = agentwire_tokio::runtime();
    let client = AgentClient::connect_unix(&runtime, &path, ClientConfig::default()).await?;
    let info = client.info().ok_or("not connected")?;
    println!(
        "connected to {} ({})",
        client.agent_id(),
        info.encoding.as_str()
    );

    let mut request = RequestHeaders {
        method: "GET".into(),
        uri: uri.clone(),
        ..Default::default()
    };
    request.metadata = RequestMetadata {
        correlation_id: "req-1".into(),
        client_ip: "127.0.0.1".into(),
        ..Default::default()
    };
    request.headers.insert("host", "example.com");
    let answer = client.send_request_headers(request).await?;
    match answer.decision {
        Decision::Allow => println!("GET {uri}: allow"),
        Decision::Block { status, .. } => println!("GET {uri}: block with {status}"),
        Decision::Redirect { url, status } => println!("GET {uri}: redirect {status} to {url}"),
        Decision::Challenge { challenge_type, .. } => {
            println!("GET {uri}: challenge {challenge_type}")
        }
    }
    Ok(())
}
