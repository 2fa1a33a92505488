//! Shared test fixtures: a temporary project, the real `fledge` binary, a static agent
//! program, a loopback HTTP server, and GNU cpio to read archives back.
#![allow(dead_code)] // each test binary uses a different subset

pub mod http;
pub mod oci;
pub mod registry;
pub mod throttle;
pub mod token_server;

#[allow(unused_imports)] // each test binary uses a different subset
pub use fledge_test_support::{Skipped, need, skip, skip_unless};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const FLEDGE: &str = env!("CARGO_BIN_EXE_fledge");

/// Debian's busybox-static; `make test` installs it.
pub fn busybox() -> &'static str {
    let path = "/bin/busybox";
    assert!(Path::new(path).exists(), "{path} is missing: install busybox-static (make test does this)");
    path
}

/// A small static program standing in for the kestrel agent (built once per test binary).
pub fn agent_binary() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent");
            fs::create_dir_all(&dir).unwrap();
            let src = dir.join("agent.c");
            let out = dir.join(format!("agent-{}", std::process::id()));
            fs::write(&src, "#include <stdio.h>\nint main(void){puts(\"test agent\");return 0;}\n").unwrap();
            let status = Command::new("gcc")
                .args(["-static", "-Os", "-s", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("gcc is needed to build the test agent");
            assert!(status.success(), "gcc -static failed (install libc6-dev)");
            out
        })
        .clone()
}

/// A temporary project directory that anyone can read (for the non-root test).
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("fledge-test-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        Self { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    pub fn write_mode(&self, rel: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A `fledge` command run in the project directory with an isolated cache and home.
    pub fn fledge(&self) -> Command {
        let mut cmd = Command::new(FLEDGE);
        cmd.current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("FLEDGE_CACHE_DIR", self.path("cache"))
            .env("FLEDGE_STATE_DIR", self.path("state"))
            .env_remove("FLEDGE_AGENT")
            .env_remove("FLEDGE_AGENT_BASE_URL")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_DATA_HOME");
        cmd
    }

    /// Names in the project directory, sorted (to check that nothing was left behind).
    pub fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Runs a command and returns its output; panics with both streams if it fails to start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// Runs `cmd` with `input` on stdin (fed from a thread, so large outputs cannot deadlock).
pub fn pipe_through(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    out
}

/// `cpio -itv` of an uncompressed archive, as lines.
pub fn cpio_listing(archive: &[u8]) -> Vec<String> {
    let out = pipe_through(Command::new("cpio").args(["-itv", "--quiet"]), archive);
    assert!(out.status.success(), "cpio failed: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// The content of one archive member, extracted by GNU cpio.
pub fn cpio_member(archive: &[u8], name: &str) -> Vec<u8> {
    let out = pipe_through(Command::new("cpio").args(["-i", "--quiet", "--to-stdout", name]), archive);
    assert!(out.status.success(), "cpio failed: {}", stderr(&out));
    out.stdout
}

/// Decompresses with the system tool for the format (`gzip`, `zstd`, `lz4`), checking that
/// the tool itself accepts the stream.
pub fn decompress(tool: &str, path: &Path) -> Vec<u8> {
    let out =
        Command::new(tool).args(["-d", "-c"]).arg(path).output().unwrap_or_else(|e| panic!("{tool} is needed: {e}"));
    assert!(out.status.success(), "{tool} -d failed: {}", stderr(&out));
    out.stdout
}

/// The entry name of a `cpio -itv` line (the word before ` -> ` for symlinks).
pub fn entry_name(line: &str) -> &str {
    let before_arrow = line.split(" -> ").next().unwrap_or(line);
    before_arrow.split_whitespace().last().unwrap_or("")
}

/// The `cpio -itv` line for `name`.
pub fn entry<'a>(listing: &'a [String], name: &str) -> Option<&'a String> {
    listing.iter().find(|l| entry_name(l) == name)
}

/// A two-layer image exercising whiteouts, an opaque directory, a hard link, a symlink, an
/// owner and an xattr, pushed to `registry` as `repo:v1`; returns its reference.
pub fn layered_test_image(registry: &registry::Registry, p: &Project, repo: &str) -> String {
    let bb = fs::read(busybox()).unwrap();
    let lower = oci::tar_layer(&[
        oci::Entry::Dir("bin", 0o755),
        oci::Entry::File("bin/busybox", 0o755, &bb),
        oci::Entry::Symlink("bin/sh", "busybox"),
        oci::Entry::HardLink("bin/ls", "bin/busybox"),
        oci::Entry::Dir("etc", 0o755),
        oci::Entry::File("etc/hostname", 0o644, b"lower\n"),
        oci::Entry::Dir("data", 0o755),
        oci::Entry::File("data/a", 0o644, b"a"),
        oci::Entry::File("data/b", 0o644, b"b"),
        oci::Entry::Dir("dev", 0o755),
        oci::Entry::Special("dev/null", tar::EntryType::Char, 1, 3),
        oci::Entry::Special("dev/initctl", tar::EntryType::Fifo, 0, 0),
        oci::Entry::Dir("home", 0o755),
        oci::Entry::Dir("home/user", 0o700),
        oci::Entry::Owned {
            path: "home/user/notes",
            mode: 0o600,
            data: b"private\n",
            uid: 1000,
            gid: 1000,
            xattrs: &[("user.fledge", b"yes")],
        },
    ]);
    let upper = oci::tar_layer(&[
        oci::Entry::File("etc/.wh.hostname", 0o644, b""),
        oci::Entry::File("data/.wh..wh..opq", 0o644, b""),
        oci::Entry::File("data/c", 0o644, b"c"),
        oci::Entry::File("etc/motd", 0o644, b"from the upper layer\n"),
    ]);
    let layout = p.path("layout");
    let manifest = oci::add_image(
        &layout,
        "amd64",
        &[lower, upper],
        serde_json::json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "cat /etc/motd"], "Env": ["GREETING=hi"], "WorkingDir": "/home/user"}),
    );
    oci::finish_layout(&layout, "v1", vec![manifest]);
    registry.push(&layout, "v1", repo, false);
    format!("{}/{repo}:v1", registry.host)
}

