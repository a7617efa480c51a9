//! Compiles `proto/fieldline/v1/*.proto` with protox (a protobuf compiler in Rust), so a build
//! needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("fieldline/v1/fieldline.proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile([&file], [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("fieldline_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // Sparkplug B payloads, for the MQTT ingest driver (messages only, no services).
    let sparkplug = protox::compile([root.join("sparkplug/sparkplug_b.proto")], [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(sparkplug)?;
    Ok(())
}
