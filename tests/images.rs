//! `fledge image` against a real registry: pull with digest verification into the store,
//! platform selection from an index, listing, inspection, removal, and tampered content.

mod common;

use std::fs;
use std::process::Output;

use common::oci::{Entry, add_image, finish_layout, tar_layer};
use common::*;
use serde_json::{Value, json};

fn busybox_layers() -> Vec<Vec<u8>> {
    let bb = fs::read(busybox()).unwrap();
    vec![
        tar_layer(&[
            Entry::Dir("bin", 0o755),
            Entry::File("bin/busybox", 0o755, &bb),
            Entry::Symlink("bin/sh", "busybox"),
            Entry::Dir("etc", 0o755),
            Entry::File("etc/hostname", 0o644, b"test\n"),
        ]),
        tar_layer(&[Entry::File("etc/motd", 0o644, b"hello from layer two\n")]),
    ]
}

fn run_config() -> Value {
    json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo hi"], "Env": ["PATH=/bin"], "WorkingDir": "/srv"})
}

fn fledge_image(p: &Project, args: &[&str]) -> Output {
    run(p.fledge().arg("image").args(args))
}

#[test]
fn pull_stores_a_verified_image_that_then_works_offline() {
    let mut registry = need!(registry::start());
    let p = Project::new();
    let layout = p.path("layout");
    let manifest = add_image(&layout, "amd64", &busybox_layers(), run_config());
    let digest = finish_layout(&layout, "v1", vec![manifest]);
    registry.push(&layout, "v1", "fledge/busybox", false);

    let reference = format!("{}/fledge/busybox:v1", registry.host);
    let out = fledge_image(&p, &["pull", &reference]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest, "prints the manifest digest");
    let blob = p.path(&format!("state/store/blobs/sha256/{}", digest.trim_start_matches("sha256:")));
    assert!(blob.is_file(), "manifest stored by digest");

    registry.stop();
    let ls = fledge_image(&p, &["ls"]);
    assert_success(&ls);
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&reference), "{}", String::from_utf8_lossy(&ls.stdout));
    let inspect = fledge_image(&p, &["inspect", &reference]);
    assert_success(&inspect);
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["digest"], digest.as_str());
    assert_eq!(info["config"]["Entrypoint"], json!(["/bin/sh"]));
    assert_eq!(info["config"]["WorkingDir"], "/srv");
    assert_eq!(info["layers"].as_array().unwrap().len(), 2);

    assert_success(&fledge_image(&p, &["rm", &reference]));
    let gone = fledge_image(&p, &["inspect", &reference]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("is not in the store") && stderr(&gone).contains("fledge image pull"),
        "{}",
        stderr(&gone)
    );
}

#[test]
fn an_index_resolves_to_the_requested_platform() {
    let registry = need!(registry::start());
    let p = Project::new();
    let layout = p.path("layout");
    let amd64 = add_image(&layout, "amd64", &busybox_layers()[1..], run_config());
    let arm64 = add_image(&layout, "arm64", &busybox_layers()[1..], json!({"Cmd": ["arm"]}));
    finish_layout(&layout, "multi", vec![amd64.clone(), arm64.clone()]);
    registry.push(&layout, "multi", "fledge/multi", true);
    let reference = format!("{}/fledge/multi:multi", registry.host);

    let host = fledge_image(&p, &["pull", &reference]);
    assert_success(&host);
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), amd64["digest"].as_str().unwrap());
    let arm = fledge_image(&p, &["pull", "--platform", "linux/arm64", &reference]);
    assert_success(&arm);
    assert_eq!(String::from_utf8_lossy(&arm.stdout).trim(), arm64["digest"].as_str().unwrap());

    let none = fledge_image(&p, &["pull", "--platform", "linux/s390x", &reference]);
    assert_eq!(none.status.code(), Some(1));
    let err = stderr(&none);
    assert!(
        err.contains("has no manifest for linux/s390x")
            && err.contains("linux/amd64, linux/arm64")
            && err.contains("--platform"),
        "{err}"
    );
}

