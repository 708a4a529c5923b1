//! Encoding and decoding message payloads, and whole frames, in each negotiated encoding.
//!
//! * JSON: compact; proxy-to-agent events get the reference's byte layout (keys sorted at
//!   every level, a top-level `correlation_id`, body bytes as base64 text).
//! * MessagePack: structs as maps keyed by field name, in declaration order (the reference's
//!   `to_vec_named`). Body bytes are base64 text unless the agent said it decodes raw bytes
//!   (agentwire agents do), in which case they are MessagePack `bin`.
//! * postcard: agentwire-to-agentwire only; body bytes raw.
//!
//! Decoding a body chunk or WebSocket frame whose bytes travel raw returns a zero-copy slice
//! of the frame payload.

use crate::frame::{FrameEncodeError, FrameError, MessageType, encode_frame_with};
use crate::message::*;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use core::fmt;
use serde::de::{DeserializeOwned, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How events are written on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFormat {
    /// The negotiated encoding.
    pub encoding: Encoding,
    /// Send body bytes raw on MessagePack (the peer is an agentwire agent).
    pub raw_body_bytes: bool,
}

impl WireFormat {
    /// JSON, as before any negotiation.
    pub const JSON: WireFormat = WireFormat {
        encoding: Encoding::Json,
        raw_body_bytes: false,
    };

    /// The given encoding, body bytes as the reference expects them.
    #[must_use]
    pub const fn new(encoding: Encoding) -> Self {
        WireFormat {
            encoding,
            raw_body_bytes: false,
        }
    }

    fn raw_bytes(self) -> bool {
        match self.encoding {
            Encoding::Json => false,
            Encoding::Msgpack => self.raw_body_bytes,
            Encoding::Postcard => true,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoding is not compiled into this build.
    Unavailable(Encoding),
    /// The serializer refused the value (e.g. a map key that is not a string).
    Serialize {
        /// The message type.
        kind: MessageType,
        /// The serializer's explanation.
        detail: String,
    },
    /// The encoded message does not fit in a frame.
    Frame(FrameError),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Unavailable(e) => write!(f, "encoding {} is not available", e.as_str()),
            EncodeError::Serialize { kind, detail } => {
                write!(f, "cannot encode {kind}: {detail}")
            }
            EncodeError::Frame(e) => write!(f, "cannot frame message: {e}"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why a payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeError {
    /// The frame's message type.
    pub kind: MessageType,
    /// The encoding it was read in.
    pub encoding: Encoding,
    /// The decoder's explanation.
    pub detail: String,
    /// Why, as far as the decoder can tell.
    pub cause: DecodeCause,
}

/// The class of a [`DecodeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeCause {
    /// Not a valid message of its type (syntax, types, missing keys, nesting, …).
    Malformed,
    /// A list or map has more than [`MAX_COLLECTION_LEN`] elements (a header map counts
    /// every value). A deliberate limit of agentwire; the reference has none.
    TooManyElements,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decode {} as {}: {}",
            self.kind,
            self.encoding.as_str(),
            self.detail
        )
    }
}

impl core::error::Error for DecodeError {}

fn decode_error(kind: MessageType, encoding: Encoding, detail: impl fmt::Display) -> DecodeError {
    let detail = detail.to_string();
    // JSON and MessagePack keep the text of a custom error (JSON appends the position);
    // postcard drops it, so its refusals are read from the note `too_many` leaves.
    // (The note is cleared whatever the encoding, so it cannot outlive this error.)
    let noted = take_refusal();
    let refused = match encoding {
        Encoding::Postcard => noted && detail != "not an event",
        _ => detail.starts_with(TOO_MANY),
    };
    DecodeError {
        kind,
        encoding,
        detail,
        cause: if refused {
            DecodeCause::TooManyElements
        } else {
            DecodeCause::Malformed
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Generic payload codec

/// Appends `value` encoded in `encoding` to `out`.
pub fn encode_payload<T: Serialize + ?Sized>(
    kind: MessageType,
    value: &T,
    encoding: Encoding,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let ser_err = |detail: String| EncodeError::Serialize { kind, detail };
    match encoding {
        Encoding::Json => {
            #[cfg(feature = "std")]
            {
                serde_json::to_writer(bytes::BufMut::writer(out), value)
                    .map_err(|e| ser_err(e.to_string()))
            }
            #[cfg(not(feature = "std"))]
            {
                let v = serde_json::to_vec(value).map_err(|e| ser_err(e.to_string()))?;
                out.extend_from_slice(&v);
                Ok(())
            }
        }
        Encoding::Msgpack => {
            #[cfg(feature = "msgpack")]
            {
                let mut ser = rmp_serde::Serializer::new(bytes::BufMut::writer(out))
                    .with_struct_map()
                    .with_human_readable();
                value
                    .serialize(&mut ser)
                    .map_err(|e| ser_err(e.to_string()))
            }
            #[cfg(not(feature = "msgpack"))]
            {
                let _ = (value, out, ser_err);
                Err(EncodeError::Unavailable(Encoding::Msgpack))
            }
        }
        Encoding::Postcard => {
            #[cfg(feature = "postcard")]
            {
                postcard::serialize_with_flavor(value, BytesMutFlavor(out))
                    .map_err(|e| ser_err(e.to_string()))
            }
            #[cfg(not(feature = "postcard"))]
            {
                let _ = (value, out, ser_err);
                Err(EncodeError::Unavailable(Encoding::Postcard))
            }
        }
    }
}

/// A postcard flavor appending to a `BytesMut` a slice at a time (`postcard::to_extend`
/// pushes every byte through `Extend<u8>` on its own).
#[cfg(feature = "postcard")]
struct BytesMutFlavor<'a>(&'a mut BytesMut);

#[cfg(feature = "postcard")]
impl postcard::ser_flavors::Flavor for BytesMutFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        bytes::BufMut::put_u8(self.0, data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The deepest nesting of arrays and maps (the message itself included) a MessagePack
/// payload may have: serde_json's fixed recursion limit, which bounds JSON payloads.
#[cfg(feature = "msgpack")]
const MAX_NESTING: usize = 128;

/// Decodes a payload borrowing from `payload` where the type allows it.
pub fn decode_payload<'a, T: Deserialize<'a>>(
    kind: MessageType,
    payload: &'a [u8],
    encoding: Encoding,
) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Json => {
            serde_json::from_slice(payload).map_err(|e| decode_error(kind, encoding, e))
        }
        Encoding::Msgpack => {
            #[cfg(feature = "msgpack")]
            {
                let mut de = rmp_serde::Deserializer::from_read_ref(payload).with_human_readable();
                // rmp-serde's default nesting limit (1024) lets a hostile `0x91 0x91 …` payload
                // recurse through `AnyValue` deep enough to overflow a 2 MiB thread stack in
                // debug builds. Use serde_json's limit instead, so both encodings accept
                // exactly the same nesting.
                de.set_max_depth(MAX_NESTING);
                T::deserialize(&mut de).map_err(|e| decode_error(kind, encoding, e))
            }
            #[cfg(not(feature = "msgpack"))]
            {
                Err(decode_error(kind, encoding, "encoding not available"))
            }
        }
        Encoding::Postcard => {
            #[cfg(feature = "postcard")]
            {
                // A refusal noted by an earlier decode (one whose error was caught and
                // discarded) must not classify this one.
                take_refusal();
                postcard::from_bytes(payload).map_err(|e| decode_error(kind, encoding, e))
            }
            #[cfg(not(feature = "postcard"))]
            {
                Err(decode_error(kind, encoding, "encoding not available"))
            }
        }
    }
}

/// Appends a complete frame carrying `value` to `out`; `out` is unchanged on error.
pub fn encode_frame_of<T: Serialize + ?Sized>(
    kind: MessageType,
    value: &T,
    encoding: Encoding,
    max_frame_len: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !encoding.is_available() {
        return Err(EncodeError::Unavailable(encoding));
    }
    encode_frame_with(kind, max_frame_len, out, |o| {
        encode_payload(kind, value, encoding, o)
    })
    .map_err(|e| match e {
        FrameEncodeError::Payload(e) => e,
        FrameEncodeError::Frame(e) => EncodeError::Frame(e),
    })
}

/// Decodes an agent's answer (`0x20`): [`decode_message`] with a direct path for the plain
/// Allow answers MessagePack agents send for nearly every event.
pub fn decode_response(payload: &[u8], encoding: Encoding) -> Result<AgentResponse, DecodeError> {
    #[cfg(feature = "msgpack")]
    if encoding == Encoding::Msgpack
        && let Some(r) = crate::msgpack_fast::agent_response(payload)
    {
        return Ok(r);
    }
    decode_message(MessageType::AgentResponse, payload, encoding)
}

/// Decodes an owned message of type `T`.
pub fn decode_message<T: DeserializeOwned>(
    kind: MessageType,
    payload: &[u8],
    encoding: Encoding,
) -> Result<T, DecodeError> {
    decode_payload(kind, payload, encoding)
}

// ---------------------------------------------------------------------------------------------
// Body bytes

struct BodyData<'a> {
    bytes: &'a Bytes,
    raw: bool,
}

impl Serialize for BodyData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.raw {
            s.serialize_bytes(self.bytes)
        } else {
            s.serialize_str(&BASE64.encode(self.bytes))
        }
    }
}

