//! The BuildKit parity suite (`parity/`): every case of `tests/parity/cases` built by
//! Fledge's embedded engine (RUN steps in a QEMU build VM) and compared, layer by layer and
//! in its final tree, config and history, with what BuildKit built from it
//! (`tests/parity/fixtures`, captured by `parity/src/bin/capture.rs`).
//!
//! A case may differ only if `tests/parity/known-differences.txt` lists it with the reason;
//! a listed case that now agrees fails the test too, so the list only shrinks.
//!
//! The same comparison in daemon mode (`FLEDGE_PARITY_BUILDKIT_ADDR` naming a buildkitd of
//! the fixtures' commit) checks that Fledge hands BuildKit the build and brings its image back
//! unchanged.
//!
//! Needs `FLEDGE_TEST_KERNEL_STATE`, QEMU and vhost-device-vsock; skips, saying why,
//! without them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use fledge_parity::{BuildOption, Case, Materialised, fixture_path, image, outcome, suite_dir};

/// The cases `known-differences.txt` lists, with their reasons.
fn known_differences() -> BTreeMap<String, String> {
    let path = suite_dir().join("known-differences.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, reason) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            assert!(!reason.trim().is_empty(), "{}: {name} has no reason", path.display());
            (name.to_string(), reason.trim().to_string())
        })
        .collect()
}

