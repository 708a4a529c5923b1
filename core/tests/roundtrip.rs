//! Property tests of the codecs: every message type survives encode → frame → decode in every
//! encoding (JSON, MessagePack with and without raw body bytes, postcard), and no input —
//! arbitrary bytes, split arbitrarily, or mutated valid payloads — makes the frame decoder or
//! a payload decoder panic.

use agentwire_core::encoding::{
    WireFormat, decode_event, decode_message, encode_event, encode_frame_of, salvage_correlation_id,
};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, FrameDecoder, MessageType, encode_frame};
use agentwire_core::message::*;
use bytes::{Bytes, BytesMut};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Debug;

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(256)
}

// -------------------------------------------------------------------------------------------
// Strategies

/// Any Unicode (control characters, astral planes, quotes, backslashes), kept short.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(?s).{0,12}",
        1 => "[a-z0-9_-]{0,8}",
        1 => Just(String::new()),
    ]
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..4)
}

/// Finite f32 of every class (normal, subnormal, zero, both signs).
fn finite_f32() -> impl Strategy<Value = f32> {
    use proptest::num::f32::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// JSON values of limited depth.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    json_value().prop_map(AnyValue)
}

fn headers() -> impl Strategy<Value = Headers> {
    vec((text(), text()), 0..6).prop_map(|pairs| pairs.into_iter().collect())
}

fn body() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn metadata() -> impl Strategy<Value = RequestMetadata> {
    (
        (
            text(),
            text(),
            text(),
            any::<u16>(),
            option::of(text()),
            text(),
        ),
        (
            option::of(text()),
            option::of(text()),
            option::of(text()),
            option::of(text()),
            text(),
            option::of(text()),
        ),
    )
        .prop_map(
            |(
                (correlation_id, request_id, client_ip, client_port, server_name, protocol),
                (tls_version, tls_cipher, route_id, upstream_id, timestamp, traceparent),
            )| RequestMetadata {
                correlation_id,
                request_id,
                client_ip,
                client_port,
                server_name,
                protocol,
                tls_version,
                tls_cipher,
                route_id,
                upstream_id,
                timestamp,
                traceparent,
            },
        )
}

fn body_chunk() -> impl Strategy<Value = BodyChunk> {
    (
        text(),
        body(),
        any::<bool>(),
        option::of(any::<u64>()),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(correlation_id, data, is_last, total_size, chunk_index, bytes_transferred)| {
                BodyChunk {
                    correlation_id,
                    data,
                    is_last,
                    total_size,
                    chunk_index,
                    bytes_transferred,
                }
            },
        )
}

/// Boxed (like the other large strategies): in debug builds the nested value trees of
/// unboxed strategies this size are big enough to overflow a test thread's stack.
fn event() -> BoxedStrategy<Event> {
    prop_oneof![
        (metadata(), text(), text(), headers()).prop_map(|(metadata, method, uri, headers)| {
            Event::RequestHeaders(RequestHeaders {
                metadata,
                method,
                uri,
                headers,
            })
        }),
        body_chunk().prop_map(Event::RequestBodyChunk),
        body_chunk().prop_map(Event::ResponseBodyChunk),
        (text(), any::<u16>(), headers()).prop_map(|(correlation_id, status, headers)| {
            Event::ResponseHeaders(ResponseHeaders {
                correlation_id,
                status,
                headers,
            })
        }),
        (
            text(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            option::of(text())
        )
            .prop_map(|(id, status, duration, req, resp, attempts, error)| {
                Event::RequestComplete(RequestComplete {
                    correlation_id: id,
                    status,
                    duration_ms: duration,
                    request_body_size: req,
                    response_body_size: resp,
                    upstream_attempts: attempts,
                    error,
                })
            }),
        (
            text(),
            text(),
            body(),
            any::<bool>(),
            any::<u64>(),
            any::<bool>(),
            option::of(text()),
            text()
        )
            .prop_map(
                |(correlation_id, opcode, data, c2s, frame_index, fin, route_id, client_ip)| {
                    Event::WebSocketFrame(WebSocketFrame {
                        correlation_id,
                        opcode,
                        data,
                        client_to_server: c2s,
                        frame_index,
                        fin,
                        route_id,
                        client_ip,
                    })
                }
            ),
        (
            text(),
            prop_oneof![
                Just(InspectionType::PromptInjection),
                Just(InspectionType::PiiDetection)
            ],
            text(),
            option::of(text()),
            vec(text(), 0..3),
            option::of(text()),
            string_map()
        )
            .prop_map(
                |(correlation_id, inspection_type, content, model, categories, route_id, md)| {
                    Event::GuardrailInspect(GuardrailInspect {
                        correlation_id,
                        inspection_type,
                        content,
                        model,
                        categories,
                        route_id,
                        metadata: md,
                    })
                }
            ),
        (any_value(), option::of(text()), text()).prop_map(
            |(config, config_version, correlation_id)| {
                Event::Configure(Configure {
                    config,
                    config_version,
                    correlation_id,
                })
            }
        ),
    ]
    .boxed()
}

fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        Just(Decision::Allow),
        (any::<u16>(), option::of(text()), option::of(string_map())).prop_map(
            |(status, body, headers)| Decision::Block {
                status,
                body,
                headers
            }
        ),
        (text(), any::<u16>()).prop_map(|(url, status)| Decision::Redirect { url, status }),
        (text(), string_map()).prop_map(|(challenge_type, params)| Decision::Challenge {
            challenge_type,
            params
        }),
    ]
}

