//! Hostile payloads: nesting bombs, lying length headers and huge-but-legal messages must
//! give a `DecodeError` (or decode correctly) quickly, without a stack overflow and without
//! an allocation sized by the peer's claims.
//!
//! A counting global allocator records, per thread, the largest single allocation, so the
//! "no huge allocation" property is measured rather than assumed.

#![allow(unsafe_code)] // only the delegating global allocator below

use agentwire_core::encoding::{
    WireFormat, decode_event, decode_message, encode_event, salvage_correlation_id,
};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, HEADER_LEN, MessageType};
use agentwire_core::message::*;
use bytes::{Bytes, BytesMut};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping only
// touches a const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

const MIB: usize = 1024 * 1024;
const DEPTH: usize = 100_000;

fn json_nest(prefix: &str, open: &str, suffix: &str) -> Bytes {
    let mut s = String::with_capacity(prefix.len() + open.len() * DEPTH + suffix.len());
    s.push_str(prefix);
    for _ in 0..DEPTH {
        s.push_str(open);
    }
    s.push_str(suffix);
    Bytes::from(s)
}

/// MessagePack fixstr.
fn mp_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 32);
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// `count` nested one-element arrays (`0x91` …) ending in nil.
fn mp_nested_arrays(out: &mut Vec<u8>, count: usize) {
    out.extend(std::iter::repeat_n(0x91, count));
    out.push(0xc0);
}

/// `count` nested one-entry maps (`{"k": {"k": …}}`) ending in nil.
fn mp_nested_maps(out: &mut Vec<u8>, count: usize) {
    for _ in 0..count {
        out.extend_from_slice(&[0x81, 0xa1, b'k']);
    }
    out.push(0xc0);
}

/// An AgentResponse map whose `audit.custom.x` is `value`.
fn mp_response_with_custom(value: impl Fn(&mut Vec<u8>)) -> Bytes {
    let mut p = vec![0x83];
    mp_str(&mut p, "version");
    p.push(2);
    mp_str(&mut p, "decision");
    mp_str(&mut p, "allow");
    mp_str(&mut p, "audit");
    p.push(0x81);
    mp_str(&mut p, "custom");
    p.push(0x81);
    mp_str(&mut p, "x");
    value(&mut p);
    Bytes::from(p)
}

fn mp_configure_with_config(value: impl Fn(&mut Vec<u8>)) -> Bytes {
    let mut p = vec![0x82];
    mp_str(&mut p, "correlation_id");
    mp_str(&mut p, "c");
    mp_str(&mut p, "config");
    value(&mut p);
    Bytes::from(p)
}

