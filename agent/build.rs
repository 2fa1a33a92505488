//! Generates the agent's protobuf and gRPC code from `proto/` with protox (a Rust protobuf
//! compiler), so building Fledge needs no system `protoc`.

fn main() {
    const PROTO: &str = "fledge/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"]).unwrap_or_else(|e| panic!("{PROTO}: {e}"));
    tonic_prost_build::configure()
        // The client connects through a VMM socket of our own, not tonic's TCP transport.
        .build_transport(false)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating code for {PROTO}: {e}"));
}
