//! The frame decoder fed arbitrary bytes in arbitrary splits.

use super::{SplitMix, fnv1a};
use crate::frame::{
    DEFAULT_MAX_FRAME_LEN, FixedFrameReader, FrameDecoder, FrameError, HEADER_LEN, MessageType,
};
use alloc::vec::Vec;

/// The most a decoder may ask a reader to make room for at once (its `READ_CHUNK`).
const MAX_READ_HINT: usize = 64 * 1024;

/// The capacity of [`FixedFrameReader`] checked against the growable decoder.
const FIXED: usize = 256;

/// What a byte stream holds, computed by a model written from spec §2.1 independently of the
/// decoder: the complete frames, then either the error of the first bad header or the count
/// of trailing bytes of an incomplete frame.
struct Expected<'a> {
    frames: Vec<(MessageType, &'a [u8])>,
    error: Option<FrameError>,
    rest: usize,
}

/// The model. A bad length is refused as soon as its 4 bytes are in when `early` (the
/// growable decoder, like the reference reader, which checks the length before reading the
/// type byte), only with the fifth byte otherwise ([`FixedFrameReader`]).
fn model(data: &[u8], max: u32, early: bool) -> Expected<'_> {
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        let left = &data[pos..];
        let done = |error| Expected {
            frames: frames.clone(),
            error,
            rest: left.len(),
        };
        if left.len() < if early { 4 } else { HEADER_LEN } {
            return done(None);
        }
        let len = u32::from_be_bytes([left[0], left[1], left[2], left[3]]);
        if len == 0 {
            return done(Some(FrameError::ZeroLength));
        }
        if len > max {
            return done(Some(FrameError::FrameTooLarge {
                len: u64::from(len),
                max,
            }));
        }
        if left.len() < HEADER_LEN {
            return done(None);
        }
        let Some(kind) = MessageType::from_byte(left[4]) else {
            return done(Some(FrameError::UnknownType(left[4])));
        };
        let end = 4 + len as usize;
        if left.len() < end {
            return done(None);
        }
        frames.push((kind, &left[HEADER_LEN..end]));
        pos += end;
    }
}

/// Feeds `data` to a fresh decoder in the chunks `chunk_sizes` yields and checks it against
/// `expected` after every chunk. With `direct`, bytes go through `read_buffer()` the way an
/// async reader fills it (never more than the spare capacity per read).
fn check_split(
    data: &[u8],
    max: u32,
    expected: &Expected<'_>,
    mut chunk_sizes: impl FnMut() -> usize,
    direct: bool,
) {
    let mut decoder = FrameDecoder::new(max);
    let mut fed = 0usize;
    let mut consumed = 0usize;
    let mut frames = 0usize;
    let mut error = None;
    // The largest `buffered + hint` seen: a decoder may keep an allocation that large, never
    // one proportional to a declared length it has not received.
    let mut peak = 0usize;
    while fed < data.len() {
        let chunk = chunk_sizes().clamp(1, data.len() - fed);
        let bytes = &data[fed..fed + chunk];
        if direct {
            let mut put = 0;
            while put < bytes.len() {
                let hint = decoder.read_hint();
                assert!(
                    (1..=MAX_READ_HINT).contains(&hint),
                    "read hint {hint} out of range"
                );
                peak = peak.max(decoder.buffered() + hint);
                let buf = decoder.read_buffer();
                let spare = buf.capacity() - buf.len();
                assert!(spare >= hint, "read_buffer reserved {spare} < hint {hint}");
                // Vec growth doubles the whole allocation, consumed bytes still in front of
                // the data included; those are fewer than the data (else `reserve` reclaims
                // them instead of growing), so the view stays within 3 × what was needed.
                assert!(
                    buf.capacity() <= 3 * peak + 64,
                    "read buffer capacity {} for at most {peak} bytes needed",
                    buf.capacity()
                );
                let n = spare.min(bytes.len() - put);
                buf.extend_from_slice(&bytes[put..put + n]);
                put += n;
            }
        } else {
            decoder.extend(bytes);
        }
        fed += chunk;
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    assert!(error.is_none(), "a frame came out after an error");
                    let (kind, payload) =
                        expected.frames.get(frames).copied().unwrap_or_else(|| {
                            panic!("unexpected frame #{frames} {:?}", frame.kind)
                        });
                    assert_eq!(frame.kind, kind, "frame #{frames}: kind");
                    assert_eq!(&frame.payload[..], payload, "frame #{frames}: payload");
                    consumed += HEADER_LEN + frame.payload.len();
                    frames += 1;
                }
                Ok(None) => {
                    assert!(error.is_none(), "an error was forgotten");
                    break;
                }
                Err(e) => {
                    if let Some(first) = error {
                        assert_eq!(e, first, "the error changed");
                    }
                    error = Some(e);
                    assert_eq!(decoder.decode(), Err(e), "the error is not sticky");
                    break;
                }
            }
        }
        assert!(decoder.buffered() <= fed, "buffered more than was fed");
        assert_eq!(
            decoder.buffered(),
            fed - consumed,
            "buffered bytes are not exactly the unconsumed input"
        );
    }
    assert_eq!(frames, expected.frames.len(), "number of frames");
    assert_eq!(error, expected.error, "final error");
    if error.is_none() {
        assert_eq!(decoder.buffered(), expected.rest, "trailing bytes");
    } else {
        // Still failed, with the same error, after more input.
        decoder.extend(&[0, 0, 0, 1, MessageType::Ping.as_byte()]);
        assert_eq!(
            decoder.decode().err(),
            error,
            "error not sticky after input"
        );
    }
}

