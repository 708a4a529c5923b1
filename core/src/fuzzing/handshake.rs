//! Handshake negotiation from both sides.

use super::single_frame;
use crate::encoding::{decode_event, decode_message, encode_frame_of};
use crate::frame::{DEFAULT_MAX_FRAME_LEN, MessageType, encode_frame};
use crate::message::*;
use crate::session::{
    AgentConfig, AgentEvent, AgentSession, CloseReason, ProxyConfig, ProxyEvent, ProxySession,
};
use crate::time::Instant;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::BytesMut;

const NOW: Instant = Instant::from_millis(1_000);

/// An ordered set of encodings from one byte: bits 0-2 pick JSON, MessagePack, postcard;
/// bits 3-4 rotate the order, bit 5 reverses it.
pub(super) fn encodings_from(byte: u8) -> Vec<Encoding> {
    let mut all = [Encoding::Json, Encoding::Msgpack, Encoding::Postcard];
    all.rotate_left(usize::from((byte >> 3) & 3) % 3);
    if byte & 0x20 != 0 {
        all.reverse();
    }
    all.into_iter()
        .filter(|e| {
            let bit = match e {
                Encoding::Json => 1,
                Encoding::Msgpack => 2,
                Encoding::Postcard => 4,
            };
            byte & bit != 0
        })
        .collect()
}

fn frame(kind: MessageType, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(kind, payload, DEFAULT_MAX_FRAME_LEN, &mut out)
        .unwrap_or_else(|e| panic!("cannot frame a fuzz payload: {e}"));
    out
}

fn agent_config(encodings: &[Encoding], max_concurrency: u32) -> AgentConfig {
    AgentConfig {
        capabilities: Capabilities {
            agent_id: String::from("fuzz-agent"),
            limits: Limits {
                max_concurrency,
                ..Limits::default()
            },
            ..Capabilities::default()
        },
        encodings: encodings.to_vec(),
        ..AgentConfig::default()
    }
}

fn proxy_config(encodings: &[Encoding], configure: bool) -> ProxyConfig {
    ProxyConfig {
        encodings: encodings.to_vec(),
        agent_config: configure.then(|| AnyValue::from("fuzz-config")),
        ..ProxyConfig::default()
    }
}

fn agent_events(agent: &mut AgentSession) -> Vec<AgentEvent> {
    core::iter::from_fn(|| agent.poll_event()).collect()
}

fn proxy_events(proxy: &mut ProxySession) -> Vec<ProxyEvent> {
    core::iter::from_fn(|| proxy.poll_event()).collect()
}

/// An arbitrary HandshakeRequest payload into an agent that speaks `encodings`.
fn agent_side(encodings: &[Encoding], payload: &[u8]) {
    let mut agent = AgentSession::new(agent_config(encodings, 100), NOW);
    agent.handle_input(NOW, &frame(MessageType::HandshakeRequest, payload));
    let events = agent_events(&mut agent);
    let sent = agent.poll_transmit().unwrap_or_default();
    assert_eq!(events.len(), 1, "one outcome per handshake: {events:?}");
    match &events[0] {
        AgentEvent::Connected { request, encoding } => {
            assert!(agent.is_ready());
            assert_eq!(agent.wire_format().encoding, *encoding);
            assert!(encoding.is_available(), "chose unavailable {encoding:?}");
            assert!(
                *encoding == Encoding::Json || encodings.contains(encoding),
                "agent chose {encoding:?}, which it does not speak ({encodings:?})"
            );
            let offered = if request.agentwire_encodings.is_empty() {
                &request.supported_encodings
            } else {
                &request.agentwire_encodings
            };
            assert!(
                *encoding == Encoding::Json || offered.contains(encoding),
                "agent chose {encoding:?}, which the proxy did not offer ({offered:?})"
            );
            let reply = single_frame(&sent, MessageType::HandshakeResponse);
            let response: HandshakeResponse =
                decode_message(reply.kind, &reply.payload, Encoding::Json)
                    .unwrap_or_else(|e| panic!("agent wrote an unreadable handshake: {e}"));
            assert!(response.success);
            assert_eq!(response.encoding, *encoding, "announced ≠ adopted encoding");
        }
        AgentEvent::Closed(CloseReason::UnsupportedVersion) => {
            let reply = single_frame(&sent, MessageType::HandshakeResponse);
            let response: HandshakeResponse =
                decode_message(reply.kind, &reply.payload, Encoding::Json)
                    .unwrap_or_else(|e| panic!("agent wrote an unreadable refusal: {e}"));
            assert!(!response.success, "closed after accepting");
        }
        AgentEvent::Closed(CloseReason::Decode(_)) => {
            assert!(sent.is_empty(), "answered an undecodable handshake");
        }
        other => panic!("unexpected handshake outcome {other:?}"),
    }
}

