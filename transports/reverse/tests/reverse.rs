//! Reverse connections end to end, every scenario on every runtime.

mod support;

use agentwire_core::frame::{MessageType, parse_header};
use agentwire_core::message::{Encoding, RegistrationRequest, RegistrationResponse};
use support::vectors::{RESPONSE_KEYS, get, reverse_vectors};

/// Generates one `#[test]` per scenario for a runtime; `$run` drives an
/// `async fn(Runtime)` to completion on it (every scenario also has its own hard timeout).
macro_rules! runtime_tests {
    ($module:ident, $run:path) => {
        mod $module {
            use crate::support::{HEAVY, scenarios, vectors};

            fn heavy() -> std::sync::MutexGuard<'static, ()> {
                HEAVY.lock().unwrap_or_else(|p| p.into_inner())
            }

            #[test]
            fn happy_path_unix() {
                $run(scenarios::happy_path_unix);
            }

            #[test]
            fn happy_path_tcp() {
                $run(scenarios::happy_path_tcp);
            }

            #[test]
            fn rejections_are_uniform() {
                $run(scenarios::rejections_are_uniform);
            }

            #[test]
            fn per_agent_limit() {
                $run(scenarios::per_agent_limit);
            }

            #[test]
            fn registration_timeout() {
                $run(scenarios::registration_timeout);
            }

            #[test]
            fn oversize_and_malformed_frames() {
                $run(scenarios::oversize_and_malformed_frames);
            }

            #[test]
            fn flood_stays_bounded() {
                let _serial = heavy();
                $run(scenarios::flood_stays_bounded);
            }

            #[test]
            fn agent_killed_under_load() {
                $run(scenarios::agent_killed_under_load);
            }

            #[cfg(feature = "tls")]
            #[test]
            fn tls_and_mtls() {
                $run(scenarios::tls_and_mtls);
            }

            #[test]
            fn reference_wire_compat() {
                $run(vectors::reference_wire_compat);
            }
        }
    };
}

fn run_tokio<F, Fut>(scenario: F)
where
    F: FnOnce(agentwire_tokio::TokioRuntime) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(support::bounded(
        agentwire_tokio::TokioRuntime::from_handle(rt.handle().clone()),
        scenario,
    ));
}

fn run_async_std<F, Fut>(scenario: F)
where
    F: FnOnce(agentwire_async_std::AsyncStdRuntime) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    async_std::task::block_on(support::bounded(agentwire_async_std::runtime(), scenario));
}

fn run_smol<F, Fut>(scenario: F)
where
    F: FnOnce(agentwire_smol::SmolRuntime) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    smol::block_on(support::bounded(agentwire_smol::runtime(), scenario));
}

runtime_tests!(tokio_runtime, crate::run_tokio);
runtime_tests!(async_std_runtime, crate::run_async_std);
runtime_tests!(smol_runtime, crate::run_smol);

/// The recorded registration frames decode into our types, and the answers carry exactly the
/// reference's keys in order.
#[test]
fn registration_vectors_decode() {
    let v = reverse_vectors();
    assert_eq!(v.len(), 9, "reverse vectors present");
    for name in [
        "reverse/registration_accepted/HandshakeRequest",
        "reverse/registration_rejected_bad_token/HandshakeRequest",
        "reverse/registration_rejected_not_allowed/HandshakeRequest",
    ] {
        let frame = get(&v, name).frame;
        let header = parse_header(frame[..5].try_into().unwrap(), 64 * 1024).unwrap();
        assert_eq!(header.kind, MessageType::HandshakeRequest);
        assert_eq!(header.payload_len as usize, frame.len() - 5);
        let request: RegistrationRequest =
            agentwire_core::encoding::decode_message(header.kind, &frame[5..], Encoding::Json)
                .unwrap();
        assert_eq!(request.protocol_version, 2);
        assert_eq!(request.capabilities.agent_id, request.agent_id);
        assert_eq!(request.capabilities.limits.max_concurrency, 10);
        assert!(request.agentwire_encodings.is_empty());
        assert_eq!(request.metadata.0["region"], "eu-1");
        // Our encoder writes the reference agent's bytes.
        assert_eq!(
            support::json_frame(MessageType::HandshakeRequest, &request),
            frame,
            "{name}"
        );
    }
    for (name, success) in [
        ("reverse/registration_accepted/HandshakeResponse", true),
        (
            "reverse/registration_rejected_bad_token/HandshakeResponse",
            false,
        ),
        (
            "reverse/registration_rejected_not_allowed/HandshakeResponse",
            false,
        ),
    ] {
        let frame = get(&v, name).frame;
        let header = parse_header(frame[..5].try_into().unwrap(), 64 * 1024).unwrap();
        assert_eq!(header.kind, MessageType::HandshakeResponse);
        let payload = &frame[5..];
        let response: RegistrationResponse =
            agentwire_core::encoding::decode_message(header.kind, payload, Encoding::Json).unwrap();
        assert_eq!(response.success, success);
        assert_eq!(response.encoding, None);
        assert_eq!(support::json_keys_in_order(payload), RESPONSE_KEYS);
        // Re-encoding gives the reference's bytes (keys and order).
        assert_eq!(
            support::json_frame(MessageType::HandshakeResponse, &response),
            frame
        );
    }
    // Our accepted answer for an agentwire agent adds exactly one key, last.
    let ours = RegistrationResponse {
        success: true,
        error: None,
        proxy_id: "p".into(),
        proxy_version: "1".into(),
        connection_id: "a-1-0".into(),
        encoding: Some(Encoding::Postcard),
    };
    let frame = support::json_frame(MessageType::HandshakeResponse, &ours);
    let mut keys = RESPONSE_KEYS.map(String::from).to_vec();
    keys.push("encoding".into());
    assert_eq!(support::json_keys_in_order(&frame[5..]), keys);
}