fn header_op() -> impl Strategy<Value = HeaderOp> {
    prop_oneof![
        (text(), text()).prop_map(|(name, value)| HeaderOp::Set { name, value }),
        (text(), text()).prop_map(|(name, value)| HeaderOp::Add { name, value }),
        text().prop_map(|name| HeaderOp::Remove { name }),
    ]
}

fn mutation() -> impl Strategy<Value = Option<BodyMutation>> {
    option::of(
        (option::of(text()), any::<u32>())
            .prop_map(|(data, chunk_index)| BodyMutation { data, chunk_index }),
    )
}

fn websocket_decision() -> impl Strategy<Value = Option<WebSocketDecision>> {
    option::of(prop_oneof![
        Just(WebSocketDecision::Allow),
        Just(WebSocketDecision::Drop),
        (any::<u16>(), text()).prop_map(|(code, reason)| WebSocketDecision::Close { code, reason }),
    ])
}

fn audit() -> impl Strategy<Value = Audit> {
    (
        vec(text(), 0..3),
        vec(text(), 0..3),
        option::of(finite_f32()),
        vec(text(), 0..3),
        btree_map(text(), any_value(), 0..3),
    )
        .prop_map(|(tags, rule_ids, confidence, reason_codes, custom)| Audit {
            tags,
            rule_ids,
            confidence,
            reason_codes,
            custom,
        })
}

fn agent_response() -> BoxedStrategy<AgentResponse> {
    (
        (
            any::<u32>(),
            decision(),
            vec(header_op(), 0..4),
            vec(header_op(), 0..4),
            string_map(),
        ),
        (
            audit(),
            any::<bool>(),
            mutation(),
            mutation(),
            websocket_decision(),
        ),
    )
        .prop_map(
            |(
                (version, decision, request_headers, response_headers, routing_metadata),
                (audit, needs_more, request_body_mutation, response_body_mutation, ws),
            )| AgentResponse {
                version,
                decision,
                request_headers,
                response_headers,
                routing_metadata,
                audit,
                needs_more,
                request_body_mutation,
                response_body_mutation,
                websocket_decision: ws,
            },
        )
        .boxed()
}

fn encoding_list() -> impl Strategy<Value = Vec<Encoding>> {
    vec(
        prop_oneof![
            Just(Encoding::Json),
            Just(Encoding::Msgpack),
            Just(Encoding::Postcard)
        ],
        0..4,
    )
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        (text(), text(), text(), vec(any::<i32>(), 0..9)),
        (
            any::<[bool; 8]>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((agent_id, name, version, supported_events), (f, concurrent, mb, mc, pcs))| {
                Capabilities {
                    agent_id,
                    name,
                    version,
                    supported_events,
                    features: Features {
                        streaming_body: f[0],
                        websocket: f[1],
                        guardrails: f[2],
                        config_push: f[3],
                        metrics_export: f[4],
                        concurrent_requests: concurrent,
                        cancellation: f[5],
                        flow_control: f[6],
                        health_reporting: f[7],
                    },
                    limits: Limits {
                        max_body_size: mb,
                        max_concurrency: mc,
                        preferred_chunk_size: pcs,
                    },
                }
            },
        )
}