/// Body bytes as decoded: borrowed from the payload when they travelled raw.
enum DataRef<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl DataRef<'_> {
    fn into_bytes(self, payload: &Bytes) -> Bytes {
        match self {
            DataRef::Borrowed(slice) => {
                let base = payload.as_ptr() as usize;
                let start = slice.as_ptr() as usize;
                // Serde hands out slices of the input, which is `payload`; anything else (it
                // cannot happen with these decoders) is copied rather than trusted.
                if start >= base && start + slice.len() <= base + payload.len() {
                    payload.slice_ref(slice)
                } else {
                    Bytes::copy_from_slice(slice)
                }
            }
            DataRef::Owned(v) => Bytes::from(v),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for DataRef<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DataVisitor<'a>(core::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for DataVisitor<'a> {
            type Value = DataRef<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 text or raw bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(
                self,
                v: &'de [u8],
            ) -> Result<Self::Value, E> {
                Ok(DataRef::Borrowed(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(DataRef::Owned(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(DataRef::Owned(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                BASE64
                    .decode(v)
                    .map(DataRef::Owned)
                    .map_err(|_| E::custom("body data is not valid base64"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                // Some encoders write bytes as an array of integers.
                let mut v = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(DataRef::Owned(v))
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(DataVisitor(core::marker::PhantomData))
        } else {
            d.deserialize_bytes(DataVisitor(core::marker::PhantomData))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Event views: the exact key order and byte forms of each encoding

pub(crate) struct RequestHeadersWire<'a>(pub(crate) &'a RequestHeaders, pub(crate) WireFormat);
struct MetadataJson<'a>(&'a RequestMetadata);
struct MetadataMsgpack<'a>(&'a RequestMetadata);
struct BodyChunkWire<'a> {
    chunk: &'a BodyChunk,
    response: bool,
    format: WireFormat,
}
struct ResponseHeadersJson<'a>(&'a ResponseHeaders);
struct RequestCompleteJson<'a>(&'a RequestComplete);
struct WebSocketFrameWire<'a>(&'a WebSocketFrame, WireFormat);
struct GuardrailWire<'a>(&'a GuardrailInspect, Encoding);

impl Serialize for RequestHeadersWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (e, format) = (self.0, self.1);
        if format.encoding == Encoding::Msgpack {
            // Declaration order, but `traceparent` is omitted when absent (spec §5.1 "Omit"):
            // the derived form writes `nil`, which postcard's positional layout needs.
            let mut st = s.serialize_struct("RequestHeaders", 4)?;
            st.serialize_field("metadata", &MetadataMsgpack(&e.metadata))?;
            st.serialize_field("method", &e.method)?;
            st.serialize_field("uri", &e.uri)?;
            st.serialize_field("headers", &e.headers)?;
            return st.end();
        }
        if format.encoding != Encoding::Json {
            return e.serialize(s);
        }
        let mut st = s.serialize_struct("RequestHeaders", 5)?;
        st.serialize_field("correlation_id", &e.metadata.correlation_id)?;
        st.serialize_field("headers", &e.headers)?;
        st.serialize_field("metadata", &MetadataJson(&e.metadata))?;
        st.serialize_field("method", &e.method)?;
        st.serialize_field("uri", &e.uri)?;
        st.end()
    }
}

impl Serialize for MetadataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut st = s.serialize_struct("RequestMetadata", 12)?;
        st.serialize_field("client_ip", &m.client_ip)?;
        st.serialize_field("client_port", &m.client_port)?;
        st.serialize_field("correlation_id", &m.correlation_id)?;
        st.serialize_field("protocol", &m.protocol)?;
        st.serialize_field("request_id", &m.request_id)?;
        st.serialize_field("route_id", &m.route_id)?;
        st.serialize_field("server_name", &m.server_name)?;
        st.serialize_field("timestamp", &m.timestamp)?;
        st.serialize_field("tls_cipher", &m.tls_cipher)?;
        st.serialize_field("tls_version", &m.tls_version)?;
        if let Some(tp) = &m.traceparent {
            st.serialize_field("traceparent", tp)?;
        }
        st.serialize_field("upstream_id", &m.upstream_id)?;
        st.end()
    }
}

