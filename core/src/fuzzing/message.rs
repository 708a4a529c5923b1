//! Message decoders of every encoding, for every message type: decode, re-encode, decode.

use super::{same, single_frame};
use crate::encoding::{
    WireFormat, decode_event, decode_message, encode_event, encode_frame_of, salvage_correlation_id,
};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, MessageType};
use crate::message::*;
use bytes::{Bytes, BytesMut};
use core::fmt::Debug;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodings a message type may travel in and round-trip through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Every encoding.
    Any,
    /// Handshake and registration frames: always JSON on the wire; MessagePack is
    /// self-describing and checked too. Postcard is positional and cannot carry their
    /// skipped-when-empty keys, and no frame ever carries them in postcard.
    SelfDescribing,
}

impl Family {
    fn allows(self, encoding: Encoding) -> bool {
        self == Family::Any || encoding != Encoding::Postcard
    }
}

const ENCODINGS: [Encoding; 3] = [Encoding::Json, Encoding::Msgpack, Encoding::Postcard];

/// Encodes `value` as a frame in `encoding` and decodes it back; it must come back the same.
fn re_encode<T>(kind: MessageType, value: &T, encoding: Encoding)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut out = BytesMut::new();
    if let Err(e) = encode_frame_of(kind, value, encoding, DEFAULT_MAX_FRAME_LEN, &mut out) {
        panic!("{kind} decoded but cannot be re-encoded as {encoding:?}: {e}\n{value:?}");
    }
    let frame = single_frame(&out, kind);
    let back: T = decode_message(kind, &frame.payload, encoding).unwrap_or_else(|e| {
        panic!("{kind} re-encoded as {encoding:?} does not decode: {e}\n{value:?}")
    });
    assert!(
        same(value, &back),
        "{kind} changed through {encoding:?}:\n{value:?}\n{back:?}"
    );
}

/// Decodes `payload` as a `T`; whatever decodes must re-encode and decode to the same value,
/// in its own encoding and — when it came from JSON, which carries no NaN — in every other
/// encoding of its family.
fn round_trip<T>(kind: MessageType, payload: &[u8], encoding: Encoding, family: Family)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(value) = decode_message::<T>(kind, payload, encoding) else {
        return;
    };
    if !family.allows(encoding) {
        return;
    }
    let targets: &[Encoding] = if encoding == Encoding::Json {
        &ENCODINGS
    } else {
        core::slice::from_ref(&encoding)
    };
    for &target in targets {
        if target.is_available() && family.allows(target) {
            re_encode(kind, &value, target);
        }
    }
}

/// The body bytes an event carries, if any.
fn body_of(event: &Event) -> Option<&Bytes> {
    match event {
        Event::RequestBodyChunk(c) | Event::ResponseBodyChunk(c) => Some(&c.data),
        Event::WebSocketFrame(f) => Some(&f.data),
        _ => None,
    }
}

/// Events go through `encode_event` / `decode_event` in every wire format of the encoding
/// (body bytes as base64 and raw), and from JSON in every other encoding too.
fn event_round_trip(kind: MessageType, payload: &Bytes, encoding: Encoding) {
    let Ok(event) = decode_event(kind, payload, encoding) else {
        return;
    };
    assert_eq!(event.message_type(), kind);
    if let Some(body) = body_of(&event) {
        // Base64 shrinks, raw bytes are a slice: never more body than payload.
        assert!(
            body.len() <= payload.len(),
            "{kind}: {} body bytes out of a {}-byte payload",
            body.len(),
            payload.len()
        );
    }
    let targets: &[Encoding] = if encoding == Encoding::Json {
        &ENCODINGS
    } else {
        core::slice::from_ref(&encoding)
    };
    for &target in targets {
        if !target.is_available() {
            continue;
        }
        for raw_body_bytes in [false, true] {
            let format = WireFormat {
                encoding: target,
                raw_body_bytes,
            };
            let mut out = BytesMut::new();
            if let Err(e) = encode_event(&event, format, DEFAULT_MAX_FRAME_LEN, &mut out) {
                panic!("{kind} decoded but cannot be re-encoded as {format:?}: {e}\n{event:?}");
            }
            let frame = single_frame(&out, kind);
            let back = decode_event(kind, &frame.payload, target).unwrap_or_else(|e| {
                panic!("{kind} re-encoded as {format:?} does not decode: {e}\n{event:?}")
            });
            assert!(
                same(&event, &back),
                "{kind} changed through {format:?}:\n{event:?}\n{back:?}"
            );
        }
    }
}