fn handshake_request() -> impl Strategy<Value = HandshakeRequest> {
    (
        vec(any::<u32>(), 0..3),
        text(),
        text(),
        any_value(),
        encoding_list(),
        encoding_list(),
    )
        .prop_map(
            |(supported_versions, proxy_id, proxy_version, config, se, ae)| HandshakeRequest {
                supported_versions,
                proxy_id,
                proxy_version,
                config,
                supported_encodings: se,
                agentwire_encodings: ae,
            },
        )
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        Just(Encoding::Json),
        Just(Encoding::Msgpack),
        Just(Encoding::Postcard)
    ]
}

fn handshake_response() -> impl Strategy<Value = HandshakeResponse> {
    (
        any::<u32>(),
        capabilities(),
        any::<bool>(),
        option::of(text()),
        encoding(),
        option::of(any::<bool>().prop_map(|raw_body_bytes| AgentwireExtensions { raw_body_bytes })),
    )
        .prop_map(
            |(protocol_version, capabilities, success, error, encoding, agentwire)| {
                HandshakeResponse {
                    protocol_version,
                    capabilities,
                    success,
                    error,
                    encoding,
                    agentwire,
                }
            },
        )
}

fn registration_request() -> impl Strategy<Value = RegistrationRequest> {
    (
        any::<u32>(),
        text(),
        capabilities(),
        option::of(text()),
        any_value(),
        encoding_list(),
    )
        .prop_map(
            |(protocol_version, agent_id, capabilities, auth_token, metadata, ae)| {
                RegistrationRequest {
                    protocol_version,
                    agent_id,
                    capabilities,
                    auth_token,
                    metadata,
                    agentwire_encodings: ae,
                }
            },
        )
}

fn registration_response() -> impl Strategy<Value = RegistrationResponse> {
    (
        any::<bool>(),
        option::of(text()),
        text(),
        text(),
        text(),
        option::of(encoding()),
    )
        .prop_map(
            |(success, error, proxy_id, proxy_version, connection_id, encoding)| {
                RegistrationResponse {
                    success,
                    error,
                    proxy_id,
                    proxy_version,
                    connection_id,
                    encoding,
                }
            },
        )
}

fn health_state() -> impl Strategy<Value = HealthState> {
    prop_oneof![
        Just(HealthState::Unspecified),
        Just(HealthState::Healthy),
        (vec(text(), 0..3), finite_f32()).prop_map(|(disabled_features, timeout_multiplier)| {
            HealthState::Degraded {
                disabled_features,
                timeout_multiplier,
            }
        }),
        option::of(any::<u64>()).prop_map(|eta_ms| HealthState::Draining { eta_ms }),
        (text(), any::<bool>()).prop_map(|(reason, recoverable)| HealthState::Unhealthy {
            reason,
            recoverable
        }),
    ]
}

fn load_metrics() -> impl Strategy<Value = LoadMetrics> {
    (
        any::<u32>(),
        any::<u32>(),
        [finite_f32(), finite_f32(), finite_f32(), finite_f32()],
        any::<[u64; 3]>(),
    )
        .prop_map(|(in_flight, queue_depth, l, r)| LoadMetrics {
            in_flight,
            queue_depth,
            avg_latency_ms: l[0],
            p50_latency_ms: l[1],
            p95_latency_ms: l[2],
            p99_latency_ms: l[3],
            requests_processed: r[0],
            requests_rejected: r[1],
            requests_timed_out: r[2],
        })
}

fn resource_metrics() -> impl Strategy<Value = ResourceMetrics> {
    (
        option::of(finite_f32()),
        option::of(any::<u64>()),
        option::of(any::<u64>()),
        [
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
            option::of(any::<u32>()),
        ],
    )
        .prop_map(
            |(cpu_percent, memory_bytes, memory_limit, n)| ResourceMetrics {
                cpu_percent,
                memory_bytes,
                memory_limit,
                active_threads: n[0],
                open_fds: n[1],
                fd_limit: n[2],
                connections: n[3],
            },
        )
}

fn health_status() -> impl Strategy<Value = HealthStatus> {
    (
        text(),
        health_state(),
        option::of(text()),
        option::of(load_metrics()),
        option::of(resource_metrics()),
        option::of(any::<u64>()),
        any::<u64>(),
    )
        .prop_map(
            |(agent_id, state, message, load, resources, valid_until_ms, timestamp_ms)| {
                HealthStatus {
                    agent_id,
                    state,
                    message,
                    load,
                    resources,
                    valid_until_ms,
                    timestamp_ms,
                }
            },
        )
}

