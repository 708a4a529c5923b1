//! cargo-fuzz target `message_json`: see `agentwire_core::fuzzing::message_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::message_json(data));