impl Serialize for MetadataMsgpack<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        // rmp-serde writes the map header from this count: it must be exact.
        let len = 11 + usize::from(m.traceparent.is_some());
        let mut st = s.serialize_struct("RequestMetadata", len)?;
        st.serialize_field("correlation_id", &m.correlation_id)?;
        st.serialize_field("request_id", &m.request_id)?;
        st.serialize_field("client_ip", &m.client_ip)?;
        st.serialize_field("client_port", &m.client_port)?;
        st.serialize_field("server_name", &m.server_name)?;
        st.serialize_field("protocol", &m.protocol)?;
        st.serialize_field("tls_version", &m.tls_version)?;
        st.serialize_field("tls_cipher", &m.tls_cipher)?;
        st.serialize_field("route_id", &m.route_id)?;
        st.serialize_field("upstream_id", &m.upstream_id)?;
        st.serialize_field("timestamp", &m.timestamp)?;
        if let Some(tp) = &m.traceparent {
            st.serialize_field("traceparent", tp)?;
        }
        st.end()
    }
}

impl Serialize for BodyChunkWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.chunk;
        let counter = if self.response {
            "bytes_sent"
        } else {
            "bytes_received"
        };
        let data = BodyData {
            bytes: &c.data,
            raw: self.format.raw_bytes(),
        };
        match self.format.encoding {
            Encoding::Json => {
                let mut st = s.serialize_struct("BodyChunk", 6)?;
                st.serialize_field(counter, &c.bytes_transferred)?;
                st.serialize_field("chunk_index", &c.chunk_index)?;
                st.serialize_field("correlation_id", &c.correlation_id)?;
                st.serialize_field("data", &data)?;
                st.serialize_field("is_last", &c.is_last)?;
                st.serialize_field("total_size", &c.total_size)?;
                st.end()
            }
            Encoding::Msgpack => {
                let mut st = s.serialize_struct("BodyChunk", 6)?;
                st.serialize_field("correlation_id", &c.correlation_id)?;
                st.serialize_field("data", &data)?;
                st.serialize_field("is_last", &c.is_last)?;
                st.serialize_field("total_size", &c.total_size)?;
                st.serialize_field("chunk_index", &c.chunk_index)?;
                st.serialize_field(counter, &c.bytes_transferred)?;
                st.end()
            }
            Encoding::Postcard => {
                // Positional: the exact field list of `BodyChunkView`.
                let (received, sent) = if self.response {
                    (None, Some(c.bytes_transferred))
                } else {
                    (Some(c.bytes_transferred), None)
                };
                let mut st = s.serialize_struct("BodyChunk", 7)?;
                st.serialize_field("correlation_id", &c.correlation_id)?;
                st.serialize_field("data", &data)?;
                st.serialize_field("is_last", &c.is_last)?;
                st.serialize_field("total_size", &c.total_size)?;
                st.serialize_field("chunk_index", &c.chunk_index)?;
                st.serialize_field("bytes_received", &received)?;
                st.serialize_field("bytes_sent", &sent)?;
                st.end()
            }
        }
    }
}

