//! Length-prefixed framing: a 4-byte big-endian length `L` (type byte + payload), one type
//! byte, then `L - 1` payload bytes.
//!
//! The length is checked against a maximum **before** any memory is reserved for the
//! payload, and buffers grow only as bytes arrive, so a peer that declares 16 MiB and sends
//! ten bytes costs ten bytes. The writer refuses any frame the reader would refuse (the
//! reference crate's writer accepts one byte more than its reader, spec §2.1).
//!
//! Without the `alloc` feature the module still offers [`parse_header`], [`encode_header`] and
//! [`FixedFrameReader`], which decodes into a fixed-capacity buffer whose bound is in its type.

use core::fmt;

/// Bytes before the payload: 4 length bytes and the type byte.
pub const HEADER_LEN: usize = 5;

/// The largest length field (`L`, type byte + payload) accepted by default: 16 MiB, the
/// reference reader's limit. The largest payload is therefore 16 MiB - 1 bytes.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// The type byte of a frame (spec §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[non_exhaustive]
pub enum MessageType {
    /// Proxy → agent handshake; in reverse mode the agent's registration.
    HandshakeRequest = 0x01,
    /// Agent → proxy handshake answer; in reverse mode the proxy's registration answer.
    HandshakeResponse = 0x02,
    /// Request headers event.
    RequestHeaders = 0x10,
    /// Request body chunk event.
    RequestBodyChunk = 0x11,
    /// Response headers event.
    ResponseHeaders = 0x12,
    /// Response body chunk event.
    ResponseBodyChunk = 0x13,
    /// Request complete event.
    RequestComplete = 0x14,
    /// WebSocket frame event.
    WebSocketFrame = 0x15,
    /// Guardrail inspection event.
    GuardrailInspect = 0x16,
    /// Configuration delivery.
    Configure = 0x17,
    /// The agent's answer to an event.
    AgentResponse = 0x20,
    /// Agent health report.
    HealthStatus = 0x30,
    /// Agent metrics report.
    MetricsReport = 0x31,
    /// Agent's configuration update request.
    ConfigUpdateRequest = 0x32,
    /// Agent flow-control signal (pause, resume, capacity).
    FlowControl = 0x33,
    /// Proxy cancels a request.
    Cancel = 0x40,
    /// Liveness probe.
    Ping = 0x41,
    /// Answer to a ping: the ping's payload echoed.
    Pong = 0x42,
}

impl MessageType {
    /// Every type the protocol defines, in id order.
    pub const ALL: [MessageType; 18] = [
        MessageType::HandshakeRequest,
        MessageType::HandshakeResponse,
        MessageType::RequestHeaders,
        MessageType::RequestBodyChunk,
        MessageType::ResponseHeaders,
        MessageType::ResponseBodyChunk,
        MessageType::RequestComplete,
        MessageType::WebSocketFrame,
        MessageType::GuardrailInspect,
        MessageType::Configure,
        MessageType::AgentResponse,
        MessageType::HealthStatus,
        MessageType::MetricsReport,
        MessageType::ConfigUpdateRequest,
        MessageType::FlowControl,
        MessageType::Cancel,
        MessageType::Ping,
        MessageType::Pong,
    ];

    /// The type for a type byte, or `None` for a byte the protocol does not define.
    #[must_use]
    pub const fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => MessageType::HandshakeRequest,
            0x02 => MessageType::HandshakeResponse,
            0x10 => MessageType::RequestHeaders,
            0x11 => MessageType::RequestBodyChunk,
            0x12 => MessageType::ResponseHeaders,
            0x13 => MessageType::ResponseBodyChunk,
            0x14 => MessageType::RequestComplete,
            0x15 => MessageType::WebSocketFrame,
            0x16 => MessageType::GuardrailInspect,
            0x17 => MessageType::Configure,
            0x20 => MessageType::AgentResponse,
            0x30 => MessageType::HealthStatus,
            0x31 => MessageType::MetricsReport,
            0x32 => MessageType::ConfigUpdateRequest,
            0x33 => MessageType::FlowControl,
            0x40 => MessageType::Cancel,
            0x41 => MessageType::Ping,
            0x42 => MessageType::Pong,
            _ => return None,
        })
    }

    /// The type byte.
    #[must_use]
    pub const fn as_byte(self) -> u8 {
        self as u8
    }

    /// The type's name as the spec writes it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            MessageType::HandshakeRequest => "HandshakeRequest",
            MessageType::HandshakeResponse => "HandshakeResponse",
            MessageType::RequestHeaders => "RequestHeaders",
            MessageType::RequestBodyChunk => "RequestBodyChunk",
            MessageType::ResponseHeaders => "ResponseHeaders",
            MessageType::ResponseBodyChunk => "ResponseBodyChunk",
            MessageType::RequestComplete => "RequestComplete",
            MessageType::WebSocketFrame => "WebSocketFrame",
            MessageType::GuardrailInspect => "GuardrailInspect",
            MessageType::Configure => "Configure",
            MessageType::AgentResponse => "AgentResponse",
            MessageType::HealthStatus => "HealthStatus",
            MessageType::MetricsReport => "MetricsReport",
            MessageType::ConfigUpdateRequest => "ConfigUpdateRequest",
            MessageType::FlowControl => "FlowControl",
            MessageType::Cancel => "Cancel",
            MessageType::Ping => "Ping",
            MessageType::Pong => "Pong",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.name(), self.as_byte())
    }
}

