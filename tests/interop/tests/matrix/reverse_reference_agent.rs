//! A reference-style reverse agent → agentwire `ReverseListener`.
//!
//! The reference crate has the proxy side of reverse connections only (its SDK has no reverse
//! agent either, spec §12), so the agent here is assembled from the reference's own parts:
//! its `RegistrationRequest`/`RegistrationResponse` types, its `write_message`/`read_message`
//! framing, its event types and its `AgentHandlerV2`, dispatched the way its
//! `UdsAgentServerV2` does (JSON only after registration, as §9.4 says; `0x16` is not
//! answered, Ping is echoed, Cancel only read).

use crate::support::*;
use agentwire_core::message::{Encoding, Event};
use agentwire_reverse::{Auth, ReverseListener, ReverseListenerConfig};
use agentwire_runtime::client::ClientError;
use agentwire_runtime::server::Shutdown;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{BufReader, BufWriter};
use zentinel_agent_protocol as zref;
use zentinel_agent_protocol::v2 as zv2;
use zentinel_agent_protocol::v2::AgentHandlerV2;
use zentinel_agent_protocol::v2::uds::{MessageType, read_message, write_message};

/// Registers with the proxy at `path`, then serves it until it closes. Returns the proxy's
/// registration answer through `registered` as soon as it arrives.
async fn reference_style_agent(
    path: &Path,
    agent: Arc<RefAgent>,
    token: Option<&str>,
    registered: tokio::sync::oneshot::Sender<zv2::RegistrationResponse>,
) -> Result<(), zref::AgentProtocolError> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    let (r, w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut writer = BufWriter::new(w);
    let request = zv2::RegistrationRequest {
        protocol_version: 2,
        agent_id: "ref-agent".into(),
        capabilities: zv2::UdsCapabilities::from(RefAgent::ref_capabilities("ref-agent")),
        auth_token: token.map(String::from),
        metadata: Some(json!({"host": "interop", "pid": 42})),
    };
    let payload = serde_json::to_vec(&request).expect("registration");
    write_message(&mut writer, MessageType::HandshakeRequest, &payload).await?;
    let (kind, payload) = read_message(&mut reader).await?;
    assert_eq!(kind, MessageType::HandshakeResponse);
    let response: zv2::RegistrationResponse =
        serde_json::from_slice(&payload).expect("a reference-readable registration response");
    let accepted = response.success;
    let _ = registered.send(response);
    if !accepted {
        return Ok(());
    }
    let handler = SharedRef(agent);
    loop {
        let (kind, payload) = match read_message(&mut reader).await {
            Ok(frame) => frame,
            Err(zref::AgentProtocolError::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let json = |what: &str| -> serde_json::Value {
            serde_json::from_slice(&payload).unwrap_or_else(|e| panic!("{what}: {e}"))
        };
        let (cid, answer) = match kind {
            MessageType::Ping => {
                write_message(&mut writer, MessageType::Pong, &payload).await?;
                continue;
            }
            MessageType::RequestHeaders => {
                let e: zref::RequestHeadersEvent = serde_json::from_slice(&payload).unwrap();
                (
                    e.metadata.correlation_id.clone(),
                    handler.on_request_headers(e).await,
                )
            }
            MessageType::RequestBodyChunk => {
                let e: zref::RequestBodyChunkEvent = serde_json::from_slice(&payload).unwrap();
                (
                    e.correlation_id.clone(),
                    handler.on_request_body_chunk(e).await,
                )
            }
            MessageType::ResponseHeaders => {
                let e: zref::ResponseHeadersEvent = serde_json::from_slice(&payload).unwrap();
                (
                    e.correlation_id.clone(),
                    handler.on_response_headers(e).await,
                )
            }
            MessageType::ResponseBodyChunk => {
                let e: zref::ResponseBodyChunkEvent = serde_json::from_slice(&payload).unwrap();
                (
                    e.correlation_id.clone(),
                    handler.on_response_body_chunk(e).await,
                )
            }
            MessageType::RequestComplete => {
                let e: zref::RequestCompleteEvent = serde_json::from_slice(&payload).unwrap();
                (
                    e.correlation_id.clone(),
                    handler.on_request_complete(e).await,
                )
            }
            MessageType::WebSocketFrame => {
                let e: zref::WebSocketFrameEvent = serde_json::from_slice(&payload).unwrap();
                (
                    e.correlation_id.clone(),
                    handler.on_websocket_frame(e).await,
                )
            }
            MessageType::Configure => {
                let v = json("configure");
                let cid = v["correlation_id"].as_str().unwrap_or_default().to_string();
                let version = v["config_version"].as_str().map(String::from);
                let accepted = handler.on_configure(v["config"].clone(), version).await;
                let answer = if accepted {
                    zref::AgentResponse::default_allow()
                } else {
                    zref::AgentResponse::block(500, Some("Configuration rejected".into()))
                };
                (cid, answer)
            }
            // Cancel is only read; everything else (0x16 included) is not answered.
            _ => continue,
        };
        let mut answer = answer;
        answer
            .audit
            .custom
            .insert("correlation_id".into(), serde_json::Value::String(cid));
        let bytes = serde_json::to_vec(&answer).expect("answer");
        write_message(&mut writer, MessageType::AgentResponse, &bytes).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_agent_registers_and_serves_every_event_type() {
    within("reverse: reference agent → agentwire listener", async {
        let cell = "reference-style reverse agent → agentwire ReverseListener";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let config = ReverseListenerConfig {
            auth: Auth::tokens(["s3cret"]),
            allowed_agents: ["ref-*"].into_iter().collect(),
            client: aw_client_config(&[Encoding::Json], None),
            ..ReverseListenerConfig::default()
        };
        let listener = ReverseListener::bind_unix(agentwire_tokio::runtime(), &path, config)
            .expect("bind the reverse listener");
        let shutdown = Shutdown::new();
        let (accept_loop, mut registrations) = listener.serve(shutdown.clone());
        tokio::spawn(accept_loop);

        let cases = catalogue();
        let agent = RefAgent::new("ref-agent", &cases);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let agent_task = {
            let path = path.clone();
            let agent = agent.clone();
            tokio::spawn(
                async move { reference_style_agent(&path, agent, Some("s3cret"), tx).await },
            )
        };
        let response = bounded("registration answer", rx).await.expect("answered");
        assert!(response.success, "{cell}: {response:?}");
        assert_eq!(response.error, None);
        assert!(
            response.connection_id.starts_with("ref-agent-"),
            "{response:?}"
        );

        let registered = bounded("registration", registrations.recv())
            .await
            .expect("the agent is handed to the proxy");
        assert_eq!(registered.agent_id, "ref-agent");
        assert_eq!(
            registered.encoding,
            Encoding::Json,
            "{cell}: JSON after registration"
        );
        assert_eq!(registered.capabilities.agent_id, "ref-agent");
        assert_eq!(registered.metadata.0, json!({"host": "interop", "pid": 42}));
        let client = registered.client;

        for case in &cases {
            let id = case.id();
            if kind(&case.event) == Kind::GuardrailInspect {
                // Not answered by a reference-style agent (B2): a clean timeout.
                let result = bounded(
                    id,
                    client.send_event_with_timeout(case.event.clone(), NO_ANSWER),
                )
                .await;
                assert!(
                    matches!(result, Err(ClientError::Timeout)),
                    "{cell}: {result:?}"
                );
                continue;
            }
            let answer = bounded(id, client.send_event(case.event.clone()))
                .await
                .unwrap_or_else(|e| panic!("{cell}: {id} failed: {e}"));
            assert_answer(cell, id, &answer, &routed(&case.answer, id));
            if let Event::Configure(c) = &case.event {
                let configs = agent.configs.lock().unwrap().clone();
                assert!(
                    configs.contains(&(c.config.0.clone(), c.config_version.clone())),
                    "{cell}: {configs:?}"
                );
            } else {
                assert_event(cell, &agent.received(id), &case.event);
            }
        }
        let rtt = bounded(
            "ping",
            client.ping(&agentwire_tokio::runtime(), NO_ANSWER * 5),
        )
        .await;
        assert!(rtt.is_ok(), "{cell}: ping {rtt:?}");
        client.close();
        bounded("agent ends", agent_task)
            .await
            .expect("agent task")
            .expect("the agent saw a clean close");
        shutdown.trigger();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_agent_with_a_wrong_token_is_refused() {
    within("reverse: refused", async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let config = ReverseListenerConfig {
            auth: Auth::tokens(["s3cret"]),
            ..ReverseListenerConfig::default()
        };
        let listener =
            ReverseListener::bind_unix(agentwire_tokio::runtime(), &path, config).expect("bind");
        let shutdown = Shutdown::new();
        let (accept_loop, _registrations) = listener.serve(shutdown.clone());
        tokio::spawn(accept_loop);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let agent = RefAgent::new("ref-agent", &[]);
        let task = {
            let path = path.clone();
            tokio::spawn(
                async move { reference_style_agent(&path, agent, Some("wrong"), tx).await },
            )
        };
        let response = bounded("answer", rx).await.expect("answered");
        // The reference reads the refusal: success false, an error text, no connection id.
        assert!(!response.success);
        assert_eq!(response.error.as_deref(), Some(agentwire_reverse::REJECTED));
        assert_eq!(response.connection_id, "");
        bounded("agent ends", task).await.unwrap().expect("clean");
        shutdown.trigger();
    })
    .await;
}
