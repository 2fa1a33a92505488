//! Captures what a real BuildKit builds from each parity case, as the fixtures
//! `tests/parity/fixtures/NAME.txt` that `tests/parity.rs` compares Fledge with.
//!
//! It drives `buildctl` against a running buildkitd (OCI worker): the case's context as the
//! local `context` and `dockerfile`, the BusyBox context as `--opt context:bb=local:bb`, the
//! case's target, build args and secrets, `--no-cache` (BuildKit's cache can answer for a
//! context whose modes changed) and `--output type=oci`. A case that must fail is checked to
//! fail with its fragment; a case whose outcome disagrees with its file gets no fixture and
//! the program exits 1, naming it.
//!
//! usage: cargo run -p fledge-parity --bin capture -- ADDR COMMIT [CASE...]
//!   ADDR: buildkitd's address (unix:///run/buildkit/buildkitd.sock), started with
//!   `--allow-insecure-entitlement security.insecure`; `buildctl` on PATH;
//!   COMMIT: the BuildKit commit buildkitd was built from (a build from source without
//!   release flags reports its version as v0.0.0+unknown);
//!   CASE: case names (default: every case). BUSYBOX=PATH picks the BusyBox (/bin/busybox).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use fledge_parity::{BuildOption, Case, fixture_path, image, outcome, suite_dir};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, commit, names @ ..] = args.as_slice() else {
        eprintln!("usage: capture ADDR COMMIT [CASE...]   (buildctl on PATH, a buildkitd at ADDR built from COMMIT)");
        std::process::exit(2);
    };
    match run(addr, commit, names) {
        Ok(0) => {}
        Ok(wrong) => {
            eprintln!("{wrong} case(s) did not build as their files say; no fixture written for them");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Captures the cases named (all when none); returns how many disagreed with their files.
fn run(addr: &str, commit: &str, names: &[String]) -> Result<usize> {
    let version = format!("{} at commit {commit}", daemon_version(addr)?);
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    let busybox_sha256 = fledge_parity::sha256_of(Path::new(&busybox))?;
    let mut cases = Case::read_all(&suite_dir().join("cases"))?;
    if !names.is_empty() {
        cases.retain(|c| names.contains(&c.name));
    }
    std::fs::create_dir_all(suite_dir().join("fixtures"))?;
    let mut wrong = 0;
    for case in &cases {
        let dir = tempfile::tempdir()?;
        let m = case.materialise(dir.path(), Path::new(&busybox))?;
        let built = build(addr, case, &m, &dir.path().join("image.tar"), &busybox_sha256)?;
        let first_error = built.as_ref().err().map(|m| error_line(m));
        let result = outcome(case, built);
        if result.starts_with("outcome ok") || result.starts_with("outcome fails: ") {
            let mut fixture = format!("# BuildKit {version}, captured by parity/src/bin/capture.rs\n");
            if let Some(line) = first_error {
                fixture.push_str(&format!("# BuildKit said: {line}\n"));
            }
            fixture.push_str(&result);
            std::fs::write(fixture_path(&case.name), fixture)?;
            eprintln!("{}: {}", case.name, result.lines().next().unwrap_or_default());
        } else {
            wrong += 1;
            eprintln!("{}: WRONG: {result}", case.name);
        }
    }
    Ok(wrong)
}

/// buildkitd's version line (`github.com/moby/buildkit v0.32.2 COMMIT`).
fn daemon_version(addr: &str) -> Result<String> {
    let out = Command::new("buildctl").args(["--addr", addr, "debug", "info"]).output().context("running buildctl")?;
    if !out.status.success() {
        bail!("buildctl debug info: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find_map(|l| l.strip_prefix("BuildKit:")).context("no BuildKit: line in buildctl debug info")?;
    Ok(line.trim().to_string())
}

/// Builds the case with buildctl: the image's description, or BuildKit's error output.
fn build(
    addr: &str,
    case: &Case,
    m: &fledge_parity::Materialised,
    image: &Path,
    busybox_sha256: &str,
) -> Result<Result<String, String>> {
    let mut cmd = Command::new("buildctl");
    cmd.args(["--addr", addr, "build", "--no-cache", "--progress", "plain", "--frontend", "dockerfile.v0"])
        .arg("--local")
        .arg(format!("context={}", m.context.display()))
        .arg("--local")
        .arg(format!("dockerfile={}", m.context.display()))
        .arg("--local")
        .arg(format!("bb={}", m.bb.display()))
        .args(["--opt", "context:bb=local:bb"])
        .arg("--output")
        .arg(format!("type=oci,dest={}", image.display()));
    for option in &case.options {
        match option {
            BuildOption::Target(stage) => cmd.args(["--opt", &format!("target={stage}")]),
            BuildOption::BuildArg(k, v) => cmd.args(["--opt", &format!("build-arg:{k}={v}")]),
            BuildOption::Secret(_) => &mut cmd,
            BuildOption::Allow(entitlement) => cmd.args(["--allow", entitlement]),
        };
    }
    for (id, path) in &m.secrets {
        cmd.arg("--secret").arg(format!("id={id},src={}", path.display()));
    }
    let out = cmd.output().context("running buildctl")?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(Ok(image::describe(image, busybox_sha256)?))
}

/// The line of buildctl's output that states the error.
fn error_line(output: &str) -> String {
    output.lines().rev().find(|l| l.starts_with("error:")).or(output.lines().last()).unwrap_or_default().to_string()
}