/// Why bytes could not be framed or unframed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length field (or, when writing, type byte + payload) exceeds the maximum.
    FrameTooLarge {
        /// The declared or required length field.
        len: u64,
        /// The largest length field allowed.
        max: u32,
    },
    /// The length field is zero: not even a type byte.
    ZeroLength,
    /// The type byte is not one the protocol defines.
    UnknownType(u8),
    /// A previous error ended this stream; no further frame is decoded.
    Poisoned,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::FrameTooLarge { len, max } => {
                write!(f, "frame length {len} exceeds the maximum of {max}")
            }
            FrameError::ZeroLength => f.write_str("zero-length frame"),
            FrameError::UnknownType(byte) => write!(f, "unknown message type 0x{byte:02x}"),
            FrameError::Poisoned => f.write_str("stream already failed"),
        }
    }
}

impl core::error::Error for FrameError {}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type.
    pub kind: MessageType,
    /// The payload length (the length field minus the type byte).
    pub payload_len: u32,
}

/// Checks a length field against `max` (before anything is reserved for it).
pub fn check_length(len: u32, max: u32) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    if len > max {
        return Err(FrameError::FrameTooLarge {
            len: u64::from(len),
            max,
        });
    }
    Ok(())
}

/// Parses the 5 header bytes, checking the length against `max` first (as the reference
/// does) and the type byte second.
pub fn parse_header(bytes: &[u8; HEADER_LEN], max: u32) -> Result<FrameHeader, FrameError> {
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    check_length(len, max)?;
    let kind = MessageType::from_byte(bytes[4]).ok_or(FrameError::UnknownType(bytes[4]))?;
    Ok(FrameHeader {
        kind,
        payload_len: len - 1,
    })
}

/// The 5 header bytes for a payload of `payload_len` bytes, refusing anything a reader with
/// the same `max` would refuse.
pub fn encode_header(
    kind: MessageType,
    payload_len: usize,
    max: u32,
) -> Result<[u8; HEADER_LEN], FrameError> {
    let len = (payload_len as u64).saturating_add(1);
    if len > u64::from(max) {
        return Err(FrameError::FrameTooLarge { len, max });
    }
    // `len <= max <= u32::MAX`, so the conversion cannot fail.
    let len = u32::try_from(len).map_err(|_| FrameError::FrameTooLarge { len, max })?;
    let l = len.to_be_bytes();
    Ok([l[0], l[1], l[2], l[3], kind.as_byte()])
}

/// A frame decoder with no allocator: the whole frame must fit in `N` bytes, a bound carried
/// by the type. Feed it bytes, take a frame when one is complete.
///
/// ```
/// use agentwire_core::frame::{FixedFrameReader, MessageType};
/// let mut reader = FixedFrameReader::<64>::new();
/// let wire = [0, 0, 0, 3, 0x41, b'{', b'}'];
/// let used = reader.feed(&wire[..4]).unwrap();
/// assert_eq!(used, 4);
/// assert!(reader.frame().is_none());
/// reader.feed(&wire[4..]).unwrap();
/// let (kind, payload) = reader.frame().unwrap();
/// assert_eq!(kind, MessageType::Ping);
/// assert_eq!(payload, b"{}");
/// reader.consume_frame();
/// ```
#[derive(Debug, Default)]
pub struct FixedFrameReader<const N: usize> {
    buf: heapless::Vec<u8, N>,
    header: Option<FrameHeader>,
    failed: bool,
}

