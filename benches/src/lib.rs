//! Shared fixtures of agentwire's benchmarks (issue #8): the same request headers, responses
//! and body chunks for agentwire and the reference crate `zentinel-agent-protocol`, plus
//! round-trip harnesses over a real Unix socket used by the criterion benches, the
//! allocation counter and the callgrind driver.

pub mod alloc_count;
pub mod fixtures;
pub mod roundtrip;
