//! `agentwire gateway`: a Pingora reverse proxy that asks agents about every request
//! (`agentwire-pingora`). Kept in its own module of the binary.

use agentwire_cli::CliError;
use agentwire_pingora::CallMode;
use agentwire_pingora::gateway::GatewayOptions;
use agentwire_pool::FailurePolicy;
use clap::Args;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `agentwire gateway`.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// Listen for HTTP on this address
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Forward allowed requests to this HTTP/1.1 server
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// An agent to ask, as NAME=ENDPOINT (a Unix socket path, or unix:PATH); repeat for
    /// several, asked in the order given
    #[arg(long = "agent", value_name = "NAME=ENDPOINT", value_parser = parse_agent)]
    agents: Vec<(String, String)>,
    /// Ask the agents in parallel (the first block wins, the other calls are cancelled)
    #[arg(long)]
    parallel: bool,
    /// Deadline of one agent call
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    timeout: Duration,
    /// Let requests through when an agent is down or late (default: fail closed)
    #[arg(long)]
    fail_open: bool,
    /// Status sent to the client when a fail-closed agent is down or late
    #[arg(long, value_name = "STATUS", default_value_t = 503)]
    fail_status: u16,
    /// Body bytes each agent sees at most (of the request body, and of the response body
    /// with --inspect-response-body)
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_body_bytes: u64,
    /// Also stream response bodies to the agents; a block aborts the response at the next
    /// chunk (bytes already sent cannot be recalled)
    #[arg(long)]
    inspect_response_body: bool,
    /// Pingora worker threads
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn parse_agent(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, endpoint)) if !name.is_empty() && !endpoint.is_empty() => {
            Ok((name.to_string(), endpoint.to_string()))
        }
        _ => Err(format!("expected NAME=ENDPOINT, got {text:?}")),
    }
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub(crate) fn run(args: GatewayArgs) -> Result<ExitCode, CliError> {
    agentwire_cli::init_logging("warn");
    let mut options = GatewayOptions::new(args.listen, args.upstream);
    options.agents = args.agents;
    options.mode = if args.parallel {
        CallMode::Parallel
    } else {
        CallMode::Sequential
    };
    options.timeout = args.timeout;
    options.failure_policy = if args.fail_open {
        FailurePolicy::FailOpen
    } else {
        FailurePolicy::FailClosed {
            status: args.fail_status,
        }
    };
    options.max_body_bytes = args.max_body_bytes;
    options.inspect_response_body = args.inspect_response_body;
    options.threads = args.threads;
    agentwire_pingora::gateway::run(&options, None).map_err(|e| CliError::new(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
