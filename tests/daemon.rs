//! Daemon mode (`FLEDGE_BUILDKIT_MODE=daemon`) against a real buildkitd, when one is available
//! (`buildkitd` on PATH, or `FLEDGE_TEST_BUILDKITD`), started here as root on a temporary
//! socket with the OCI worker and Debian's runc. The same multi-stage Dockerfile (a local
//! context, build args, a secret, --target, and a base image from a local OCI layout given as
//! a named build context) builds in daemon mode and in embedded mode into rootfs images with
//! the same files. Clear errors for an unreachable daemon or a bad
//! address are checked without one.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A buildkitd of the test's own; stopped when dropped.
struct Buildkitd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Buildkitd {
    fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("buildkitd.sock").display())
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn buildkitd(registry: &str) -> Result<Buildkitd, Skipped> {
    buildkitd_with(registry, &[])
}

/// A buildkitd listening on its socket and on the addresses in `extra` (with their flags).
fn buildkitd_with(registry: &str, extra: &[String]) -> Result<Buildkitd, Skipped> {
    let binary = std::env::var_os("FLEDGE_TEST_BUILDKITD").map(PathBuf::from).or_else(|| {
        let out = Command::new("sh").args(["-c", "command -v buildkitd"]).output().ok()?;
        out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    let Some(binary) = binary else {
        return Err(skip("no buildkitd (put one on PATH or set FLEDGE_TEST_BUILDKITD)"));
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(skip("buildkitd's OCI worker needs root"));
    }
    if Command::new("runc").arg("--version").output().is_err() {
        return Err(skip("buildkitd's OCI worker needs runc (apt install runc)"));
    }
    let dir = tempfile::Builder::new().prefix("fledge-buildkitd-").tempdir().unwrap();
    std::fs::write(
        dir.path().join("buildkitd.toml"),
        format!(
            "[worker.oci]\nenabled = true\nsnapshotter = \"native\"\n[worker.containerd]\nenabled = false\n[registry.\"{registry}\"]\nhttp = true\ninsecure = true\n"
        ),
    )
    .unwrap();
    let socket = dir.path().join("buildkitd.sock");
    let child = Command::new(binary)
        .arg("--addr")
        .arg(format!("unix://{}", socket.display()))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--config")
        .arg(dir.path().join("buildkitd.toml"))
        .args(["--allow-insecure-entitlement", "security.insecure", "--allow-insecure-entitlement", "network.host"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("buildkitd.log")).unwrap())
        .spawn()
        .unwrap();
    let daemon = Buildkitd { child, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "buildkitd did not start: {}",
            std::fs::read_to_string(daemon.dir.path().join("buildkitd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(daemon)
}

/// `unsquashfs -lln` of an image: one "mode owner size path" line per entry, sorted; a
/// directory's size (which squashfs derives from its entries) is left out. BuildKit's runc
/// executor leaves empty `/dev`, `/proc` and `/sys` mount points in every RUN step's layer;
/// those, when empty, are left out too (the one known difference between the engines,
/// documented).
fn listing(image: &std::path::Path) -> Vec<String> {
    let out = run(Command::new("unsquashfs").arg("-lln").arg(image));
    assert_success(&out);
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // mode, uid/gid, size (or device numbers), then date, time, path
            let path = f.get(5)?.strip_prefix("squashfs-root")?;
            let is_dir = f[0].starts_with('d');
            if is_dir && ["/dev", "/proc", "/sys"].contains(&path) && f[2] == "3" {
                return None;
            }
            let size = if is_dir { "-" } else { f[2] };
            Some(format!("{} {} {size} {path}", f[0], f[1]))
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn daemon_and_embedded_builds_give_the_same_files() {
    let registry = need!(registry::start());
    let daemon = need!(buildkitd(&registry.host));
    let state = need!(kernel_state());
    // The base is a local OCI layout, given as a named build context: no registry pull.
    let builder = Project::new();
    layered_test_image(&registry, &builder, "fledge/daemon-base");
    let layout = format!("busybox=oci-layout:{}:v1", builder.path("layout").display());
    let p = Project::new();
    p.write(
        "app/Dockerfile",
        "FROM busybox AS base\n\
             RUN /bin/busybox --install -s /bin\n\
             FROM base AS build\n\
             ARG FLAVOUR=plain\n\
             WORKDIR /src\n\
             COPY src/ ./\n\
             RUN --mount=type=secret,id=token cat input.txt /run/secrets/token > /built.txt && echo \"$FLAVOUR\" >> /built.txt\n\
             FROM base AS final\n\
             COPY --from=build /built.txt /app/built.txt\n\
             COPY --chmod=0755 run.sh /app/\n\
             COPY --from=assets / /app/assets/\n\
             FROM final AS unused\n\
             RUN echo never > /never\n",
    );
    p.write("app/src/input.txt", "input\n");
    p.write("app/run.sh", "#!/bin/sh\necho run\n");
    p.write("token", "s3cret\n");
    // A local directory as a named context, with its own .dockerignore.
    p.write("assets/notes.txt", "notes\n");
    p.write("assets/draft.txt", "not for the image\n");
    p.write("assets/.dockerignore", "draft.txt\n");
    let assets = format!("assets={}", p.path("assets").display());
    let build = |mode: &str, output: &str| {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary())
            .env("FLEDGE_BUILDKIT_MODE", mode)
            .env("FLEDGE_BUILDKIT_ADDR", daemon.socket())
            .env("FLEDGE_KERNEL_VMLINUX", state.join("kernel/vmlinux"))
            .env("FLEDGE_ACCEL", "tcg")
            .env("FLEDGE_INSECURE_REGISTRIES", &registry.host)
            .args(["build", "app/Dockerfile", "--target", "final", "--build-arg", "FLAVOUR=spicy"])
            .args(["--secret", "id=token,src=token", "--progress", "plain", "-o", output])
            .args(["--build-context", &layout, "--build-context", &assets]);
        let out = run(&mut cmd);
        assert_success(&out);
        stderr(&out)
    };
    let daemon_log = build("daemon", "daemon.squashfs");
    assert!(
        daemon_log.contains("[build 4/4] RUN") || daemon_log.contains("RUN --mount=type=secret"),
        "live progress: {daemon_log}"
    );
    build("embedded", "embedded.squashfs");
    // The daemon's export went into the store without a name: `fledge image ls` lists only
    // the named context's image.
    let images = run(p.fledge().args(["image", "ls"]));
    let images = String::from_utf8_lossy(&images.stdout);
    assert_eq!(images.lines().count(), 2, "a header and the layout's image: {images}");
    let (from_daemon, embedded) = (listing(&p.path("daemon.squashfs")), listing(&p.path("embedded.squashfs")));
    assert_eq!(from_daemon, embedded, "the same files, modes, owners and sizes");
    for file in ["/app/built.txt", "/app/run.sh"] {
        let cat = |image: &str| run(Command::new("unsquashfs").arg("-cat").arg(p.path(image)).arg(file)).stdout;
        assert_eq!(cat("daemon.squashfs"), cat("embedded.squashfs"), "{file}");
    }
    let built = run(Command::new("unsquashfs").arg("-cat").arg(p.path("daemon.squashfs")).arg("/app/built.txt"));
    assert_eq!(String::from_utf8_lossy(&built.stdout), "input\ns3cret\nspicy\n");
    assert!(from_daemon.iter().any(|l| l.ends_with(" /app/assets/notes.txt")), "{from_daemon:?}");
    assert!(!from_daemon.iter().any(|l| l.contains("draft.txt")), "the context's .dockerignore holds: {from_daemon:?}");

    // --cache-to reaches the daemon: its cache lands in the registry.
    let cache = format!("{}/fledge/daemon-cache:1", registry.host);
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_AGENT", agent_binary())
        .env("FLEDGE_BUILDKIT_MODE", "daemon")
        .env("FLEDGE_BUILDKIT_ADDR", daemon.socket())
        .args([
            "build",
            "app/Dockerfile",
            "--target",
            "final",
            "--secret",
            "id=token,src=token",
            "-o",
            "cached.squashfs",
        ])
        .args(["--build-context", &layout, "--build-context", &assets])
        .arg("--cache-to")
        .arg(format!("type=registry,ref={cache},registry.insecure=true,mode=max"));
    assert_success(&run(&mut cmd));
    let inspect =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{cache}")));
    assert_success(&inspect);
}

#[test]
fn daemon_mode_errors_say_what_to_do() {
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch\nCOPY a /a\n");
    p.write("a", "a");
    let build_with = |address: &str, vars: &[(&str, &str)]| {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_BUILDKIT_MODE", "daemon").env("FLEDGE_BUILDKIT_ADDR", address).args([
            "build",
            "Dockerfile",
            "-o",
            "out.squashfs",
        ]);
        cmd.envs(vars.iter().copied());
        run(&mut cmd)
    };
    let build = |address: &str| build_with(address, &[]);
    let missing = p.path("no-such.sock");
    let out = build(&format!("unix://{}", missing.display()));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach buildkitd at unix://") && stderr(&out).contains("FLEDGE_BUILDKIT_ADDR"),
        "{}",
        stderr(&out)
    );
    let out = build("docker-container://buildkit");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("expected unix:///path/to/buildkitd.sock or tcp://host:port"), "{}", stderr(&out));
    let mut cmd = p.fledge();
    let out = run(cmd.env("FLEDGE_BUILDKIT_MODE", "remote").args(["build", "Dockerfile", "-o", "out.squashfs"]));
    assert!(stderr(&out).contains("FLEDGE_BUILDKIT_MODE=remote: expected embedded or daemon"), "{}", stderr(&out));
    let out = build_with("unix:///run/x.sock", &[("FLEDGE_BUILDKIT_TLS_CA", "/etc/ssl/ca.pem")]);
    assert!(stderr(&out).contains("TLS settings are for tcp:// addresses"), "{}", stderr(&out));
    let out = build_with("tcp://127.0.0.1:1", &[("FLEDGE_BUILDKIT_TLS_CERT", "/etc/ssl/cert.pem")]);
    assert!(stderr(&out).contains("/etc/ssl/cert.pem has no key: set FLEDGE_BUILDKIT_TLS_KEY"), "{}", stderr(&out));
    let out = build_with("tcp://127.0.0.1:1", &[("FLEDGE_BUILDKIT_TLS_DIR", "/nonexistent/tls")]);
    assert!(stderr(&out).contains("FLEDGE_BUILDKIT_TLS_DIR=/nonexistent/tls: not a directory"), "{}", stderr(&out));
    let out = build_with("tcp://127.0.0.1:1", &[("FLEDGE_BUILDKIT_TLS_CA", "/nonexistent/ca.pem")]);
    assert!(stderr(&out).contains("cannot read the CA certificate /nonexistent/ca.pem"), "{}", stderr(&out));
    let out = run(p.fledge().args(["build", "Dockerfile", "--cache-to", "type=gha", "-o", "out.squashfs"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("BuildKit's other cache backends work with FLEDGE_BUILDKIT_MODE=daemon"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path("out.squashfs").exists(), "no artifact");
}

/// A BusyBox image with every applet linked in /bin, the base the golden Dockerfiles' images
/// are mapped to.
fn busybox_image(registry: &registry::Registry, p: &Project) -> String {
    let bb = std::fs::read(busybox()).unwrap();
    let list = run(Command::new(busybox()).arg("--list"));
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().map(|a| format!("bin/{a}")).collect();
    let mut entries = vec![oci::Entry::Dir("bin", 0o755), oci::Entry::File("bin/busybox", 0o755, &bb)];
    entries.extend(applets.iter().filter(|a| *a != "bin/busybox").map(|a| oci::Entry::Symlink(a, "busybox")));
    entries.extend([oci::Entry::Dir("tmp", 0o1777), oci::Entry::Dir("etc", 0o755), oci::Entry::Dir("srv", 0o755)]);
    let layout = p.path("busybox-layout");
    let manifest = oci::add_image(
        &layout,
        "amd64",
        &[oci::tar_layer(&entries)],
        serde_json::json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}),
    );
    oci::finish_layout(&layout, "v1", vec![manifest]);
    registry.push(&layout, "v1", "fledge/golden-busybox", false);
    format!("{}/fledge/golden-busybox:v1", registry.host)
}

/// Every golden Dockerfile of the frontend (its base images mapped to a real BusyBox image in
/// the local registry): the definition `fledge debug llb --format pb` writes is accepted by a
/// real `buildctl build` on stdin, and where both engines build it, the results have the same
/// files. Runs when buildkitd and buildctl are available (`FLEDGE_TEST_BUILDCTL` or PATH).
#[test]
fn buildctl_accepts_fledges_definitions_and_builds_what_embedded_mode_builds() {
    let registry = need!(registry::start());
    let daemon = need!(buildkitd(&registry.host));
    let buildctl =
        std::env::var_os("FLEDGE_TEST_BUILDCTL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("buildctl"));
    skip_unless!(
        Command::new(&buildctl).arg("--version").output().is_ok(),
        "no buildctl (put one on PATH or set FLEDGE_TEST_BUILDCTL)"
    );
    let state = need!(kernel_state());
    let p = Project::new();
    let base = busybox_image(&registry, &p);
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("llb/tests/buildkit-golden");
    let fledge = || {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary())
            .env("FLEDGE_KERNEL_VMLINUX", state.join("kernel/vmlinux"))
            .env("FLEDGE_ACCEL", "tcg");
        cmd
    };
    let (mut compared, mut neither) = (Vec::new(), Vec::new());
    std::fs::create_dir_all(p.path("cases")).unwrap();
    let mut cases: Vec<_> =
        std::fs::read_dir(&golden).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let dir = p.path(&format!("cases/{name}"));
        assert_success(&run(Command::new("cp").arg("-r").arg(&case).arg(&dir)));
        let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
        if dockerfile.contains("example.com/") {
            neither.push(format!(
                "{name}: it needs example.com (a git or URL source, or an ONBUILD base only images.json has)"
            ));
            continue;
        }
        let mapped =
            dockerfile.replace("busybox:1.36", &base).replace("debian:12-slim", &base).replace("alpine:3.20", &base);
        std::fs::write(dir.join("Dockerfile"), mapped).unwrap();
        let mut llb = fledge();
        llb.args(["debug", "llb", "--format", "pb"]).arg(dir.join("Dockerfile"));
        if let Ok(target) = std::fs::read_to_string(dir.join("target")) {
            llb.args(["--target", target.trim()]);
        }
        for arg in std::fs::read_to_string(dir.join("build-args")).unwrap_or_default().lines() {
            llb.args(["--build-arg", arg]);
        }
        let def = run(&mut llb);
        if !def.status.success() {
            // A base named through ARGs is not mapped, and the machine has no Docker Hub.
            neither
                .push(format!("{name}: {}", stderr(&def).lines().find(|l| l.starts_with("error")).unwrap_or_default()));
            continue;
        }
        std::fs::write(dir.join("def.pb"), &def.stdout).unwrap();

        let mut ctl = Command::new(&buildctl);
        ctl.arg("--addr").arg(daemon.socket()).args(["build", "--progress", "plain"]);
        ctl.args(["--allow", "security.insecure", "--allow", "network.host"]);
        ctl.arg("--local")
            .arg(format!("context={}", dir.display()))
            .arg("--local")
            .arg(format!("dockerfile={}", dir.display()));
        ctl.arg("--output").arg(format!("type=oci,dest={}", dir.join("daemon.tar").display()));
        let by_daemon = pipe_through(&mut ctl, &def.stdout);
        let rejected = String::from_utf8_lossy(&by_daemon.stderr).into_owned();
        assert!(
            !rejected.contains("failed to parse") && !rejected.contains("invalid definition"),
            "{name}: buildctl rejected the definition: {rejected}"
        );
        let embedded = run(fledge()
            .arg("build")
            .arg("--llb")
            .arg(dir.join("def.pb"))
            .arg("--context")
            .arg(&dir)
            .arg("-o")
            .arg(dir.join("embedded.squashfs")));
        match (by_daemon.status.success(), embedded.status.success()) {
            (true, true) => {}
            (false, false) => {
                neither.push(format!(
                    "{name}: neither engine builds it here ({})",
                    stderr(&embedded).lines().last().unwrap_or_default()
                ));
                continue;
            }
            (daemon_ok, _) => panic!(
                "{name}: only {} built it:\n{rejected}\n{}",
                if daemon_ok { "buildkitd" } else { "the embedded engine" },
                stderr(&embedded)
            ),
        }
        p.write(
            &format!("cases/{name}/fledge.toml"),
            &format!(
                "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"oci-layout:{}\"\n",
                dir.join("daemon.tar").display()
            ),
        );
        let packed = run(fledge()
            .arg("build")
            .arg("-c")
            .arg(dir.join("fledge.toml"))
            .arg("-o")
            .arg(dir.join("daemon.squashfs")));
        assert_success(&packed);
        let (by_daemon, embedded) = (listing(&dir.join("daemon.squashfs")), listing(&dir.join("embedded.squashfs")));
        let only = |a: &[String], b: &[String]| a.iter().filter(|l| !b.contains(l)).cloned().collect::<Vec<_>>();
        assert!(
            by_daemon == embedded,
            "{name}: only from the daemon {:?}, only embedded {:?}",
            only(&by_daemon, &embedded),
            only(&embedded, &by_daemon)
        );
        compared.push(name);
    }
    eprintln!("compared: {compared:?}\nnot built by either engine: {neither:#?}");
    assert!(compared.len() >= 10, "most golden Dockerfiles build on both engines: {compared:?} {neither:#?}");
}

/// `openssl` with `args`, in `dir`.
fn openssl(dir: &std::path::Path, args: &str) {
    let out = run(Command::new("openssl").current_dir(dir).args(args.split_whitespace()));
    assert!(out.status.success(), "openssl {args}: {}", stderr(&out));
}

/// A CA in `dir` (`NAME.pem`, `NAME-key.pem`), and a certificate it signs for each of
/// `leaves` (`(name, extensions)`).
fn certificates(dir: &std::path::Path, ca: &str, leaves: &[(&str, &str)]) {
    openssl(
        dir,
        &format!("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN={ca} -keyout {ca}-key.pem -out {ca}.pem"),
    );
    for (name, extensions) in leaves {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
        openssl(dir, &format!("req -newkey rsa:2048 -nodes -subj /CN={name} -keyout {name}-key.pem -out {name}.csr"));
        openssl(
            dir,
            &format!(
                "x509 -req -days 1 -in {name}.csr -CA {ca}.pem -CAkey {ca}-key.pem -CAcreateserial -extfile {name}.ext -out {name}.pem"
            ),
        );
    }
}

/// A daemon on `tcp://` with TLS that demands client certificates (`--tlscacert`), as
/// buildctl reaches it with `--tlscacert/--tlscert/--tlskey`.
#[test]
fn a_tls_daemon_builds_with_a_client_certificate_and_refuses_without() {
    let registry = need!(registry::start());
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    certificates(
        dir,
        "ca",
        &[
            ("daemon", "subjectAltName=IP:127.0.0.1,DNS:buildkitd\nextendedKeyUsage=serverAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ],
    );
    certificates(dir, "other-ca", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = |name: &str| dir.join(name).display().to_string();
    let tls = [
        "--addr".to_string(),
        format!("tcp://127.0.0.1:{port}"),
        "--tlscert".into(),
        path("daemon.pem"),
        "--tlskey".into(),
        path("daemon-key.pem"),
        "--tlscacert".into(),
        path("ca.pem"),
    ];
    let _daemon = need!(buildkitd_with(&registry.host, &tls));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "buildkitd does not listen on tcp://127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch\nCOPY a /a\n");
    p.write("a", "over TLS\n");
    let build = |vars: &[(&str, String)]| {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary())
            .env("FLEDGE_BUILDKIT_MODE", "daemon")
            .env("FLEDGE_BUILDKIT_ADDR", format!("tcp://127.0.0.1:{port}"))
            .args(["build", "Dockerfile", "-o", "app.squashfs"]);
        for (name, value) in vars {
            cmd.env(name, value);
        }
        run(&mut cmd)
    };
    // buildctl's --tlsdir layout: ca.pem, cert.pem, key.pem.
    let tls_dir = p.path("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    std::fs::copy(dir.join("ca.pem"), tls_dir.join("ca.pem")).unwrap();
    std::fs::copy(dir.join("client.pem"), tls_dir.join("cert.pem")).unwrap();
    std::fs::copy(dir.join("client-key.pem"), tls_dir.join("key.pem")).unwrap();
    let out = build(&[("FLEDGE_BUILDKIT_TLS_DIR", tls_dir.display().to_string())]);
    assert_success(&out);
    assert!(listing(&p.path("app.squashfs")).iter().any(|l| l.ends_with(" /a")), "the file built over TLS");
    std::fs::remove_file(p.path("app.squashfs")).unwrap();

    // The same by single variables, with the name the certificate carries.
    let out = build(&[
        ("FLEDGE_BUILDKIT_TLS_CA", path("ca.pem")),
        ("FLEDGE_BUILDKIT_TLS_CERT", path("client.pem")),
        ("FLEDGE_BUILDKIT_TLS_KEY", path("client-key.pem")),
        ("FLEDGE_BUILDKIT_TLS_SERVER_NAME", "buildkitd".into()),
    ]);
    assert_success(&out);
    std::fs::remove_file(p.path("app.squashfs")).unwrap();

    // Without a client certificate the daemon ends the handshake: the client sees its alert
    // or, when the alert loses the race, the connection closing under it.
    for (vars, reasons) in [
        (
            vec![("FLEDGE_BUILDKIT_TLS_CA", path("ca.pem"))],
            &["CertificateRequired", "connection closed", "broken pipe"][..],
        ),
        (
            vec![
                ("FLEDGE_BUILDKIT_TLS_CA", path("other-ca.pem")),
                ("FLEDGE_BUILDKIT_TLS_CERT", path("client.pem")),
                ("FLEDGE_BUILDKIT_TLS_KEY", path("client-key.pem")),
            ],
            &["UnknownIssuer"][..],
        ),
        (
            vec![
                ("FLEDGE_BUILDKIT_TLS_CA", path("ca.pem")),
                ("FLEDGE_BUILDKIT_TLS_CERT", path("client.pem")),
                ("FLEDGE_BUILDKIT_TLS_KEY", path("client-key.pem")),
                ("FLEDGE_BUILDKIT_TLS_SERVER_NAME", "elsewhere".into()),
            ],
            &["not valid for name \"elsewhere\""][..],
        ),
    ] {
        let out = build(&vars);
        assert_eq!(out.status.code(), Some(1), "{reasons:?}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(text.contains("cannot reach buildkitd") && text.contains("check TLS"), "{text}");
        assert!(reasons.iter().any(|r| text.contains(r)), "{reasons:?} in {text}");
        assert!(!p.path("app.squashfs").exists(), "{reasons:?}: no artifact");
    }
    // Plain HTTP/2 to a TLS port is refused too.
    let out = build(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach buildkitd at tcp://127.0.0.1"), "{}", stderr(&out));
}

/// buildkitd dies mid-build: a clear error, exit 1, and no artifact.
#[test]
fn a_daemon_that_dies_mid_build_leaves_no_artifact() {
    let registry = need!(registry::start());
    let mut daemon = need!(buildkitd(&registry.host));
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/daemon-dies");
    let p = Project::new();
    p.write("Dockerfile", &format!("FROM {image}\nRUN [\"/bin/busybox\", \"sleep\", \"60\"]\n"));
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_AGENT", agent_binary())
        .env("FLEDGE_BUILDKIT_MODE", "daemon")
        .env("FLEDGE_BUILDKIT_ADDR", daemon.socket())
        .args(["build", "Dockerfile", "--progress", "plain", "-o", "app.squashfs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("buildkitd") || text.contains("session"), "{text}");
    assert!(!p.path("app.squashfs").exists(), "no artifact");
}