impl Serialize for ResponseHeadersJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut st = s.serialize_struct("ResponseHeaders", 3)?;
        st.serialize_field("correlation_id", &e.correlation_id)?;
        st.serialize_field("headers", &e.headers)?;
        st.serialize_field("status", &e.status)?;
        st.end()
    }
}

impl Serialize for RequestCompleteJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut st = s.serialize_struct("RequestComplete", 7)?;
        st.serialize_field("correlation_id", &e.correlation_id)?;
        st.serialize_field("duration_ms", &e.duration_ms)?;
        st.serialize_field("error", &e.error)?;
        st.serialize_field("request_body_size", &e.request_body_size)?;
        st.serialize_field("response_body_size", &e.response_body_size)?;
        st.serialize_field("status", &e.status)?;
        st.serialize_field("upstream_attempts", &e.upstream_attempts)?;
        st.end()
    }
}

impl Serialize for WebSocketFrameWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (e, format) = (self.0, self.1);
        let data = BodyData {
            bytes: &e.data,
            raw: format.raw_bytes(),
        };
        let mut st = s.serialize_struct("WebSocketFrame", 8)?;
        if format.encoding == Encoding::Json {
            st.serialize_field("client_ip", &e.client_ip)?;
            st.serialize_field("client_to_server", &e.client_to_server)?;
            st.serialize_field("correlation_id", &e.correlation_id)?;
            st.serialize_field("data", &data)?;
            st.serialize_field("fin", &e.fin)?;
            st.serialize_field("frame_index", &e.frame_index)?;
            st.serialize_field("opcode", &e.opcode)?;
            st.serialize_field("route_id", &e.route_id)?;
        } else {
            st.serialize_field("correlation_id", &e.correlation_id)?;
            st.serialize_field("opcode", &e.opcode)?;
            st.serialize_field("data", &data)?;
            st.serialize_field("client_to_server", &e.client_to_server)?;
            st.serialize_field("frame_index", &e.frame_index)?;
            st.serialize_field("fin", &e.fin)?;
            st.serialize_field("route_id", &e.route_id)?;
            st.serialize_field("client_ip", &e.client_ip)?;
        }
        st.end()
    }
}

