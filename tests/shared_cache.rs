//! The embedded engine's build cache shared between hosts: `--cache-to` writes a build's cache
//! records and layers as an OCI artifact (to a real `docker-registry` on 127.0.0.1, with
//! Basic authentication, or to a local OCI layout), and `--cache-from` on another host (a
//! fresh state directory) finds its steps there instead of running them.
//!
//! The test with a RUN step needs `FLEDGE_TEST_KERNEL_STATE`, QEMU and vhost-device-vsock;
//! all need docker-registry. Each skips, saying why, without them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

const USER: &str = "ci";
const PASSWORD: &str = "cache-secret";

/// Gives project `p` Docker credentials for `registry`.
fn log_in(p: &Project, registry: &str, password: &str) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    p.write("home/.docker/config.json", &format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#));
}

/// The steps of a `--progress rawjson` build and whether a VM booted; base images are
/// sources, resolved on every host (the cache holds the steps after them), so left out.
fn steps(out: &Output) -> (Vec<(String, bool)>, bool) {
    let (mut steps, booted) = rawjson_steps(out);
    steps.retain(|(name, _)| !name.contains("] FROM "));
    (steps, booted)
}

fn cached(steps: &[(String, bool)], needle: &str) -> Option<bool> {
    steps.iter().find(|(name, _)| name.contains(needle)).map(|(_, cached)| *cached)
}

/// A host: a project with its own state and cache directories, building `dockerfile`.
fn host(dockerfile: &str) -> Project {
    let p = Project::new();
    p.write("Dockerfile", dockerfile);
    p.write("hello.txt", "hello from the context\n");
    p.write("other.txt", "another file\n");
    p
}

#[test]
fn a_build_on_one_host_is_cached_on_another_through_a_registry() {
    let kernel = need!(built_vmlinux());
    let images = need!(registry::start());
    let cache = need!(registry::start_with_auth(Some((USER, PASSWORD))));
    let base = layered_test_image(&images, &Project::new(), "fledge/cache-base");
    let dockerfile = format!(
        "FROM {base}\nRUN echo built > /built.txt\nCOPY hello.txt /\nRUN /bin/busybox cat /hello.txt /built.txt > /both.txt\n"
    );
    let reference = format!("{}/cache/app:main", cache.host);
    let fledge = |p: &Project, args: &[&str]| {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_KERNEL_VMLINUX", &kernel).env("FLEDGE_ACCEL", "tcg").env("FLEDGE_AGENT", agent_binary());
        run(cmd.args(["build", "Dockerfile", "-o", "app.squashfs", "--progress", "rawjson"]).args(args))
    };

    let first = host(&dockerfile);
    log_in(&first, &cache.host, PASSWORD);
    let (made, booted) = steps(&fledge(&first, &["--cache-to", &format!("type=registry,ref={reference}")]));
    assert!(booted && made.iter().all(|(_, cached)| !cached), "{made:?}");
    // The artifact carries the three layers the build made, not the base image's.
    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("--creds={USER}:{PASSWORD}")])
        .arg(format!("docker://{reference}")));
    assert_success(&inspect);
    let manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(manifest["artifactType"], "application/vnd.fledge.build-cache.v1");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3, "{manifest}");
    // Compressed (zstd by default), each naming the plain layer it carries.
    for layer in manifest["layers"].as_array().unwrap() {
        assert!(layer["mediaType"].as_str().unwrap().ends_with("tar+zstd"), "{layer}");
        assert!(layer["annotations"]["dev.fledge.cache.layer"].as_str().unwrap().starts_with("sha256:"), "{layer}");
    }

    // Another host, with nothing in its store: every step comes from the registry's cache,
    // no VM boots, and the artifact is the same, byte for byte.
    let second = host(&dockerfile);
    log_in(&second, &cache.host, PASSWORD);
    let from = format!("type=registry,ref={reference}");
    let out = fledge(&second, &["--cache-from", &from]);
    let (found, booted) = steps(&out);
    assert!(!booted && found.len() == 3 && found.iter().all(|(_, cached)| *cached), "{found:?}{}", stderr(&out));
    let artifact = |p: &Project| std::fs::read(p.path("app.squashfs")).unwrap();
    assert_eq!(artifact(&first), artifact(&second), "the same artifact on both hosts");

    // A changed context file runs its COPY and what follows; the first RUN is still found.
    let third = host(&dockerfile);
    log_in(&third, &cache.host, PASSWORD);
    third.write("hello.txt", "hello from another context\n");
    let (mixed, _) = steps(&fledge(&third, &["--cache-from", &from]));
    assert_eq!(cached(&mixed, "RUN echo built"), Some(true), "{mixed:?}");
    assert_eq!(cached(&mixed, "COPY hello.txt"), Some(false), "{mixed:?}");
    assert_eq!(cached(&mixed, "RUN /bin/busybox cat"), Some(false), "{mixed:?}");

    // The registry's copies of the layers go bad: every import fails verification, so each
    // step runs instead (a VM is leased after all), and the artifact is still the same.
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = &layer["digest"].as_str().unwrap()[7..];
        let size = layer["size"].as_u64().unwrap() as usize;
        std::fs::write(cache.blob_file(hex), vec![0u8; size]).unwrap();
    }
    let fourth = host(&dockerfile);
    log_in(&fourth, &cache.host, PASSWORD);
    let out = fledge(&fourth, &["--cache-from", &from]);
    let (ran, booted) = steps(&out);
    assert!(booted && ran.len() == 3 && ran.iter().all(|(_, cached)| !cached), "{ran:?}");
    assert!(stderr(&out).contains("not used"), "{}", stderr(&out));
    assert_eq!(artifact(&first), artifact(&fourth), "the same artifact, built");
}