/// Bucket bounds: finite, or the infinities the wire spells `"+Inf"`/`"-Inf"`. (NaN has no
/// JSON form at all.)
fn bucket_bound() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => finite_f64(),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

fn metrics_report() -> impl Strategy<Value = MetricsReport> {
    let counter = (text(), option::of(text()), string_map(), any::<u64>()).prop_map(
        |(name, help, labels, value)| CounterMetric {
            name,
            help,
            labels,
            value,
        },
    );
    let gauge = (text(), option::of(text()), string_map(), finite_f64()).prop_map(
        |(name, help, labels, value)| GaugeMetric {
            name,
            help,
            labels,
            value,
        },
    );
    let bucket =
        (bucket_bound(), any::<u64>()).prop_map(|(le, count)| HistogramBucket { le, count });
    let histogram = (
        text(),
        option::of(text()),
        string_map(),
        finite_f64(),
        any::<u64>(),
        vec(bucket, 0..4),
    )
        .prop_map(
            |(name, help, labels, sum, count, buckets)| HistogramMetric {
                name,
                help,
                labels,
                sum,
                count,
                buckets,
            },
        );
    (
        text(),
        any::<u64>(),
        any::<u64>(),
        vec(counter, 0..3),
        vec(gauge, 0..3),
        vec(histogram, 0..3),
    )
        .prop_map(
            |(agent_id, timestamp_ms, interval_ms, counters, gauges, histograms)| MetricsReport {
                agent_id,
                timestamp_ms,
                interval_ms,
                counters,
                gauges,
                histograms,
            },
        )
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        text(),
        any::<i32>(),
        any_value(),
        any::<bool>(),
        option::of(text()),
        vec(text(), 0..3),
    )
        .prop_map(
            |(id, priority, definition, enabled, description, tags)| Rule {
                id,
                priority,
                definition,
                enabled,
                description,
                tags,
            },
        )
}

fn config_update_request() -> impl Strategy<Value = ConfigUpdateRequest> {
    let update = prop_oneof![
        Just(ConfigUpdateType::RequestReload),
        (text(), vec(rule(), 0..3), vec(text(), 0..3)).prop_map(
            |(rule_set, rules, remove_rules)| ConfigUpdateType::RuleUpdate {
                rule_set,
                rules,
                remove_rules
            }
        ),
        (text(), vec(text(), 0..3), vec(text(), 0..3)).prop_map(|(list_id, add, remove)| {
            ConfigUpdateType::ListUpdate {
                list_id,
                add,
                remove,
            }
        }),
        (text(), any::<u64>()).prop_map(|(reason, grace_period_ms)| {
            ConfigUpdateType::RestartRequired {
                reason,
                grace_period_ms,
            }
        }),
        (text(), option::of(text()))
            .prop_map(|(error, field)| ConfigUpdateType::ConfigError { error, field }),
    ];
    (update, text(), any::<u64>()).prop_map(|(update_type, request_id, timestamp_ms)| {
        ConfigUpdateRequest {
            update_type,
            request_id,
            timestamp_ms,
        }
    })
}

fn flow_control() -> impl Strategy<Value = FlowControlSignal> {
    let action = prop_oneof![
        Just(FlowAction::Unspecified),
        Just(FlowAction::Pause),
        Just(FlowAction::Resume),
        any::<u64>().prop_map(|buffer_available| FlowAction::UpdateCapacity { buffer_available }),
    ];
    (option::of(text()), action, any::<u64>()).prop_map(|(correlation_id, action, timestamp_ms)| {
        FlowControlSignal {
            correlation_id,
            action,
            timestamp_ms,
        }
    })
}

fn cancel() -> impl Strategy<Value = Cancel> {
    let reason = prop_oneof![
        Just(CancelReason::ClientDisconnect),
        Just(CancelReason::Timeout),
        Just(CancelReason::BlockedByAgent),
        Just(CancelReason::UpstreamError),
        Just(CancelReason::ProxyShutdown),
        Just(CancelReason::Manual),
    ];
    (text(), reason, any::<u64>()).prop_map(|(correlation_id, reason, timestamp_ms)| Cancel {
        correlation_id,
        reason,
        timestamp_ms,
    })
}