/// The suite is whole: every feature has a case, every case names only listed features and
/// has BuildKit's fixture, every fixture and known difference names a case.
#[test]
fn every_feature_has_a_case_and_every_case_a_fixture() {
    let cases = Case::read_all(&suite_dir().join("cases")).unwrap();
    let features: BTreeSet<String> = fledge_parity::features().unwrap().into_iter().map(|(id, _)| id).collect();
    let mut problems = Vec::new();
    let covered: BTreeSet<&String> = cases.iter().flat_map(|c| &c.features).collect();
    for feature in &features {
        if !covered.contains(feature) {
            problems.push(format!("feature {feature} has no case"));
        }
    }
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for case in &cases {
        for feature in case.features.iter().filter(|f| !features.contains(*f)) {
            problems.push(format!("{}: feature {feature} is not in features.toml", case.name));
        }
        if !fixture_path(&case.name).exists() {
            problems.push(format!("{}: no fixture (capture it: cargo run -p fledge-parity --bin capture)", case.name));
        }
    }
    for entry in std::fs::read_dir(suite_dir().join("fixtures")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !names.contains(stem.as_str()) {
            problems.push(format!("fixture {} has no case", path.display()));
        }
    }
    for name in known_differences().keys() {
        if !names.contains(name.as_str()) {
            problems.push(format!("known-differences.txt names {name}, which is not a case"));
        }
    }
    assert!(cases.len() >= 150, "{} cases; the suite needs at least 150", cases.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The engine a case is built with.
enum Engine<'a> {
    /// RUN steps in a build VM with this kernel.
    Embedded(&'a Path),
    /// A buildkitd at this address (`FLEDGE_BUILDKIT_MODE=daemon`).
    Daemon(&'a str),
}

/// Builds `case` with Fledge: the image's description, or the error output.
fn build(p: &Project, engine: &Engine, m: &Materialised, case: &Case, busybox_sha256: &str) -> Result<String, String> {
    let out_dir = m.context.parent().unwrap();
    let image = out_dir.join("image.tar");
    let mut cmd = p.fledge();
    match engine {
        Engine::Embedded(kernel) => cmd.env("FLEDGE_KERNEL_VMLINUX", kernel).env("FLEDGE_ACCEL", "tcg"),
        Engine::Daemon(addr) => cmd.env("FLEDGE_BUILDKIT_MODE", "daemon").env("FLEDGE_BUILDKIT_ADDR", addr),
    };
    cmd.env("FLEDGE_AGENT", agent_binary())
        .arg("build")
        .arg(m.context.join("Dockerfile"))
        .arg("--context")
        .arg(&m.context)
        .arg("--build-context")
        .arg(format!("bb={}", m.bb.display()))
        .arg("-o")
        .arg(out_dir.join("artifact.squashfs"))
        .arg("--export-oci")
        .arg(&image)
        .args(["--progress", "plain"]);
    for option in &case.options {
        match option {
            BuildOption::Target(stage) => cmd.args(["--target", stage]),
            BuildOption::BuildArg(k, v) => cmd.args(["--build-arg", &format!("{k}={v}")]),
            BuildOption::Secret(_) => &mut cmd,
            BuildOption::Allow(entitlement) => cmd.args(["--allow", entitlement]),
        };
    }
    for (id, path) in &m.secrets {
        cmd.arg("--secret").arg(format!("id={id},src={}", path.display()));
    }
    let out = run(&mut cmd);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    image::describe(&image, busybox_sha256).map_err(|e| format!("reading the exported image: {e:#}"))
}

#[test]
fn every_case_builds_as_buildkit_built_it() {
    let kernel = need!(built_vmlinux());
    compare_every_case(&Engine::Embedded(&kernel), &known_differences());
}

/// Daemon mode is BuildKit itself: every case, known differences included, must give what
/// BuildKit gave. Needs a buildkitd of the fixtures' commit, started with
/// `--allow-insecure-entitlement security.insecure`, at `FLEDGE_PARITY_BUILDKIT_ADDR`.
#[test]
fn every_case_builds_in_daemon_mode_as_buildkit_built_it() {
    let addr = need!(
        std::env::var("FLEDGE_PARITY_BUILDKIT_ADDR")
            .map_err(|_| skip("no buildkitd address (set FLEDGE_PARITY_BUILDKIT_ADDR)"))
    );
    compare_every_case(&Engine::Daemon(&addr), &BTreeMap::new());
}

/// Builds every case with `engine` and compares it with BuildKit's fixture; `known` lists the
/// cases allowed to differ.
fn compare_every_case(engine: &Engine, known: &BTreeMap<String, String>) {
    let busybox_sha256 = fledge_parity::sha256_of(Path::new(busybox())).unwrap();
    let mut cases = Case::read_all(&suite_dir().join("cases")).unwrap();
    // While working on a class of cases: FLEDGE_PARITY_CASES=PREFIX[,PREFIX...] builds only
    // the cases named so (and says so); never set in CI.
    if let Ok(prefixes) = std::env::var("FLEDGE_PARITY_CASES") {
        assert!(!fledge_test_support::ci(), "FLEDGE_PARITY_CASES is for local work; CI builds every case");
        cases.retain(|c| prefixes.split(',').any(|p| c.name.starts_with(p)));
        eprintln!("only the cases starting with {prefixes}: {}", cases.len());
    }
    // One project: one store, so what the cases share (the BusyBox layer) is built once.
    let p = Project::new();
    let (mut failures, mut differing, mut compared) = (Vec::new(), 0, 0);
    for case in &cases {
        let Ok(expected) = std::fs::read_to_string(fixture_path(&case.name)) else {
            continue; // every_feature_has_a_case_and_every_case_a_fixture names it
        };
        compared += 1;
        let dir = tempfile::tempdir_in(p.path("")).unwrap();
        let m = case.materialise(dir.path(), Path::new(busybox())).unwrap();
        let actual = outcome(case, build(&p, engine, &m, case, &busybox_sha256));
        let difference = image::difference(&expected, &actual);
        match (difference.is_empty(), known.get(&case.name)) {
            (true, None) => {}
            (true, Some(_)) => {
                failures.push(format!("{}: now agrees with BuildKit; remove it from known-differences.txt", case.name))
            }
            (false, Some(reason)) => {
                differing += 1;
                eprintln!("{}: a known difference ({reason}):\n{difference}", case.name);
            }
            (false, None) => failures.push(format!("{}: differs from BuildKit's build:\n{difference}", case.name)),
        }
    }
    let agree = compared - differing - failures.len();
    eprintln!("{compared} cases compared: {agree} agree, {differing} known differences, {} failures", failures.len());
    assert!(compared > 0, "no case has a fixture");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
