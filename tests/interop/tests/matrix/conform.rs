//! `agentwire conform` (its library entry point, `agentwire_cli::conform::run`) against the
//! reference `UdsAgentServerV2`. The kit's findings are the expected results: the reference's
//! known weaknesses show up as failed checks, everything else passes.

use crate::support::*;
use agentwire_cli::Endpoint;
use agentwire_cli::conform::{self, ConformReport};
use std::time::Duration;

/// Every check of the kit and whether the reference agent passes it.
const EXPECTED: &[(&str, bool)] = &[
    ("handshake: json only", true),
    ("handshake: msgpack+json", true),
    // The reference ignores the unknown key, so agentwire's own extension is harmless.
    ("handshake: unknown encoding in agentwire_encodings", true),
    ("events answered with their correlation id (json)", true),
    ("events answered with their correlation id (msgpack)", true),
    ("pipelining: 100 requests in one write", true),
    ("cancel, then the connection still works", true),
    ("ping answered by a byte-exact pong", true),
    ("oversize frame: connection closed, agent alive", true),
    // S1: the reference answers an undecodable event with Allow, without its handler.
    ("undecodable event not answered Allow (S1)", false),
    // B2: the reference never answers a GuardrailInspect.
    ("guardrail inspect answered (B2)", false),
];

async fn run_against_reference() -> ConformReport {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref-agent.sock");
    let agent = RefAgent::new("ref-agent", &catalogue());
    let _server = start_ref_uds_server(&path, agent).await;
    let endpoint = Endpoint::Uds(path.clone());
    // The kit is blocking (it runs its own runtime); the reference agent runs on this one.
    // Each wait is bounded by 2 s: ample for a debug build on a busy machine, and what the
    // guardrail check (B2) waits before it records the missing answer.
    let report =
        tokio::task::spawn_blocking(move || conform::run(&endpoint, Duration::from_secs(2)))
            .await
            .expect("the kit ran")
            .expect("the reference agent is reachable");
    drop(dir);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conform_kit_against_the_reference_agent() {
    within("conform", async {
        let report = run_against_reference().await;
        let got: Vec<(&str, bool)> = report.checks.iter().map(|c| (c.name, c.passed)).collect();
        assert_eq!(got, EXPECTED, "\n{}", report.to_table());
    })
    .await;
}