fn ping() -> impl Strategy<Value = Ping> {
    (any::<u64>(), any::<u64>()).prop_map(|(sequence, timestamp_ms)| Ping {
        sequence,
        timestamp_ms,
    })
}

// -------------------------------------------------------------------------------------------
// Round-trip helpers

/// Every event format: JSON, MessagePack with body bytes as base64 and as `bin`, postcard
/// (the JSON flag is meaningless but must be harmless).
fn event_formats() -> Vec<WireFormat> {
    let mut out = Vec::new();
    for encoding in [Encoding::Json, Encoding::Msgpack, Encoding::Postcard] {
        if !encoding.is_available() {
            continue;
        }
        for raw_body_bytes in [false, true] {
            out.push(WireFormat {
                encoding,
                raw_body_bytes,
            });
        }
    }
    out
}

fn available(encodings: &[Encoding]) -> impl Iterator<Item = Encoding> + '_ {
    encodings.iter().copied().filter(|e| e.is_available())
}

/// Reads exactly one frame back out of `wire` through the frame decoder.
fn unframe(wire: &[u8], kind: MessageType) -> Result<Bytes, TestCaseError> {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    dec.extend(wire);
    let frame = dec
        .decode()
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .ok_or_else(|| TestCaseError::fail("incomplete frame"))?;
    prop_assert_eq!(frame.kind, kind);
    prop_assert_eq!(dec.buffered(), 0);
    Ok(frame.payload)
}

fn event_round_trip(ev: &Event) -> Result<(), TestCaseError> {
    for format in event_formats() {
        let mut out = BytesMut::new();
        encode_event(ev, format, DEFAULT_MAX_FRAME_LEN, &mut out)
            .map_err(|e| TestCaseError::fail(format!("{format:?}: {e}")))?;
        let payload = unframe(&out, ev.message_type())?;
        let back = decode_event(ev.message_type(), &payload, format.encoding)
            .map_err(|e| TestCaseError::fail(format!("{format:?}: {e}")))?;
        prop_assert_eq!(&back, ev, "{:?}", format);
    }
    Ok(())
}

fn message_round_trip<T>(
    kind: MessageType,
    m: &T,
    encodings: &[Encoding],
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for encoding in available(encodings) {
        let mut out = BytesMut::new();
        encode_frame_of(kind, m, encoding, DEFAULT_MAX_FRAME_LEN, &mut out)
            .map_err(|e| TestCaseError::fail(format!("{encoding:?}: {e}")))?;
        let payload = unframe(&out, kind)?;
        let back: T = decode_message(kind, &payload, encoding)
            .map_err(|e| TestCaseError::fail(format!("{encoding:?}: {e}")))?;
        prop_assert_eq!(&back, m, "{:?}", encoding);
    }
    Ok(())
}

const ALL: &[Encoding] = &[Encoding::Json, Encoding::Msgpack, Encoding::Postcard];

/// The handshake and registration frames are always JSON (spec §3, §9.2); MessagePack is
/// checked as well because it is self-describing. Postcard is not: these types use
/// `skip_serializing_if` (spec §4.1 "omitted when empty", agentwire's extension keys), which a
/// positional format cannot represent, and no frame ever carries them in postcard.
const HANDSHAKE: &[Encoding] = &[Encoding::Json, Encoding::Msgpack];

// -------------------------------------------------------------------------------------------
// Round-trip properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn events_round_trip(ev in event()) {
        event_round_trip(&ev)?;
    }

    #[test]
    fn agent_responses_round_trip(m in agent_response()) {
        message_round_trip(MessageType::AgentResponse, &m, ALL)?;
    }

    #[test]
    fn handshake_requests_round_trip(m in handshake_request()) {
        message_round_trip(MessageType::HandshakeRequest, &m, HANDSHAKE)?;
    }

    #[test]
    fn handshake_responses_round_trip(m in handshake_response()) {
        message_round_trip(MessageType::HandshakeResponse, &m, HANDSHAKE)?;
    }

    #[test]
    fn registrations_round_trip(req in registration_request(), resp in registration_response()) {
        message_round_trip(MessageType::HandshakeRequest, &req, HANDSHAKE)?;
        message_round_trip(MessageType::HandshakeResponse, &resp, HANDSHAKE)?;
    }

    #[test]
    fn health_status_round_trips(m in health_status()) {
        message_round_trip(MessageType::HealthStatus, &m, ALL)?;
    }

    #[test]
    fn metrics_reports_round_trip(m in metrics_report()) {
        message_round_trip(MessageType::MetricsReport, &m, ALL)?;
    }

    #[test]
    fn config_update_requests_round_trip(m in config_update_request()) {
        message_round_trip(MessageType::ConfigUpdateRequest, &m, ALL)?;
    }

    #[test]
    fn flow_control_round_trips(m in flow_control()) {
        message_round_trip(MessageType::FlowControl, &m, ALL)?;
    }

    #[test]
    fn cancel_ping_pong_round_trip(c in cancel(), p in ping()) {
        message_round_trip(MessageType::Cancel, &c, ALL)?;
        message_round_trip(MessageType::Ping, &p, ALL)?;
        message_round_trip(MessageType::Pong, &p, ALL)?;
    }
}

