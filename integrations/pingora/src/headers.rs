//! Header conversion and checked application of agent header mutations.

use agentwire_core::message::{HeaderOp, Headers};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Headers agents may not set, add or remove: hop-by-hop headers (RFC 9110 §7.6.1) and those
/// the proxy owns (framing, `host`, `proxy-*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderPolicy {
    /// Denied names (lowercase).
    pub deny: Vec<String>,
    /// Denied name prefixes (lowercase).
    pub deny_prefixes: Vec<String>,
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy {
            deny: [
                "connection",
                "keep-alive",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
                "host",
                "content-length",
                "expect",
                "http2-settings",
            ]
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
            deny_prefixes: vec!["proxy-".into(), ":".into()],
        }
    }
}

impl HeaderPolicy {
    /// Whether agents may mutate header `name` (compared case-insensitively).
    #[must_use]
    pub fn allows(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        !self.deny.contains(&lower)
            && !self
                .deny_prefixes
                .iter()
                .any(|p| lower.starts_with(p.as_str()))
    }
}

/// A valid HTTP header name and value, or `None` (logged).
pub(crate) fn valid(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        (Ok(n), Ok(v)) => Some((n, v)),
        _ => {
            tracing::warn!(name, "agent header is not valid HTTP; skipped");
            None
        }
    }
}

/// Copies an HTTP header map into the wire's multi-valued map (values that are not text are
/// passed lossily).
pub(crate) fn copy_into(from: &HeaderMap, to: &mut Headers) {
    for (name, value) in from {
        to.append(
            name.as_str(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        );
    }
}

/// Which mutation, on what, after the policy check.
enum Checked {
    Set(HeaderName, HeaderValue),
    Add(HeaderName, HeaderValue),
    Remove(HeaderName),
}

fn check(op: &HeaderOp, policy: &HeaderPolicy) -> Option<Checked> {
    let name = match op {
        HeaderOp::Set { name, .. } | HeaderOp::Add { name, .. } | HeaderOp::Remove { name } => name,
    };
    if !policy.allows(name) {
        tracing::warn!(
            name = name.as_str(),
            "agent header mutation denied by policy"
        );
        return None;
    }
    Some(match op {
        HeaderOp::Set { name, value } => {
            let (n, v) = valid(name, value)?;
            Checked::Set(n, v)
        }
        HeaderOp::Add { name, value } => {
            let (n, v) = valid(name, value)?;
            Checked::Add(n, v)
        }
        HeaderOp::Remove { name } => Checked::Remove(HeaderName::from_bytes(name.as_bytes()).ok()?),
    })
}

/// Applies one agent mutation to the upstream request, if the policy allows it.
pub(crate) fn apply_request(req: &mut RequestHeader, op: &HeaderOp, policy: &HeaderPolicy) {
    let result = match check(op, policy) {
        Some(Checked::Set(n, v)) => req.insert_header(n, v),
        Some(Checked::Add(n, v)) => req.append_header(n, v).map(drop),
        Some(Checked::Remove(n)) => {
            req.remove_header(&n);
            Ok(())
        }
        None => Ok(()),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "agent request header mutation failed");
    }
}

/// Applies one agent mutation to the client response, if the policy allows it.
pub(crate) fn apply_response(resp: &mut ResponseHeader, op: &HeaderOp, policy: &HeaderPolicy) {
    let result = match check(op, policy) {
        Some(Checked::Set(n, v)) => resp.insert_header(n, v),
        Some(Checked::Add(n, v)) => resp.append_header(n, v).map(drop),
        Some(Checked::Remove(n)) => {
            resp.remove_header(&n);
            Ok(())
        }
        None => Ok(()),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "agent response header mutation failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_denies_hop_by_hop_and_proxy_internal() {
        let p = HeaderPolicy::default();
        for name in [
            "Connection",
            "keep-alive",
            "Proxy-Authorization",
            "TE",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
            "Host",
            "content-length",
        ] {
            assert!(!p.allows(name), "{name}");
        }
        assert!(p.allows("x-agentwire-agent"));
        assert!(p.allows("content-type"));
    }

    #[test]
    fn mutations_apply_in_order_and_denied_ones_are_skipped() {
        let p = HeaderPolicy::default();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "example").unwrap();
        req.insert_header("x-a", "1").unwrap();
        let ops = [
            HeaderOp::Set {
                name: "Host".into(),
                value: "evil".into(),
            },
            HeaderOp::Add {
                name: "x-a".into(),
                value: "2".into(),
            },
            HeaderOp::Set {
                name: "x-b".into(),
                value: "bad\r\nvalue".into(),
            },
            HeaderOp::Remove {
                name: "transfer-encoding".into(),
            },
            HeaderOp::Set {
                name: "x-c".into(),
                value: "3".into(),
            },
        ];
        for op in &ops {
            apply_request(&mut req, op, &p);
        }
        assert_eq!(req.headers.get("host").unwrap(), "example");
        let xa: Vec<_> = req.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert!(req.headers.get("x-b").is_none());
        assert_eq!(req.headers.get("x-c").unwrap(), "3");
        apply_request(&mut req, &HeaderOp::Remove { name: "x-a".into() }, &p);
        assert!(req.headers.get("x-a").is_none());
    }
}
