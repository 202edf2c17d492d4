//! Compiles `proto/` into Rust with protox (a protobuf compiler from
//! crates.io), so building needs no system `protoc` and every machine
//! generates the same code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(
        [
            "dmuc/peering/v1/peering.proto",
            "dmuc/peering/v1/relay.proto",
        ],
        ["../../proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Our own rerun-if-changed above covers the whole directory.
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
