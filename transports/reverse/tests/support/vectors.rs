//! The reference's recorded reverse-connection bytes (`reverse/*` in `uds-json.json`).

use super::*;
use std::collections::HashMap;

/// One recorded frame.
#[derive(Clone, Debug)]
pub struct Vector {
    pub frame: Vec<u8>,
    pub payload_text: String,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec/vectors/uds-json.json")
}

/// Every `reverse/*` vector by name.
pub fn reverse_vectors() -> HashMap<String, Vector> {
    let path = vectors_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).expect("vector file");
    all.into_iter()
        .filter(|v| v["session"] == "reverse")
        .map(|v| {
            let name = v["name"].as_str().unwrap().to_owned();
            let vector = Vector {
                frame: unhex(v["frame_hex"].as_str().unwrap()),
                payload_text: v["payload_text"].as_str().unwrap_or("").to_owned(),
            };
            (name, vector)
        })
        .collect()
}

pub fn get(vectors: &HashMap<String, Vector>, name: &str) -> Vector {
    vectors
        .get(name)
        .unwrap_or_else(|| panic!("vector {name} missing"))
        .clone()
}

/// The reference keys of a registration answer, in order.
pub const RESPONSE_KEYS: [&str; 5] = [
    "success",
    "error",
    "proxy_id",
    "proxy_version",
    "connection_id",
];