/// An arbitrary HandshakeResponse payload into a proxy that offered `encodings`.
fn proxy_side(encodings: &[Encoding], configure: bool, payload: &[u8]) {
    let mut proxy = ProxySession::new(proxy_config(encodings, configure), NOW);
    let hello = proxy.poll_transmit().unwrap_or_default();
    let hello = single_frame(&hello, MessageType::HandshakeRequest);
    let request: HandshakeRequest = decode_message(hello.kind, &hello.payload, Encoding::Json)
        .unwrap_or_else(|e| panic!("proxy wrote an unreadable handshake: {e}"));
    assert!(
        request
            .supported_encodings
            .iter()
            .all(|e| matches!(e, Encoding::Json | Encoding::Msgpack)),
        "offered a reference agent a name it cannot parse (B11)"
    );
    proxy.handle_input(NOW, &frame(MessageType::HandshakeResponse, payload));
    let mut events = proxy_events(&mut proxy);
    let speaks = |e: Encoding| e.is_available() && (e == Encoding::Json || encodings.contains(&e));
    if configure && !proxy.is_closed() {
        // Configuring: the Configure frame is already in the negotiated encoding, and
        // `Connected` waits for its acknowledgement.
        assert!(
            events.is_empty(),
            "reported before configuration: {events:?}"
        );
        let encoding = proxy.wire_format().encoding;
        assert!(speaks(encoding), "adopted {encoding:?} it cannot speak");
        let sent = proxy.poll_transmit().unwrap_or_default();
        let configure = single_frame(&sent, MessageType::Configure);
        let event = decode_event(configure.kind, &configure.payload, encoding)
            .unwrap_or_else(|e| panic!("Configure is not in the negotiated encoding: {e}"));
        let mut ack = AgentResponse::allow();
        ack.set_correlation_id(event.correlation_id());
        let mut out = BytesMut::new();
        encode_frame_of(
            MessageType::AgentResponse,
            &ack,
            encoding,
            DEFAULT_MAX_FRAME_LEN,
            &mut out,
        )
        .unwrap_or_else(|e| panic!("cannot encode the acknowledgement: {e}"));
        proxy.handle_input(NOW, &out);
        events = proxy_events(&mut proxy);
    }
    assert_eq!(events.len(), 1, "one outcome per handshake: {events:?}");
    match &events[0] {
        ProxyEvent::Connected { encoding, .. } => {
            assert!(proxy.is_ready());
            assert_eq!(proxy.wire_format().encoding, *encoding);
            assert!(
                speaks(*encoding),
                "proxy adopted {encoding:?}, which it did not offer ({encodings:?})"
            );
        }
        ProxyEvent::Closed(reason) => {
            assert!(proxy.is_closed());
            assert!(
                matches!(
                    reason,
                    CloseReason::Decode(_)
                        | CloseReason::HandshakeRejected { .. }
                        | CloseReason::UnsupportedEncoding(_)
                ),
                "unexpected close {reason:?}"
            );
        }
        other => panic!("unexpected handshake outcome {other:?}"),
    }
}

/// How the agent of [`both_sides`] behaves besides negotiating.
#[derive(Clone, Copy)]
struct AgentTraits {
    /// `limits.max_concurrency` of 1: automatic flow control pauses the proxy as soon as one
    /// event (the Configure) is in flight.
    one_at_a_time: bool,
    /// Sends a health report as soon as it is connected.
    reports_health: bool,
}

