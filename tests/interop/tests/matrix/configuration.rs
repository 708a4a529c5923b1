//! Configuration delivery, both directions.
//!
//! * The reference 0.6.45 proxy (client and pool) puts no configuration in its handshake and
//!   sends no Configure on connect (0.6.54 does); its `send_configure` delivers one on demand.
//!   Those paths are covered by `uds_reference_client` (the handshake's `config` is null, the
//!   agent sees no event before the first one sent, and both catalogue Configure cases —
//!   accepted and rejected — go through `send_configure`).
//! * agentwire's proxy sends the configuration in the handshake **and** as a Configure frame
//!   right after it, and hands the connection out only once the agent allowed it. Checked
//!   here against the reference agent.

use crate::support::*;
use agentwire_core::message::{Configure, Encoding};
use agentwire_core::session::CloseReason;
use agentwire_pool::{AgentOptions, AgentPool};
use agentwire_runtime::client::{AgentClient, ClientError};

async fn delivered_on_connect(offer: Vec<Encoding>) {
    let cell = format!("agentwire config on connect → reference agent ({offer:?})");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref-agent.sock");
    let cases = cases_of(&[Kind::RequestHeaders]);
    let agent = RefAgent::new("ref-agent", &cases);
    let _server = start_ref_uds_server(&path, agent.clone()).await;
    let config = aw_client_config(&offer, Some(sample_config()));
    let client = bounded(
        "connect",
        AgentClient::connect_unix(&agentwire_tokio::runtime(), &path, config),
    )
    .await
    .unwrap_or_else(|e| panic!("{cell}: {e}"));
    // Both deliveries arrived before the connection was handed out.
    let hello = agent.handshakes.lock().unwrap()[0].clone();
    assert_eq!(hello.config, sample_config().0, "{cell}: handshake config");
    assert_eq!(
        agent.configs.lock().unwrap().clone(),
        vec![(sample_config().0, None)],
        "{cell}: one Configure, without a version"
    );
    let case = &cases[0];
    let answer = bounded("event", client.send_event(case.event.clone()))
        .await
        .expect("answered");
    assert_answer(&cell, case.id(), &answer, &routed(&case.answer, case.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_agentwire_client_delivers_config_on_connect() {
    within("json", delivered_on_connect(vec![Encoding::Json])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_agentwire_client_delivers_config_on_connect() {
    within("msgpack", delivered_on_connect(default_offer())).await;
}

/// The reference agent refuses (`on_configure` false → Block 500): agentwire does not hand
/// the connection out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_client_refused_config_fails_the_connect() {
    within("refused", async {
        for offer in [vec![Encoding::Json], default_offer()] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ref-agent.sock");
            let agent = RefAgent::with_config_verdict("ref-agent", &[], false);
            let _server = start_ref_uds_server(&path, agent.clone()).await;
            let config = aw_client_config(&offer, Some(sample_config()));
            let result = bounded(
                "connect",
                AgentClient::connect_unix(&agentwire_tokio::runtime(), &path, config),
            )
            .await;
            assert!(
                matches!(
                    result,
                    Err(ClientError::Handshake(CloseReason::ConfigurationRejected))
                ),
                "{offer:?}: {result:?}"
            );
            assert_eq!(agent.configs.lock().unwrap().len(), 1);
        }
    })
    .await;
}

/// `send_configure` on a live connection: the version travels, accepted and refused answers
/// come back as decisions (the connection stays up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_client_send_configure_on_demand() {
    within("on demand", async {
        for (offer, accept) in [
            (vec![Encoding::Json], true),
            (vec![Encoding::Json], false),
            (default_offer(), true),
            (default_offer(), false),
        ] {
            let cell = format!("agentwire send_configure → reference ({offer:?}, accept {accept})");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ref-agent.sock");
            let agent = RefAgent::with_config_verdict("ref-agent", &[], accept);
            let _server = start_ref_uds_server(&path, agent.clone()).await;
            let client = bounded(
                "connect",
                AgentClient::connect_unix(
                    &agentwire_tokio::runtime(),
                    &path,
                    aw_client_config(&offer, None),
                ),
            )
            .await
            .expect("connected");
            let answer = bounded(
                "configure",
                client.send_configure(Configure {
                    config: sample_config(),
                    config_version: Some("v7".into()),
                    correlation_id: "cfg-live".into(),
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("{cell}: {e}"));
            let want = if accept {
                agentwire_core::message::AgentResponse::allow()
            } else {
                config_rejection()
            };
            assert_answer(&cell, "cfg-live", &answer, &routed(&want, "cfg-live"));
            assert_eq!(
                agent.configs.lock().unwrap().clone(),
                vec![(sample_config().0, Some("v7".to_string()))],
                "{cell}"
            );
            assert!(client.is_connected(), "{cell}");
        }
    })
    .await;
}

/// The pool delivers the agent's configuration on every connection it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_pool_delivers_config_on_every_connection() {
    within("pool config", async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref-agent.sock");
        let agent = RefAgent::new("ref-agent", &[]);
        let _server = start_ref_uds_server(&path, agent.clone()).await;
        let pool = AgentPool::new(
            agentwire_tokio::runtime(),
            aw_pool_config(3, &default_offer()),
        );
        let options = AgentOptions {
            config: Some(sample_config()),
            ..AgentOptions::default()
        };
        bounded(
            "add_agent",
            pool.add_agent("ref", path.to_str().unwrap(), options),
        )
        .await
        .expect("registered");
        assert_eq!(pool.healthy_connections("ref"), 3);
        let configs = agent.configs.lock().unwrap().clone();
        assert_eq!(configs, vec![(sample_config().0, None); 3]);
        let handshakes = agent.handshakes.lock().unwrap().clone();
        assert!(handshakes.iter().all(|h| h.config == sample_config().0));
        pool.shutdown().await;
    })
    .await;
}