/// [`FixedFrameReader`] must agree with the model for its own limit (`N - 4`).
fn check_fixed(data: &[u8], seed: u64) {
    let max = (FIXED - 4) as u32;
    let expected = model(data, max, false);
    let mut reader = FixedFrameReader::<FIXED>::new();
    let mut rng = SplitMix::new(seed);
    let mut pos = 0;
    let mut frames = 0usize;
    let mut error = None;
    while pos < data.len() {
        let end = (pos + rng.chunk(64)).min(data.len());
        match reader.feed(&data[pos..end]) {
            Ok(n) => {
                assert!(n <= end - pos, "took more than offered");
                pos += n;
                match reader.frame() {
                    Some((kind, payload)) => {
                        let (want_kind, want_payload) =
                            expected.frames.get(frames).copied().unwrap_or_else(|| {
                                panic!("fixed reader: unexpected frame {kind:?}")
                            });
                        assert_eq!(kind, want_kind);
                        assert_eq!(payload, want_payload);
                        frames += 1;
                        reader.consume_frame();
                        assert!(reader.frame().is_none(), "consume_frame kept the frame");
                    }
                    // Without a complete frame the reader must have taken everything offered.
                    None => assert_eq!(pos, end, "fixed reader stalled"),
                }
            }
            Err(e) => {
                error = Some(e);
                assert_eq!(reader.feed(&[0]), Err(FrameError::Poisoned));
                break;
            }
        }
    }
    assert_eq!(frames, expected.frames.len(), "fixed reader: frames");
    assert_eq!(error, expected.error, "fixed reader: error");
}

/// Target `frame_decoder`: `data` is a byte stream.
///
/// Decoded whole, byte by byte, in random chunks, and through `read_buffer()`, against the
/// default limit and a small one, the stream must give exactly the frames and the error an
/// independent model of spec §2.1 finds; errors are sticky; `buffered()` is always exactly
/// the bytes fed and not yet returned; the read buffer's capacity stays proportional to what
/// was needed, not to declared lengths. [`FixedFrameReader`] must agree with the same model.
pub fn frame_decoder(data: &[u8]) {
    let seed = fnv1a(data);
    let small = 1 + (seed % 300) as u32;
    for max in [DEFAULT_MAX_FRAME_LEN, small] {
        let expected = model(data, max, true);
        check_split(data, max, &expected, || usize::MAX, false);
        check_split(data, max, &expected, || 1, false);
        let mut rng = SplitMix::new(seed);
        check_split(data, max, &expected, || rng.chunk(16), false);
        let mut rng = SplitMix::new(seed ^ 0x5555);
        check_split(data, max, &expected, || rng.chunk(2048), false);
        let mut rng = SplitMix::new(seed ^ 0xaaaa);
        check_split(data, max, &expected, || rng.chunk(512), true);
    }
    check_fixed(data, seed);
}