/// A real proxy against a real agent: both must connect, on the same encoding, the first of
/// the proxy's preference list the agent speaks (JSON when none is), whatever the agent
/// sends on its own meanwhile.
fn both_sides(
    agent_encodings: &[Encoding],
    proxy_encodings: &[Encoding],
    configure: bool,
    traits: AgentTraits,
) {
    let mut proxy = ProxySession::new(proxy_config(proxy_encodings, configure), NOW);
    let concurrency = if traits.one_at_a_time { 1 } else { 100 };
    let mut agent = AgentSession::new(agent_config(agent_encodings, concurrency), NOW);
    let mut agent_connected = None;
    for _ in 0..8 {
        while let Some(bytes) = proxy.poll_transmit() {
            agent.handle_input(NOW, &bytes);
        }
        for event in agent_events(&mut agent) {
            match event {
                AgentEvent::Connected { encoding, .. } => {
                    agent_connected = Some(encoding);
                    if traits.reports_health {
                        agent
                            .send_health(&HealthStatus::default())
                            .unwrap_or_else(|e| panic!("cannot report health: {e}"));
                    }
                }
                AgentEvent::Request(Event::Configure(c)) => {
                    agent
                        .respond(&c.correlation_id, AgentResponse::allow())
                        .unwrap_or_else(|e| panic!("cannot acknowledge Configure: {e}"));
                }
                other => panic!("agent: unexpected {other:?}"),
            }
        }
        while let Some(bytes) = agent.poll_transmit() {
            proxy.handle_input(NOW, &bytes);
        }
    }
    let events = proxy_events(&mut proxy);
    let available = |e: &&Encoding| e.is_available();
    let expected = proxy_encodings
        .iter()
        .filter(available)
        .find(|e| agent_encodings.contains(e))
        .copied()
        .unwrap_or(Encoding::Json);
    assert!(proxy.is_ready(), "proxy did not connect: {events:?}");
    let mut connected = events.iter().filter_map(|e| match e {
        ProxyEvent::Connected { encoding, .. } => Some(*encoding),
        ProxyEvent::FlowControl(_) | ProxyEvent::Health(_) => None,
        other => panic!("proxy: unexpected {other:?}"),
    });
    let encoding = connected.next();
    assert!(connected.next().is_none(), "connected twice: {events:?}");
    assert_eq!(agent_connected, encoding, "the two ends disagree");
    assert_eq!(
        encoding,
        Some(expected),
        "proxy {proxy_encodings:?} × agent {agent_encodings:?}"
    );
}

/// Target `handshake`: `data[0]` and `data[1]` are the agent's and the proxy's encoding
/// sets (see `encodings_from`; bit 6 of `data[1]` makes the proxy deliver a configuration,
/// bits 6 and 7 of `data[0]` give the agent a concurrency of 1 and a health report to send),
/// `data[2..4]` the big-endian length of the HandshakeRequest payload that follows; the rest
/// is a HandshakeResponse payload.
///
/// Neither session panics; an agent answers exactly a decodable request, adopts the encoding
/// it announces, and that encoding is one it speaks and the proxy offered (or JSON); a proxy
/// adopts only an encoding it offered (or JSON), and writes the Configure frame in it; a real
/// proxy and agent always agree on the first of the proxy's encodings the agent speaks.
pub fn handshake(data: &[u8]) {
    let [agent_byte, proxy_byte, hi, lo, rest @ ..] = data else {
        return;
    };
    let agent_encodings = encodings_from(*agent_byte);
    let proxy_encodings = encodings_from(*proxy_byte);
    let configure = proxy_byte & 0x40 != 0;
    let split = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
    let (request, response) = rest.split_at(split);
    agent_side(&agent_encodings, request);
    proxy_side(&proxy_encodings, configure, response);
    let traits = AgentTraits {
        one_at_a_time: agent_byte & 0x40 != 0,
        reports_health: agent_byte & 0x80 != 0,
    };
    both_sides(&agent_encodings, &proxy_encodings, configure, traits);
}
