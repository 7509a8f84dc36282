//! Generates the forwarding service's code from `proto/`; the store's
//! messages it carries are the store crate's own types.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled (see the
    // store's build.rs).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos = [root.join("rookery/cluster/v1/forward.proto")];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".rookery.store.v1", "::rookery_store::proto")
        .compile_with_config(config, &protos, &[root])?;
    Ok(())
}
