//! What to do when the agent cannot take a request right now (flow control, §11.6).
//!
//! The agent pauses a connection or shrinks its capacity (§5.12); selection then answers
//! [`Selection::AllPaused`] or [`Selection::AtCapacity`]. The pool turns that into a decision
//! with [`FlowControlMode::decide`]. An advertised capacity is the agent's flow-control window,
//! so exhaustion is treated exactly like a pause.

use core::time::Duration;

use super::balance::Selection;
use crate::time::Instant;

/// Why the agent cannot take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowBlock {
    /// The agent paused the connection(s).
    Paused,
    /// The connection(s) are at the agent's advertised capacity.
    AtCapacity,
}

impl Selection {
    /// The flow-control block behind this refusal, if it is one (other refusals are not
    /// the agent asking for patience and are not subject to the flow-control mode).
    #[must_use]
    pub fn flow_block(self) -> Option<FlowBlock> {
        match self {
            Selection::AllPaused => Some(FlowBlock::Paused),
            Selection::AtCapacity => Some(FlowBlock::AtCapacity),
            _ => None,
        }
    }
}

/// The pool's policy for requests the agent cannot take now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FlowControlMode {
    /// Refuse the request (reference default).
    #[default]
    FailClosed,
    /// Answer `Allow` without asking the agent. Availability over inspection: anyone who can
    /// saturate the agent can make requests skip it, so choose this knowingly.
    FailOpen,
    /// Wait for a resume or a free slot, up to `max_wait` from the first refusal, then refuse
    /// (reference default wait: 100 ms).
    WaitAndRetry {
        /// The longest a request waits in total.
        max_wait: Duration,
    },
}

/// The decision for one blocked request.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowDecision {
    /// Fail the request with a flow-control error, and count a rejection.
    Reject,
    /// Answer a synthetic `Allow` (WebSocket frames: allow) without contacting the agent, and
    /// count a rejection.
    AllowWithoutAgent,
    /// Wait until a resume or completion is signalled or `deadline` passes, whichever comes
    /// first, then select again and decide again with the same `blocked_since`.
    Wait {
        /// When waiting stops being allowed.
        deadline: Instant,
    },
}

impl FlowControlMode {
    /// Decides what a request blocked since `blocked_since` does at `now`.
    ///
    /// `block` does not change the answer today (capacity is a flow-control window, see
    /// the module docs); it is an argument so the policy can tell them apart without an API
    /// change.
    pub fn decide(self, block: FlowBlock, blocked_since: Instant, now: Instant) -> FlowDecision {
        let _ = block;
        match self {
            FlowControlMode::FailClosed => FlowDecision::Reject,
            FlowControlMode::FailOpen => FlowDecision::AllowWithoutAgent,
            FlowControlMode::WaitAndRetry { max_wait } => {
                let deadline = blocked_since.saturating_add(max_wait);
                if now < deadline {
                    FlowDecision::Wait { deadline }
                } else {
                    FlowDecision::Reject
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn only_flow_refusals_are_subject_to_the_mode() {
        assert_eq!(Selection::AllPaused.flow_block(), Some(FlowBlock::Paused));
        assert_eq!(
            Selection::AtCapacity.flow_block(),
            Some(FlowBlock::AtCapacity)
        );
        for other in [
            Selection::Selected(0),
            Selection::NoConnections,
            Selection::NoneHealthy,
        ] {
            assert_eq!(other.flow_block(), None);
        }
    }

    #[test]
    fn fail_closed_and_fail_open_decide_at_once() {
        let t = Instant::from_millis(5);
        for block in [FlowBlock::Paused, FlowBlock::AtCapacity] {
            assert_eq!(
                FlowControlMode::FailClosed.decide(block, t, t),
                FlowDecision::Reject
            );
            assert_eq!(
                FlowControlMode::FailOpen.decide(block, t, t),
                FlowDecision::AllowWithoutAgent
            );
        }
        assert_eq!(FlowControlMode::default(), FlowControlMode::FailClosed);
    }

    #[test]
    fn wait_and_retry_waits_until_the_deadline_then_rejects() {
        let mode = FlowControlMode::WaitAndRetry {
            max_wait: Duration::from_millis(100),
        };
        let since = Instant::from_millis(1_000);
        let deadline = Instant::from_millis(1_100);
        assert_eq!(
            mode.decide(FlowBlock::Paused, since, since),
            FlowDecision::Wait { deadline }
        );
        assert_eq!(
            mode.decide(FlowBlock::Paused, since, Instant::from_millis(1_099)),
            FlowDecision::Wait { deadline }
        );
        assert_eq!(
            mode.decide(FlowBlock::AtCapacity, since, deadline),
            FlowDecision::Reject
        );
        let no_wait = FlowControlMode::WaitAndRetry {
            max_wait: Duration::ZERO,
        };
        assert_eq!(
            no_wait.decide(FlowBlock::Paused, since, since),
            FlowDecision::Reject
        );
    }
}
