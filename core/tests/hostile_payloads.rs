//! Hostile payloads: nesting bombs, lying length headers and huge-but-legal messages must
//! give a `DecodeError` (or decode correctly) quickly, without a stack overflow and without
//! an allocation sized by the peer's claims.
//!
//! A counting global allocator records, per thread, the largest single allocation, so the
//! "no huge allocation" property is measured rather than assumed.

#![allow(unsafe_code)] // only the delegating global allocator below

use agentwire_core::encoding::{
    DecodeCause, DecodeError, WireFormat, decode_event, decode_message, decode_response,
    encode_event, encode_frame_of, encode_response, salvage_correlation_id,
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

fn assert_too_many<T: std::fmt::Debug>(result: Result<T, DecodeError>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.cause, DecodeCause::TooManyElements, "{what}: {e}"),
        Ok(v) => panic!("{what}: decoded {v:?}"),
    }
}

/// Header maps count every value (and a name without values once) against
/// `MAX_COLLECTION_LEN`, in every encoding and on the MessagePack fast path: the cap decodes,
/// one more is refused with the typed error, and even 100 000 headers are refused quickly.
#[test]
fn header_maps_are_capped_by_total_value_count() {
    let cap = MAX_COLLECTION_LEN;
    for (names, per_name) in [(cap, 1), (1, cap), (cap / 2, 2)] {
        let ev = many_headers_event(names, per_name);
        for format in formats() {
            let payload = encode(&ev, format);
            let back = decode_event(MessageType::RequestHeaders, &payload, format.encoding)
                .unwrap_or_else(|e| panic!("{format:?} {names}x{per_name}: {e}"));
            let Event::RequestHeaders(h) = &back else {
                panic!("not request headers")
            };
            assert_eq!(h.headers.len(), names, "{format:?}");
            assert_eq!(h.headers.iter().count(), cap, "{format:?}");
            assert_eq!(back, ev);
        }
    }
    for (names, per_name) in [
        (cap + 1, 1),
        (1, cap + 1),
        (cap / 2 + 1, 2),
        (100_000, 1),
        (1, 100_000),
    ] {
        let ev = many_headers_event(names, per_name);
        for format in formats() {
            let payload = encode(&ev, format);
            let start = Instant::now();
            let what = format!("{format:?} {names}x{per_name}");
            assert_too_many(
                decode_event(MessageType::RequestHeaders, &payload, format.encoding),
                &what,
            );
            assert!(start.elapsed() < Duration::from_secs(2), "{what}");
            // The same map in a response-headers event.
            let Event::RequestHeaders(r) = &ev else {
                unreachable!()
            };
            let resp = Event::ResponseHeaders(ResponseHeaders {
                correlation_id: "c".into(),
                status: 200,
                headers: r.headers.clone(),
            });
            let payload = encode(&resp, format);
            assert_too_many(
                decode_event(MessageType::ResponseHeaders, &payload, format.encoding),
                &what,
            );
        }
    }
    // Names without values count once each (JSON and MessagePack; postcard has no such
    // form from agentwire, and decodes the same `Headers` impl anyway).
    for (names, ok) in [(cap, true), (cap + 1, false)] {
        let mut map = serde_json::Map::new();
        for i in 0..names {
            map.insert(format!("h{i}"), serde_json::json!([]));
        }
        let value = serde_json::json!({
            "correlation_id": "c", "status": 200, "headers": map,
        });
        let json = Bytes::from(serde_json::to_vec(&value).unwrap());
        let mp = Bytes::from(rmp_serde::to_vec(&value).unwrap());
        for (payload, enc) in [(json, Encoding::Json), (mp, Encoding::Msgpack)] {
            let result = decode_event(MessageType::ResponseHeaders, &payload, enc);
            if ok {
                assert!(result.is_ok(), "{enc:?} {names}: {result:?}");
            } else {
                assert_too_many(result, &format!("{enc:?} {names} empty"));
            }
        }
    }
    // A declared count over the cap is refused before anything is read: map32 and array32
    // headers claiming cap + 1 with nothing behind them.
    let over = u32::try_from(cap + 1).unwrap().to_be_bytes();
    let mut map_claim = vec![0x81];
    mp_str(&mut map_claim, "headers");
    map_claim.push(0xdf);
    map_claim.extend_from_slice(&over);
    let mut values_claim = vec![0x81];
    mp_str(&mut values_claim, "headers");
    values_claim.push(0x81);
    mp_str(&mut values_claim, "a");
    values_claim.push(0xdd);
    values_claim.extend_from_slice(&over);
    for p in [map_claim, values_claim] {
        assert_too_many(
            decode_event(
                MessageType::ResponseHeaders,
                &Bytes::from(p),
                Encoding::Msgpack,
            ),
            "declared",
        );
    }
    // Unsorted, duplicated names straight from the wire (a HashMap peer): last one wins.
    let mut json = String::from(
        r#"{"metadata":{"correlation_id":"d","request_id":"","client_ip":"","client_port":0,"protocol":"","timestamp":""},"method":"GET","uri":"/","headers":{"#,
    );
    for i in (0..cap).rev() {
        json.push_str(&format!(r#""h{}":["{i}"],"#, i % (cap / 2)));
    }
    json.pop();
    json.push_str("}}");
    let Event::RequestHeaders(h) = decode_event(
        MessageType::RequestHeaders,
        &Bytes::from(json),
        Encoding::Json,
    )
    .unwrap() else {
        panic!("not request headers")
    };
    assert_eq!(h.headers.len(), cap / 2);
    assert_eq!(h.headers.get("h0"), Some("0"));
}

fn encode_answer(r: &AgentResponse, encoding: Encoding) -> Bytes {
    let mut out = BytesMut::new();
    encode_response(r, "c", encoding, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
    out.freeze().slice(HEADER_LEN..)
}

/// An agent's answer: header-op lists, audit lists and maps, routing metadata and a Block's
/// headers are capped in every encoding (and on the MessagePack fast path of plain Allows).
#[test]
fn agent_response_collections_are_capped() {
    let cap = MAX_COLLECTION_LEN;
    type Fill = fn(&mut AgentResponse, usize);
    let fills: [(&str, Fill); 9] = [
        ("request_headers", |r, n| {
            r.request_headers = (0..n)
                .map(|i| HeaderOp::Set {
                    name: format!("x-{i}"),
                    value: "v".into(),
                })
                .collect();
        }),
        ("response_headers", |r, n| {
            r.response_headers = (0..n)
                .map(|i| HeaderOp::Remove {
                    name: format!("x-{i}"),
                })
                .collect();
        }),
        ("routing_metadata", |r, n| {
            r.routing_metadata = (0..n).map(|i| (format!("k{i}"), "v".into())).collect();
        }),
        ("tags", |r, n| r.audit.tags = vec!["t".into(); n]),
        ("rule_ids", |r, n| r.audit.rule_ids = vec!["r".into(); n]),
        ("reason_codes", |r, n| {
            r.audit.reason_codes = vec!["c".into(); n]
        }),
        // `custom` also holds the correlation id: n - 1 more keys.
        ("custom (fast path)", |r, n| {
            for i in 0..n - 1 {
                r.audit.custom.insert(format!("k{i}"), AnyValue::from("v"));
            }
        }),
        ("custom", |r, n| {
            r.decision = AgentResponse::block(403).decision;
            for i in 0..n - 1 {
                r.audit
                    .custom
                    .insert(format!("k{i}"), AnyValue(serde_json::json!(i)));
            }
        }),
        ("block headers", |r, n| {
            r.decision = Decision::Block {
                status: 403,
                body: None,
                headers: Some((0..n).map(|i| (format!("h{i}"), "v".into())).collect()),
            };
        }),
    ];
    for (what, fill) in fills {
        for (n, ok) in [(cap, true), (cap + 1, false)] {
            let mut r = AgentResponse::allow();
            fill(&mut r, n);
            r.set_correlation_id("c");
            for format in formats() {
                let payload = encode_answer(&r, format.encoding);
                let result = decode_response(&payload, format.encoding);
                let what = format!("{what} {n} {:?}", format.encoding);
                if ok {
                    assert_eq!(result.as_ref(), Ok(&r), "{what}");
                } else {
                    assert_too_many(result, &what);
                }
            }
        }
    }
}

/// `audit.custom` counts its entries and every element nested in its values against one
/// budget: small nested arrays cannot add up to more than the cap either.
#[test]
fn audit_custom_values_share_one_budget() {
    let cap = MAX_COLLECTION_LEN;
    let flat = |n: usize| serde_json::json!(vec![0; n]);
    let nested = |outer: usize, inner: usize| serde_json::json!(vec![vec![0; inner]; outer]);
    // Two entries (`x` and the correlation id) plus the elements, inner and outer.
    for (value, ok) in [
        (flat(cap - 2), true),
        (flat(cap - 1), false),
        (nested(98, 100), true),
        (nested(200, 49), false),
    ] {
        let mut r = AgentResponse::allow();
        r.audit.custom.insert("x".into(), AnyValue(value));
        r.set_correlation_id("c");
        for format in formats() {
            let result = decode_response(&encode_answer(&r, format.encoding), format.encoding);
            if ok {
                assert!(result.as_ref() == Ok(&r), "{format:?}");
            } else {
                assert_too_many(result.map(|_| ()), &format!("custom {format:?}"));
            }
        }
    }
}

/// Other lists and maps: a guardrail inspection's categories and metadata, a metrics report's
/// series, a handshake's version list.
#[test]
fn other_collections_are_capped() {
    let cap = MAX_COLLECTION_LEN;
    for (n, ok) in [(cap, true), (cap + 1, false)] {
        let ev = Event::GuardrailInspect(GuardrailInspect {
            correlation_id: "c".into(),
            categories: vec!["ssn".into(); n],
            ..GuardrailInspect::default()
        });
        let meta = Event::GuardrailInspect(GuardrailInspect {
            correlation_id: "c".into(),
            metadata: (0..n).map(|i| (format!("k{i}"), "v".into())).collect(),
            ..GuardrailInspect::default()
        });
        for format in formats() {
            for ev in [&ev, &meta] {
                let result = decode_event(
                    MessageType::GuardrailInspect,
                    &encode(ev, format),
                    format.encoding,
                );
                if ok {
                    assert_eq!(result.as_ref(), Ok(ev));
                } else {
                    assert_too_many(result, &format!("guardrail {format:?}"));
                }
            }
        }
        let report = MetricsReport {
            agent_id: "a".into(),
            counters: vec![CounterMetric::default(); n],
            ..MetricsReport::default()
        };
        for enc in formats().into_iter().map(|f| f.encoding) {
            let mut out = BytesMut::new();
            encode_frame_of(
                MessageType::MetricsReport,
                &report,
                enc,
                DEFAULT_MAX_FRAME_LEN,
                &mut out,
            )
            .unwrap();
            let result = decode_message::<MetricsReport>(
                MessageType::MetricsReport,
                &out[HEADER_LEN..],
                enc,
            );
            if ok {
                assert_eq!(result.as_ref(), Ok(&report));
            } else {
                assert_too_many(result, &format!("metrics {enc:?}"));
            }
        }
        let handshake = HandshakeRequest {
            supported_versions: vec![2; n],
            ..HandshakeRequest::default()
        };
        let json = serde_json::to_vec(&handshake).unwrap();
        let result = decode_message::<HandshakeRequest>(
            MessageType::HandshakeRequest,
            &json,
            Encoding::Json,
        );
        assert_eq!(result.is_ok(), ok);
        if !ok {
            assert_too_many(result, "handshake");
        }
    }
}

/// An error that is not about the cap is not classified as one, in every encoding, even
/// right after a refusal (the postcard classification must not leak between decodes).
#[test]
fn other_decode_errors_are_malformed() {
    let over = many_headers_event(MAX_COLLECTION_LEN + 1, 1);
    for format in formats() {
        let payload = encode(&over, format);
        assert_too_many(
            decode_event(MessageType::RequestHeaders, &payload, format.encoding),
            "over",
        );
        // (Truncating that payload would still declare too many headers in MessagePack.)
        let small = encode(&many_headers_event(10, 1), format);
        let truncated = small.slice(..small.len() / 2);
        let err =
            decode_event(MessageType::RequestHeaders, &truncated, format.encoding).unwrap_err();
        assert_eq!(err.cause, DecodeCause::Malformed, "{format:?}: {err}");
    }
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