/// A two-stage build of host steps only (no VM): stage `parts` feeds the final stage.
const TWO_STAGES: &str = "FROM scratch AS parts\nCOPY other.txt /other.txt\nFROM scratch\nCOPY --from=parts /other.txt /copied.txt\nCOPY hello.txt /hello.txt\n";

fn build(p: &Project, args: &[&str]) -> Output {
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_AGENT", agent_binary());
    run(cmd.args(["build", "Dockerfile", "-o", "app.squashfs", "--progress", "rawjson"]).args(args))
}

fn blobs(layout: &Path) -> usize {
    std::fs::read_dir(layout.join("blobs/sha256")).unwrap().count()
}

#[test]
fn a_local_layout_carries_the_cache_min_or_max() {
    let first = host(TWO_STAGES);
    let dir = first.path("cache-min");
    let dest = |mode: &str, dir: &Path| format!("type=local,dest={},mode={mode}", dir.display());
    let (made, _) = steps(&build(&first, &["--cache-to", &dest("min", &dir)]));
    assert!(made.iter().all(|(_, cached)| !cached), "{made:?}");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["artifactType"], "application/vnd.fledge.build-cache.v1");

    // mode=min: the final stage's records only; the `parts` stage runs again elsewhere.
    let src = |dir: &Path| format!("type=local,src={}", dir.display());
    let second = host(TWO_STAGES);
    let (found, _) = steps(&build(&second, &["--cache-from", &src(&dir)]));
    assert_eq!(cached(&found, "COPY other.txt"), Some(false), "{found:?}");
    assert_eq!(cached(&found, "COPY --from=parts"), Some(true), "{found:?}");
    assert_eq!(cached(&found, "COPY hello.txt"), Some(true), "{found:?}");

    // mode=max: every step's.
    let max = first.path("cache-max");
    assert_success(&build(&first, &["--cache-to", &dest("max", &max)]));
    let third = host(TWO_STAGES);
    let (all, _) = steps(&build(&third, &["--cache-from", &src(&max)]));
    assert!(all.len() == 3 && all.iter().all(|(_, cached)| *cached), "{all:?}");

    // Exporting again after a change replaces the cache: the old layers go, the directory
    // holds the manifest, the records and the layers of the new build.
    first.write("hello.txt", "changed\n");
    assert_success(&build(&first, &["--cache-to", &dest("min", &dir)]));
    assert_eq!(blobs(&dir), 2 + 2, "manifest, records and the final stage's two layers");

    // A cache whose layer was tampered with is not used for that step: it runs instead,
    // with a warning, and the build still succeeds with the right content.
    let blob = |digest: &serde_json::Value| max.join("blobs/sha256").join(&digest.as_str().unwrap()[7..]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(max.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&index["manifests"][0]["digest"])).unwrap()).unwrap();
    std::fs::write(blob(&manifest["layers"][0]["digest"]), vec![0u8; 2048]).unwrap();
    let fourth = host(TWO_STAGES);
    let out = build(&fourth, &["--cache-from", &src(&max)]);
    let (some, _) = steps(&out);
    assert!(some.iter().any(|(_, cached)| !cached), "{some:?}");
    assert!(stderr(&out).contains("not used"), "{}", stderr(&out));
    let listing = run(Command::new("unsquashfs").arg("-l").arg(fourth.path("app.squashfs")));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("/copied.txt") && listing.contains("/hello.txt"), "{listing}");
}

