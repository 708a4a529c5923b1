//! What a pool call returns: an answer, a documented skip, or a typed error.

use std::fmt;

use agentwire_core::message::AgentResponse;
use agentwire_runtime::client::ClientError;

/// The result of a successful pool call.
// `Answered` is the common case: boxing it would cost an allocation per answer to shrink the
// rare `Skipped`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum PoolOutcome {
    /// The agent answered.
    Answered(AgentResponse),
    /// The agent was not asked (or did not answer) and a fail-open rule says to carry on
    /// without it: the agent's [`FailurePolicy::FailOpen`](crate::FailurePolicy::FailOpen), or
    /// [`FlowControlMode::FailOpen`](agentwire_core::pool::FlowControlMode::FailOpen). Unlike
    /// the reference's synthetic `Allow`, the caller can tell this from a real decision.
    Skipped {
        /// Why the agent was skipped.
        reason: SkipReason,
    },
}

impl PoolOutcome {
    /// The agent's answer, if it answered.
    #[must_use]
    pub fn response(&self) -> Option<&AgentResponse> {
        match self {
            PoolOutcome::Answered(response) => Some(response),
            PoolOutcome::Skipped { .. } => None,
        }
    }

    /// The agent's answer, if it answered.
    #[must_use]
    pub fn into_response(self) -> Option<AgentResponse> {
        match self {
            PoolOutcome::Answered(response) => Some(response),
            PoolOutcome::Skipped { .. } => None,
        }
    }

    /// Whether the agent was skipped.
    #[must_use]
    pub fn is_skipped(&self) -> bool {
        matches!(self, PoolOutcome::Skipped { .. })
    }
}

/// Why a fail-open rule skipped the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The agent paused the connection(s) or they were at its advertised capacity, and the
    /// pool's flow-control mode is fail-open.
    FlowControl,
    /// No connection could take the request (none connected, or all unhealthy).
    NoHealthyConnection,
    /// The agent's (or every connection's) circuit breaker is open.
    CircuitOpen,
    /// The agent did not answer in time.
    Timeout,
    /// The connection failed while the request was on it.
    ConnectionError,
}

impl SkipReason {
    /// A short stable name (for logs and metrics labels).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::FlowControl => "flow_control",
            SkipReason::NoHealthyConnection => "no_healthy_connection",
            SkipReason::CircuitOpen => "circuit_open",
            SkipReason::Timeout => "timeout",
            SkipReason::ConnectionError => "connection_error",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a pool call failed.
///
/// Several of these are decided from atomics alone and returned without the call ever
/// waiting (`UnknownAgent`, `CircuitOpen`, `NoHealthyConnection`, a fail-fast
/// `FlowControlPaused`): such a call does not yield to the scheduler. A caller that retries in a
/// loop must back off between attempts (a timer, or at least a yield), or it can starve the
/// tasks that would repair the agent — the maintenance task and the connections' own readers
/// and writers — on the same worker thread.
#[derive(Debug)]
pub enum PoolError {
    /// No agent with this id is registered.
    UnknownAgent(String),
    /// The agent has no connection that can take a request now: none is connected, or each is
    /// closed or unhealthy.
    NoHealthyConnection {
        /// The agent.
        agent_id: String,
    },
    /// The agent paused its connections or they are at its advertised capacity, and the
    /// flow-control mode refused (fail-closed, or wait-and-retry after its wait).
    FlowControlPaused {
        /// The agent.
        agent_id: String,
    },
    /// The agent's circuit breaker (or the breaker of every connection that could take the
    /// request) is open.
    CircuitOpen {
        /// The agent.
        agent_id: String,
    },
    /// The pool is shutting down and takes no new requests.
    ShuttingDown,
    /// The endpoint string cannot be parsed, or its transport is not available.
    InvalidEndpoint(String),
    /// The connection reported an error (timeout, connection loss, a refused request).
    Client(ClientError),
}

impl PoolError {
    /// A short stable name of the error kind (for metrics and logs).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            PoolError::UnknownAgent(_) => "unknown_agent",
            PoolError::NoHealthyConnection { .. } => "no_healthy_connection",
            PoolError::FlowControlPaused { .. } => "flow_control_paused",
            PoolError::CircuitOpen { .. } => "circuit_open",
            PoolError::ShuttingDown => "shutting_down",
            PoolError::InvalidEndpoint(_) => "invalid_endpoint",
            PoolError::Client(e) => e.kind(),
        }
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::UnknownAgent(id) => write!(f, "agent {id:?} not found"),
            PoolError::NoHealthyConnection { agent_id } => {
                write!(f, "no healthy connection to agent {agent_id:?}")
            }
            PoolError::FlowControlPaused { agent_id } => {
                write!(
                    f,
                    "agent {agent_id:?} applied flow control (paused or at capacity)"
                )
            }
            PoolError::CircuitOpen { agent_id } => {
                write!(f, "circuit breaker open for agent {agent_id:?}")
            }
            PoolError::ShuttingDown => f.write_str("agent pool is shutting down"),
            PoolError::InvalidEndpoint(why) => write!(f, "invalid agent endpoint: {why}"),
            PoolError::Client(e) => write!(f, "agent connection: {e}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Client(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ClientError> for PoolError {
    fn from(e: ClientError) -> Self {
        PoolError::Client(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_and_source() {
        let e = PoolError::Client(ClientError::Timeout);
        assert_eq!(e.kind(), "timeout");
        assert!(e.to_string().contains("did not answer"));
        assert!(e.source().is_some());
        let e = PoolError::NoHealthyConnection {
            agent_id: "waf".into(),
        };
        assert!(e.to_string().contains("\"waf\""));
        assert!(e.source().is_none());
        assert_eq!(PoolError::ShuttingDown.kind(), "shutting_down");
    }

    #[test]
    fn outcome_accessors() {
        let answered = PoolOutcome::Answered(AgentResponse::allow());
        assert!(!answered.is_skipped());
        assert!(answered.response().is_some());
        let skipped = PoolOutcome::Skipped {
            reason: SkipReason::Timeout,
        };
        assert!(skipped.is_skipped());
        assert_eq!(skipped.into_response(), None);
        assert_eq!(SkipReason::CircuitOpen.to_string(), "circuit_open");
    }
}
