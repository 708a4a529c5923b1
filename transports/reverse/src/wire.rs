//! Reading and writing the single registration frames on a raw stream (before a session
//! takes over the stream), with exact reads so no byte of the session is consumed early.

use agentwire_core::encoding::{DecodeError, EncodeError, encode_frame_of};
use agentwire_core::frame::{FrameError, HEADER_LEN, MessageType, parse_header};
use agentwire_core::message::Encoding;
use agentwire_runtime::{BoxReader, BoxWriter};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::fmt;
use std::io;

/// Default limit of a registration frame's length field: 64 KiB.
pub const DEFAULT_MAX_REGISTRATION_FRAME: u32 = 64 * 1024;

/// Why a registration frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended before a whole frame arrived.
    Eof,
    /// The stream failed.
    Io(io::Error),
    /// The header was refused (oversize, zero length, unknown type) before any payload was
    /// read.
    Frame(FrameError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Eof => f.write_str("stream ended before a complete frame"),
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
        }
    }
}

fn io_error(e: io::Error) -> ReadError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ReadError::Eof
    } else {
        ReadError::Io(e)
    }
}

/// Reads exactly one frame whose length field is at most `max_len`; the header is checked
/// before anything is allocated for the payload.
pub(crate) async fn read_frame(
    reader: &mut BoxReader,
    max_len: u32,
) -> Result<(MessageType, Vec<u8>), ReadError> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).await.map_err(io_error)?;
    let header = parse_header(&header, max_len).map_err(ReadError::Frame)?;
    let mut payload = vec![0u8; header.payload_len as usize];
    reader.read_exact(&mut payload).await.map_err(io_error)?;
    Ok((header.kind, payload))
}

/// Encodes `value` as one JSON frame of `kind`.
pub(crate) fn json_frame<T: serde::Serialize>(
    kind: MessageType,
    value: &T,
    max_len: u32,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = bytes::BytesMut::new();
    encode_frame_of(kind, value, Encoding::Json, max_len, &mut out)?;
    Ok(out.to_vec())
}

/// Writes and flushes `bytes`.
pub(crate) async fn write_all(writer: &mut BoxWriter, bytes: &[u8]) -> io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Decodes a JSON payload of `kind`.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    kind: MessageType,
    payload: &[u8],
) -> Result<T, DecodeError> {
    agentwire_core::encoding::decode_message(kind, payload, Encoding::Json)
}
