//! cargo-fuzz target `message_postcard`: see `agentwire_core::fuzzing::message_postcard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::message_postcard(data));
