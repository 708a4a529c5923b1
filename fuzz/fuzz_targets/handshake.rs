//! cargo-fuzz target `handshake`: see `agentwire_core::fuzzing::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::handshake(data));
