//! A direct MessagePack decoder for the two header events, the hot path of every request.
//!
//! It reads exactly the shape agentwire and the reference write (`to_vec_named`: maps keyed by
//! field name, strings as `str`, ports as unsigned integers, absent options as `nil` or
//! omitted) and gives up — returning `None` — on anything else: unknown or repeated keys, a
//! missing required key, another type, a truncated payload, invalid UTF-8. The caller then runs
//! the serde decoder, which accepts or refuses the payload exactly as before, so this path only
//! ever changes how fast a payload is decoded, never whether or into what (see the
//! differential tests below). Allocation is bounded by the payload as in the serde path: one
//! `String` per string read, header entries reserved up to 64 on the peer's word.

use crate::message::{
    AgentResponse, AnyValue, Audit, DecodedEntries, DecodedEntry, HeaderValues, Headers,
    RequestHeaders, RequestMetadata, ResponseHeaders,
};
use crate::message::{MAX_COLLECTION_LEN, count_one, name_from_str};
use alloc::string::String;
use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    #[inline]
    fn be(&mut self, n: usize) -> Option<u64> {
        let mut v = 0u64;
        for &b in self.take(n)? {
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    }

    #[inline]
    fn len(&mut self, n: usize) -> Option<usize> {
        usize::try_from(self.be(n)?).ok()
    }

    fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => self.len(2),
            0xdf => self.len(4),
            _ => None,
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x90..=0x9f => Some(usize::from(b & 0x0f)),
            0xdc => self.len(2),
            0xdd => self.len(4),
            _ => None,
        }
    }

    /// The bytes of a `str`, not checked as UTF-8: keys are only compared with known ASCII
    /// names (a key that is not one of them sends the payload to the serde decoder).
    #[inline]
    fn key(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => return None,
        };
        self.take(len)
    }

    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        core::str::from_utf8(self.key()?).ok()
    }

    #[inline]
    fn string(&mut self) -> Option<String> {
        self.str().map(String::from)
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        if self.buf.get(self.pos) == Some(&0xc0) {
            self.pos += 1;
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A non-negative integer in any MessagePack width (rmp-serde writes the smallest).
    fn unsigned(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }

    fn u16(&mut self) -> Option<u16> {
        u16::try_from(self.unsigned()?).ok()
    }

    /// A header map; `None` too past [`MAX_COLLECTION_LEN`] elements (counted as the serde
    /// decoder counts them), which that decoder then refuses with its typed error.
    fn headers(&mut self) -> Option<Headers> {
        let n = self.map_len()?;
        if n > MAX_COLLECTION_LEN {
            return None;
        }
        let mut entries: DecodedEntries = SmallVec::with_capacity(n.min(64));
        let mut used = 0usize;
        for _ in 0..n {
            let name = name_from_str(self.str()?);
            let count = self.array_len()?;
            if count > MAX_COLLECTION_LEN - used {
                return None;
            }
            used += count;
            if count == 0 && !count_one(&mut used) {
                return None;
            }
            let mut values = HeaderValues::new();
            for _ in 0..count {
                values.push(self.string()?);
            }
            entries.push(DecodedEntry { name, values });
        }
        Some(Headers::from_decoded(entries))
    }

    fn metadata(&mut self) -> Option<RequestMetadata> {
        // Bits of the keys seen, in declaration order.
        const REQUIRED: u16 = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 5 | 1 << 10;
        let n = self.map_len()?;
        let mut m = RequestMetadata::default();
        let mut seen = 0u16;
        for _ in 0..n {
            let bit = match self.key()? {
                b"correlation_id" => 0,
                b"request_id" => 1,
                b"client_ip" => 2,
                b"client_port" => 3,
                b"server_name" => 4,
                b"protocol" => 5,
                b"tls_version" => 6,
                b"tls_cipher" => 7,
                b"route_id" => 8,
                b"upstream_id" => 9,
                b"timestamp" => 10,
                b"traceparent" => 11,
                _ => return None,
            };
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            match bit {
                0 => m.correlation_id = self.string()?,
                1 => m.request_id = self.string()?,
                2 => m.client_ip = self.string()?,
                3 => m.client_port = self.u16()?,
                4 => m.server_name = self.opt_string()?,
                5 => m.protocol = self.string()?,
                6 => m.tls_version = self.opt_string()?,
                7 => m.tls_cipher = self.opt_string()?,
                8 => m.route_id = self.opt_string()?,
                9 => m.upstream_id = self.opt_string()?,
                10 => m.timestamp = self.string()?,
                _ => m.traceparent = self.opt_string()?,
            }
        }
        (seen & REQUIRED == REQUIRED).then_some(m)
    }
}

/// Request headers in the canonical MessagePack shape, or `None` (use the serde decoder).
pub(crate) fn request_headers(payload: &[u8]) -> Option<RequestHeaders> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let n = r.map_len()?;
    let (mut metadata, mut method, mut uri, mut headers) = (None, None, None, None);
    for _ in 0..n {
        match r.key()? {
            b"metadata" if metadata.is_none() => metadata = Some(r.metadata()?),
            b"method" if method.is_none() => method = Some(r.string()?),
            b"uri" if uri.is_none() => uri = Some(r.string()?),
            b"headers" if headers.is_none() => headers = Some(r.headers()?),
            _ => return None,
        }
    }
    Some(RequestHeaders {
        metadata: metadata?,
        method: method?,
        uri: uri?,
        headers: headers?,
    })
}