#[test]
fn cache_flags_fail_clearly_and_early() {
    let p = host(TWO_STAGES);
    let refused = |args: &[&str], needle: &str| {
        let out = build(&p, args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{needle:?} in {}", stderr(&out));
        assert!(out.stdout.is_empty(), "refused before any step: {}", String::from_utf8_lossy(&out.stdout));
        assert!(!p.path("app.squashfs").exists(), "no artifact");
    };
    refused(&["--cache-to", "type=gha"], "FLEDGE_BUILDKIT_MODE=daemon");
    refused(&["--cache-to", "type=local,dest=x,mode=most"], "mode=most: expected min or max");
    refused(&["--cache-to", "type=registry"], "type=registry needs ref=");
    refused(&["--cache-to", "type=local,dest=x,compression=estargz"], "compression=estargz: expected zstd");
    refused(&["--cache-from", "type=local"], "type=local needs src=DIR");
    // A layout holding an image is not a cache directory: exporting there would replace it.
    let image = common::oci::add_image(&p.path("images"), "amd64", &[], serde_json::json!({}));
    common::oci::finish_layout(&p.path("images"), "v1", vec![image]);
    let dest = format!("type=local,dest={}", p.path("images").display());
    refused(&["--cache-to", &dest], "holding other images: give type=local,dest= a directory of its own");
    refused(
        &[
            "--cache-to",
            "type=registry,ref=127.0.0.1:1/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
        "written and read by tag",
    );

    // A cache that cannot be read is a warning: the build runs its steps.
    let out = build(&p, &["--cache-from", "type=registry,ref=127.0.0.1:9/nothing:here"]);
    let (ran, _) = steps(&out);
    assert!(ran.iter().all(|(_, cached)| !cached), "{ran:?}");
    assert!(stderr(&out).contains("warning") && stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[test]
fn a_registry_that_refuses_the_push_fails_the_build_without_an_artifact() {
    let cache = need!(registry::start_with_auth(Some((USER, PASSWORD))));
    let p = host(TWO_STAGES);
    log_in(&p, &cache.host, "wrong-password");
    let to = format!("type=registry,ref={}/cache/app:main", cache.host);
    let out = build(&p, &["--cache-to", &to]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused access") && stderr(&out).contains("docker login"), "{}", stderr(&out));
    assert!(!p.path("app.squashfs").exists(), "no artifact");
    // With ignore-error=true it is a warning, as in BuildKit.
    let out = build(&p, &["--cache-to", &format!("{to},ignore-error=true")]);
    assert_success(&out);
    assert!(stderr(&out).contains("not written"), "{}", stderr(&out));

    // With the right password the cache lands, and reads back on another host.
    log_in(&p, &cache.host, PASSWORD);
    assert_success(&build(&p, &["--cache-to", &format!("{to},mode=max")]));
    let other = host(TWO_STAGES);
    log_in(&other, &cache.host, PASSWORD);
    let (found, _) = steps(&build(&other, &["--cache-from", &to]));
    assert!(found.iter().all(|(_, cached)| *cached), "{found:?}");
}

/// Docker token authentication, as Docker Hub and most registries do it: the export needs a
/// token for push after the pulls' token, the import one for pull; a wrong password is
/// refused by the token server.
#[test]
fn a_token_registry_grants_the_push_its_own_scope() {
    let tokens = token_server::start(USER, PASSWORD);
    let cache = need!(registry::start_with_tokens(&tokens));
    let to = format!("type=registry,ref={}/cache/app:main,mode=max", cache.host);
    let p = host(TWO_STAGES);
    log_in(&p, &cache.host, PASSWORD);
    assert_success(&build(&p, &["--cache-to", &to]));
    let scopes = tokens.scopes.lock().unwrap().clone();
    assert!(scopes.iter().any(|s| s == "repository:cache/app:pull"), "{scopes:?}");
    // The registry's challenge names the actions in either order (blob upload or manifest).
    let push = ["repository:cache/app:pull,push", "repository:cache/app:push,pull"];
    assert!(scopes.iter().any(|s| push.contains(&s.as_str())), "{scopes:?}");

    let other = host(TWO_STAGES);
    log_in(&other, &cache.host, PASSWORD);
    let (found, _) = steps(&build(&other, &["--cache-from", &to.replace(",mode=max", "")]));
    assert!(found.len() == 3 && found.iter().all(|(_, cached)| *cached), "{found:?}");

    let refused = host(TWO_STAGES);
    log_in(&refused, &cache.host, "wrong-password");
    let out = build(&refused, &["--cache-to", &to]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused access"), "{}", stderr(&out));
    assert!(!refused.path("app.squashfs").exists(), "no artifact");
}
