//! Fuzz-target bodies, one function per cargo-fuzz target (`fuzz/fuzz_targets/*.rs`).
//!
//! Every function takes the fuzzer's raw bytes, never panics on a correct core, and **asserts
//! invariants** (a panic is how a target reports a bug): frames come out of the decoder the
//! same whatever the read split, whatever decodes re-encodes to the same value, sessions end
//! every accepted request exactly once, pool guards never leak, decoders never hold more than
//! they were fed. The functions live in the core, behind the `fuzzing` feature, so the same
//! checks replay in the normal test suite (`core/tests/fuzz_regressions.rs`) without
//! libFuzzer, and the `fuzz/` crate stays a set of one-line wrappers.
//!
//! | target | function | input |
//! |---|---|---|
//! | `frame_decoder` | [`frame_decoder`] | a raw byte stream |
//! | `message_json` / `message_msgpack` / `message_postcard` | [`message_json`], [`message_msgpack`], [`message_postcard`] | type byte, then a payload |
//! | `handshake` | [`handshake`] | two encoding-set bytes, a 16-bit split, a HandshakeRequest and a HandshakeResponse payload |
//! | `proxy_session` | [`proxy_session`] | `arbitrary`-structured set-up and operations |
//! | `agent_session` | [`agent_session`] | `arbitrary`-structured set-up and operations |
//! | `registration` | [`registration`] | encoding byte, direction byte, payload |
//! | `pool` | [`pool`] | `arbitrary`-structured set-up and operations |

mod agent;
mod frame;
mod handshake;
mod message;
mod pool;
mod proxy;

pub use self::agent::agent_session;
pub use self::frame::frame_decoder;
pub use self::handshake::handshake;
pub use self::message::{message_json, message_msgpack, message_postcard, registration};
pub use self::pool::pool;
pub use self::proxy::proxy_session;

use crate::frame::{DEFAULT_MAX_FRAME_LEN, Frame, FrameDecoder, MessageType};
use alloc::format;
use alloc::vec::Vec;
use core::fmt::Debug;

/// The body of a fuzz target.
pub type Target = fn(&[u8]);

/// Every target: its cargo-fuzz name and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decoder", frame_decoder),
    ("message_json", message_json),
    ("message_msgpack", message_msgpack),
    ("message_postcard", message_postcard),
    ("handshake", handshake),
    ("proxy_session", proxy_session),
    ("agent_session", agent_session),
    ("registration", registration),
    ("pool", pool),
];

/// The body of the target called `name`, if there is one.
#[must_use]
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Equality that treats two NaNs as equal: MessagePack and postcard carry NaN floats (a
/// gauge, a confidence), which `PartialEq` never finds equal to themselves. The `Debug`
/// forms are compared only when `==` says no.
fn same<T: PartialEq + Debug>(a: &T, b: &T) -> bool {
    a == b || format!("{a:?}") == format!("{b:?}")
}

/// Every frame in `bytes`, which must be a whole number of well-formed frames (what a session
/// writes).
fn frames_in(bytes: &[u8], max_len: u32) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(max_len.max(DEFAULT_MAX_FRAME_LEN));
    decoder.extend(bytes);
    let mut frames = Vec::new();
    loop {
        match decoder.decode() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => panic!("a session wrote an unreadable frame: {e}"),
        }
    }
    assert_eq!(decoder.buffered(), 0, "a session wrote a partial frame");
    frames
}

/// The single frame in `bytes`, of type `kind`.
fn single_frame(bytes: &[u8], kind: MessageType) -> Frame {
    let mut frames = frames_in(bytes, DEFAULT_MAX_FRAME_LEN);
    assert_eq!(frames.len(), 1, "expected exactly one {kind} frame");
    let frame = frames.remove(0);
    assert_eq!(frame.kind, kind);
    frame
}

/// A small deterministic generator (splitmix64) for choices derived from the input itself.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `1..=max`.
    fn chunk(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
}

/// FNV-1a of `data`: a seed that changes with every input byte.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
