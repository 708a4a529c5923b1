//! Seed corpora of the cargo-fuzz targets, built from the golden vectors (spec §15), and a
//! check that every seed passes its target's invariants.
//!
//! `fuzz/seeds.sh` runs this with `AGENTWIRE_WRITE_SEEDS=1`, which (re)writes the seeds into
//! `fuzz/seeds/<target>/`; without it the test only runs every seed through its target. The
//! `arbitrary`-structured targets (`proxy_session`, `agent_session`, `pool`) have no seeds:
//! their input is a script of operations, not wire bytes, and libFuzzer builds one quickly.
#![cfg(not(loom))]

use agentwire_core::encoding::{DecodeError, encode_frame_of};
use agentwire_core::encoding::{WireFormat, decode_event, decode_message, encode_event};
use agentwire_core::frame::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN, MessageType};
use agentwire_core::fuzzing;
use agentwire_core::message::*;
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One recorded frame.
struct Vector {
    name: String,
    session: String,
    direction: String,
    frame: Vec<u8>,
    json: bool,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("frame_hex is hex"))
        .collect()
}

fn vectors() -> Vec<Vector> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec/vectors");
    let mut out = Vec::new();
    for file in ["uds-json.json", "uds-msgpack.json"] {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).expect("vector file");
        for v in list {
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            out.push(Vector {
                name: field("name"),
                session: field("session"),
                direction: field("direction"),
                frame: hex(&field("frame_hex")),
                json: field("payload_encoding") == "json",
            });
        }
    }
    assert!(out.len() > 50, "golden vectors missing");
    out
}

fn kind_of(v: &Vector) -> MessageType {
    MessageType::from_byte(v.frame[4]).expect("vector type byte")
}

fn payload_of(v: &Vector) -> &[u8] {
    &v.frame[HEADER_LEN..]
}

fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn postcard<T: Serialize + DeserializeOwned>(
    kind: MessageType,
    payload: &[u8],
    encoding: Encoding,
) -> Option<Vec<u8>> {
    let value: T = decode_message(kind, payload, encoding).ok()?;
    let mut out = BytesMut::new();
    encode_frame_of(
        kind,
        &value,
        Encoding::Postcard,
        DEFAULT_MAX_FRAME_LEN,
        &mut out,
    )
    .ok()?;
    Some(out[HEADER_LEN..].to_vec())
}

/// The vector's message re-encoded as postcard (the golden vectors have none).
fn as_postcard(kind: MessageType, payload: &[u8], encoding: Encoding) -> Option<Vec<u8>> {
    let event = |p: &[u8]| -> Result<Event, DecodeError> {
        decode_event(kind, &Bytes::copy_from_slice(p), encoding)
    };
    match kind {
        MessageType::AgentResponse => postcard::<AgentResponse>(kind, payload, encoding),
        MessageType::HealthStatus => postcard::<HealthStatus>(kind, payload, encoding),
        MessageType::MetricsReport => postcard::<MetricsReport>(kind, payload, encoding),
        MessageType::ConfigUpdateRequest => {
            postcard::<ConfigUpdateRequest>(kind, payload, encoding)
        }
        MessageType::FlowControl => postcard::<FlowControlSignal>(kind, payload, encoding),
        MessageType::Cancel => postcard::<Cancel>(kind, payload, encoding),
        MessageType::Ping | MessageType::Pong => postcard::<Ping>(kind, payload, encoding),
        MessageType::HandshakeRequest | MessageType::HandshakeResponse => None,
        _ => {
            let ev = event(payload).ok()?;
            let mut out = BytesMut::new();
            let format = WireFormat::new(Encoding::Postcard);
            encode_event(&ev, format, DEFAULT_MAX_FRAME_LEN, &mut out).ok()?;
            Some(out[HEADER_LEN..].to_vec())
        }
    }
}

fn with_selector(kind: MessageType, payload: &[u8]) -> Vec<u8> {
    let mut seed = vec![kind.as_byte()];
    seed.extend_from_slice(payload);
    seed
}

