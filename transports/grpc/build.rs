//! Compiles `proto/agent_v2.proto` with protox (pure Rust, no system `protoc`) and generates
//! the prost messages and the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/agent_v2.proto");
    let fds = protox::compile(["agent_v2.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Body bytes as `bytes::Bytes`: zero-copy slices of the received buffer, and the
        // core's `Bytes` goes out without a copy.
        .bytes(".")
        // Deterministic map order on the wire (and the core's `BTreeMap`s map directly).
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