/// The guest kernel state `make test` builds (`FLEDGE_TEST_KERNEL_STATE`), when it and
/// vhost-device-vsock are there for tests that boot build VMs; else the test is skipped.
pub fn kernel_state() -> Result<PathBuf, Skipped> {
    let state = built_kernel_state()?;
    if Command::new("vhost-device-vsock").arg("--help").output().is_err() {
        return Err(skip("vhost-device-vsock is not installed (cargo install vhost-device-vsock)"));
    }
    Ok(state)
}

/// The `vmlinux` in [`kernel_state`], for tests that boot build VMs and what they built.
pub fn built_vmlinux() -> Result<PathBuf, Skipped> {
    kernel_state().map(|state| state.join("kernel/vmlinux"))
}

/// The guest kernel state `make test` builds (`FLEDGE_TEST_KERNEL_STATE`); else the test is
/// skipped.
pub fn built_kernel_state() -> Result<PathBuf, Skipped> {
    env_path("FLEDGE_TEST_KERNEL_STATE", "make test builds the kernel and sets it")
}

/// The path the environment variable `var` names; else the test is skipped, saying
/// `<var> is not set (<how>)`.
pub fn env_path(var: &str, how: &str) -> Result<PathBuf, Skipped> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(skip(format!("{var} is not set ({how})"))),
    }
}

/// The steps of a `--progress rawjson` build, in the order they completed, each with whether
/// it was cached (internal ones aside), and whether a build VM booted.
pub fn rawjson_steps(out: &Output) -> (Vec<(String, bool)>, bool) {
    assert_success(out);
    // Every line is a status; completed vertexes say whether they were cached.
    let mut steps: Vec<(String, bool)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let status: serde_json::Value = serde_json::from_str(l).unwrap();
            let vertex = status["vertexes"].get(0).filter(|v| v.get("completed").is_some())?;
            Some((vertex["name"].as_str().unwrap().to_string(), vertex["cached"].as_bool().unwrap()))
        })
        .collect();
    let booted = steps.iter().any(|(name, _)| name.starts_with("[internal] boot"));
    steps.retain(|(name, _)| !name.starts_with("[internal]"));
    (steps, booted)
}
