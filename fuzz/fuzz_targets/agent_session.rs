//! cargo-fuzz target `agent_session`: see `agentwire_core::fuzzing::agent_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::agent_session(data));