/// Our listener against the recorded reference agent, and our connector against the
/// recorded reference proxy, byte for byte.
pub async fn reference_wire_compat<R: Runtime>(rt: R) {
    let v = reverse_vectors();
    let accepted_req = get(&v, "reverse/registration_accepted/HandshakeRequest");
    let accepted_resp = get(&v, "reverse/registration_accepted/HandshakeResponse");
    let bad_token_req = get(
        &v,
        "reverse/registration_rejected_bad_token/HandshakeRequest",
    );
    let bad_token_resp = get(
        &v,
        "reverse/registration_rejected_bad_token/HandshakeResponse",
    );
    let not_allowed_req = get(
        &v,
        "reverse/registration_rejected_not_allowed/HandshakeRequest",
    );
    let not_allowed_resp = get(
        &v,
        "reverse/registration_rejected_not_allowed/HandshakeResponse",
    );
    let event = get(&v, "reverse/reverse_request_headers/RequestHeaders");
    let answer = get(&v, "reverse/reverse_request_headers/AgentResponse");
    let cancel = get(&v, "reverse/reverse_cancel/Cancel");

    // --- Our listener, configured like the recording's proxy.
    let dir = temp_dir();
    let path = dir.path().join("proxy.sock");
    let config = ReverseListenerConfig {
        proxy_id: "zentinel-proxy".into(),
        proxy_version: "0.6.54".into(),
        auth: Auth::tokens(["s3cret"]),
        allowed_agents: Allowlist::new(["rev-agent"]),
        ..Default::default()
    };
    let listener = ReverseListener::bind_unix(rt.clone(), &path, config).unwrap();
    let shutdown = Shutdown::new();
    let (mut regs, _done) = start(&rt, listener, &shutdown);
    let to = Dial::Unix(path.clone());

    // Wrong token: exactly the reference's bytes.
    let (mut r, mut w) = dial(&rt, &to).await;
    write_raw(&mut w, &bad_token_req.frame).await;
    let got = within(&rt, STEP, "answer", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(
        got, bad_token_resp.frame,
        "bad-token answer is the reference's"
    );
    assert!(closed_without_data(&rt, &mut r, STEP).await);
    // Not allowed: the same bytes as a wrong token (the reference reveals the id, S2).
    let (mut r, mut w) = dial(&rt, &to).await;
    write_raw(&mut w, &not_allowed_req.frame).await;
    let got = within(&rt, STEP, "answer", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(got, bad_token_resp.frame);
    assert_ne!(got, not_allowed_resp.frame);

    // Accepted: the reference's keys in the reference's order, no extension key.
    let (mut r, mut w) = dial(&rt, &to).await;
    write_raw(&mut w, &accepted_req.frame).await;
    let got = within(&rt, STEP, "answer", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(got[4], 0x02);
    let payload = &got[5..];
    assert_eq!(json_keys_in_order(payload), RESPONSE_KEYS);
    let text = std::str::from_utf8(payload).unwrap();
    let recorded = &accepted_resp.payload_text;
    let prefix = &recorded[..recorded.find("\"connection_id\":\"").unwrap() + 17];
    assert!(text.starts_with(prefix), "{text} vs {recorded}");
    assert!(text.starts_with(&format!("{prefix}rev-agent-")), "{text}");
    let agent = next_agent(&rt, &mut regs).await;
    assert_eq!(agent.encoding, Encoding::Json);
    assert_eq!(agent.metadata.0["region"], "eu-1");

    // The recorded event goes out byte for byte; the recorded answer resolves it.
    let recorded_event = decode_event(
        MessageType::RequestHeaders,
        &Bytes::from(event.frame[5..].to_vec()),
        Encoding::Json,
    )
    .unwrap();
    let client = agent.client.clone();
    let pending =
        scenarios::spawn_result(&rt, async move { client.send_event(recorded_event).await });
    let sent = within(&rt, STEP, "event", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(sent, event.frame, "event bytes are the reference's");
    write_raw(&mut w, &answer.frame).await;
    let response = within(&rt, STEP, "answer", pending.recv()).await.unwrap();
    assert_eq!(response.decision, Decision::Allow);
    assert_eq!(header(&response, "x-reverse"), Some("1"));

    // --- Our connector against a recording proxy.
    let fake_path = dir.path().join("reference-proxy.sock");
    let fake = rt.bind_unix(&fake_path).unwrap();
    let recorded_request: RegistrationRequest =
        serde_json::from_str(&accepted_req.payload_text).unwrap();
    let mut c = ConnectorConfig::new("rev-agent");
    c.auth_token = recorded_request.auth_token.clone();
    c.capabilities = recorded_request.capabilities.clone();
    c.metadata = recorded_request.metadata.clone();
    c.encodings.clear(); // register exactly like a reference agent
    let connector = ReverseConnector::new(rt.clone(), ReverseEndpoint::Unix(fake_path), c);
    let agent_done = spawn_tracked(
        &rt,
        connector.run(Arc::new(ReverseHeaderAgent), shutdown.clone()),
    );
    let (mut r, mut w) = within(&rt, STEP, "connector dials", rt.accept_unix(&fake))
        .await
        .unwrap();
    let registration = within(&rt, STEP, "registration", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&registration[5..]),
        accepted_req.payload_text,
        "registration bytes are the reference agent's"
    );
    assert_eq!(registration, accepted_req.frame);
    write_raw(&mut w, &accepted_resp.frame).await;
    write_raw(&mut w, &event.frame).await;
    let reply = within(&rt, STEP, "agent answer", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply[5..]),
        answer.payload_text,
        "answer bytes are the reference agent's"
    );
    assert_eq!(reply, answer.frame);
    // A Cancel (always JSON) is accepted silently; the connection stays up.
    write_raw(&mut w, &cancel.frame).await;
    write_raw(&mut w, &event.frame).await;
    let again = within(&rt, STEP, "agent answer", read_raw_frame_bytes(&mut r))
        .await
        .unwrap();
    assert_eq!(again, answer.frame);
    shutdown.trigger();
    within(&rt, STEP, "connector stops", agent_done.wait()).await;
}

/// Answers like the recording's test agent: Allow with `x-reverse: 1`.
struct ReverseHeaderAgent;

impl AgentHandler for ReverseHeaderAgent {
    async fn on_request_headers(&self, _event: RequestHeaders) -> AgentResponse {
        let mut r = AgentResponse::allow();
        r.request_headers.push(HeaderOp::Set {
            name: "x-reverse".into(),
            value: "1".into(),
        });
        r
    }
}