/// Response headers in the canonical MessagePack shape, or `None` (use the serde decoder).
pub(crate) fn response_headers(payload: &[u8]) -> Option<ResponseHeaders> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let n = r.map_len()?;
    let (mut correlation_id, mut status, mut headers) = (None, None, None);
    for _ in 0..n {
        match r.key()? {
            b"correlation_id" if correlation_id.is_none() => correlation_id = Some(r.string()?),
            b"status" if status.is_none() => status = Some(r.u16()?),
            b"headers" if headers.is_none() => headers = Some(r.headers()?),
            _ => return None,
        }
    }
    Some(ResponseHeaders {
        correlation_id: correlation_id?,
        status: status?,
        headers: headers?,
    })
}

impl Reader<'_> {
    fn nil(&mut self) -> Option<()> {
        (self.byte()? == 0xc0).then_some(())
    }

    fn empty_array(&mut self) -> Option<()> {
        (self.array_len()? == 0).then_some(())
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.unsigned()?).ok()
    }

    fn audit(&mut self) -> Option<Audit> {
        let n = self.map_len()?;
        let mut audit = Audit::default();
        let mut seen = 0u8;
        for _ in 0..n {
            let bit = match self.key()? {
                b"tags" => 0,
                b"rule_ids" => 1,
                b"confidence" => 2,
                b"reason_codes" => 3,
                b"custom" => 4,
                _ => return None,
            };
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            match bit {
                0..=3 if bit == 2 => self.nil()?,
                0..=3 => self.empty_array()?,
                _ => {
                    let n = self.map_len()?;
                    if n > MAX_COLLECTION_LEN {
                        return None;
                    }
                    for _ in 0..n {
                        let key = self.str()?;
                        let value = self.str()?;
                        if audit.custom.contains_key(key) {
                            return None;
                        }
                        audit
                            .custom
                            .insert(String::from(key), AnyValue::from(value));
                    }
                }
            }
        }
        Some(audit)
    }
}

/// An agent response in the canonical MessagePack shape of a plain Allow (no mutations, no
/// audit besides string `custom` values), or `None` (use the serde decoder).
pub(crate) fn agent_response(payload: &[u8]) -> Option<AgentResponse> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let n = r.map_len()?;
    let mut response = AgentResponse::allow();
    let mut seen = 0u16;
    for _ in 0..n {
        let bit = match r.key()? {
            b"version" => 0,
            b"decision" => 1,
            b"request_headers" => 2,
            b"response_headers" => 3,
            b"routing_metadata" => 4,
            b"audit" => 5,
            b"needs_more" => 6,
            b"request_body_mutation" => 7,
            b"response_body_mutation" => 8,
            b"websocket_decision" => 9,
            _ => return None,
        };
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        match bit {
            0 => response.version = r.u32()?,
            1 => (r.key()? == b"allow").then_some(())?,
            2 | 3 => r.empty_array()?,
            4 => (r.map_len()? == 0).then_some(())?,
            5 => response.audit = r.audit()?,
            6 => {
                response.needs_more = match r.byte()? {
                    0xc2 => false,
                    0xc3 => true,
                    _ => return None,
                }
            }
            _ => r.nil()?,
        }
    }
    // `version` and `decision` have no default.
    (seen & 0b11 == 0b11).then_some(response)
}