fn message(encoding: Encoding, data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    // The frame's own type byte selects the type; other bytes pick one by index.
    let kind = MessageType::from_byte(selector)
        .unwrap_or(MessageType::ALL[usize::from(selector) % MessageType::ALL.len()]);
    let payload = Bytes::copy_from_slice(payload);
    let p = &payload[..];
    match kind {
        MessageType::RequestHeaders
        | MessageType::RequestBodyChunk
        | MessageType::ResponseHeaders
        | MessageType::ResponseBodyChunk
        | MessageType::RequestComplete
        | MessageType::WebSocketFrame
        | MessageType::GuardrailInspect
        | MessageType::Configure => event_round_trip(kind, &payload, encoding),
        MessageType::HandshakeRequest => {
            round_trip::<HandshakeRequest>(kind, p, encoding, Family::SelfDescribing);
            round_trip::<RegistrationRequest>(kind, p, encoding, Family::SelfDescribing);
        }
        MessageType::HandshakeResponse => {
            round_trip::<HandshakeResponse>(kind, p, encoding, Family::SelfDescribing);
            round_trip::<RegistrationResponse>(kind, p, encoding, Family::SelfDescribing);
        }
        MessageType::AgentResponse => round_trip::<AgentResponse>(kind, p, encoding, Family::Any),
        MessageType::HealthStatus => round_trip::<HealthStatus>(kind, p, encoding, Family::Any),
        MessageType::MetricsReport => round_trip::<MetricsReport>(kind, p, encoding, Family::Any),
        MessageType::ConfigUpdateRequest => {
            round_trip::<ConfigUpdateRequest>(kind, p, encoding, Family::Any);
        }
        MessageType::FlowControl => {
            round_trip::<FlowControlSignal>(kind, p, encoding, Family::Any);
        }
        MessageType::Cancel => round_trip::<Cancel>(kind, p, encoding, Family::Any),
        MessageType::Ping | MessageType::Pong => {
            round_trip::<Ping>(kind, p, encoding, Family::Any);
        }
    }
    // The agent's salvage path reads any payload of any type.
    if let Some(id) = salvage_correlation_id(p, encoding) {
        assert!(!id.is_empty(), "salvaged an empty correlation id");
    }
}

/// Target `message_json`: `data[0]` selects the message type (a type byte, or any byte by
/// index), the rest is a JSON payload. Whatever decodes must round-trip through JSON and
/// every other encoding.
pub fn message_json(data: &[u8]) {
    message(Encoding::Json, data);
}

/// Target `message_msgpack`: as [`message_json`] for a MessagePack payload.
pub fn message_msgpack(data: &[u8]) {
    message(Encoding::Msgpack, data);
}

/// Target `message_postcard`: as [`message_json`] for a postcard payload.
pub fn message_postcard(data: &[u8]) {
    message(Encoding::Postcard, data);
}

/// Target `registration`: `data[0]` even → JSON, odd → MessagePack; `data[1]` even →
/// RegistrationRequest, odd → RegistrationResponse; the rest is the payload. Whatever
/// decodes must round-trip (in JSON, the registration's only encoding on the wire, and in
/// MessagePack).
///
/// (The reverse transport's validation is private to `agentwire-reverse`; this fuzzes the
/// decoding it relies on.)
pub fn registration(data: &[u8]) {
    let [encoding, direction, payload @ ..] = data else {
        return;
    };
    let encoding = if encoding % 2 == 0 {
        Encoding::Json
    } else {
        Encoding::Msgpack
    };
    if direction % 2 == 0 {
        let kind = MessageType::HandshakeRequest;
        round_trip::<RegistrationRequest>(kind, payload, encoding, Family::SelfDescribing);
    } else {
        let kind = MessageType::HandshakeResponse;
        round_trip::<RegistrationResponse>(kind, payload, encoding, Family::SelfDescribing);
    }
}