impl Serialize for GuardrailWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        if self.1 == Encoding::Msgpack {
            // rmp-serde writes the map header from this count: it must be exact.
            let len = 5 + usize::from(e.model.is_some()) + usize::from(e.route_id.is_some());
            let mut st = s.serialize_struct("GuardrailInspect", len)?;
            // Declaration order with `model` and `route_id` omitted when absent (spec §5.6
            // "Omit"; vector `msgpack/guardrail_inspect_then_cancel_all/GuardrailInspect`).
            st.serialize_field("correlation_id", &e.correlation_id)?;
            st.serialize_field("inspection_type", &e.inspection_type)?;
            st.serialize_field("content", &e.content)?;
            if let Some(model) = &e.model {
                st.serialize_field("model", model)?;
            }
            st.serialize_field("categories", &e.categories)?;
            if let Some(route) = &e.route_id {
                st.serialize_field("route_id", route)?;
            }
            st.serialize_field("metadata", &e.metadata)?;
            return st.end();
        }
        let mut st = s.serialize_struct("GuardrailInspect", 7)?;
        st.serialize_field("categories", &e.categories)?;
        st.serialize_field("content", &e.content)?;
        st.serialize_field("correlation_id", &e.correlation_id)?;
        st.serialize_field("inspection_type", &e.inspection_type)?;
        st.serialize_field("metadata", &e.metadata)?;
        if let Some(model) = &e.model {
            st.serialize_field("model", model)?;
        }
        if let Some(route) = &e.route_id {
            st.serialize_field("route_id", route)?;
        }
        st.end()
    }
}

/// Appends the frame for `event` in `format`; `out` is unchanged on error.
pub fn encode_event(
    event: &Event,
    format: WireFormat,
    max_frame_len: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let kind = event.message_type();
    let enc = format.encoding;
    let json = enc == Encoding::Json;
    match event {
        #[cfg(feature = "msgpack")]
        Event::RequestHeaders(e) if enc == Encoding::Msgpack => {
            match encode_frame_with(kind, max_frame_len, out, |o| {
                crate::msgpack_fast::write_request_headers(e, o).ok_or(())
            }) {
                Ok(()) => Ok(()),
                Err(FrameEncodeError::Frame(e)) => Err(EncodeError::Frame(e)),
                // Longer than MessagePack can say: the serde encoder reports it.
                Err(FrameEncodeError::Payload(())) => encode_frame_of(
                    kind,
                    &RequestHeadersWire(e, format),
                    enc,
                    max_frame_len,
                    out,
                ),
            }
        }
        Event::RequestHeaders(e) => encode_frame_of(
            kind,
            &RequestHeadersWire(e, format),
            enc,
            max_frame_len,
            out,
        ),
        Event::RequestBodyChunk(c) | Event::ResponseBodyChunk(c) => {
            let wire = BodyChunkWire {
                chunk: c,
                response: matches!(event, Event::ResponseBodyChunk(_)),
                format,
            };
            encode_frame_of(kind, &wire, enc, max_frame_len, out)
        }
        Event::ResponseHeaders(e) if json => {
            encode_frame_of(kind, &ResponseHeadersJson(e), enc, max_frame_len, out)
        }
        Event::ResponseHeaders(e) => encode_frame_of(kind, e, enc, max_frame_len, out),
        Event::RequestComplete(e) if json => {
            encode_frame_of(kind, &RequestCompleteJson(e), enc, max_frame_len, out)
        }
        Event::RequestComplete(e) => encode_frame_of(kind, e, enc, max_frame_len, out),
        Event::WebSocketFrame(e) => encode_frame_of(
            kind,
            &WebSocketFrameWire(e, format),
            enc,
            max_frame_len,
            out,
        ),
        Event::GuardrailInspect(e) if enc == Encoding::Postcard => {
            encode_frame_of(kind, e, enc, max_frame_len, out)
        }
        Event::GuardrailInspect(e) => {
            encode_frame_of(kind, &GuardrailWire(e, enc), enc, max_frame_len, out)
        }
        Event::Configure(e) => encode_frame_of(kind, e, enc, max_frame_len, out),
    }
}

// ---------------------------------------------------------------------------------------------
// Agent responses: the correlation id goes into `audit.custom` while encoding

/// An [`AgentResponse`] as the wire carries it with `audit.custom["correlation_id"]` set to
/// `id`: exactly the bytes of `set_correlation_id(id)` followed by encoding the response, but
/// without inserting into (and allocating for) the caller's map.
pub(crate) struct ResponseWithId<'a> {
    pub(crate) response: &'a AgentResponse,
    pub(crate) id: &'a str,
}

struct AuditWithId<'a> {
    audit: &'a Audit,
    id: &'a str,
}

struct CustomWithId<'a> {
    custom: &'a alloc::collections::BTreeMap<String, AnyValue>,
    id: &'a str,
}

/// A string as [`AnyValue`] writes it: structurally where the format is self-describing,
/// as JSON text on postcard.
struct IdValue<'a>(&'a str);

/// A string as compact JSON text (serde_json's escapes), written without a buffer.
struct JsonStr<'a>(&'a str);

impl fmt::Display for JsonStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        f.write_char('"')?;
        let s = self.0;
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            f.write_str(&s[start..i])?;
            if escape.is_empty() {
                f.write_str("\\u00")?;
                f.write_char(char::from(HEX[usize::from(b >> 4)]))?;
                f.write_char(char::from(HEX[usize::from(b & 0xf)]))?;
            } else {
                f.write_str(escape)?;
            }
            start = i + 1;
        }
        f.write_str(&s[start..])?;
        f.write_char('"')
    }
}

