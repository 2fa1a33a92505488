//! A real registry for tests: Debian's `docker-registry` (the CNCF distribution server) on
//! 127.0.0.1, with its storage in a temporary directory; killed when dropped. Images are
//! pushed into it with `skopeo`. It also dies with the thread that started it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fledge_test_support::{Skipped, skip};

pub struct Registry {
    pub host: String,
    pub storage: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// A registry, or the test skipped when the registry binary is not installed.
pub fn start() -> Result<Registry, Skipped> {
    start_with_auth(None)
}

/// A registry that demands Docker token authentication from `tokens`' server.
pub fn start_with_tokens(tokens: &super::token_server::TokenServer) -> Result<Registry, Skipped> {
    start_with(|_| {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            tokens.realm,
            super::token_server::SERVICE,
            super::token_server::ISSUER,
            tokens.cert.display()
        )
    })
}

/// A registry that demands Basic authentication with `user:password` (an htpasswd file made
/// with `htpasswd -B`), when given.
pub fn start_with_auth(auth: Option<(&str, &str)>) -> Result<Registry, Skipped> {
    start_with(|dir| {
        let Some((user, password)) = auth else { return String::new() };
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("htpasswd is needed (apt install apache2-utils)");
        assert!(out.status.success());
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).unwrap();
        format!("auth:\n  htpasswd:\n    realm: fledge-test\n    path: {}\n", htpasswd.display())
    })
}

/// A registry whose configuration ends with what `auth` (given the registry's directory)
/// returns.
fn start_with(auth: impl FnOnce(&Path) -> String) -> Result<Registry, Skipped> {
    if Command::new("docker-registry").arg("--version").output().is_err() {
        return Err(skip("docker-registry is not installed (apt install docker-registry)"));
    }
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let storage = dir.path().join("data");
    let config = dir.path().join("config.yml");
    let mut yaml = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        storage.display()
    );
    yaml.push_str(&auth(dir.path()));
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = Command::new("docker-registry");
    cmd.arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null());
    // It dies with the thread that started it, even when no drop runs (a registry kept in a
    // static for a whole test binary is started from a thread that lives as long as it).
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let host = format!("127.0.0.1:{port}");
    let registry = Registry { host, storage, child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !registry.ready() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(registry)
}

impl Registry {
    fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.host) else {
            return false;
        };
        let _ = write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        ["HTTP/1.0 200", "HTTP/1.1 200", "HTTP/1.0 401", "HTTP/1.1 401"].iter().any(|s| reply.starts_with(s))
    }

    /// Pushes an OCI layout (`dir`, tag `tag`) to `repo:tag`; `all` pushes every platform.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, all: bool) {
        self.push_as(layout, tag, repo, all, None);
    }

    /// [`Registry::push`] with credentials.
    pub fn push_as(&self, layout: &Path, tag: &str, repo: &str, all: bool, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            cmd.arg(format!("--dest-creds={creds}"));
        }
        if all {
            cmd.arg("--all");
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{}/{repo}:{tag}", self.host));
        let out = cmd.output().expect("skopeo is needed to push test images (apt install skopeo)");
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The file holding blob `hex` in the registry's storage.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// Stops the registry (to prove later steps need no network).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
