//! cargo-fuzz target `message_msgpack`: see `agentwire_core::fuzzing::message_msgpack`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::message_msgpack(data));
