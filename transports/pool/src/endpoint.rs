//! Where an agent listens: parsing the endpoint strings of a proxy configuration.

use std::fmt;
use std::path::PathBuf;

use crate::PoolError;

/// An agent's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix socket (the agentwire/Zentinel UDS transport).
    Uds(PathBuf),
    /// A gRPC endpoint.
    Grpc {
        /// `http://host:port` or `https://host:port` (a scheme-less `host:port` is stored
        /// with `http://`).
        uri: String,
        /// TLS (`https://`); plaintext HTTP/2 (h2c) otherwise.
        tls: bool,
    },
}

impl Endpoint {
    /// Parses an endpoint string:
    ///
    /// | input | endpoint |
    /// |---|---|
    /// | `/run/agent.sock`, `./agent`, `../agent` | [`Endpoint::Uds`] |
    /// | `unix:/path`, `unix:///path`, `unix:relative.sock` | [`Endpoint::Uds`] |
    /// | anything ending in `.sock` | [`Endpoint::Uds`] |
    /// | `http://host:port` | [`Endpoint::Grpc`] over h2c |
    /// | `https://host:port` | [`Endpoint::Grpc`] over TLS |
    /// | `host:port`, `[::1]:port` (no scheme) | [`Endpoint::Grpc`] over h2c (the reference rejects these) |
    ///
    /// # Errors
    /// [`PoolError::InvalidEndpoint`] for an empty string, an unknown scheme, a missing
    /// host or a port that is not a number in 1..=65535.
    pub fn parse(input: &str) -> Result<Endpoint, PoolError> {
        let s = input.trim();
        let invalid = |why: &'static str| PoolError::InvalidEndpoint(format!("{why}: {input:?}"));
        if s.is_empty() {
            return Err(invalid("empty endpoint"));
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            // `unix:///abs` and `unix:/abs` both name `/abs`; `unix://rel` is not a thing.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(invalid("unix endpoint without a path"));
            }
            return Ok(Endpoint::Uds(PathBuf::from(path)));
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return Ok(Endpoint::Uds(PathBuf::from(s)));
        }
        for (scheme, tls) in [("http://", false), ("https://", true)] {
            if let Some(rest) = s.strip_prefix(scheme) {
                let authority = rest.split('/').next().unwrap_or_default();
                validate_authority(authority, true).map_err(invalid)?;
                return Ok(Endpoint::Grpc {
                    uri: s.trim_end_matches('/').to_owned(),
                    tls,
                });
            }
        }
        if s.contains("://") {
            return Err(invalid("unknown scheme"));
        }
        if s.ends_with(".sock") {
            return Ok(Endpoint::Uds(PathBuf::from(s)));
        }
        validate_authority(s, false).map_err(invalid)?;
        Ok(Endpoint::Grpc {
            uri: format!("http://{s}"),
            tls: false,
        })
    }

    /// The key under which a [`Connector`](crate::Connector) for this kind of endpoint is
    /// registered: `"unix"` or `"grpc"`.
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        match self {
            Endpoint::Uds(_) => "unix",
            Endpoint::Grpc { .. } => "grpc",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Uds(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Grpc { uri, .. } => f.write_str(uri),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

/// Checks `host:port` (`port_optional` for URIs, where the scheme implies a default).
fn validate_authority(authority: &str, port_optional: bool) -> Result<(), &'static str> {
    if authority.is_empty() {
        return Err("missing host");
    }
    if authority.contains('@') {
        return Err("credentials in an endpoint are not supported");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest.split_once(']').ok_or("unterminated IPv6 literal")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 literal");
        }
        return match after.strip_prefix(':') {
            Some(port) => check_port(Some(port), port_optional),
            None if after.is_empty() => check_port(None, port_optional),
            None => Err("junk after IPv6 literal"),
        };
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host");
    }
    if host.contains(':') {
        return Err("IPv6 addresses need brackets");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("invalid host");
    }
    check_port(port, port_optional)
}

fn check_port(port: Option<&str>, port_optional: bool) -> Result<(), &'static str> {
    match port {
        Some(port) => match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(()),
            _ => Err("invalid port"),
        },
        None if port_optional => Ok(()),
        None => Err("not a socket path and not host:port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uds(p: &str) -> Endpoint {
        Endpoint::Uds(PathBuf::from(p))
    }

    fn grpc(uri: &str, tls: bool) -> Endpoint {
        Endpoint::Grpc {
            uri: uri.to_owned(),
            tls,
        }
    }

    #[test]
    fn unix_forms() {
        assert_eq!(Endpoint::parse("/run/a.sock").unwrap(), uds("/run/a.sock"));
        assert_eq!(Endpoint::parse("/run/agent").unwrap(), uds("/run/agent"));
        assert_eq!(Endpoint::parse("unix:/run/a").unwrap(), uds("/run/a"));
        assert_eq!(Endpoint::parse("unix:///run/a").unwrap(), uds("/run/a"));
        assert_eq!(Endpoint::parse("unix:rel.sock").unwrap(), uds("rel.sock"));
        assert_eq!(Endpoint::parse("agent.sock").unwrap(), uds("agent.sock"));
        assert_eq!(Endpoint::parse("./agent").unwrap(), uds("./agent"));
        assert_eq!(Endpoint::parse(" /padded ").unwrap(), uds("/padded"));
        assert_eq!(uds("/x").scheme(), "unix");
    }

    #[test]
    fn grpc_forms() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:50051").unwrap(),
            grpc("http://127.0.0.1:50051", false)
        );
        assert_eq!(
            Endpoint::parse("https://agent.example:443/").unwrap(),
            grpc("https://agent.example:443", true)
        );
        assert_eq!(
            Endpoint::parse("https://agent.example").unwrap(),
            grpc("https://agent.example", true)
        );
        // Scheme-less host:port is h2c gRPC (the reference fails to parse it).
        assert_eq!(
            Endpoint::parse("localhost:50051").unwrap(),
            grpc("http://localhost:50051", false)
        );
        assert_eq!(
            Endpoint::parse("[::1]:9000").unwrap(),
            grpc("http://[::1]:9000", false)
        );
        assert_eq!(grpc("http://h:1", false).scheme(), "grpc");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "   ",
            "unix:",
            "ftp://h:1",
            "http://",
            "http://:80",
            "localhost",
            "localhost:0",
            "localhost:99999",
            "localhost:port",
            "::1:80",
            "[::1",
            "[zz]:80",
            "http://user@h:1",
            "a b:80",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(PoolError::InvalidEndpoint(_))),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:/run/a.sock", "http://h:1", "https://h:2"] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(Endpoint::parse(&e.to_string()).unwrap(), e);
        }
    }
}
