//! cargo-fuzz target `registration`: see `agentwire_core::fuzzing::registration`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::registration(data));