// -------------------------------------------------------------------------------------------
// Robustness properties

/// Every decoder that can apply to a frame of type `kind`, for every encoding; results are
/// ignored, only panics matter.
fn decode_everything(kind: MessageType, payload: &Bytes) {
    for encoding in available(ALL) {
        let _ = decode_event(kind, payload, encoding);
        let _ = salvage_correlation_id(payload, encoding);
        macro_rules! try_all {
            ($($t:ty),*) => {{ $( let _ = decode_message::<$t>(kind, payload, encoding); )* }};
        }
        match kind {
            MessageType::HandshakeRequest => try_all!(HandshakeRequest, RegistrationRequest),
            MessageType::HandshakeResponse => try_all!(HandshakeResponse, RegistrationResponse),
            MessageType::AgentResponse => try_all!(AgentResponse),
            MessageType::HealthStatus => try_all!(HealthStatus),
            MessageType::MetricsReport => try_all!(MetricsReport),
            MessageType::ConfigUpdateRequest => try_all!(ConfigUpdateRequest),
            MessageType::FlowControl => try_all!(FlowControlSignal),
            MessageType::Cancel => try_all!(Cancel),
            MessageType::Ping | MessageType::Pong => try_all!(Ping),
            _ => {}
        }
    }
}

/// A valid encoding of some message, to be mutated.
fn seed_payload() -> BoxedStrategy<(MessageType, Vec<u8>)> {
    let ev = (event(), 0..6usize).prop_map(|(ev, f)| {
        let formats = event_formats();
        let format = formats[f % formats.len()];
        let mut out = BytesMut::new();
        encode_event(&ev, format, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        (ev.message_type(), out[5..].to_vec())
    });
    let resp = (agent_response(), 0..3usize).prop_map(|(r, e)| {
        let encodings: Vec<_> = available(ALL).collect();
        let mut out = BytesMut::new();
        encode_frame_of(
            MessageType::AgentResponse,
            &r,
            encodings[e % encodings.len()],
            DEFAULT_MAX_FRAME_LEN,
            &mut out,
        )
        .unwrap();
        (MessageType::AgentResponse, out[5..].to_vec())
    });
    prop_oneof![ev, resp].boxed()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Delete),
        ],
        1..4,
    )
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len();
        match *m {
            Mutation::Flip(i, b) if n > 0 => bytes[i % n] ^= b | 1,
            Mutation::Truncate(i) => bytes.truncate(i % (n + 1)),
            Mutation::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Mutation::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            _ => {}
        }
    }
    bytes
}