// ---------------------------------------------------------------------------------------------
// Encoding request headers: the bytes rmp-serde writes for `RequestHeadersWire` (maps in
// declaration order, smallest integer and length forms), written straight into the buffer.

fn put_len(
    out: &mut BytesMut,
    len: usize,
    fix: u8,
    fix_max: usize,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) -> Option<()> {
    if len <= fix_max {
        out.put_u8(fix | len as u8);
    } else if let Some(m8) = m8.filter(|_| len <= 0xff) {
        out.put_slice(&[m8, len as u8]);
    } else if len <= 0xffff {
        out.put_u8(m16);
        out.put_u16(len as u16);
    } else {
        out.put_u8(m32);
        out.put_u32(u32::try_from(len).ok()?);
    }
    Some(())
}

#[inline]
fn put_str(out: &mut BytesMut, s: &str) -> Option<()> {
    put_len(out, s.len(), 0xa0, 31, Some(0xd9), 0xda, 0xdb)?;
    out.put_slice(s.as_bytes());
    Some(())
}

#[inline]
fn put_map(out: &mut BytesMut, len: usize) -> Option<()> {
    put_len(out, len, 0x80, 15, None, 0xde, 0xdf)
}

#[inline]
fn put_array(out: &mut BytesMut, len: usize) -> Option<()> {
    put_len(out, len, 0x90, 15, None, 0xdc, 0xdd)
}

fn put_opt(out: &mut BytesMut, s: Option<&String>) -> Option<()> {
    match s {
        Some(s) => put_str(out, s),
        None => {
            out.put_u8(0xc0);
            Some(())
        }
    }
}

fn put_u16(out: &mut BytesMut, v: u16) {
    if v < 0x80 {
        out.put_u8(v as u8);
    } else if v <= 0xff {
        out.put_slice(&[0xcc, v as u8]);
    } else {
        out.put_u8(0xcd);
        out.put_u16(v);
    }
}

/// Appends request headers as MessagePack; `None` (with `out` partly written: the caller
/// rolls back) only for a string or map longer than MessagePack can say.
pub(crate) fn write_request_headers(e: &RequestHeaders, out: &mut BytesMut) -> Option<()> {
    let m = &e.metadata;
    out.reserve(256);
    put_map(out, 4)?;
    put_str(out, "metadata")?;
    put_map(out, 11 + usize::from(m.traceparent.is_some()))?;
    put_str(out, "correlation_id")?;
    put_str(out, &m.correlation_id)?;
    put_str(out, "request_id")?;
    put_str(out, &m.request_id)?;
    put_str(out, "client_ip")?;
    put_str(out, &m.client_ip)?;
    put_str(out, "client_port")?;
    put_u16(out, m.client_port);
    put_str(out, "server_name")?;
    put_opt(out, m.server_name.as_ref())?;
    put_str(out, "protocol")?;
    put_str(out, &m.protocol)?;
    put_str(out, "tls_version")?;
    put_opt(out, m.tls_version.as_ref())?;
    put_str(out, "tls_cipher")?;
    put_opt(out, m.tls_cipher.as_ref())?;
    put_str(out, "route_id")?;
    put_opt(out, m.route_id.as_ref())?;
    put_str(out, "upstream_id")?;
    put_opt(out, m.upstream_id.as_ref())?;
    put_str(out, "timestamp")?;
    put_str(out, &m.timestamp)?;
    if let Some(tp) = &m.traceparent {
        put_str(out, "traceparent")?;
        put_str(out, tp)?;
    }
    put_str(out, "method")?;
    put_str(out, &e.method)?;
    put_str(out, "uri")?;
    put_str(out, &e.uri)?;
    put_str(out, "headers")?;
    put_map(out, e.headers.len())?;
    for (name, values) in e.headers.names() {
        put_str(out, name)?;
        put_array(out, values.len())?;
        for v in values {
            put_str(out, v)?;
        }
    }
    Some(())
}

