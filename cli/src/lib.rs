//! # agentwire-cli
//!
//! The `agentwire` command line tool, and the library behind it:
//!
//! * `agentwire bench` ([`bench`](mod@bench)): load-tests the protocol end to end (by default against a
//!   demo agent it starts itself on a temporary Unix socket) and reports decisions per
//!   second, body MB/s and a latency histogram;
//! * `agentwire serve` ([`serve`]): runs the [`demo`] agent on a Unix socket;
//! * `agentwire probe` ([`probe`]): connects to an agent, shows what the handshake
//!   established and the decision on one request;
//! * `agentwire conform` ([`conform`]): a conformance kit that checks any UDS agent against
//!   the protocol, including the places where the reference agent is weak.
//!
//! Everything runs on the proxy-side client and agent-side server of `agentwire-runtime`,
//! over the transports of this workspace; nothing here speaks the protocol by hand except the
//! conformance checks that must send what no well-behaved client would.

mod alloc_count;
mod backend;
pub mod bench;
pub mod conform;
pub mod demo;
pub mod probe;
pub mod serve;

pub use alloc_count::{CountingAllocator, allocations};

use agentwire_core::message::Encoding;
use std::fmt;
use std::path::PathBuf;

/// An error that ends a command: printed as one line, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(String);

impl CliError {
    /// An error with this one-line message.
    pub fn new(message: impl Into<String>) -> Self {
        CliError(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

/// Where an agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path (`unix:` prefix accepted).
    Uds(PathBuf),
    /// A gRPC URI (`http://` or `https://`).
    Grpc(String),
}

impl Endpoint {
    /// Reads an endpoint the way the reference pool does: `http://` and `https://` are gRPC,
    /// anything else is a Unix socket path (a leading `unix:` is stripped).
    #[must_use]
    pub fn parse(text: &str) -> Endpoint {
        if text.starts_with("http://") || text.starts_with("https://") {
            Endpoint::Grpc(text.to_owned())
        } else {
            Endpoint::Uds(PathBuf::from(text.strip_prefix("unix:").unwrap_or(text)))
        }
    }

    /// The Unix socket path; an error for a gRPC endpoint.
    pub fn uds_path(&self) -> Result<&std::path::Path, CliError> {
        match self {
            Endpoint::Uds(p) => Ok(p),
            Endpoint::Grpc(url) => Err(CliError::new(format!(
                "{url} is a gRPC endpoint; this needs a Unix socket path"
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Uds(p) => write!(f, "{}", p.display()),
            Endpoint::Grpc(u) => f.write_str(u),
        }
    }
}

/// A transport of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// Unix socket, length-prefixed frames (spec §2).
    Uds,
    /// gRPC over HTTP/2 (spec §10).
    Grpc,
    /// Reverse connections: the agent dials the proxy (spec §9).
    Reverse,
}

impl TransportKind {
    /// Its name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Uds => "uds",
            TransportKind::Grpc => "grpc",
            TransportKind::Reverse => "reverse",
        }
    }
}

/// An async runtime agentwire runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// tokio (multi-threaded, one worker per available core).
    Tokio,
    /// async-std (its global executor).
    AsyncStd,
    /// smol (its global executor; `SMOL_THREADS` threads, default 1).
    Smol,
}

impl RuntimeKind {
    /// Its name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Tokio => "tokio",
            RuntimeKind::AsyncStd => "async-std",
            RuntimeKind::Smol => "smol",
        }
    }
}

/// A payload encoding (spec §3; postcard is agentwire's own, agentwire peers only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WireEncoding {
    /// JSON, as every reference peer speaks.
    Json,
    /// MessagePack, as reference peers built with `binary-uds` speak.
    Msgpack,
    /// postcard: compact and fastest, agentwire peers only.
    Postcard,
}

impl WireEncoding {
    /// Its name on the command line and on the wire.
    #[must_use]
    pub fn name(self) -> &'static str {
        Encoding::from(self).as_str()
    }
}

impl From<WireEncoding> for Encoding {
    fn from(e: WireEncoding) -> Self {
        match e {
            WireEncoding::Json => Encoding::Json,
            WireEncoding::Msgpack => Encoding::Msgpack,
            WireEncoding::Postcard => Encoding::Postcard,
        }
    }
}

/// Sets up `tracing` output on stderr, filtered by `RUST_LOG` (default: `default_level`).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_like_the_reference_pool() {
        assert_eq!(
            Endpoint::parse("/tmp/a.sock"),
            Endpoint::Uds("/tmp/a.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:/tmp/a.sock"),
            Endpoint::Uds("/tmp/a.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:50051"),
            Endpoint::Grpc("http://127.0.0.1:50051".into())
        );
        assert!(matches!(
            Endpoint::parse("https://agent:443"),
            Endpoint::Grpc(_)
        ));
        let err = Endpoint::parse("http://x").uds_path().unwrap_err();
        assert!(err.to_string().contains("gRPC"), "{err}");
    }
}