impl Serialize for IdValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.0)
        } else {
            s.collect_str(&JsonStr(self.0))
        }
    }
}

impl Serialize for CustomWithId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let key = CORRELATION_ID_KEY;
        let replaced = self.custom.contains_key(key);
        let len = self.custom.len() + usize::from(!replaced);
        let mut map = s.serialize_map(Some(len))?;
        let mut written = false;
        for (k, v) in self.custom {
            if !written && k.as_str() >= key {
                map.serialize_entry(key, &IdValue(self.id))?;
                written = true;
            }
            if k != key {
                map.serialize_entry(k, v)?;
            }
        }
        if !written {
            map.serialize_entry(key, &IdValue(self.id))?;
        }
        map.end()
    }
}

impl Serialize for AuditWithId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The derived `Audit` layout, field for field.
        let a = self.audit;
        let mut st = s.serialize_struct("Audit", 5)?;
        st.serialize_field("tags", &a.tags)?;
        st.serialize_field("rule_ids", &a.rule_ids)?;
        st.serialize_field("confidence", &a.confidence)?;
        st.serialize_field("reason_codes", &a.reason_codes)?;
        st.serialize_field(
            "custom",
            &CustomWithId {
                custom: &a.custom,
                id: self.id,
            },
        )?;
        st.end()
    }
}

impl Serialize for ResponseWithId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The derived `AgentResponse` layout, field for field.
        let r = self.response;
        let mut st = s.serialize_struct("AgentResponse", 10)?;
        st.serialize_field("version", &r.version)?;
        st.serialize_field("decision", &r.decision)?;
        st.serialize_field("request_headers", &r.request_headers)?;
        st.serialize_field("response_headers", &r.response_headers)?;
        st.serialize_field("routing_metadata", &r.routing_metadata)?;
        st.serialize_field(
            "audit",
            &AuditWithId {
                audit: &r.audit,
                id: self.id,
            },
        )?;
        st.serialize_field("needs_more", &r.needs_more)?;
        st.serialize_field("request_body_mutation", &r.request_body_mutation)?;
        st.serialize_field("response_body_mutation", &r.response_body_mutation)?;
        st.serialize_field("websocket_decision", &r.websocket_decision)?;
        st.end()
    }
}

/// Appends the frame of `response` with `audit.custom["correlation_id"]` set to
/// `correlation_id` (replacing any value there): the same bytes as
/// [`AgentResponse::set_correlation_id`] followed by [`encode_frame_of`], without touching
/// `response`. `out` is unchanged on error.
pub fn encode_response(
    response: &AgentResponse,
    correlation_id: &str,
    encoding: Encoding,
    max_frame_len: u32,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    #[cfg(feature = "msgpack")]
    if encoding == Encoding::Msgpack {
        match encode_frame_with(MessageType::AgentResponse, max_frame_len, out, |o| {
            crate::msgpack_fast::write_plain_response(response, correlation_id, o).ok_or(())
        }) {
            Ok(()) => return Ok(()),
            Err(FrameEncodeError::Frame(e)) => return Err(EncodeError::Frame(e)),
            // Not a plain Allow: the serde encoder below.
            Err(FrameEncodeError::Payload(())) => {}
        }
    }
    let wire = ResponseWithId {
        response,
        id: correlation_id,
    };
    encode_frame_of(
        MessageType::AgentResponse,
        &wire,
        encoding,
        max_frame_len,
        out,
    )
}

#[derive(Deserialize)]
struct BodyChunkView<'a> {
    correlation_id: String,
    #[serde(borrow)]
    data: DataRef<'a>,
    is_last: bool,
    #[serde(default)]
    total_size: Option<u64>,
    #[serde(default, deserialize_with = "zero_if_null")]
    chunk_index: u32,
    #[serde(default)]
    bytes_received: Option<u64>,
    #[serde(default)]
    bytes_sent: Option<u64>,
}

#[derive(Deserialize)]
struct WebSocketFrameView<'a> {
    correlation_id: String,
    opcode: String,
    #[serde(borrow)]
    data: DataRef<'a>,
    client_to_server: bool,
    frame_index: u64,
    fin: bool,
    #[serde(default)]
    route_id: Option<String>,
    client_ip: String,
}

fn zero_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    if d.is_human_readable() {
        Ok(Option::<u32>::deserialize(d)?.unwrap_or(0))
    } else {
        u32::deserialize(d)
    }
}