/// Every target's seeds, by target name then file name.
fn seeds() -> BTreeMap<&'static str, BTreeMap<String, Vec<u8>>> {
    let vectors = vectors();
    let mut seeds: BTreeMap<&'static str, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.entry(target).or_default().insert(name, bytes);
    };
    // Whole recorded streams, per session and direction, and every frame alone.
    let mut streams: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for v in &vectors {
        let stream = format!("stream_{}_{}", v.session, v.direction);
        streams
            .entry(file_name(&stream))
            .or_default()
            .extend_from_slice(&v.frame);
        add("frame_decoder", file_name(&v.name), v.frame.clone());
    }
    for (name, stream) in streams {
        add("frame_decoder", name, stream);
    }
    for v in &vectors {
        let (kind, payload) = (kind_of(v), payload_of(v));
        let encoding = if v.json {
            Encoding::Json
        } else {
            Encoding::Msgpack
        };
        let target = if v.json {
            "message_json"
        } else {
            "message_msgpack"
        };
        add(target, file_name(&v.name), with_selector(kind, payload));
        if let Some(p) = as_postcard(kind, payload, encoding) {
            add(
                "message_postcard",
                file_name(&v.name),
                with_selector(kind, &p),
            );
        }
        if v.session == "reverse" && matches!(kind.as_byte(), 0x01 | 0x02) {
            let mut seed = vec![0, kind.as_byte() - 1];
            seed.extend_from_slice(payload);
            add("registration", file_name(&v.name), seed);
        }
    }
    // Each recorded handshake request with each recorded answer, under a few encoding sets.
    let hellos = |kind: u8| -> Vec<&Vector> {
        vectors
            .iter()
            .filter(|v| v.frame[4] == kind && v.session != "reverse")
            .collect()
    };
    for (i, request) in hellos(0x01).into_iter().enumerate() {
        for (j, response) in hellos(0x02).into_iter().enumerate() {
            for (agent, proxy) in [(0x07u8, 0x07u8), (0x03, 0x46), (0x01, 0x2e)] {
                let request = payload_of(request);
                let len = u16::try_from(request.len()).expect("small handshake");
                let mut seed = vec![agent, proxy];
                seed.extend_from_slice(&len.to_be_bytes());
                seed.extend_from_slice(request);
                seed.extend_from_slice(payload_of(response));
                add(
                    "handshake",
                    format!("req{i}_resp{j}_{agent:02x}{proxy:02x}"),
                    seed,
                );
            }
        }
    }
    seeds
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds")
}

fn write(dir: &Path, seeds: &BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>) {
    for (target, files) in seeds {
        let dir = dir.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        std::fs::create_dir_all(&dir).expect("create seed dir");
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
}

#[test]
fn every_seed_passes_its_target() {
    let seeds = seeds();
    for target in [
        "frame_decoder",
        "message_json",
        "message_msgpack",
        "message_postcard",
        "handshake",
        "registration",
    ] {
        let files = seeds.get(target).map(BTreeMap::len).unwrap_or(0);
        assert!(files > 0, "no seeds for {target}");
    }
    for (target, files) in &seeds {
        let run = fuzzing::target(target).unwrap_or_else(|| panic!("no target {target}"));
        for (name, bytes) in files {
            // A failing seed names itself through the panic message of the target.
            eprintln!("{target}/{name}");
            run(bytes);
        }
    }
    if std::env::var_os("AGENTWIRE_WRITE_SEEDS").is_some() {
        write(&seeds_dir(), &seeds);
    }
}

#[test]
fn checked_in_seeds_are_current() {
    let dir = seeds_dir();
    if std::env::var_os("AGENTWIRE_WRITE_SEEDS").is_some() || !dir.exists() {
        return;
    }
    for (target, files) in seeds() {
        for (name, bytes) in files {
            let path = dir.join(target).join(&name);
            let stored = std::fs::read(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (regenerate with fuzz/seeds.sh)", path.display())
            });
            assert_eq!(stored, bytes, "{} is stale (fuzz/seeds.sh)", path.display());
        }
    }
}
