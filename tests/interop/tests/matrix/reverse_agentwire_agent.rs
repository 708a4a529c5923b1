//! agentwire `ReverseConnector` → reference `ReverseConnectionListener` + `AgentPool`.
//!
//! The reference proxy speaks JSON on reverse connections and sends request headers, both
//! body chunks and response headers there (its pool refuses guardrails on reverse
//! connections); agentwire's extra `agentwire_encodings` registration key is ignored by it.

use crate::support::*;
use agentwire_reverse::{ConnectorConfig, ReverseConnector, ReverseEndpoint};
use agentwire_runtime::server::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentwire_connector_registers_and_serves_every_event_type() {
    within("reverse: agentwire connector → reference listener", async {
        let cell = "agentwire ReverseConnector → reference ReverseConnectionListener";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let listener = Arc::new(
            zv2::ReverseConnectionListener::bind_uds(
                &path,
                zv2::ReverseConnectionConfig {
                    require_auth: true,
                    auth_tokens: ["s3cret".to_string()].into(),
                    allowed_agents: ["aw-agent".to_string()].into(),
                    request_timeout: Duration::from_secs(5),
                    ..zv2::ReverseConnectionConfig::default()
                },
            )
            .await
            .expect("bind the reference listener"),
        );
        let pool = Arc::new(zv2::AgentPool::new());
        let accept = tokio::spawn(listener.clone().accept_loop(pool.clone()));

        let cases = cases_of(&[
            Kind::RequestHeaders,
            Kind::RequestBodyChunk,
            Kind::ResponseHeaders,
            Kind::ResponseBodyChunk,
            Kind::GuardrailInspect,
        ]);
        let agent = AwAgent::new(&cases);
        let config = ConnectorConfig {
            capabilities: aw_capabilities("aw-agent"),
            connections: 2,
            ..ConnectorConfig::new("aw-agent").with_token("s3cret")
        };
        let connector = ReverseConnector::new(
            agentwire_tokio::runtime(),
            ReverseEndpoint::Unix(path.clone()),
            config,
        );
        let stats = connector.stats();
        let shutdown = Shutdown::new();
        tokio::spawn(connector.run(agent.clone(), shutdown.clone()));

        // Both connections registered with the reference pool.
        let mut registered = 0;
        for _ in 0..500 {
            registered = pool
                .agent_stats("aw-agent")
                .await
                .map_or(0, |s| s.active_connections);
            if registered == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(registered, 2, "{cell}: connections in the reference pool");
        // The reference pool's first registration of an agent races: `add_reverse_connection`
        // checks for the agent's entry and inserts a new one without the entry API, so two
        // simultaneous first registrations each create an entry and the second replaces the
        // first, dropping its connection. The connector then registers that connection again.
        // Hence at least two registrations, none failed, and both connections served.
        let diagnostics = || {
            format!(
                "registrations {} failures {} live {} last error {:?}",
                stats.registrations(),
                stats.failures(),
                stats.live(),
                stats.last_error()
            )
        };
        assert!(stats.registrations() >= 2, "{cell}: {}", diagnostics());
        assert_eq!(stats.failures(), 0, "{cell}: {}", diagnostics());
        assert_eq!(stats.rejections(), 0);
        let caps = pool
            .agent_capabilities("aw-agent")
            .await
            .expect("capabilities");
        assert_eq!(caps.agent_id, "aw-agent");

        for case in &cases {
            let id = case.id();
            let answer = match aw_to_ref_event(&case.event) {
                RefEvent::RequestHeaders(e) => pool.send_request_headers("aw-agent", id, &e).await,
                RefEvent::RequestBodyChunk(e) => {
                    pool.send_request_body_chunk("aw-agent", id, &e).await
                }
                RefEvent::ResponseHeaders(e) => {
                    pool.send_response_headers("aw-agent", id, &e).await
                }
                RefEvent::ResponseBodyChunk(e) => {
                    pool.send_response_body_chunk("aw-agent", id, &e).await
                }
                RefEvent::GuardrailInspect(e) => {
                    let result = pool.send_guardrail_inspect("aw-agent", id, &e).await;
                    assert!(
                        matches!(result, Err(zref::AgentProtocolError::InvalidMessage(_))),
                        "{cell}: {result:?}"
                    );
                    continue;
                }
                other => unreachable!("{other:?}"),
            }
            .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
            assert_answer(
                cell,
                id,
                &ref_to_aw_response(&answer),
                &routed(&case.answer, id),
            );
            assert_event(cell, &agent.received(id), &case.event);
            pool.clear_correlation_affinity(id);
        }
        // The reference's Cancel on every connection reaches the agent, in JSON.
        pool.cancel_request("aw-agent", "gone", zv2::CancelReason::UpstreamError)
            .await
            .expect("cancel");
        for _ in 0..200 {
            if agent.cancels.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            agent.cancels.lock().unwrap().clone(),
            vec![("gone".to_string(), 3); 2]
        );
        shutdown.trigger();
        accept.abort();
    })
    .await;
}
