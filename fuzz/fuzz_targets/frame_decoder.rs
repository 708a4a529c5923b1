//! cargo-fuzz target `frame_decoder`: see `agentwire_core::fuzzing::frame_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| agentwire_core::fuzzing::frame_decoder(data));