fn message_type() -> impl Strategy<Value = MessageType> {
    (0..MessageType::ALL.len()).prop_map(|i| MessageType::ALL[i])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(
        kind in message_type(),
        payload in vec(any::<u8>(), 0..256),
    ) {
        decode_everything(kind, &Bytes::from(payload));
    }

    #[test]
    fn decoders_never_panic_on_mutated_payloads(
        (kind, payload) in seed_payload(),
        mutations in mutations(),
        retype in option::of(message_type()),
    ) {
        let payload = Bytes::from(apply(payload, &mutations));
        decode_everything(retype.unwrap_or(kind), &payload);
    }

    /// Arbitrary bytes, fed in arbitrary pieces, with an arbitrary (possibly tiny) limit.
    #[test]
    fn frame_decoder_never_panics_and_buffers_at_most_what_it_was_fed(
        wire in vec(any::<u8>(), 0..512),
        cuts in vec(any::<usize>(), 0..8),
        max_len in prop_oneof![Just(DEFAULT_MAX_FRAME_LEN), 1u32..64, any::<u32>()],
    ) {
        check_decoder(&wire, &cuts, max_len, None)?;
    }

    /// Valid frames (any type, any payload) split arbitrarily come out whole and in order.
    #[test]
    fn frame_decoder_reassembles_valid_streams(
        frames in vec((message_type(), vec(any::<u8>(), 0..40)), 0..6),
        trailing in vec(any::<u8>(), 0..12),
        cuts in vec(any::<usize>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        for (kind, payload) in &frames {
            encode_frame(*kind, payload, DEFAULT_MAX_FRAME_LEN, &mut wire).unwrap();
        }
        wire.extend_from_slice(&trailing);
        check_decoder(&wire, &cuts, DEFAULT_MAX_FRAME_LEN, Some(&frames))?;
    }
}

fn check_decoder(
    wire: &[u8],
    cuts: &[usize],
    max_len: u32,
    expect: Option<&[(MessageType, Vec<u8>)]>,
) -> Result<(), TestCaseError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(0);
    points.push(wire.len());
    points.sort_unstable();
    let mut dec = FrameDecoder::new(max_len);
    let (mut fed, mut consumed) = (0usize, 0usize);
    let mut got = Vec::new();
    let mut failed = None;
    for pair in points.windows(2) {
        let piece = &wire[pair[0]..pair[1]];
        if pair[0] % 2 == 0 {
            dec.extend(piece);
        } else {
            // The other way in: straight into the read buffer.
            dec.read_buffer().extend_from_slice(piece);
        }
        fed += piece.len();
        loop {
            match dec.decode() {
                Ok(Some(frame)) => {
                    prop_assert!(frame.payload.len() < max_len as usize);
                    consumed += 5 + frame.payload.len();
                    got.push((frame.kind, frame.payload.to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    // Once failed, always failed with the same error.
                    if let Some(prev) = failed {
                        prop_assert_eq!(prev, e);
                    }
                    failed = Some(e);
                    prop_assert_eq!(dec.decode(), Err(e));
                    break;
                }
            }
        }
        prop_assert!(
            dec.buffered() <= fed,
            "{} buffered of {} fed",
            dec.buffered(),
            fed
        );
        prop_assert_eq!(dec.buffered(), fed - consumed);
    }
    if let Some(frames) = expect {
        // The trailing garbage may add frames or an error, but only after the valid ones.
        prop_assert!(got.len() >= frames.len(), "{:?}", failed);
        prop_assert_eq!(&got[..frames.len()], frames);
    }
    Ok(())
}

/// Floats proptest once found one ulp off in JSON (serde_json parses them exactly only with
/// its `float_roundtrip` feature), and the extremes.
#[test]
fn json_floats_round_trip_exactly() {
    let values = [
        -1.031_064_100_313_632_7e-137,
        2.054_994_359_333_264e247,
        0.1,
        1.000_000_000_000_000_2,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        -0.0,
    ];
    for v in values {
        let report = MetricsReport {
            gauges: vec![GaugeMetric {
                name: "g".into(),
                value: v,
                ..GaugeMetric::default()
            }],
            histograms: vec![HistogramMetric {
                sum: v,
                buckets: vec![HistogramBucket { le: v, count: 1 }],
                ..HistogramMetric::default()
            }],
            ..MetricsReport::default()
        };
        let mut out = BytesMut::new();
        encode_frame_of(
            MessageType::MetricsReport,
            &report,
            Encoding::Json,
            DEFAULT_MAX_FRAME_LEN,
            &mut out,
        )
        .unwrap();
        let back: MetricsReport =
            decode_message(MessageType::MetricsReport, &out[5..], Encoding::Json).unwrap();
        assert_eq!(back.gauges[0].value.to_bits(), v.to_bits(), "{v:e}");
        assert_eq!(back.histograms[0].sum.to_bits(), v.to_bits(), "{v:e}");
        assert_eq!(
            back.histograms[0].buckets[0].le.to_bits(),
            v.to_bits(),
            "{v:e}"
        );

        let config = Event::Configure(Configure {
            config: AnyValue(Value::from(v)),
            ..Configure::default()
        });
        let mut out = BytesMut::new();
        encode_event(&config, WireFormat::JSON, DEFAULT_MAX_FRAME_LEN, &mut out).unwrap();
        let back = decode_event(
            MessageType::Configure,
            &out.freeze().slice(5..),
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(back, config, "{v:e}");
    }
}
