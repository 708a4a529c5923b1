//! cargo-fuzz target `pool`: see `agentwire_core::fuzzing::pool`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::pool(data));