impl<const N: usize> FixedFrameReader<N> {
    /// An empty reader.
    #[must_use]
    pub const fn new() -> Self {
        FixedFrameReader {
            buf: heapless::Vec::new(),
            header: None,
            failed: false,
        }
    }

    fn max_len(&self) -> u32 {
        let fits = N.saturating_sub(4);
        u32::try_from(fits).unwrap_or(u32::MAX)
    }

    /// Takes bytes from `input` up to the end of the current frame and returns how many it
    /// took; the rest belongs to the next frame. Takes nothing while a complete frame waits
    /// to be consumed.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, FrameError> {
        if self.failed {
            return Err(FrameError::Poisoned);
        }
        let want = match self.header {
            Some(h) => HEADER_LEN + h.payload_len as usize,
            None => HEADER_LEN,
        };
        let take = want.saturating_sub(self.buf.len()).min(input.len());
        if self.buf.extend_from_slice(&input[..take]).is_err() {
            self.failed = true;
            return Err(FrameError::FrameTooLarge {
                len: want as u64,
                max: self.max_len(),
            });
        }
        if self.header.is_none() && self.buf.len() == HEADER_LEN {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.buf);
            match parse_header(&raw, self.max_len()) {
                Ok(h) => self.header = Some(h),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
            return Ok(take + self.feed(&input[take..])?);
        }
        Ok(take)
    }

    /// The complete frame, if one is buffered.
    #[must_use]
    pub fn frame(&self) -> Option<(MessageType, &[u8])> {
        let h = self.header?;
        (self.buf.len() == HEADER_LEN + h.payload_len as usize)
            .then(|| (h.kind, &self.buf[HEADER_LEN..]))
    }

    /// Drops the buffered frame so the next one can be read.
    pub fn consume_frame(&mut self) {
        if self.frame().is_some() {
            self.buf.clear();
            self.header = None;
        }
    }
}

#[cfg(feature = "alloc")]
pub use self::buffered::*;

#[cfg(feature = "alloc")]
mod buffered {
    use super::{FrameError, FrameHeader, HEADER_LEN, MessageType, encode_header, parse_header};
    use bytes::{BufMut, Bytes, BytesMut};