/// Decodes the event carried by a frame of type `kind`. Body bytes that travelled raw come
/// back as slices of `payload`, without a copy.
pub fn decode_event(
    kind: MessageType,
    payload: &Bytes,
    encoding: Encoding,
) -> Result<Event, DecodeError> {
    Ok(match kind {
        MessageType::RequestHeaders => {
            #[cfg(feature = "msgpack")]
            if encoding == Encoding::Msgpack
                && let Some(e) = crate::msgpack_fast::request_headers(payload)
            {
                return Ok(Event::RequestHeaders(e));
            }
            Event::RequestHeaders(decode_payload(kind, payload, encoding)?)
        }
        MessageType::RequestBodyChunk | MessageType::ResponseBodyChunk => {
            let v: BodyChunkView<'_> = decode_payload(kind, payload, encoding)?;
            let response = kind == MessageType::ResponseBodyChunk;
            let counter = if response {
                v.bytes_sent.or(v.bytes_received)
            } else {
                v.bytes_received.or(v.bytes_sent)
            };
            let chunk = BodyChunk {
                correlation_id: v.correlation_id,
                data: v.data.into_bytes(payload),
                is_last: v.is_last,
                total_size: v.total_size,
                chunk_index: v.chunk_index,
                bytes_transferred: counter.unwrap_or(0),
            };
            if response {
                Event::ResponseBodyChunk(chunk)
            } else {
                Event::RequestBodyChunk(chunk)
            }
        }
        MessageType::ResponseHeaders => {
            #[cfg(feature = "msgpack")]
            if encoding == Encoding::Msgpack
                && let Some(e) = crate::msgpack_fast::response_headers(payload)
            {
                return Ok(Event::ResponseHeaders(e));
            }
            Event::ResponseHeaders(decode_payload(kind, payload, encoding)?)
        }
        MessageType::RequestComplete => {
            Event::RequestComplete(decode_payload(kind, payload, encoding)?)
        }
        MessageType::WebSocketFrame => {
            let v: WebSocketFrameView<'_> = decode_payload(kind, payload, encoding)?;
            Event::WebSocketFrame(WebSocketFrame {
                correlation_id: v.correlation_id,
                opcode: v.opcode,
                data: v.data.into_bytes(payload),
                client_to_server: v.client_to_server,
                frame_index: v.frame_index,
                fin: v.fin,
                route_id: v.route_id,
                client_ip: v.client_ip,
            })
        }
        MessageType::GuardrailInspect => {
            Event::GuardrailInspect(decode_payload(kind, payload, encoding)?)
        }
        MessageType::Configure => Event::Configure(decode_payload(kind, payload, encoding)?),
        _ => return Err(decode_error(kind, encoding, "not an event")),
    })
}