#[test]
fn a_tampered_blob_is_refused_and_never_stored() {
    let registry = need!(registry::start());
    let p = Project::new();
    let layout = p.path("layout");
    let layers = busybox_layers();
    let manifest = add_image(&layout, "amd64", &layers, run_config());
    finish_layout(&layout, "v1", vec![manifest.clone()]);
    registry.push(&layout, "v1", "fledge/tampered", false);
    // Corrupt the second layer inside the registry's storage, keeping its length.
    let manifest_json: Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(manifest["digest"].as_str().unwrap().trim_start_matches("sha256:")))
            .unwrap(),
    )
    .unwrap();
    let layer_hex = manifest_json["layers"][1]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let file = registry.blob_file(&layer_hex);
    let mut data = fs::read(&file).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&file, &data).unwrap();

    let out = fledge_image(&p, &["pull", &format!("{}/fledge/tampered:v1", registry.host)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("layer 2/2")
            && err.contains(&format!("expected sha256:{layer_hex}"))
            && err.contains("it was not stored"),
        "{err}"
    );
    assert!(!p.path(&format!("state/store/blobs/sha256/{layer_hex}")).exists());
    assert_eq!(fs::read_dir(p.path("state/store/tmp")).unwrap().count(), 0, "no partial blob left");
    assert_eq!(fs::read_dir(p.path("state/store/images")).unwrap().count(), 0, "the image was not recorded");
}

