//! TLS and mTLS between the agentwire client and server over 127.0.0.1, with certificates
//! generated at test time (rcgen): the right certificates connect, wrong ones do not.

mod common;

use agentwire_grpc::{
    ClientError, ClientTls, GrpcAgentClient, GrpcClientConfig, GrpcServerConfig, ServerTls,
    TlsIdentity,
};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::sync::Arc;
use std::time::Duration;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> TlsIdentity {
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        TlsIdentity::from_pem(cert.pem(), key.serialize_pem())
    }

    fn server_leaf(&self) -> TlsIdentity {
        self.leaf(
            &["127.0.0.1", "agent.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client_leaf(&self) -> TlsIdentity {
        self.leaf(&["proxy.test"], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn tls_server(tls: ServerTls) -> GrpcServerConfig {
    let mut config = server_config();
    config.tls = Some(tls);
    config
}

fn client_config(tls: ClientTls) -> GrpcClientConfig {
    GrpcClientConfig {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(5),
        ..GrpcClientConfig::default()
    }
}

fn https(endpoint: &str) -> String {
    endpoint.replacen("http://", "https://", 1)
}

async fn works(endpoint: &str, tls: ClientTls) {
    let client = GrpcAgentClient::connect(endpoint, client_config(tls))
        .await
        .expect("TLS connect");
    let r = client
        .send_request_headers(headers_event("tls-1", "/secure"))
        .await
        .unwrap();
    assert_eq!(r.audit.tags, ["/secure"]);
    client.close();
}

async fn fails(endpoint: &str, tls: Option<ClientTls>) -> ClientError {
    let config = GrpcClientConfig {
        tls,
        connect_timeout: Duration::from_secs(5),
        ..GrpcClientConfig::default()
    };
    match GrpcAgentClient::connect(endpoint, config).await {
        Ok(client) => {
            // With TLS 1.3 a refused client certificate can surface only on first use.
            let r = client
                .send_request_headers(headers_event("tls-x", "/secure"))
                .await;
            panic!("connected with the wrong certificates; first request: {r:?}")
        }
        Err(e) => e,
    }
}

#[tokio::test]
async fn tls_connects_with_the_right_ca_and_refuses_wrong_ones() {
    within(30, async {
        let ca = Ca::new("agent CA");
        let server = start(
            Arc::new(Recorder::default()),
            tls_server(ServerTls::new(ca.server_leaf())),
        )
        .await;
        let endpoint = https(&server.endpoint);

        works(&endpoint, ClientTls::with_ca(ca.pem())).await;
        works(
            &endpoint,
            ClientTls::with_ca(ca.pem()).domain_name("agent.test"),
        )
        .await;

        let other = Ca::new("other CA");
        let e = fails(&endpoint, Some(ClientTls::with_ca(other.pem()))).await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        let e = fails(
            &endpoint,
            Some(ClientTls::with_ca(ca.pem()).domain_name("someone-else.test")),
        )
        .await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        // Cleartext against a TLS listener.
        let e = fails(&server.endpoint, None).await;
        assert!(
            matches!(e, ClientError::Connect(_) | ClientError::ConnectTimeout),
            "{e:?}"
        );
        server.stop().await;

        // TLS against a cleartext listener.
        let plain = start(Arc::new(Recorder::default()), server_config()).await;
        let e = fails(&https(&plain.endpoint), Some(ClientTls::with_ca(ca.pem()))).await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        plain.stop().await;
    })
    .await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_trusted_ca() {
    within(30, async {
        let server_ca = Ca::new("agent CA");
        let client_ca = Ca::new("proxy CA");
        let server = start(
            Arc::new(Recorder::default()),
            tls_server(
                ServerTls::new(server_ca.server_leaf()).require_client_cert(client_ca.pem()),
            ),
        )
        .await;
        let endpoint = https(&server.endpoint);

        works(
            &endpoint,
            ClientTls::with_ca(server_ca.pem()).identity(client_ca.client_leaf()),
        )
        .await;

        // No client certificate.
        let e = fails(&endpoint, Some(ClientTls::with_ca(server_ca.pem()))).await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        // A client certificate from a CA the agent does not trust.
        let stranger = Ca::new("stranger CA");
        let e = fails(
            &endpoint,
            Some(ClientTls::with_ca(server_ca.pem()).identity(stranger.client_leaf())),
        )
        .await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        // A server certificate used as a client certificate (wrong key usage).
        let e = fails(
            &endpoint,
            Some(ClientTls::with_ca(server_ca.pem()).identity(client_ca.server_leaf())),
        )
        .await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn optional_client_auth_accepts_both_but_verifies_a_presented_certificate() {
    within(30, async {
        let server_ca = Ca::new("agent CA");
        let client_ca = Ca::new("proxy CA");
        let mut tls = ServerTls::new(server_ca.server_leaf()).require_client_cert(client_ca.pem());
        tls.client_auth_optional = true;
        let server = start(Arc::new(Recorder::default()), tls_server(tls)).await;
        let endpoint = https(&server.endpoint);
        works(&endpoint, ClientTls::with_ca(server_ca.pem())).await;
        works(
            &endpoint,
            ClientTls::with_ca(server_ca.pem()).identity(client_ca.client_leaf()),
        )
        .await;
        let stranger = Ca::new("stranger CA");
        let e = fails(
            &endpoint,
            Some(ClientTls::with_ca(server_ca.pem()).identity(stranger.client_leaf())),
        )
        .await;
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_unusable_server_certificate_is_a_typed_error() {
    within(10, async {
        let bogus = TlsIdentity::from_pem("not a certificate", "not a key");
        let server = agentwire_grpc::GrpcServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Recorder::default()),
            tls_server(ServerTls::new(bogus)),
        )
        .await
        .unwrap();
        let r = server.serve(agentwire_grpc::Shutdown::new()).await;
        assert!(
            matches!(r, Err(agentwire_grpc::ServeError::Transport(_))),
            "{r:?}"
        );
    })
    .await;
}
