//! Generates the LLB protobuf types from `proto/pb/ops.proto` with protox (no system
//! `protoc`). Every map is a `BTreeMap`: Go marshals maps sorted by key, and op digests
//! depend on those bytes.

fn main() {
    const PROTO: &str = "pb/ops.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"]).unwrap_or_else(|e| panic!("{PROTO}: {e}"));
    prost_build::Config::new()
        .btree_map(["."])
        // `fledge debug llb --format json` prints ops as JSON.
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating code for {PROTO}: {e}"));
}
