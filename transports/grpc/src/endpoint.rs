//! Endpoint strings of gRPC agents, as a pool receives them.

use std::fmt;
use std::str::FromStr;
use tonic::codegen::http::Uri;

/// A parsed gRPC agent endpoint: where to connect and whether to use TLS.
///
/// | input | transport |
/// |---|---|
/// | `http://host:port` | HTTP/2 cleartext (h2c, prior knowledge) |
/// | `https://host:port` | HTTP/2 over TLS |
/// | `host:port` (no scheme) | h2c (the reference fails on this form) |
///
/// A missing port defaults to 80 / 443 when a scheme is given and is an error without one.
/// Unix-socket forms (`unix:…`, `/…`, `….sock`) are refused with
/// [`EndpointError::NotGrpc`] so a pool can route them to the UDS transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcEndpoint {
    uri: Uri,
    tls: bool,
}

/// Why an endpoint string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointError {
    /// Empty after trimming.
    Empty,
    /// A Unix-socket path, not a gRPC endpoint.
    NotGrpc,
    /// A scheme other than `http` / `https`.
    UnsupportedScheme(String),
    /// `host` without `:port` and without a scheme.
    MissingPort,
    /// A path, query or user info where only `scheme://host:port` is meaningful.
    UnexpectedComponent,
    /// Not a URI at all.
    Invalid(String),
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointError::Empty => f.write_str("empty endpoint"),
            EndpointError::NotGrpc => f.write_str("a Unix socket path, not a gRPC endpoint"),
            EndpointError::UnsupportedScheme(s) => {
                write!(f, "unsupported scheme {s:?} (use http or https)")
            }
            EndpointError::MissingPort => f.write_str("endpoint without scheme needs a port"),
            EndpointError::UnexpectedComponent => {
                f.write_str("endpoint must be scheme://host:port without path or user info")
            }
            EndpointError::Invalid(e) => write!(f, "invalid endpoint: {e}"),
        }
    }
}

impl std::error::Error for EndpointError {}

impl GrpcEndpoint {
    /// Parses an endpoint string (see the type's table).
    ///
    /// # Errors
    /// See [`EndpointError`].
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EndpointError::Empty);
        }
        if s.starts_with("unix:") || s.starts_with('/') || s.ends_with(".sock") {
            return Err(EndpointError::NotGrpc);
        }
        let (tls, rest, explicit) = match s.split_once("://") {
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => (false, rest, true),
                "https" => (true, rest, true),
                other => return Err(EndpointError::UnsupportedScheme(other.to_owned())),
            },
            None => (false, s, false),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if !(tail.is_empty() || tail == "/") || authority.contains('@') {
            return Err(EndpointError::UnexpectedComponent);
        }
        let parsed: tonic::codegen::http::uri::Authority =
            authority
                .parse()
                .map_err(|e: tonic::codegen::http::uri::InvalidUri| {
                    EndpointError::Invalid(e.to_string())
                })?;
        if parsed.host().is_empty() {
            return Err(EndpointError::Invalid("no host".into()));
        }
        let port_text = authority
            .rsplit_once(':')
            .is_some_and(|(h, _)| h.ends_with(']') || !h.contains(':'));
        if port_text && parsed.port_u16().is_none() {
            return Err(EndpointError::Invalid(
                "port is not a number in 0..=65535".into(),
            ));
        }
        let port = match parsed.port_u16() {
            Some(p) => p,
            None if !explicit => return Err(EndpointError::MissingPort),
            None if tls => 443,
            None => 80,
        };
        let scheme = if tls { "https" } else { "http" };
        let uri = Uri::from_str(&format!("{scheme}://{}:{port}", parsed.host()))
            .map_err(|e| EndpointError::Invalid(e.to_string()))?;
        Ok(GrpcEndpoint { uri, tls })
    }

    /// The URI handed to the channel (`http://host:port` or `https://host:port`).
    #[must_use]
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// True for `https://`.
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host (an IPv6 address keeps its brackets).
    #[must_use]
    pub fn host(&self) -> &str {
        self.uri.host().unwrap_or_default()
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.uri
            .port_u16()
            .unwrap_or(if self.tls { 443 } else { 80 })
    }
}

impl FromStr for GrpcEndpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GrpcEndpoint::parse(s)
    }
}

impl fmt::Display for GrpcEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        let e = GrpcEndpoint::parse("http://127.0.0.1:50051").unwrap();
        assert!(!e.is_tls());
        assert_eq!(e.uri().to_string(), "http://127.0.0.1:50051/");
        let e = GrpcEndpoint::parse("https://agent.example:8443/").unwrap();
        assert!(e.is_tls());
        assert_eq!((e.host(), e.port()), ("agent.example", 8443));
        let e = GrpcEndpoint::parse("localhost:7000").unwrap();
        assert!(!e.is_tls());
        assert_eq!(e.uri().to_string(), "http://localhost:7000/");
        let e = GrpcEndpoint::parse("[::1]:7000").unwrap();
        assert_eq!((e.host(), e.port()), ("[::1]", 7000));
        assert_eq!(GrpcEndpoint::parse("HTTPS://a").unwrap().port(), 443);
        assert_eq!(GrpcEndpoint::parse("http://a").unwrap().port(), 80);
    }

    #[test]
    fn refuses_what_is_not_a_grpc_endpoint() {
        assert_eq!(GrpcEndpoint::parse(" "), Err(EndpointError::Empty));
        assert_eq!(
            GrpcEndpoint::parse("unix:/run/a.sock"),
            Err(EndpointError::NotGrpc)
        );
        assert_eq!(
            GrpcEndpoint::parse("/run/agent"),
            Err(EndpointError::NotGrpc)
        );
        assert_eq!(
            GrpcEndpoint::parse("agent.sock"),
            Err(EndpointError::NotGrpc)
        );
        assert_eq!(
            GrpcEndpoint::parse("localhost"),
            Err(EndpointError::MissingPort)
        );
        assert!(matches!(
            GrpcEndpoint::parse("ftp://a:1"),
            Err(EndpointError::UnsupportedScheme(_))
        ));
        assert_eq!(
            GrpcEndpoint::parse("http://a:1/prefix"),
            Err(EndpointError::UnexpectedComponent)
        );
        assert_eq!(
            GrpcEndpoint::parse("http://user@a:1"),
            Err(EndpointError::UnexpectedComponent)
        );
        assert!(matches!(
            GrpcEndpoint::parse("http://a:99999"),
            Err(EndpointError::Invalid(_))
        ));
    }
}