#[test]
fn unknown_tags_and_bad_references_are_clear_errors() {
    let registry = need!(registry::start());
    let p = Project::new();
    let out = fledge_image(&p, &["pull", &format!("{}/fledge/nothing:v9", registry.host)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found in the registry") && stderr(&out).contains("404"), "{}", stderr(&out));
    let bad = fledge_image(&p, &["pull", "Not/Valid"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("invalid image reference 'Not/Valid'"), "{}", stderr(&bad));
}

fn layout_with_image(p: &Project) -> (std::path::PathBuf, String) {
    let layout = p.path("layout");
    let manifest = add_image(&layout, "amd64", &busybox_layers(), run_config());
    let digest = finish_layout(&layout, "v1", vec![manifest]);
    (layout, digest)
}

#[test]
fn oci_layouts_and_docker_archives_import_without_a_registry() {
    let p = Project::new();
    let (layout, digest) = layout_with_image(&p);

    // A layout directory.
    let out = fledge_image(&p, &["import", "oci-layout:layout:v1"]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    let ls = String::from_utf8_lossy(&fledge_image(&p, &["ls"]).stdout).into_owned();
    assert!(ls.contains(&format!("oci-layout:{}:v1", layout.display())), "{ls}");

    // The same layout as a tarball.
    assert_success(&run(std::process::Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .args(["-cf"])
        .arg(p.path("image.tar"))
        .arg(".")));
    let out = fledge_image(&p, &["import", "oci-layout:image.tar:v1"]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);

    // A docker save archive, written by skopeo.
    let archive = p.path("app.tar");
    let made = run(std::process::Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker-archive:{}:fledge/app:v1", archive.display())));
    assert_success(&made);
    assert_success(&fledge_image(&p, &["import", "docker-archive:app.tar"]));
    let info: Value = serde_json::from_slice(&fledge_image(&p, &["inspect", "docker-archive:app.tar"]).stdout).unwrap();
    assert_eq!(info["config"]["Entrypoint"], json!(["/bin/sh"]));
    assert_eq!(info["layers"].as_array().unwrap().len(), 2);

    // A registry reference is not a file.
    let wrong = fledge_image(&p, &["import", "nginx:alpine"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).contains("use `fledge image pull"), "{}", stderr(&wrong));
}

#[test]
fn a_tampered_layout_blob_is_refused() {
    let p = Project::new();
    let (layout, _) = layout_with_image(&p);
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut data = fs::read(&layer).unwrap();
    data[10] ^= 1;
    fs::write(&layer, data).unwrap();
    let out = fledge_image(&p, &["import", "oci-layout:layout:v1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("it was not stored"), "{}", stderr(&out));
    assert_eq!(fs::read_dir(p.path("state/store/images")).unwrap().count(), 0);
}

#[test]
fn a_rootfs_builds_from_an_oci_layout_with_no_registry_at_all() {
    let p = Project::new();
    layout_with_image(&p);
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("fledge.toml", "version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"oci-layout:layout:v1\"\n");
    p.write("manifest.toml", "name = \"l\"\nversion = \"1\"\nruntime = \"l\"\n");
    assert_success(&run(p.fledge().args(["build"])));
    let out = run(std::process::Command::new("unsquashfs").arg("-lln").arg(p.path("v1.squashfs")));
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("squashfs-root/etc/motd") && text.contains("squashfs-root/bin/kestrel"), "{text}");
}

#[test]
fn export_round_trips_and_prune_collects_what_no_image_uses() {
    let p = Project::new();
    let (_, digest) = layout_with_image(&p);
    assert_success(&fledge_image(&p, &["import", "oci-layout:layout:v1"]));
    let exported = fledge_image(&p, &["export", "oci-layout:layout:v1", "-o", "out/exported.tar"]);
    assert_success(&exported);
    let again = fledge_image(&p, &["export", "oci-layout:layout:v1", "-o", "out/again.tar"]);
    assert_success(&again);
    assert_eq!(
        fs::read(p.path("out/exported.tar")).unwrap(),
        fs::read(p.path("out/again.tar")).unwrap(),
        "exports are reproducible"
    );

    // skopeo reads it, and importing it gives the same image back.
    let inspect = run(std::process::Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", p.path("out/exported.tar").display())));
    assert_success(&inspect);
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    let back = fledge_image(&p, &["import", "oci-layout:out/exported.tar"]);
    assert_success(&back);
    assert_eq!(String::from_utf8_lossy(&back.stdout).trim(), digest);

    let blobs = || fs::read_dir(p.path("state/store/blobs/sha256")).unwrap().count();
    let before = blobs();
    assert_success(&run(p.fledge().arg("prune")));
    assert_eq!(blobs(), before, "both names still use every blob");
    assert_success(&fledge_image(&p, &["rm", "oci-layout:layout:v1", "oci-layout:out/exported.tar"]));
    let pruned = run(p.fledge().arg("prune"));
    assert_success(&pruned);
    assert!(stderr(&pruned).contains("Removed"), "{}", stderr(&pruned));
    assert_eq!(blobs(), 0, "nothing references any blob any more");
}

#[test]
fn credentials_from_docker_config_open_a_protected_registry() {
    let registry = need!(registry::start_with_auth(Some(("fledge", "s3cret"))));
    let p = Project::new();
    let (layout, digest) = layout_with_image(&p);
    registry.push_as(&layout, "v1", "private/app", false, Some("fledge:s3cret"));
    let reference = format!("{}/private/app:v1", registry.host);

    let denied = fledge_image(&p, &["pull", &reference]);
    assert_eq!(denied.status.code(), Some(1));
    let err = stderr(&denied);
    assert!(err.contains("refused access to private/app (401)") && err.contains("docker login"), "{err}");

    let docker = p.path("docker");
    fs::create_dir(&docker).unwrap();
    let auth = base64_encode("fledge:s3cret");
    fs::write(docker.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host))
        .unwrap();
    let allowed = run(p.fledge().args(["image", "pull", &reference]).env("DOCKER_CONFIG", &docker));
    assert_success(&allowed);
    assert_eq!(String::from_utf8_lossy(&allowed.stdout).trim(), digest);
}

fn base64_encode(text: &str) -> String {
    let out = run(std::process::Command::new("sh").arg("-c").arg(format!("printf %s '{text}' | base64 -w0")));
    String::from_utf8(out.stdout).unwrap()
}

/// Adds to `layout` an image named `tag` made from the layout's first image with its
/// manifest and config changed by `edit` (the blobs stay the same).
fn relabel(layout: &std::path::Path, tag: &str, edit: impl Fn(&mut Value, &mut Value)) {
    let blob = |hex: &str| layout.join("blobs/sha256").join(hex.trim_start_matches("sha256:"));
    let put = |value: &Value| -> (String, usize) {
        let bytes = serde_json::to_vec(value).unwrap();
        let hex = oci::sha256(&bytes);
        std::fs::write(blob(&hex), &bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let first = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(blob(&first)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: Value = serde_json::from_slice(&std::fs::read(blob(&config_digest)).unwrap()).unwrap();
    edit(&mut manifest, &mut config);
    let (digest, size) = put(&config);
    manifest["config"]["digest"] = json!(digest);
    manifest["config"]["size"] = json!(size);
    let (digest, size) = put(&manifest);
    index["manifests"].as_array_mut().unwrap().push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest, "size": size, "annotations": {"org.opencontainers.image.ref.name": tag}}));
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A descriptor is checked even when the store already holds its blob: a second layout that
/// names the same layer with another size is refused, and nothing repeats the false size.
#[test]
fn a_descriptor_with_a_false_size_is_refused_when_the_blob_is_stored() {
    let p = Project::new();
    let (layout, _) = layout_with_image(&p);
    assert_success(&fledge_image(&p, &["import", "oci-layout:layout:v1"]));
    relabel(&layout, "lying", |manifest, _| {
        manifest["layers"][0]["size"] = json!(manifest["layers"][0]["size"].as_u64().unwrap() + 1);
    });
    let size = {
        let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let first = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(first)).unwrap()).unwrap();
        manifest["layers"][0]["size"].as_u64().unwrap()
    };
    let out = fledge_image(&p, &["import", "oci-layout:layout:lying"]);
    assert_eq!(out.status.code(), Some(1), "a false size was accepted: {}", stderr(&out));
    assert!(stderr(&out).contains(&format!("expected {}", size + 1)), "{}", stderr(&out));
}

/// A config whose diff_ids do not name the layers' uncompressed content, or name another
/// number of layers, is refused on import and on pull, whether the store holds the layers
/// already or not, and the image is not recorded.
#[test]
fn a_config_whose_diff_ids_do_not_match_the_layers_is_refused() {
    let mut registry = need!(registry::start());
    let p = Project::new();
    let (layout, _) = layout_with_image(&p);
    let wrong = format!("sha256:{}", "0".repeat(64));
    relabel(&layout, "swapped", |_, config| {
        let ids = config["rootfs"]["diff_ids"].as_array_mut().unwrap();
        ids.swap(0, 1);
    });
    relabel(&layout, "wrong", |_, config| config["rootfs"]["diff_ids"][0] = json!(wrong));
    relabel(&layout, "short", |_, config| {
        config["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    });
    let mut failures = Vec::new();
    let mut check = |p: &Project, what: &str, source: &str, expect: &str| {
        let out = fledge_image(p, &["import", source]);
        if out.status.code() != Some(1) || !stderr(&out).contains(expect) {
            failures.push(format!("{what}: exit {:?}, expected {expect:?} in: {}", out.status.code(), stderr(&out)));
        }
        let inspect = fledge_image(p, &["inspect", source]);
        if inspect.status.success() {
            failures.push(format!("{what}: the refused image was recorded"));
        }
    };
    // A fresh store, then one that holds the layers already (from the honest image).
    for stored in [false, true] {
        let p2 = Project::new();
        if stored {
            assert_success(&run(p2
                .fledge()
                .args(["image", "import"])
                .arg(format!("oci-layout:{}:v1", layout.display()))));
        }
        let source = |tag: &str| format!("oci-layout:{}:{tag}", layout.display());
        let when = if stored { "layers stored" } else { "fresh store" };
        check(&p2, &format!("swapped diff_ids, {when}"), &source("swapped"), "rootfs.diff_ids[0]");
        check(&p2, &format!("a wrong diff_id, {when}"), &source("wrong"), &wrong);
        check(&p2, &format!("one diff_id missing, {when}"), &source("short"), "rootfs.diff_ids lists");
    }
    // Pulled from a registry: the same checks on the way in.
    registry.push(&layout, "wrong", "fledge/wrong", false);
    let reference = format!("{}/fledge/wrong:wrong", registry.host);
    let out = run(p.fledge().args(["image", "pull", &reference]));
    if out.status.code() != Some(1) || !stderr(&out).contains(&wrong) {
        failures.push(format!("pull: exit {:?}: {}", out.status.code(), stderr(&out)));
    }
    registry.stop();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
