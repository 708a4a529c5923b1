//! cargo-fuzz target `proxy_session`: see `agentwire_core::fuzzing::proxy_session`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::proxy_session(data));
