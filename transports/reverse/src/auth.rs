//! Authenticating a registration: static tokens compared in constant time, or a validator of
//! your own.

use std::fmt;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// Where a registering connection comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A Unix-socket peer (the socket's permissions already restrict who can dial).
    Unix,
    /// A TCP peer.
    Tcp(SocketAddr),
}

/// What a [`TokenValidator`] sees of a registration attempt.
#[derive(Debug)]
#[non_exhaustive]
pub struct RegistrationAttempt<'a> {
    /// The id the agent registers under (non-empty).
    pub agent_id: &'a str,
    /// The token the agent presented, if any.
    pub auth_token: Option<&'a str>,
    /// The agent's address.
    pub peer: &'a Peer,
    /// The client certificate chain presented in the TLS handshake (end entity first), when
    /// the listener does TLS and the agent sent one. With mTLS the chain is already verified
    /// by the TLS configuration; a validator can bind the agent id to the certificate.
    pub peer_certificates: Option<&'a [Vec<u8>]>,
}

/// Decides whether a registration attempt is authentic. Runs before the allowlist, so a
/// peer without valid credentials learns nothing about which ids are allowed (S2).
///
/// Implemented for closures `Fn(&RegistrationAttempt) -> bool`. Keep it fast: it runs on the
/// registration task, within the handshake timeout.
pub trait TokenValidator: Send + Sync + 'static {
    /// True to accept the attempt.
    fn validate(&self, attempt: &RegistrationAttempt<'_>) -> bool;
}

impl<F> TokenValidator for F
where
    F: Fn(&RegistrationAttempt<'_>) -> bool + Send + Sync + 'static,
{
    fn validate(&self, attempt: &RegistrationAttempt<'_>) -> bool {
        self(attempt)
    }
}

/// A fixed set of accepted tokens.
///
/// Every configured token is compared with the presented one in constant time (`subtle`),
/// and all of them are examined whatever the outcome, so timing tells neither which token
/// matched nor how much of a token was right. (Only a token's length can show, as with any
/// byte comparison that does not pad to a fixed size.)
#[derive(Clone)]
pub struct StaticTokens {
    tokens: Vec<Vec<u8>>,
}

impl StaticTokens {
    /// The accepted tokens; empty tokens are ignored (they could never be told apart from
    /// "no token").
    pub fn new<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        StaticTokens {
            tokens: tokens
                .into_iter()
                .map(|t| t.as_ref().as_bytes().to_vec())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }

    /// True when no usable token is configured (such a validator rejects everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `presented` equals one of the tokens (constant time per candidate, every
    /// candidate examined).
    #[must_use]
    pub fn check(&self, presented: Option<&str>) -> bool {
        let presented = presented.unwrap_or("").as_bytes();
        let mut any = subtle::Choice::from(0u8);
        for token in &self.tokens {
            any |= token.as_slice().ct_eq(presented);
        }
        // A missing or empty token never matches (no configured token is empty).
        bool::from(any) && !presented.is_empty()
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secrets.
        f.debug_struct("StaticTokens")
            .field("count", &self.tokens.len())
            .finish()
    }
}

impl TokenValidator for StaticTokens {
    fn validate(&self, attempt: &RegistrationAttempt<'_>) -> bool {
        self.check(attempt.auth_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt<'a>(token: Option<&'a str>, peer: &'a Peer) -> RegistrationAttempt<'a> {
        RegistrationAttempt {
            agent_id: "a",
            auth_token: token,
            peer,
            peer_certificates: None,
        }
    }

    #[test]
    fn static_tokens_accept_any_configured_token_only() {
        let tokens = StaticTokens::new(["s3cret", "other-token", ""]);
        let peer = Peer::Unix;
        assert!(tokens.validate(&attempt(Some("s3cret"), &peer)));
        assert!(tokens.validate(&attempt(Some("other-token"), &peer)));
        assert!(!tokens.validate(&attempt(Some("s3cre"), &peer)));
        assert!(!tokens.validate(&attempt(Some("s3cret "), &peer)));
        assert!(!tokens.validate(&attempt(Some(""), &peer)));
        assert!(!tokens.validate(&attempt(None, &peer)));
        assert!(!StaticTokens::new([""]).check(Some("")));
        assert!(StaticTokens::new([""; 0]).is_empty());
    }

    #[test]
    fn debug_does_not_leak_tokens() {
        let shown = format!("{:?}", StaticTokens::new(["hunter2"]));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn closures_are_validators() {
        let v = |a: &RegistrationAttempt<'_>| a.agent_id == "a" && a.auth_token == Some("t");
        let peer = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        assert!(v.validate(&attempt(Some("t"), &peer)));
        assert!(!v.validate(&attempt(Some("u"), &peer)));
    }
}
