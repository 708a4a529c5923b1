//! Sans-IO connection state machines for both ends of a connection.
//!
//! * [`ProxySession`]: the proxy (client) side — handshake, configuration delivery, a bounded
//!   in-flight table keyed by correlation id, deadlines, cancellation, ping, flow control.
//! * [`AgentSession`]: the agent (server) side — answers the handshake, decodes events for a
//!   handler, encodes its decisions, echoes pings, emits flow control and health reports.
//!
//! Both follow the same contract (see the crate docs for the loop): feed bytes with
//! `handle_input`, the end of the stream with `handle_eof`, timer expiry with
//! `handle_timeout`; then drain `poll_transmit` and `poll_event` until both return `None`, and
//! sleep until `poll_timeout`.

mod agent;
mod proxy;

pub use agent::*;
pub use proxy::*;

use crate::encoding::{DecodeError, EncodeError};
use crate::frame::{FrameError, MessageType};
use alloc::string::String;
use core::fmt;

/// Why a connection ended, delivered once in the session's `Closed` event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The local side closed it.
    Local,
    /// The peer closed the stream cleanly.
    PeerClosed,
    /// The byte stream could not be framed.
    Frame(FrameError),
    /// A message could not be decoded and the connection could not go on safely.
    Decode(DecodeError),
    /// The peer sent a frame type that has no meaning at this point.
    UnexpectedMessage(MessageType),
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The agent refused the handshake.
    HandshakeRejected {
        /// The agent's reason.
        error: Option<String>,
    },
    /// The agent chose an encoding the proxy did not offer or cannot speak.
    UnsupportedEncoding(String),
    /// The proxy offered no protocol version this agent speaks.
    UnsupportedVersion,
    /// The agent refused the configuration (any decision other than Allow).
    ConfigurationRejected,
    /// The configuration was not acknowledged in time.
    ConfigurationTimeout,
    /// The peer kept more requests in flight than the hard limit.
    TooManyInFlight {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::Frame(e) => write!(f, "framing error: {e}"),
            CloseReason::Decode(e) => write!(f, "{e}"),
            CloseReason::UnexpectedMessage(k) => write!(f, "unexpected message {k}"),
            CloseReason::HandshakeTimeout => f.write_str("handshake timed out"),
            CloseReason::HandshakeRejected { error } => write!(
                f,
                "handshake rejected: {}",
                error.as_deref().unwrap_or("no reason given")
            ),
            CloseReason::UnsupportedEncoding(e) => write!(f, "unsupported encoding {e:?}"),
            CloseReason::UnsupportedVersion => f.write_str("no common protocol version"),
            CloseReason::ConfigurationRejected => f.write_str("configuration rejected"),
            CloseReason::ConfigurationTimeout => f.write_str("configuration not acknowledged"),
            CloseReason::TooManyInFlight { limit } => {
                write!(f, "more than {limit} requests in flight")
            }
        }
    }
}

impl core::error::Error for CloseReason {}

/// Why a message could not be sent.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake (and configuration) has not completed yet.
    NotReady,
    /// The connection is closed.
    Closed,
    /// The agent asked the proxy to pause.
    Paused,
    /// The in-flight table is full.
    TooManyInFlight {
        /// The current limit.
        limit: usize,
    },
    /// A message for this correlation id is already outstanding (the protocol allows one).
    DuplicateCorrelationId,
    /// The correlation id is empty, which no answer could be routed by.
    EmptyCorrelationId,
    /// Too many bytes are waiting to be written; the peer is not reading.
    Backpressure {
        /// Bytes waiting.
        buffered: usize,
    },
    /// Too many pings are unanswered.
    TooManyPings,
    /// The message could not be encoded.
    Encode(EncodeError),
    /// The correlation id is not in flight (answering a request that was never received,
    /// was already answered, or was cancelled).
    NotInFlight,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::NotReady => f.write_str("connection not ready"),
            SendError::Closed => f.write_str("connection closed"),
            SendError::Paused => f.write_str("agent requested backpressure"),
            SendError::TooManyInFlight { limit } => {
                write!(f, "in-flight limit of {limit} reached")
            }
            SendError::DuplicateCorrelationId => {
                f.write_str("a message with this correlation id is already in flight")
            }
            SendError::EmptyCorrelationId => f.write_str("empty correlation id"),
            SendError::Backpressure { buffered } => {
                write!(f, "{buffered} bytes waiting to be written")
            }
            SendError::TooManyPings => f.write_str("too many unanswered pings"),
            SendError::Encode(e) => write!(f, "{e}"),
            SendError::NotInFlight => f.write_str("correlation id not in flight"),
        }
    }
}

impl core::error::Error for SendError {}

impl From<EncodeError> for SendError {
    fn from(e: EncodeError) -> Self {
        SendError::Encode(e)
    }
}
