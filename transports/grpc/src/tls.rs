//! TLS settings (rustls through tonic, ring provider): server certificate, client-certificate
//! verification (mTLS), custom certificate authorities.

use std::fmt;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first (PEM).
    pub cert_pem: Vec<u8>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl TlsIdentity {
    /// An identity from PEM text.
    #[must_use]
    pub fn from_pem(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        TlsIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }

    fn to_tonic(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity")
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// TLS for the proxy side (the gRPC client).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// Certificate authorities that may sign the agent's certificate (PEM, one or more).
    /// Required: this build ships no system or webpki root store.
    pub ca_pem: Option<Vec<u8>>,
    /// The proxy's own certificate, for agents that verify clients (mTLS).
    pub identity: Option<TlsIdentity>,
    /// Name to verify the agent's certificate against (and send as SNI) instead of the
    /// endpoint's host.
    pub domain_name: Option<String>,
    /// Bound on the TLS handshake; the connect timeout bounds it too.
    pub handshake_timeout: Option<Duration>,
}

impl ClientTls {
    /// Trusts the authorities in `ca_pem`.
    #[must_use]
    pub fn with_ca(ca_pem: impl Into<Vec<u8>>) -> Self {
        ClientTls {
            ca_pem: Some(ca_pem.into()),
            ..ClientTls::default()
        }
    }

    /// Presents `identity` to the agent (mTLS).
    #[must_use]
    pub fn identity(mut self, identity: TlsIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Verifies the agent's certificate against `name`.
    #[must_use]
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    pub(crate) fn to_tonic(&self) -> ClientTlsConfig {
        ensure_crypto_provider();
        let mut c = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            c = c.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(id) = &self.identity {
            c = c.identity(id.to_tonic());
        }
        if let Some(name) = &self.domain_name {
            c = c.domain_name(name.clone());
        }
        if let Some(t) = self.handshake_timeout {
            c = c.timeout(t);
        }
        c
    }
}

/// TLS for the agent side (the gRPC server).
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The agent's certificate and key.
    pub identity: TlsIdentity,
    /// When set, clients must present a certificate signed by one of these authorities
    /// (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
    /// With `client_ca_pem`: also accept clients without a certificate (a presented one is
    /// still verified).
    pub client_auth_optional: bool,
    /// Bound on each TLS handshake, so a peer that stalls mid-handshake is dropped.
    pub handshake_timeout: Duration,
}

impl ServerTls {
    /// TLS with this identity and no client verification.
    #[must_use]
    pub fn new(identity: TlsIdentity) -> Self {
        ServerTls {
            identity,
            client_ca_pem: None,
            client_auth_optional: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Requires client certificates signed by `ca_pem` (mTLS).
    #[must_use]
    pub fn require_client_cert(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self.client_auth_optional = false;
        self
    }

    pub(crate) fn to_tonic(&self) -> ServerTlsConfig {
        ensure_crypto_provider();
        let mut c = ServerTlsConfig::new()
            .identity(self.identity.to_tonic())
            .timeout(self.handshake_timeout);
        if let Some(ca) = &self.client_ca_pem {
            c = c
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(self.client_auth_optional);
        }
        c
    }
}

/// Makes ring the process-wide rustls provider unless one is installed already.
///
/// tonic builds its rustls configs from the process default. When a binary's dependency graph
/// enables both of rustls' providers (ring through tonic, aws-lc-rs through some other crate),
/// rustls cannot pick one and every TLS connection fails with a bare "transport error"; this
/// happened to the CLI in a whole-workspace build. Installing is idempotent: if the
/// application chose a provider first, its choice stands.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another thread installing one is fine: a provider is set either way.
        // rustls 0.23.48 deprecates ring's provider (no post-quantum key exchange); it is the one
        // tonic's `tls-ring` feature builds with, and aws-lc-rs would need a CMake toolchain.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        let _ = provider.install_default();
    }
}
