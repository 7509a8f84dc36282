//! Generates the store's protobuf and gRPC code from `proto/` with a vendored
//! protoc, so a build needs nothing installed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build
    // script binary reused from a copied target directory (cargo's hashes do
    // not depend on where the workspace is) would read another checkout's
    // protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [
        root.join("rookery/store/v1/state.proto"),
        root.join("rookery/store/v1/service.proto"),
    ];
    // The protos live outside this package, where Cargo would not look for
    // changes on its own.
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Payloads stay `Bytes`, sliced from the request without a copy.
        .bytes(".")
        // Openraft stores and ships commands through serde.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_with_config(config, &protos, &[root])?;
    Ok(())
}
