//! `agentwire`: benchmark, serve, probe and conformance-check Zentinel agent protocol v2
//! agents. See `agentwire --help`.

use agentwire_cli::bench::{BenchConfig, Limit, Target};
use agentwire_cli::probe::ProbeConfig;
use agentwire_cli::serve::{ServeConfig, TlsFiles};
use agentwire_cli::{CliError, Endpoint, RuntimeKind, TransportKind, WireEncoding};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[cfg(feature = "gateway")]
mod gateway;

/// Tools for the Zentinel agent protocol v2, built on agentwire.
#[derive(Debug, Parser)]
#[command(
    name = "agentwire",
    version,
    about = "Benchmark, run, probe and conformance-check Zentinel agent protocol v2 agents",
    long_about = "Benchmark, run, probe and conformance-check Zentinel agent protocol v2 agents.\n\n\
        agentwire speaks the agent protocol of the Zentinel reverse proxy byte for byte: the \
        proxy asks an external agent what to do with each HTTP request, and the agent answers \
        with a decision (allow, block, redirect, header changes).",
    after_help = "Examples:\n  \
        agentwire bench                                  # 5 s load test against an embedded demo agent\n  \
        agentwire serve --uds /tmp/agent.sock            # run the demo agent\n  \
        agentwire serve --grpc 127.0.0.1:50051           # ... over gRPC (h2c; --tls-cert/--tls-key for TLS)\n  \
        agentwire probe /tmp/agent.sock --uri /admin     # one request, show the decision\n  \
        agentwire conform /tmp/agent.sock                # check an agent against the protocol\n\n\
        Logging goes to stderr and is controlled by RUST_LOG (e.g. RUST_LOG=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load-test the protocol end to end and report throughput and latency
    #[command(
        long_about = "Load-test the protocol end to end and report throughput and latency.\n\n\
        By default a demo agent is started inside the process on a temporary Unix socket and \
        driven through the real proxy-side client stack, so the command works on a fresh \
        machine with nothing else running. Each worker sends a browser-like GET (20 headers, \
        about 1 KB), then optionally a body in chunks, waiting for each decision. Latency is \
        measured per decision (event round trip); the table at the end comes from an HDR \
        histogram. MB are 10^6 bytes of request body."
    )]
    Bench(BenchArgs),
    /// Run the demo agent (see `agentwire serve --help` for its rules)
    #[command(
        long_about = "Run the demo agent on a Unix socket (--uds), over gRPC (--grpc, h2c or \
        TLS) and/or over reverse connections it opens to a proxy (--reverse), in any \
        combination, until Ctrl-C or SIGTERM; on shutdown it stops accepting, lets \
        requests in flight finish (within --drain-timeout) and exits.\n\n\
        Rules of the demo agent:\n  \
        - request path (URI up to '?') starting with /admin   -> block 403\n  \
        - request path starting with /old/...                  -> redirect 301 to /new/...\n  \
        - request body containing DROP TABLE (any ASCII case, also split across chunks)\n                                                          -> block 403\n  \
        - any other request -> allow, adding request header x-agentwire-agent: <agent id>\n  \
        - response headers  -> allow, adding response header x-agentwire-inspected: 1\n  \
        - every other event (guardrail inspections included) -> allow\n\n\
        Paths are matched literally (no decoding or normalisation): it is a demonstration."
    )]
    Serve(ServeArgs),
    /// Run a Pingora reverse proxy that asks agents about every request (agentwire-pingora)
    #[cfg(feature = "gateway")]
    Gateway(gateway::GatewayArgs),
    /// Run a Pingora reverse proxy (not in this build: rebuild with `--features gateway`)
    #[cfg(not(feature = "gateway"))]
    #[command(disable_help_flag = true)]
    Gateway {
        /// Arguments meant for the gateway, ignored by this build.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
    /// Connect to an agent, show the handshake and the decision on one request
    #[command(
        long_about = "Connect to an agent, print the negotiated protocol version, \
        encoding and capabilities, send one request and print the agent's decision as JSON.\n\n\
        Exits with status 1 and a one-line reason when the agent cannot be reached or does \
        not speak the protocol."
    )]
    Probe(ProbeArgs),
    /// Check an agent against the protocol (pass/fail table, non-zero exit on failure)
    #[command(
        long_about = "Check a UDS agent against the protocol: handshake variants (json \
        only, msgpack+json, an unknown encoding name in agentwire's own key), every event type \
        answered with its correlation id (json and msgpack), 100 pipelined requests, cancel, \
        byte-exact ping/pong, an oversize frame (the agent must close the connection and stay \
        alive), an undecodable event (must not be answered Allow: the reference agent fails \
        this, S1) and a guardrail inspection (must be answered: the reference agent fails \
        this, B2).\n\n\
        Exits with status 1 if any check fails."
    )]
    Conform(ConformArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Benchmark an external agent instead: a Unix socket path (`unix:` prefix accepted) or
    /// an http:// or https:// gRPC endpoint
    #[arg(long, value_name = "ENDPOINT", conflicts_with = "transport")]
    target: Option<String>,
    /// Transport of the embedded demo agent
    #[arg(long, value_enum, default_value = "uds")]
    transport: TransportKind,
    /// Async runtime to run on
    #[arg(long, value_enum, default_value = "tokio")]
    runtime: RuntimeKind,
    /// Encoding to offer the agent (the only one offered; gRPC always uses protobuf)
    #[arg(long, value_enum, default_value = "postcard")]
    encoding: WireEncoding,
    /// Agent connections
    #[arg(long, value_name = "N", default_value_t = 4)]
    connections: usize,
    /// Requests in flight at once (spread over the connections)
    #[arg(long, value_name = "C", default_value_t = 64)]
    concurrency: usize,
    /// How long to run, e.g. 500ms, 10s, 1m
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s",
          conflicts_with = "requests")]
    duration: Duration,
    /// Stop after this many requests instead of after --duration
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Request body size in bytes, streamed in chunks after the headers (0: no body)
    #[arg(long, value_name = "N", default_value_t = 0)]
    body_bytes: usize,
    /// Body chunk size in bytes
    #[arg(long, value_name = "N", default_value_t = 16 * 1024)]
    chunk_bytes: usize,
    /// Deadline of each event
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Certificate authorities (PEM) to trust for an https:// --target
    #[arg(long, value_name = "PEM", requires = "target")]
    tls_ca: Option<PathBuf>,
    /// Print one JSON object (on the last line) instead of the table; no progress bar
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Listen on this Unix socket (created owner-only; a stale socket is replaced, anything
    /// else is left alone)
    #[arg(long, value_name = "PATH")]
    uds: Option<PathBuf>,
    /// Listen for gRPC on this address, e.g. 127.0.0.1:50051 (port 0: any free port; the
    /// address is printed on stdout)
    #[arg(long, value_name = "ADDR")]
    grpc: Option<std::net::SocketAddr>,
    /// Serve gRPC over TLS with this certificate chain (PEM)
    #[arg(long, value_name = "PEM", requires_all = ["grpc", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require gRPC clients to present a certificate signed by these authorities (PEM): mTLS
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Dial a proxy's reverse-connection listener and serve over the connections it opens:
    /// a Unix socket path or tcp://IP:PORT (needs --agent-id the proxy allows)
    #[arg(long, value_name = "ENDPOINT")]
    reverse: Option<String>,
    /// The agent's id, announced in the handshake and set as x-agentwire-agent
    #[arg(long, value_name = "ID", default_value = agentwire_cli::demo::DEFAULT_AGENT_ID)]
    agent_id: String,
    /// Token presented when registering over --reverse
    #[arg(long, value_name = "T", requires = "reverse")]
    token: Option<String>,
    /// Reverse connections to keep open
    #[arg(long, value_name = "N", default_value_t = 1, requires = "reverse")]
    reverse_connections: usize,
    /// Permission bits of the Unix socket, octal
    #[arg(long, value_name = "MODE", default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// How long requests in flight may take to finish on shutdown
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// The agent: a Unix socket path (`unix:` prefix accepted), or an http:// or https://
    /// gRPC endpoint
    endpoint: String,
    /// HTTP method of the request
    #[arg(long, default_value = "GET")]
    method: String,
    /// Path and query of the request
    #[arg(long, default_value = "/")]
    uri: String,
    /// A request header, name:value (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE",
          value_parser = agentwire_cli::probe::parse_header)]
    headers: Vec<(String, String)>,
    /// A request body, sent as one chunk after the headers if they are allowed
    #[arg(long)]
    body: Option<String>,
    /// Offer only this encoding (default: all, the agent chooses)
    #[arg(long, value_enum)]
    encoding: Option<WireEncoding>,
    /// Bound on connecting and on each answer
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Certificate authorities (PEM) to trust for an https:// gRPC endpoint
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Print everything as one JSON object
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConformArgs {
    /// The agent: a Unix socket path (`unix:` prefix accepted)
    endpoint: String,
    /// How long to wait for each answer
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    timeout: Duration,
    /// Print the results as one JSON object
    #[arg(long)]
    json: bool,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("expected octal permission bits like 600, got {text:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench(args),
        Command::Serve(args) => serve(args),
        #[cfg(feature = "gateway")]
        Command::Gateway(args) => gateway::run(args),
        #[cfg(not(feature = "gateway"))]
        Command::Gateway { .. } => Err(CliError::new(
            "this agentwire was built without the `gateway` feature; build it with \
             `cargo build --release -p agentwire-cli --features gateway` (Pingora needs cmake)",
        )),
        Command::Probe(args) => probe(args),
        Command::Conform(args) => conform(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentwire: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> Result<ExitCode, CliError> {
    agentwire_cli::init_logging("warn");
    let config = BenchConfig {
        target: match &args.target {
            Some(t) => Target::External(Endpoint::parse(t)),
            None => Target::Embedded(args.transport),
        },
        runtime: args.runtime,
        encoding: args.encoding,
        connections: args.connections,
        concurrency: args.concurrency,
        limit: match args.requests {
            Some(n) => Limit::Requests(n),
            None => Limit::Duration(args.duration),
        },
        body_bytes: args.body_bytes,
        chunk_bytes: args.chunk_bytes,
        request_timeout: args.timeout,
        progress: !args.json,
        tls_ca: args.tls_ca,
    };
    let report = agentwire_cli::bench::run(&config)?;
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> Result<ExitCode, CliError> {
    agentwire_cli::init_logging("info");
    agentwire_cli::serve::run(&ServeConfig {
        uds: args.uds,
        grpc: args.grpc,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            _ => None,
        },
        reverse: args.reverse,
        agent_id: args.agent_id,
        token: args.token,
        reverse_connections: args.reverse_connections,
        socket_mode: args.socket_mode,
        drain_timeout: args.drain_timeout,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn probe(args: ProbeArgs) -> Result<ExitCode, CliError> {
    agentwire_cli::init_logging("warn");
    let result = agentwire_cli::probe::run(&ProbeConfig {
        endpoint: Endpoint::parse(&args.endpoint),
        method: args.method,
        uri: args.uri,
        headers: args.headers,
        body: args.body,
        encoding: args.encoding,
        timeout: args.timeout,
        tls_ca: args.tls_ca,
    })?;
    if args.json {
        println!("{}", result.to_json());
    } else {
        print!("{}", result.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

fn conform(args: ConformArgs) -> Result<ExitCode, CliError> {
    agentwire_cli::init_logging("warn");
    let report = agentwire_cli::conform::run(&Endpoint::parse(&args.endpoint), args.timeout)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| CliError::new(e.to_string()))?
        );
    } else {
        print!("{}", report.to_table());
    }
    Ok(if report.all_passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_modes_are_octal() {
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o660"), Ok(0o660));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("1777").is_err());
    }

    #[test]
    fn bench_duration_and_requests_exclude_each_other() {
        assert!(
            Cli::try_parse_from(["agentwire", "bench", "--duration", "1s", "--requests", "5"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["agentwire", "bench", "--target", "/x", "--transport", "uds"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["agentwire", "bench", "--duration", "250ms"]).unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("bench expected")
        };
        assert_eq!(args.duration, Duration::from_millis(250));
    }
}