/// Finds the correlation id of an event that could not be decoded, as the reference agent
/// does (top-level `correlation_id`, else `metadata.correlation_id`), so the agent can still
/// answer it — with a refusal, never an Allow.
#[must_use]
pub fn salvage_correlation_id(payload: &[u8], encoding: Encoding) -> Option<String> {
    // Each field is read as an arbitrary value and inspected on its own, so one malformed
    // field (say `"metadata": 42`) does not hide a good id in the other.
    #[derive(Deserialize)]
    struct Salvage {
        #[serde(default)]
        correlation_id: Option<AnyValue>,
        #[serde(default)]
        metadata: Option<AnyValue>,
    }
    if encoding == Encoding::Postcard {
        // Positional: every event starts with its id except RequestHeaders (metadata first,
        // whose first field is the id), so a leading string is the id either way.
        return decode_payload::<(String,)>(MessageType::Cancel, payload, encoding)
            .ok()
            .map(|t| t.0)
            .filter(|s| !s.is_empty());
    }
    let s: Salvage = decode_payload(MessageType::Cancel, payload, encoding).ok()?;
    let top = s
        .correlation_id
        .and_then(|v| v.as_str().map(String::from))
        .filter(|id| !id.is_empty());
    top.or_else(|| {
        s.metadata?
            .0
            .get("correlation_id")?
            .as_str()
            .filter(|id| !id.is_empty())
            .map(String::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn chunk() -> BodyChunk {
        BodyChunk {
            correlation_id: "r1".into(),
            data: Bytes::from_static(b"pass=\x00\xff\x01secret"),
            is_last: true,
            total_size: Some(24),
            chunk_index: 1,
            bytes_transferred: 24,
        }
    }

    fn round_trip(event: &Event, format: WireFormat) -> (Event, Bytes) {
        let mut out = BytesMut::new();
        encode_event(event, format, crate::frame::DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        let payload = out.freeze().slice(crate::frame::HEADER_LEN..);
        (
            decode_event(event.message_type(), &payload, format.encoding).unwrap(),
            payload,
        )
    }

    #[test]
    fn body_chunks_round_trip_in_every_encoding_and_direction() {
        let mut formats = vec![WireFormat::JSON];
        if Encoding::Msgpack.is_available() {
            formats.push(WireFormat::new(Encoding::Msgpack));
            formats.push(WireFormat {
                encoding: Encoding::Msgpack,
                raw_body_bytes: true,
            });
        }
        if Encoding::Postcard.is_available() {
            formats.push(WireFormat::new(Encoding::Postcard));
        }
        for format in formats {
            for event in [
                Event::RequestBodyChunk(chunk()),
                Event::ResponseBodyChunk(chunk()),
            ] {
                let (back, _) = round_trip(&event, format);
                assert_eq!(back, event, "{format:?}");
            }
        }
    }

    #[test]
    fn raw_body_bytes_decode_without_a_copy() {
        for format in [
            WireFormat {
                encoding: Encoding::Msgpack,
                raw_body_bytes: true,
            },
            WireFormat::new(Encoding::Postcard),
        ] {
            if !format.encoding.is_available() {
                continue;
            }
            let (back, payload) = round_trip(&Event::RequestBodyChunk(chunk()), format);
            let Event::RequestBodyChunk(c) = back else {
                panic!("wrong event")
            };
            let range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
            assert!(
                range.contains(&(c.data.as_ptr() as usize)),
                "{format:?}: data was copied"
            );
        }
    }

    #[test]
    fn invalid_base64_is_an_error_not_garbage() {
        let payload = Bytes::from_static(br#"{"correlation_id":"x","data":"%%%","is_last":true}"#);
        let err =
            decode_event(MessageType::RequestBodyChunk, &payload, Encoding::Json).unwrap_err();
        assert_eq!(err.kind, MessageType::RequestBodyChunk);
        assert!(err.detail.contains("base64"), "{err}");
    }

    #[test]
    fn salvages_ids_from_broken_events() {
        assert_eq!(
            salvage_correlation_id(br#"{"correlation_id":"a","x":1}"#, Encoding::Json),
            Some("a".into())
        );
        assert_eq!(
            salvage_correlation_id(br#"{"metadata":{"correlation_id":"b"}}"#, Encoding::Json),
            Some("b".into())
        );
        assert_eq!(salvage_correlation_id(b"\xff", Encoding::Json), None);
        assert_eq!(
            salvage_correlation_id(br#"{"correlation_id":"c","metadata":42}"#, Encoding::Json),
            Some("c".into())
        );
        assert_eq!(
            salvage_correlation_id(
                br#"{"correlation_id":7,"metadata":{"correlation_id":"m"}}"#,
                Encoding::Json
            ),
            Some("m".into())
        );
    }

    #[test]
    fn encode_response_matches_set_correlation_id() {
        let mut encodings = vec![Encoding::Json];
        for e in [Encoding::Msgpack, Encoding::Postcard] {
            if e.is_available() {
                encodings.push(e);
            }
        }
        let ids = [
            "r-1",
            "",
            "quote\" back\\ nl\n\u{1}\u{1f}\u{7f} é \u{1F600}\t\r\u{8}\u{c}",
        ];
        let mut full = AgentResponse::block(403);
        full.audit.tags.push("t".into());
        full.routing_metadata.insert("k".into(), "v".into());
        for key in [
            "a",
            "correlation_id",
            "d",
            "z",
            "correlation_ie",
            "correlation",
        ] {
            let mut r = full.clone();
            r.audit.custom.insert(key.into(), AnyValue::from("old"));
            for enc in &encodings {
                for id in ids {
                    for base in [AgentResponse::allow(), full.clone(), r.clone()] {
                        let mut want = BytesMut::new();
                        let mut set = base.clone();
                        set.set_correlation_id(id);
                        encode_frame_of(
                            MessageType::AgentResponse,
                            &set,
                            *enc,
                            u32::MAX,
                            &mut want,
                        )
                        .unwrap();
                        let mut got = BytesMut::new();
                        encode_response(&base, id, *enc, u32::MAX, &mut got).unwrap();
                        assert_eq!(got, want, "{enc:?} {id:?} {key}");
                    }
                }
            }
        }
    }

    #[test]
    fn json_str_escapes_like_serde_json() {
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0x1F600]) {
            let s: String = [char::from_u32(c).unwrap(), 'x'].into_iter().collect();
            assert_eq!(
                alloc::format!("{}", JsonStr(&s)),
                serde_json::to_string(&s).unwrap(),
                "{c:#x}"
            );
        }
    }

    #[test]
    fn oversize_payload_is_refused_and_leaves_the_buffer_alone() {
        let mut out = BytesMut::from(&b"prior"[..]);
        let big = Event::RequestBodyChunk(BodyChunk {
            data: Bytes::from(vec![7u8; 4096]),
            ..chunk()
        });
        let err = encode_event(&big, WireFormat::JSON, 1024, &mut out).unwrap_err();
        assert!(matches!(
            err,
            EncodeError::Frame(FrameError::FrameTooLarge { .. })
        ));
        assert_eq!(&out[..], b"prior");
    }
}