    /// One decoded frame: its type and its payload, a zero-copy slice of the read buffer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Frame {
        /// The message type.
        pub kind: MessageType,
        /// The payload bytes (without length and type).
        pub payload: Bytes,
    }

    /// How much a reader may ask for at once beyond the bytes already known to be coming.
    const READ_CHUNK: usize = 64 * 1024;

    /// An incremental frame decoder over a growable buffer.
    ///
    /// Bytes go in through [`FrameDecoder::extend`] or by reading straight into
    /// [`FrameDecoder::read_buffer`]; [`FrameDecoder::decode`] returns `Ok(None)` while a
    /// frame is incomplete. The declared length is checked as soon as the 5 header bytes are
    /// in, before any room is reserved for the payload. After an error the decoder stays
    /// failed.
    #[derive(Debug)]
    pub struct FrameDecoder {
        buf: BytesMut,
        max_len: u32,
        header: Option<FrameHeader>,
        failed: Option<FrameError>,
    }

    impl FrameDecoder {
        /// A decoder that refuses length fields above `max_len`.
        #[must_use]
        pub fn new(max_len: u32) -> Self {
            FrameDecoder {
                buf: BytesMut::new(),
                max_len,
                header: None,
                failed: None,
            }
        }

        /// The largest length field this decoder accepts.
        #[must_use]
        pub fn max_len(&self) -> u32 {
            self.max_len
        }

        /// Bytes received but not yet returned as frames.
        #[must_use]
        pub fn buffered(&self) -> usize {
            self.buf.len()
        }

        /// Appends received bytes.
        pub fn extend(&mut self, data: &[u8]) {
            self.buf.extend_from_slice(data);
        }

        /// The buffer to read into directly (e.g. with `AsyncReadExt::read_buf`), after
        /// reserving [`FrameDecoder::read_hint`] bytes, which never exceeds what the current
        /// frame still needs plus a small constant.
        pub fn read_buffer(&mut self) -> &mut BytesMut {
            let hint = self.read_hint();
            if self.buf.capacity() - self.buf.len() < hint {
                self.buf.reserve(hint);
            }
            &mut self.buf
        }

        /// How many bytes a reader should make room for now.
        #[must_use]
        pub fn read_hint(&self) -> usize {
            match self.header {
                Some(h) => {
                    let missing =
                        (HEADER_LEN + h.payload_len as usize).saturating_sub(self.buf.len());
                    missing.clamp(HEADER_LEN, READ_CHUNK)
                }
                None => READ_CHUNK / 8,
            }
        }

        /// The next complete frame, `Ok(None)` when more bytes are needed.
        pub fn decode(&mut self) -> Result<Option<Frame>, FrameError> {
            if let Some(e) = self.failed {
                return Err(e);
            }
            let header = match self.header {
                Some(h) => h,
                None => {
                    if self.buf.len() < HEADER_LEN {
                        // The length alone is enough to refuse a frame (as the reference does
                        // before reading the type byte): no need to wait for a fifth byte.
                        if self.buf.len() >= 4 {
                            let len = u32::from_be_bytes([
                                self.buf[0],
                                self.buf[1],
                                self.buf[2],
                                self.buf[3],
                            ]);
                            if let Err(e) = super::check_length(len, self.max_len) {
                                self.failed = Some(e);
                                return Err(e);
                            }
                        }
                        return Ok(None);
                    }
                    let mut raw = [0u8; HEADER_LEN];
                    raw.copy_from_slice(&self.buf[..HEADER_LEN]);
                    match parse_header(&raw, self.max_len) {
                        Ok(h) => {
                            self.header = Some(h);
                            h
                        }
                        Err(e) => {
                            self.failed = Some(e);
                            return Err(e);
                        }
                    }
                }
            };
            let total = HEADER_LEN + header.payload_len as usize;
            if self.buf.len() < total {
                return Ok(None);
            }
            let mut frame = self.buf.split_to(total);
            let _ = frame.split_to(HEADER_LEN);
            self.header = None;
            Ok(Some(Frame {
                kind: header.kind,
                payload: frame.freeze(),
            }))
        }
    }

    /// Appends one frame (header and payload) to `out`.
    pub fn encode_frame(
        kind: MessageType,
        payload: &[u8],
        max_len: u32,
        out: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let header = encode_header(kind, payload.len(), max_len)?;
        out.reserve(HEADER_LEN + payload.len());
        out.put_slice(&header);
        out.put_slice(payload);
        Ok(())
    }

    /// Writes a frame whose payload is produced in place by `write_payload`, so no separate
    /// payload buffer is needed. On any error `out` is left as it was.
    pub fn encode_frame_with<E>(
        kind: MessageType,
        max_len: u32,
        out: &mut BytesMut,
        write_payload: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), FrameEncodeError<E>> {
        let start = out.len();
        out.put_slice(&[0u8; HEADER_LEN]);
        if let Err(e) = write_payload(out) {
            out.truncate(start);
            return Err(FrameEncodeError::Payload(e));
        }
        let payload_len = out.len() - start - HEADER_LEN;
        match encode_header(kind, payload_len, max_len) {
            Ok(header) => {
                out[start..start + HEADER_LEN].copy_from_slice(&header);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(FrameEncodeError::Frame(e))
            }
        }
    }

    /// Why [`encode_frame_with`] failed.
    #[derive(Debug, PartialEq, Eq)]
    pub enum FrameEncodeError<E> {
        /// The payload writer failed.
        Payload(E),
        /// The payload is larger than a frame may carry.
        Frame(FrameError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_limits() {
        let h = encode_header(MessageType::Ping, 2, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(h, [0, 0, 0, 3, 0x41]);
        let parsed = parse_header(&h, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(parsed.kind, MessageType::Ping);
        assert_eq!(parsed.payload_len, 2);
        // The writer refuses exactly what the reader refuses (no off-by-one).
        let max_payload = DEFAULT_MAX_FRAME_LEN as usize - 1;
        let ok = encode_header(MessageType::Ping, max_payload, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert!(parse_header(&ok, DEFAULT_MAX_FRAME_LEN).is_ok());
        assert_eq!(
            encode_header(MessageType::Ping, max_payload + 1, DEFAULT_MAX_FRAME_LEN),
            Err(FrameError::FrameTooLarge {
                len: u64::from(DEFAULT_MAX_FRAME_LEN) + 1,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
        assert_eq!(
            parse_header(&[0, 0, 0, 0, 0x41], 100),
            Err(FrameError::ZeroLength)
        );
        assert_eq!(
            parse_header(&[0xff, 0xff, 0xff, 0xff, 0x41], 100),
            Err(FrameError::FrameTooLarge {
                len: u64::from(u32::MAX),
                max: 100
            })
        );
        assert_eq!(
            parse_header(&[0, 0, 0, 1, 0xf0], 100),
            Err(FrameError::UnknownType(0xf0))
        );
    }

    #[test]
    fn every_type_byte_round_trips() {
        for kind in MessageType::ALL {
            assert_eq!(MessageType::from_byte(kind.as_byte()), Some(kind));
        }
        let defined = (0u8..=255)
            .filter(|b| MessageType::from_byte(*b).is_some())
            .count();
        assert_eq!(defined, MessageType::ALL.len());
    }

    #[test]
    fn fixed_reader_refuses_frames_larger_than_its_buffer() {
        let mut reader = FixedFrameReader::<16>::new();
        let err = reader.feed(&[0, 0, 0, 20, 0x41]).unwrap_err();
        assert_eq!(err, FrameError::FrameTooLarge { len: 20, max: 12 });
        assert_eq!(reader.feed(&[0]), Err(FrameError::Poisoned));
    }

    #[test]
    fn fixed_reader_splits_back_to_back_frames() {
        let mut reader = FixedFrameReader::<16>::new();
        let wire = [0, 0, 0, 2, 0x41, b'a', 0, 0, 0, 1, 0x42];
        let used = reader.feed(&wire).unwrap();
        assert_eq!(used, 6);
        assert_eq!(reader.frame(), Some((MessageType::Ping, &b"a"[..])));
        reader.consume_frame();
        reader.feed(&wire[used..]).unwrap();
        assert_eq!(reader.frame(), Some((MessageType::Pong, &b""[..])));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn decoder_does_not_reserve_the_declared_length() {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(&[0x01, 0x00, 0x00, 0x00, 0x10, 1, 2, 3, 4, 5]);
        assert_eq!(d.decode(), Ok(None));
        let buf = d.read_buffer();
        assert!(
            buf.capacity() <= 128 * 1024,
            "capacity {} for a 16 MiB declaration",
            buf.capacity()
        );
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn decoder_reassembles_arbitrary_splits_and_stays_failed() {
        let mut wire = bytes::BytesMut::new();
        encode_frame(
            MessageType::Ping,
            b"hello",
            DEFAULT_MAX_FRAME_LEN,
            &mut wire,
        )
        .unwrap();
        encode_frame(MessageType::Pong, b"", DEFAULT_MAX_FRAME_LEN, &mut wire).unwrap();
        for split in 0..wire.len() {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
            d.extend(&wire[..split]);
            let mut frames = alloc::vec::Vec::new();
            while let Some(f) = d.decode().unwrap() {
                frames.push(f);
            }
            d.extend(&wire[split..]);
            while let Some(f) = d.decode().unwrap() {
                frames.push(f);
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(&frames[0].payload[..], b"hello");
            assert_eq!(frames[1].kind, MessageType::Pong);
        }
        let mut d = FrameDecoder::new(8);
        d.extend(&[0, 0, 0, 9, 0x41]);
        let err = d.decode().unwrap_err();
        assert_eq!(err, FrameError::FrameTooLarge { len: 9, max: 8 });
        d.extend(&[0, 0, 0, 1, 0x41]);
        assert_eq!(d.decode(), Err(err));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn decoder_refuses_a_bad_length_before_the_type_byte() {
        let mut d = FrameDecoder::new(100);
        d.extend(&[0, 0, 0, 0]);
        assert_eq!(d.decode(), Err(FrameError::ZeroLength));
        let mut d = FrameDecoder::new(100);
        d.extend(&[0, 0, 1, 0]);
        assert_eq!(
            d.decode(),
            Err(FrameError::FrameTooLarge { len: 256, max: 100 })
        );
        let mut d = FrameDecoder::new(100);
        d.extend(&[0, 0, 0, 5]);
        assert_eq!(d.decode(), Ok(None));
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn encode_frame_with_rolls_back_on_error() {
        let mut out = bytes::BytesMut::from(&b"keep"[..]);
        let r = encode_frame_with(MessageType::Ping, 4, &mut out, |o| {
            o.extend_from_slice(b"toolong");
            Ok::<(), ()>(())
        });
        assert!(matches!(r, Err(FrameEncodeError::Frame(_))));
        assert_eq!(&out[..], b"keep");
        let r = encode_frame_with(MessageType::Ping, 4, &mut out, |_| Err::<(), _>("bad"));
        assert_eq!(r, Err(FrameEncodeError::Payload("bad")));
        assert_eq!(&out[..], b"keep");
    }
}
