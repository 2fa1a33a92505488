//! The `volant-v1` manifest shape satisfies Volant's plugin-manifest-v1 JSON schema (checked
//! with a real JSON-schema validator); the legacy `fledge` shape, as documented, does not.

mod common;

use std::fs;

use common::*;
use serde_json::Value;

const FULL_MANIFEST: &str = r##"
name = "web"
version = "2.1.0"

[resources]
cpu_cores = 2
memory_mb = 512

[workload]
type = "http"
base_url = "http://127.0.0.1:8080"
entrypoint = "/usr/bin/web"
args = ["--port", "8080"]
workdir = "/srv"

[env]
RUST_LOG = "info"

[network]
mode = "vsock"

[health_check]
endpoint = "/healthz"
timeout_ms = 2000

[actions.reload]
path = "/reload"
method = "POST"
description = "Reload configuration"
timeout_ms = 500

[cloud_init]
datasource = "NoCloud"
[cloud_init.user_data]
inline = true
content = "#cloud-config\n"
[cloud_init.meta_data]
instance-id = "web-1"

[devices]
pci_passthrough = ["0000:00:02.0"]
"##;

fn schema() -> jsonschema::Validator {
    let text =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/plugin-manifest-v1.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn build(manifest: &str, format: &str) -> Value {
    let p = Project::new();
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nbusybox_path = \"{}\"\n", busybox()));
    p.write("manifest.toml", manifest);
    assert_success(&run(p.fledge().args(["build", "-o", "web.cpio.gz", "--manifest-format", format])));
    serde_json::from_slice(&fs::read(p.path("web.manifest.json")).unwrap()).unwrap()
}

fn errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn volant_v1_manifest_satisfies_the_schema() {
    let validator = schema();
    let m = build(FULL_MANIFEST, "volant-v1");
    assert_eq!(errors(&validator, &m), Vec::<String>::new(), "{m:#}");
    assert_eq!(m["workload"]["entrypoint"], serde_json::json!(["/usr/bin/web", "--port", "8080"]));
    assert_eq!(m["workload"]["env"]["RUST_LOG"], "info");
    assert_eq!(m["runtime"], "web", "runtime defaults to the name in the v1 shape");
    assert!(m["initramfs"]["url"].as_str().unwrap().starts_with("file:///"));
    assert!(m["initramfs"].get("format").is_none());
}

#[test]
fn the_legacy_fledge_shape_is_not_v1_and_the_validator_says_so() {
    let validator = schema();
    let m = build(&FULL_MANIFEST.replace("version = \"2.1.0\"", "version = \"2.1.0\"\nruntime = \"web\""), "fledge");
    assert_eq!(m["workload"]["entrypoint"], "/usr/bin/web");
    assert_eq!(m["env"]["RUST_LOG"], "info");
    let errs = errors(&validator, &m);
    assert!(errs.iter().any(|e| e.contains("/workload/entrypoint")), "{errs:?}");
}

#[test]
fn manifest_format_can_be_set_in_fledge_toml() {
    let p = Project::new();
    p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"initramfs\"\nmanifest_format = \"volant-v1\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{}\"\n[mappings]\n\"init\" = \"/init\"\n", busybox()));
    fs::copy(agent_binary(), p.path("init")).unwrap();
    p.write("manifest.toml", FULL_MANIFEST);
    assert_success(&run(p.fledge().args(["build", "-o", "web.cpio.gz"])));
    let m: Value = serde_json::from_slice(&fs::read(p.path("web.manifest.json")).unwrap()).unwrap();
    assert_eq!(errors(&schema(), &m), Vec::<String>::new());
}