fn put_uint(out: &mut BytesMut, v: u32) {
    if let Ok(v) = u16::try_from(v) {
        put_u16(out, v);
    } else {
        out.put_u8(0xce);
        out.put_u32(v);
    }
}

/// Appends a plain Allow answer (no mutations, routing metadata, tags, rule ids, reason codes
/// or confidence; only string `audit.custom` values) with `audit.custom["correlation_id"]` set
/// to `id`, as MessagePack: the bytes rmp-serde writes for it. `None` for any other answer
/// (`out` partly written: the caller rolls back and uses the serde encoder).
pub(crate) fn write_plain_response(r: &AgentResponse, id: &str, out: &mut BytesMut) -> Option<()> {
    let a = &r.audit;
    let plain = r.decision == crate::message::Decision::Allow
        && r.request_headers.is_empty()
        && r.response_headers.is_empty()
        && r.routing_metadata.is_empty()
        && a.tags.is_empty()
        && a.rule_ids.is_empty()
        && a.confidence.is_none()
        && a.reason_codes.is_empty()
        && r.request_body_mutation.is_none()
        && r.response_body_mutation.is_none()
        && r.websocket_decision.is_none()
        && a.custom.values().all(|v| v.as_str().is_some());
    if !plain {
        return None;
    }
    let key = crate::message::CORRELATION_ID_KEY;
    out.reserve(160);
    put_map(out, 10)?;
    put_str(out, "version")?;
    put_uint(out, r.version);
    put_str(out, "decision")?;
    put_str(out, "allow")?;
    put_str(out, "request_headers")?;
    put_array(out, 0)?;
    put_str(out, "response_headers")?;
    put_array(out, 0)?;
    put_str(out, "routing_metadata")?;
    put_map(out, 0)?;
    put_str(out, "audit")?;
    put_map(out, 5)?;
    for name in ["tags", "rule_ids"] {
        put_str(out, name)?;
        put_array(out, 0)?;
    }
    put_str(out, "confidence")?;
    out.put_u8(0xc0);
    put_str(out, "reason_codes")?;
    put_array(out, 0)?;
    put_str(out, "custom")?;
    put_map(
        out,
        a.custom.len() + usize::from(!a.custom.contains_key(key)),
    )?;
    let mut written = false;
    for (k, v) in &a.custom {
        if !written && k.as_str() >= key {
            put_str(out, key)?;
            put_str(out, id)?;
            written = true;
        }
        if k != key {
            put_str(out, k)?;
            put_str(out, v.as_str()?)?;
        }
    }
    if !written {
        put_str(out, key)?;
        put_str(out, id)?;
    }
    put_str(out, "needs_more")?;
    out.put_u8(if r.needs_more { 0xc3 } else { 0xc2 });
    for name in [
        "request_body_mutation",
        "response_body_mutation",
        "websocket_decision",
    ] {
        put_str(out, name)?;
        out.put_u8(0xc0);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{WireFormat, decode_payload, encode_event};
    use crate::frame::{HEADER_LEN, MessageType};
    use crate::message::{Encoding, Event};
    use alloc::vec::Vec;

    fn request(traceparent: bool, tls: bool) -> RequestHeaders {
        let mut headers = Headers::new();
        for (n, v) in [
            ("host", "api.example.com"),
            ("user-agent", "Mozilla/5.0 é"),
            ("accept", "application/json"),
            ("x-multi", "1"),
            ("x-multi", "2"),
            ("content-type", "application/json"),
        ] {
            headers.append(n, v);
        }
        RequestHeaders {
            metadata: RequestMetadata {
                correlation_id: "req-1".into(),
                request_id: "r".into(),
                client_ip: "10.0.0.1".into(),
                client_port: 54321,
                server_name: Some("api.example.com".into()),
                protocol: "HTTP/1.1".into(),
                tls_version: tls.then(|| "TLSv1.3".into()),
                tls_cipher: tls.then(|| "x".repeat(300)),
                route_id: Some("api".into()),
                upstream_id: None,
                timestamp: "2026-01-01T00:00:00Z".into(),
                traceparent: traceparent.then(|| "00-abc-def-01".into()),
            },
            method: "POST".into(),
            uri: "/v1/orders?limit=10".into(),
            headers,
        }
    }

    fn payload(event: &Event) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_event(
            event,
            WireFormat::new(Encoding::Msgpack),
            u32::MAX,
            &mut out,
        )
        .unwrap();
        out[HEADER_LEN..].to_vec()
    }

    /// Whatever the fast path returns, the serde decoder returns too.
    fn agrees(kind: MessageType, p: &[u8]) -> bool {
        match kind {
            MessageType::RequestHeaders => match request_headers(p) {
                Some(fast) => {
                    assert_eq!(
                        decode_payload::<RequestHeaders>(kind, p, Encoding::Msgpack).as_ref(),
                        Ok(&fast),
                        "{p:02x?}"
                    );
                    true
                }
                None => false,
            },
            _ => match response_headers(p) {
                Some(fast) => {
                    assert_eq!(
                        decode_payload::<ResponseHeaders>(kind, p, Encoding::Msgpack).as_ref(),
                        Ok(&fast),
                        "{p:02x?}"
                    );
                    true
                }
                None => false,
            },
        }
    }

    #[test]
    fn canonical_payloads_take_the_fast_path_and_agree_under_mutation() {
        let mut events = Vec::new();
        for (tp, tls) in [(false, false), (true, true), (true, false)] {
            events.push(Event::RequestHeaders(request(tp, tls)));
        }
        events.push(Event::ResponseHeaders(ResponseHeaders {
            correlation_id: "req-1".into(),
            status: 404,
            headers: request(false, false).headers,
        }));
        events.push(Event::ResponseHeaders(ResponseHeaders::default()));
        for event in &events {
            let kind = event.message_type();
            let p = payload(event);
            assert!(agrees(kind, &p), "canonical payload refused: {event:?}");
            for cut in 0..p.len() {
                agrees(kind, &p[..cut]);
            }
            for i in 0..p.len() {
                for b in [
                    0x00, 0x01, 0x7f, 0x80, 0x90, 0xa1, 0xc0, 0xcc, 0xcd, 0xd9, 0xff,
                ] {
                    let mut m = p.clone();
                    m[i] = b;
                    agrees(kind, &m);
                    m[i] = p[i] ^ 0x01;
                    agrees(kind, &m);
                }
            }
        }
    }

    /// Whatever the response fast path returns, the serde decoder returns too.
    fn response_agrees(p: &[u8]) -> bool {
        match agent_response(p) {
            Some(fast) => {
                assert_eq!(
                    decode_payload::<AgentResponse>(
                        MessageType::AgentResponse,
                        p,
                        Encoding::Msgpack
                    )
                    .as_ref(),
                    Ok(&fast),
                    "{p:02x?}"
                );
                true
            }
            None => false,
        }
    }

    #[test]
    fn plain_allow_responses_take_the_fast_path_and_agree_under_mutation() {
        let mut tagged = AgentResponse::allow();
        tagged.audit.custom.insert("a".into(), AnyValue::from("x"));
        tagged.needs_more = true;
        let mut block = AgentResponse::block(403);
        block.audit.tags.push("t".into());
        for (response, fast) in [
            (AgentResponse::allow(), true),
            (tagged, true),
            (block, false),
        ] {
            let mut out = BytesMut::new();
            crate::encoding::encode_response(
                &response,
                "req-1",
                Encoding::Msgpack,
                u32::MAX,
                &mut out,
            )
            .unwrap();
            let p = out[HEADER_LEN..].to_vec();
            assert_eq!(response_agrees(&p), fast, "{response:?}");
            for cut in 0..p.len() {
                response_agrees(&p[..cut]);
            }
            for i in 0..p.len() {
                for b in [
                    0x00, 0x01, 0x7f, 0x80, 0x90, 0xa1, 0xc0, 0xc2, 0xc3, 0xcc, 0xd9, 0xff,
                ] {
                    let mut m = p.clone();
                    m[i] = b;
                    response_agrees(&m);
                    m[i] = p[i] ^ 0x01;
                    response_agrees(&m);
                }
            }
        }
    }

    #[test]
    fn direct_encoding_writes_the_bytes_of_the_serde_encoder() {
        use alloc::string::ToString;
        let lens = [0usize, 1, 31, 32, 255, 256, 65_535, 65_536];
        let mut cases = Vec::new();
        for (i, len) in lens.into_iter().enumerate() {
            let mut r = request(i % 2 == 0, i % 3 == 0);
            r.metadata.correlation_id = "c".repeat(len);
            r.uri = "é".repeat(len / 2);
            r.metadata.client_port = [0, 127, 128, 255, 256, 65_535, 1, 80][i];
            cases.push(r);
        }
        let mut many = request(true, true);
        for n in 0..40 {
            many.headers
                .append(alloc::format!("x-h{n:02}"), n.to_string());
        }
        for _ in 0..20 {
            many.headers.append("x-h00", "again");
        }
        cases.push(many);
        cases.push(RequestHeaders::default());
        for r in cases {
            let mut want = BytesMut::new();
            crate::encoding::encode_payload(
                MessageType::RequestHeaders,
                &crate::encoding::RequestHeadersWire(&r, WireFormat::new(Encoding::Msgpack)),
                Encoding::Msgpack,
                &mut want,
            )
            .unwrap();
            let mut got = BytesMut::from(&b"prefix"[..]);
            write_request_headers(&r, &mut got).unwrap();
            assert_eq!(&got[6..], &want[..]);
        }
    }

    #[test]
    fn direct_response_encoding_writes_the_bytes_of_the_serde_encoder() {
        let mut cases = alloc::vec![AgentResponse::allow()];
        for key in ["a", "correlation_id", "z"] {
            let mut r = AgentResponse::allow();
            r.audit
                .custom
                .insert(key.into(), AnyValue::from("v".repeat(40)));
            r.needs_more = true;
            r.version = 70_000;
            cases.push(r);
        }
        for r in &cases {
            for id in ["r-1", "", &"i".repeat(300)] {
                let mut want = BytesMut::new();
                crate::encoding::encode_payload(
                    MessageType::AgentResponse,
                    &crate::encoding::ResponseWithId { response: r, id },
                    Encoding::Msgpack,
                    &mut want,
                )
                .unwrap();
                let mut got = BytesMut::new();
                write_plain_response(r, id, &mut got).unwrap();
                assert_eq!(got, want, "{r:?}");
            }
        }
        let mut other = AgentResponse::allow();
        other
            .audit
            .custom
            .insert("n".into(), AnyValue(serde_json::json!(1)));
        for r in [AgentResponse::block(403), other] {
            assert!(write_plain_response(&r, "x", &mut BytesMut::new()).is_none());
        }
    }

    #[test]
    fn other_shapes_fall_back() {
        // Repeated key, unknown key, integer port of another width, `nil` header list.
        let repeated = b"\x81\xa3uri\xa1/";
        assert!(request_headers(repeated).is_none());
        let mut unknown = payload(&Event::RequestHeaders(request(false, false)));
        unknown[0] += 1;
        unknown.extend_from_slice(b"\xa1x\xc0");
        assert!(!agrees(MessageType::RequestHeaders, &unknown));
        assert!(
            decode_payload::<RequestHeaders>(
                MessageType::RequestHeaders,
                &unknown,
                Encoding::Msgpack
            )
            .is_ok()
        );
        assert!(
            response_headers(b"\x83\xaecorrelation_id\xa1a\xa6status\xd1\x01\x00\xa7headers\x80")
                .is_none()
        );
        assert!(
            response_headers(
                b"\x83\xaecorrelation_id\xa1a\xa6status\xcd\x01\x00\xa7headers\x81\xa1a\xc0"
            )
            .is_none()
        );
        assert!(
            response_headers(b"\x83\xaecorrelation_id\xa1a\xa6status\xcd\x01\x00\xa7headers\x80")
                .is_some()
        );
    }
}
