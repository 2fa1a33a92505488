//! Generates the BuildKit client's protobuf and gRPC code from `proto/` (our own .proto files,
//! written from the reference's field tables) with protox, so no system `protoc` is needed.
//! LLB types (`pb.*`) are fledge-llb's, so a definition the frontend made goes out as it is.

fn main() {
    const PROTOS: [&str; 6] = [
        "moby/buildkit/v1/control.proto",
        "fsutil/types/wire.proto",
        "moby/filesync/v1/filesync.proto",
        "moby/buildkit/secrets/v1/secrets.proto",
        "grpc/health/v1/health.proto",
        "containerd/services/content/v1/content.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../llb/proto");
    let descriptors = protox::compile(PROTOS, ["proto", "../llb/proto"]).unwrap_or_else(|e| panic!("{e}"));
    tonic_prost_build::configure()
        .extern_path(".pb", "::fledge_llb::pb")
        .btree_map(".")
        // Connections go through sockets of our own (unix, tcp) and the session tunnel.
        .build_transport(false)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the BuildKit client's code: {e}"));
}
