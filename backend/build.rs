//! Generates the gRPC code for `proto/roundhouse/v1/hosts.proto`.
//!
//! The .proto file is parsed by protox (a protobuf compiler written in Rust),
//! so building needs no `protoc` binary and no system package; tonic's prost
//! generator then writes the message types and the `Hosts` server and client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/roundhouse/v1/hosts.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