#[test]
fn deeply_nested_json_is_a_decode_error() {
    // serde_json's recursion limit (128) is in force for every entry point.
    let config = json_nest(r#"{"correlation_id":"c","config":"#, "[", "");
    let err = decode_event(MessageType::Configure, &config, Encoding::Json).unwrap_err();
    assert_eq!(err.kind, MessageType::Configure);
    let config = json_nest(r#"{"correlation_id":"c","config":"#, r#"{"a":"#, "");
    assert!(decode_event(MessageType::Configure, &config, Encoding::Json).is_err());

    let custom = json_nest(
        r#"{"version":2,"decision":"allow","audit":{"custom":{"x":"#,
        "[",
        "",
    );
    assert!(
        decode_message::<AgentResponse>(MessageType::AgentResponse, &custom, Encoding::Json)
            .is_err()
    );
    let state = json_nest(r#"{"agent_id":"a","state":"#, "[", "");
    assert!(
        decode_message::<HealthStatus>(MessageType::HealthStatus, &state, Encoding::Json).is_err()
    );
    let handshake = json_nest(
        r#"{"supported_versions":[2],"proxy_id":"p","proxy_version":"1","config":"#,
        "[",
        "",
    );
    assert!(
        decode_message::<HandshakeRequest>(
            MessageType::HandshakeRequest,
            &handshake,
            Encoding::Json
        )
        .is_err()
    );
    // Closed nesting just past the limit fails too (not only truncated input).
    let mut closed = String::from(r#"{"correlation_id":"c","config":"#);
    closed.push_str(&"[".repeat(200));
    closed.push_str(&"]".repeat(200));
    closed.push('}');
    assert!(decode_event(MessageType::Configure, &Bytes::from(closed), Encoding::Json).is_err());
    assert_eq!(
        salvage_correlation_id(&custom, Encoding::Json),
        None,
        "salvage must not recurse either"
    );
}

#[test]
fn deeply_nested_msgpack_is_a_decode_error() {
    for nest in [mp_nested_arrays as fn(&mut Vec<u8>, usize), mp_nested_maps] {
        let config = mp_configure_with_config(|p| nest(p, DEPTH));
        let err = decode_event(MessageType::Configure, &config, Encoding::Msgpack).unwrap_err();
        assert_eq!(err.encoding, Encoding::Msgpack);

        let custom = mp_response_with_custom(|p| nest(p, DEPTH));
        assert!(
            decode_message::<AgentResponse>(MessageType::AgentResponse, &custom, Encoding::Msgpack)
                .is_err()
        );
        assert!(salvage_correlation_id(&custom, Encoding::Msgpack).is_none());

        // HealthState, FlowAction and ConfigUpdateType go through a dynamic value too.
        let mut health = vec![0x82];
        mp_str(&mut health, "agent_id");
        mp_str(&mut health, "a");
        mp_str(&mut health, "state");
        nest(&mut health, DEPTH);
        assert!(
            decode_message::<HealthStatus>(MessageType::HealthStatus, &health, Encoding::Msgpack)
                .is_err()
        );
        let mut flow = vec![0x81];
        mp_str(&mut flow, "action");
        nest(&mut flow, DEPTH);
        assert!(
            decode_message::<FlowControlSignal>(MessageType::FlowControl, &flow, Encoding::Msgpack)
                .is_err()
        );
        let mut update = vec![0x83];
        mp_str(&mut update, "request_id");
        mp_str(&mut update, "r");
        mp_str(&mut update, "timestamp_ms");
        update.push(0);
        mp_str(&mut update, "update_type");
        nest(&mut update, DEPTH);
        assert!(
            decode_message::<ConfigUpdateRequest>(
                MessageType::ConfigUpdateRequest,
                &update,
                Encoding::Msgpack
            )
            .is_err()
        );
    }
}

/// MessagePack accepts exactly the nesting JSON accepts (serde_json's limit: fewer than 128
/// levels, the message's own map included), so neither encoding is the weaker one.
#[test]
fn msgpack_depth_limit_matches_json() {
    // Configure map + `depth` nested arrays around a null.
    for (depth, ok) in [(126, true), (127, false)] {
        let json = format!(
            r#"{{"correlation_id":"c","config":{}null{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let json_result = decode_event(MessageType::Configure, &Bytes::from(json), Encoding::Json);
        assert_eq!(json_result.is_ok(), ok, "json depth {depth}");
        let mp = mp_configure_with_config(|p| mp_nested_arrays(p, depth));
        let mp_result = decode_event(MessageType::Configure, &mp, Encoding::Msgpack);
        assert_eq!(mp_result.is_ok(), ok, "msgpack depth {depth}");
        if ok {
            assert_eq!(json_result.unwrap(), mp_result.unwrap());
        }
    }
}

#[test]
fn postcard_json_text_nesting_is_a_decode_error() {
    if !Encoding::Postcard.is_available() {
        return;
    }
    // Postcard carries `config` as JSON text: serde_json's limit applies to it.
    let mut ev = Configure {
        correlation_id: "c".into(),
        ..Configure::default()
    };
    ev.config = AnyValue::from(serde_json::Value::Null);
    let mut out = BytesMut::new();
    encode_event(
        &Event::Configure(ev),
        WireFormat::new(Encoding::Postcard),
        DEFAULT_MAX_FRAME_LEN,
        &mut out,
    )
    .unwrap();
    // Layout: varint len + "null", varint-tagged None, varint len + "c". Replace the text.
    let payload = &out[HEADER_LEN..];
    assert_eq!(&payload[..5], b"\x04null");
    let bomb = "[".repeat(DEPTH);
    let mut p = Vec::new();
    let mut n = bomb.len();
    while n >= 0x80 {
        p.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    p.push(n as u8);
    p.extend_from_slice(bomb.as_bytes());
    p.extend_from_slice(&payload[5..]);
    assert!(decode_event(MessageType::Configure, &Bytes::from(p), Encoding::Postcard).is_err());
}

/// Array32/map32 headers claiming 2^32-1 elements with nothing behind them, at every level
/// where a collection is read, fail fast and reserve at most a bounded amount.
#[test]
fn lying_msgpack_collection_headers_fail_fast_without_huge_allocations() {
    let array32 = [0xdd, 0xff, 0xff, 0xff, 0xff];
    let map32 = [0xdf, 0xff, 0xff, 0xff, 0xff];
    let str32 = [0xdb, 0xff, 0xff, 0xff, 0xff];
    let bin32 = [0xc6, 0xff, 0xff, 0xff, 0xff];
    let mut cases: Vec<(MessageType, Vec<u8>)> = Vec::new();
    for kind in MessageType::ALL {
        for header in [array32, map32, str32, bin32] {
            cases.push((kind, header.to_vec()));
        }
    }
    let with_key = |prefix: &[u8], key: &str, header: &[u8]| {
        let mut p = prefix.to_vec();
        mp_str(&mut p, key);
        p.extend_from_slice(header);
        p
    };
    for header in [array32, map32, str32, bin32] {
        cases.push((
            MessageType::RequestHeaders,
            with_key(&[0x81], "headers", &header),
        ));
        cases.push((MessageType::Configure, with_key(&[0x81], "config", &header)));
        cases.push((
            MessageType::RequestBodyChunk,
            with_key(&[0x81], "data", &header),
        ));
        cases.push((
            MessageType::GuardrailInspect,
            with_key(&[0x81], "categories", &header),
        ));
        cases.push((
            MessageType::AgentResponse,
            with_key(&[0x81], "request_headers", &header),
        ));
        cases.push((
            MessageType::AgentResponse,
            with_key(&[0x81], "routing_metadata", &header),
        ));
        cases.push((
            MessageType::AgentResponse,
            mp_response_with_custom(|p| p.extend_from_slice(&header)).to_vec(),
        ));
        cases.push((
            MessageType::MetricsReport,
            with_key(&[0x81], "histograms", &header),
        ));
        cases.push((
            MessageType::HealthStatus,
            with_key(&[0x81], "state", &header),
        ));
        cases.push((
            MessageType::HandshakeResponse,
            with_key(&[0x81], "capabilities", &header),
        ));
        // A header value list: {"headers": {"a": <header>}}.
        let mut p = vec![0x81];
        mp_str(&mut p, "headers");
        p.push(0x81);
        mp_str(&mut p, "a");
        p.extend_from_slice(&header);
        cases.push((MessageType::ResponseHeaders, p));
    }
    // The tracker sees allocations (so a pass below means something).
    let (v, seen) = largest_allocation(|| vec![0u8; 3 * MIB]);
    assert!(seen >= v.len());
    let mut worst = 0;
    for (kind, payload) in cases {
        let payload = Bytes::from(payload);
        let start = Instant::now();
        let (_, largest) = largest_allocation(|| decode_everything(kind, &payload));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{kind}: {:?} for {payload:02x?}",
            start.elapsed()
        );
        assert!(
            largest <= 2 * MIB,
            "{kind}: allocated {largest} bytes at once for {payload:02x?}"
        );
        worst = worst.max(largest);
    }
    println!("largest single allocation: {worst} bytes");
}

/// Tries every decoder that can apply to a frame of type `kind`; all must fail.
fn decode_everything(kind: MessageType, payload: &Bytes) {
    let enc = Encoding::Msgpack;
    assert!(decode_event(kind, payload, enc).is_err());
    macro_rules! fails {
        ($($t:ty),*) => {$(
            assert!(decode_message::<$t>(kind, payload, enc).is_err(), "{}", stringify!($t));
        )*};
    }
    fails!(
        HandshakeRequest,
        HandshakeResponse,
        RegistrationRequest,
        RegistrationResponse,
        AgentResponse,
        HealthStatus,
        MetricsReport,
        ConfigUpdateRequest,
        FlowControlSignal,
        Cancel,
        Ping
    );
    let _ = salvage_correlation_id(payload, enc);
}

/// A frame header declaring 16 MiB followed by a few bytes reserves little.
#[test]
fn frame_decoder_does_not_trust_the_length_field() {
    let (_, largest) = largest_allocation(|| {
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
        d.extend(&DEFAULT_MAX_FRAME_LEN.to_be_bytes());
        d.extend(&[0x10, b'{']);
        assert_eq!(d.decode(), Ok(None));
        let _ = d.read_buffer();
        assert_eq!(d.decode(), Ok(None));
    });
    assert!(largest <= MIB, "reserved {largest} bytes");
}

fn many_headers_event(names: usize, values_per_name: usize) -> Event {
    let mut headers = Headers::new();
    // Ascending order, so building costs O(n) (`Headers::append` inserts in sorted
    // position); the decoder below gets no such help from the wire anyway.
    for i in 0..names {
        for j in 0..values_per_name {
            headers.append(format!("x-header-{i:06}"), format!("v{j}"));
        }
    }
    Event::RequestHeaders(RequestHeaders {
        metadata: RequestMetadata {
            correlation_id: "many".into(),
            ..RequestMetadata::default()
        },
        method: "GET".into(),
        uri: "/".into(),
        headers,
    })
}

fn formats() -> Vec<WireFormat> {
    [Encoding::Json, Encoding::Msgpack, Encoding::Postcard]
        .into_iter()
        .filter(|e| e.is_available())
        .map(WireFormat::new)
        .collect()
}

fn encode(ev: &Event, format: WireFormat) -> Bytes {
    let mut out = BytesMut::new();
    encode_event(ev, format, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
    out.freeze().slice(HEADER_LEN..)
}

#[test]
fn one_hundred_thousand_headers_decode_in_bounded_time() {
    for (names, per_name) in [(100_000, 1), (1, 100_000)] {
        let ev = many_headers_event(names, per_name);
        for format in formats() {
            let payload = encode(&ev, format);
            let start = Instant::now();
            let back = decode_event(MessageType::RequestHeaders, &payload, format.encoding)
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            let took = start.elapsed();
            let Event::RequestHeaders(h) = &back else {
                panic!("not request headers")
            };
            assert_eq!(h.headers.len(), names, "{format:?}");
            assert_eq!(h.headers.iter().count(), names * per_name, "{format:?}");
            assert_eq!(back, ev);
            assert!(took < Duration::from_secs(10), "{format:?}: {took:?}");
        }
    }
    // Unsorted, duplicated names straight from the wire (a HashMap peer): last one wins.
    let mut json = String::from(
        r#"{"metadata":{"correlation_id":"d","request_id":"","client_ip":"","client_port":0,"protocol":"","timestamp":""},"method":"GET","uri":"/","headers":{"#,
    );
    for i in (0..100_000).rev() {
        json.push_str(&format!(r#""h{}":["{i}"],"#, i % 50_000));
    }
    json.pop();
    json.push_str("}}");
    let start = Instant::now();
    let Event::RequestHeaders(h) = decode_event(
        MessageType::RequestHeaders,
        &Bytes::from(json),
        Encoding::Json,
    )
    .unwrap() else {
        panic!("not request headers")
    };
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(h.headers.len(), 50_000);
    assert_eq!(h.headers.get("h0"), Some("0"));
}

#[test]
fn a_ten_mib_header_value_decodes() {
    let value = "v".repeat(10 * MIB);
    let mut headers = Headers::new();
    headers.append("x-big", value.clone());
    let ev = Event::ResponseHeaders(ResponseHeaders {
        correlation_id: "big".into(),
        status: 200,
        headers,
    });
    for format in formats() {
        let payload = encode(&ev, format);
        let back = decode_event(MessageType::ResponseHeaders, &payload, format.encoding)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        let Event::ResponseHeaders(h) = &back else {
            panic!("not response headers")
        };
        assert_eq!(h.headers.get("x-big").map(str::len), Some(10 * MIB));
        assert_eq!(back, ev);
    }
}
