//! `fledge build ./Dockerfile` with the embedded engine, end to end: a base image from a real
//! local registry, RUN steps in a QEMU build VM (TCG here), COPY and WORKDIR on the host, the
//! result packed as a squashfs rootfs and booted with `fledge run` to look inside.
//!
//! Needs `FLEDGE_TEST_KERNEL_STATE`, QEMU, vhost-device-vsock and docker-registry; skips,
//! saying why, without them.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// Boots `artifact` with `fledge run` and runs `script` in it; returns the console, after
/// checking that the script succeeded.
fn look_inside(p: &Project, kernel: &std::path::Path, artifact: &str, timeout: u32, script: &str) -> String {
    let timeout = timeout.to_string();
    let look = run(fledge(p, kernel).args(["run", "-q", "--timeout", &timeout, artifact, "--", "sh", "-c", script]));
    let console = String::from_utf8_lossy(&look.stdout).into_owned();
    assert_eq!(look.status.code(), Some(0), "{console}{}", stderr(&look));
    console
}

fn fledge(p: &Project, kernel: &std::path::Path) -> Command {
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_KERNEL_VMLINUX", kernel).env("FLEDGE_ACCEL", "tcg").env("FLEDGE_AGENT", agent_binary());
    cmd
}

#[test]
fn a_dockerfile_builds_into_a_rootfs_that_boots() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-base");
    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {image}\nRUN /bin/busybox --install -s /bin && echo built > /built.txt && mkdir -m 1777 /shared\nARG GREETING=hello\nENV NAME=world\nWORKDIR /app\nCOPY hello.txt .\nRUN cat /app/hello.txt > /app/copy.txt && rm /data/c && echo \"$GREETING $NAME\" > /greeting\nUSER 1000:1000\nRUN id -u > /shared/uid\n"
        ),
    );
    p.write("hello.txt", "hello from the context\n");
    let out = run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs"]));
    assert_success(&out);
    let console = look_inside(
        &p,
        &kernel,
        "app.squashfs",
        120,
        "cat /built.txt /app/copy.txt /greeting; test -e /data/c || echo removed; echo uid=$(cat /shared/uid)",
    );
    for expected in ["built", "hello from the context", "hello world", "removed", "uid=1000"] {
        assert!(console.contains(expected), "{expected:?} in {console}");
    }

    // Nothing changed: every step cached, no VM.
    let steps = |p: &Project| -> Vec<(String, bool)> {
        let out = run(fledge(p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs", "--progress", "rawjson"]));
        let (steps, booted) = rawjson_steps(&out);
        assert_eq!(
            booted,
            steps.iter().any(|(name, cached)| name.contains("RUN") && !cached),
            "a VM only for RUNs that run"
        );
        steps
    };
    let again = steps(&p);
    assert!(!again.is_empty() && again.iter().all(|(_, cached)| *cached), "{again:?}");
    // The finished artifact is remembered too: nothing is repacked.
    let before = std::fs::metadata(p.path("app.squashfs")).unwrap().modified().unwrap();
    let out = run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs"]));
    assert!(stderr(&out).contains("nothing to repack"), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(p.path("app.squashfs")).unwrap().modified().unwrap(), before);

    // Touched but unchanged: still nothing runs.
    let file = std::fs::File::options().write(true).open(p.path("hello.txt")).unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    assert!(steps(&p).iter().all(|(_, cached)| *cached), "a touch busts nothing");

    // A one-byte edit reruns the COPY and what follows it, and nothing before.
    p.write("hello.txt", "hello from the context!\n");
    let edited = steps(&p);
    let cached = |needle: &str| edited.iter().find(|(n, _)| n.contains(needle)).map(|(_, c)| *c);
    assert_eq!(cached("RUN /bin/busybox --install"), Some(true), "{edited:?}");
    assert_eq!(cached("COPY hello.txt"), Some(false), "{edited:?}");
    assert_eq!(cached("RUN cat /app/hello.txt"), Some(false), "{edited:?}");
}

#[test]
fn a_failing_run_step_stops_the_build_with_its_output_and_exit_code() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-fails");
    let p = Project::new();
    p.write("Dockerfile", &format!("FROM {image}\nRUN echo about to fail >&2; exit 3\nRUN echo never\n"));
    let out = run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs", "--progress", "plain"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    // BuildKit's plain progress: the numbered step, its output with seconds since it
    // started, and its end.
    let step = text
        .lines()
        .find(|l| l.starts_with('#') && l.ends_with("[2/3] RUN echo about to fail >&2; exit 3"))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("a numbered step: {text}"));
    assert!(
        text.lines().any(|l| l.starts_with(&format!("{step} 0.")) && l.ends_with(" about to fail")),
        "the step's output is shown: {text}"
    );
    assert!(text.contains(&format!("{step} ERROR: ")), "{text}");
    assert!(text.contains("exit code: 3"), "{text}");
    assert!(!text.contains("never"), "nothing runs after the failure: {text}");
    assert!(!p.path("app.squashfs").exists(), "no artifact");
}

#[test]
fn cache_mounts_persist_secrets_stay_out_of_layers_and_tmpfs_is_scratch() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-mounts");
    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {image}\n\
             RUN /bin/busybox --install -s /bin\n\
             ARG RUN_ID\n\
             RUN --mount=type=cache,target=/var/cache/app echo $RUN_ID >> /var/cache/app/log && wc -l < /var/cache/app/log > /cache-count\n\
             RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = s3cret && echo ok > /secret-ok\n\
             RUN --mount=type=secret,id=token,env=TOKEN test \"$TOKEN\" = s3cret && echo ok > /secret-env-ok\n\
             RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/f && test -f /scratch/f && echo ok > /tmpfs-ok\n"
        ),
    );
    // No final newline: an env= secret is the file as it is (BuildKit keeps a newline).
    p.write("token.txt", "s3cret");
    let build = |run_id: &str| {
        let out = run(fledge(&p, &kernel).args([
            "build",
            "Dockerfile",
            "-o",
            "app.squashfs",
            "--secret",
            "id=token,src=token.txt",
            "--build-arg",
            &format!("RUN_ID={run_id}"),
        ]));
        assert_success(&out);
        look_inside(
            &p,
            &kernel,
            "app.squashfs",
            120,
            "echo count=$(cat /cache-count); cat /secret-ok /secret-env-ok /tmpfs-ok; \
             test -e /run/secrets/token || echo no-secret-file; test -e /scratch/f || echo no-scratch",
        )
    };
    let first = build("1");
    for expected in ["count=1", "no-secret-file", "no-scratch"] {
        assert!(first.contains(expected), "{expected:?} in {first}");
    }
    assert_eq!(first.lines().filter(|l| l.trim() == "ok").count(), 3, "secret file, secret env, tmpfs: {first}");
    // The cache volume outlives the build: the step runs again (new RUN_ID) and finds it.
    let second = build("2");
    assert!(second.contains("count=2"), "{second}");
    // The secret is in no layer of the store.
    let blobs = p.path("state/store/blobs/sha256");
    for blob in std::fs::read_dir(&blobs).unwrap() {
        let data = std::fs::read(blob.unwrap().path()).unwrap();
        assert!(!data.windows(6).any(|w| w == b"s3cret"), "a stored blob holds the secret");
    }
}

#[test]
fn run_steps_have_a_network_unless_they_ask_for_none() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let server = http::Server::start([("/file".to_string(), b"served by the host\n".to_vec())].into());
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-network");
    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {image}\n\
             RUN /bin/busybox --install -s /bin\n\
             RUN wget -q -O /fetched http://10.0.2.2:{port}/file && cp /etc/resolv.conf /resolv-seen\n\
             RUN --network=none sh -c 'wget -q -T 3 -O- http://10.0.2.2:{port}/file && echo reached || echo isolated' > /none-result\n"
        ),
    );
    assert_success(&run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs"])));
    let console = look_inside(
        &p,
        &kernel,
        "app.squashfs",
        120,
        "cat /fetched /resolv-seen /none-result; test -e /etc/resolv.conf || echo no-resolv-left",
    );
    for expected in ["served by the host", "nameserver 10.0.2.3", "isolated", "no-resolv-left"] {
        assert!(console.contains(expected), "{expected:?} in {console}");
    }
}

#[test]
fn two_clean_builds_give_byte_identical_artifacts() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-twice");
    let artifact = |_: usize| {
        let p = Project::new(); // an empty store each time
        p.write(
            "Dockerfile",
            &format!("FROM {image}\nRUN /bin/busybox --install -s /bin && mkdir /out && echo made > /out/file\nCOPY notes.txt /out/\n"),
        );
        p.write("notes.txt", "notes\n");
        assert_success(&run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs"])));
        std::fs::read(p.path("app.squashfs")).unwrap()
    };
    let (first, second) = (artifact(1), artifact(2));
    assert!(first == second, "two clean builds differ ({} and {} bytes)", first.len(), second.len());
}

#[test]
fn killing_a_build_mid_run_leaves_no_vm_and_a_usable_store() {
    use std::time::{Duration, Instant};
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-killed");
    for signal in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGKILL] {
        let p = Project::new();
        std::fs::create_dir_all(p.path("tmp")).unwrap();
        p.write("Dockerfile", &format!("FROM {image}\nRUN echo started > /dev/console; exec /bin/busybox sleep 600\n"));
        let mut child = fledge(&p, &kernel)
            .args(["build", "Dockerfile", "-o", "app.squashfs"])
            .env("TMPDIR", p.path("tmp"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the step runs (its VM is up), then interrupt the build.
        let deadline = Instant::now() + Duration::from_secs(120);
        let ours = || -> Vec<String> {
            // The VM's sockets and disks live under the state directory.
            let marker = p.path("state").display().to_string();
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(&marker) && (c.contains("qemu") || c.contains("vhost-device-vsock")))
                .collect()
        };
        while ours().is_empty() {
            assert!(Instant::now() < deadline, "the build VM never started");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let stopped_by = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > stopped_by {
                let _ = child.kill();
                panic!("{signal}: the build did not stop within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success(), "{signal}: the build was stopped");
        if signal == nix::sys::signal::Signal::SIGINT {
            assert_eq!(status.code(), Some(130), "Ctrl-C exits 130");
        }
        let gone = Instant::now() + Duration::from_secs(10);
        while !ours().is_empty() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ours().is_empty(), "{signal}: left behind: {:?}", ours());
        // The store still works: the next build (with a step that ends) succeeds.
        p.write("Dockerfile", &format!("FROM {image}\nRUN echo done > /done\n"));
        assert_success(&run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "app.squashfs"])));
    }
}

/// A multi-stage build to a target: bind mounts from the context and from another stage,
/// COPY --from a stage that ran as a non-root user, ADD with flags, ARG/ENV/WORKDIR carried
/// into a later stage, and a stage the target does not need, which never runs. The result
/// boots and is checked from inside.
#[test]
fn multi_stage_builds_reach_only_their_target_and_bind_other_stages() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-stages");
    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {image} AS base\n\
             RUN /bin/busybox --install -s /bin && mkdir -m 1777 /tmp\n\
             ARG VERSION=1\n\
             ENV APP_VERSION=$VERSION\n\
             WORKDIR /src\n\
             FROM scratch AS assets\n\
             COPY asset.txt /assets/\n\
             FROM base AS unused\n\
             RUN echo never > /unused\n\
             FROM base AS builder\n\
             COPY --chmod=0755 build.sh ./\n\
             RUN --mount=type=bind,source=input,target=/in ./build.sh /in > /out.txt\n\
             RUN --mount=type=bind,from=assets,source=/assets,target=/assets,rw cat /assets/asset.txt >> /out.txt && echo scribble > /assets/asset.txt\n\
             USER 1000:1000\n\
             RUN id -u > /tmp/uid.txt && echo \"$APP_VERSION in $(pwd)\" > /tmp/env.txt\n\
             FROM base AS final\n\
             COPY --from=builder /out.txt /tmp/uid.txt /tmp/env.txt /app/\n\
             ADD --chown=1000:1000 tool.tar.gz /opt/\n\
             CMD [\"cat\", \"/app/out.txt\"]\n"
        ),
    );
    p.write("build.sh", "#!/bin/sh\nfor f in \"$1\"/*; do echo \"built $(basename \"$f\"): $(cat \"$f\")\"; done\n");
    p.write("input/one.txt", "1");
    p.write("input/two.txt", "2");
    p.write("asset.txt", "asset\n");
    let archive = oci::tar_gz(&[oci::Entry::File("bin/tool", 0o755, b"tool\n")]);
    std::fs::write(p.path("tool.tar.gz"), archive).unwrap();

    let out = run(fledge(&p, &kernel).args([
        "build",
        "Dockerfile",
        "--target",
        "final",
        "--build-arg",
        "VERSION=7",
        "-o",
        "app.squashfs",
        "--progress",
        "rawjson",
    ]));
    assert_success(&out);
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["vertexes"][0]["name"].as_str().map(String::from)
        })
        .collect();
    assert!(names.iter().any(|n| n.contains("[builder")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("echo never")), "the unused stage never runs: {names:?}");

    let console = look_inside(
        &p,
        &kernel,
        "app.squashfs",
        120,
        "cat /app/out.txt /app/uid.txt /app/env.txt; ls -ln /opt/bin/tool; test -e /unused || echo no-unused; test -e /assets || echo no-assets",
    );
    for expected in
        ["built one.txt: 1", "built two.txt: 2", "asset", "1000", "7 in /src", " 1000 ", "no-unused", "no-assets"]
    {
        assert!(console.contains(expected), "{expected:?} in {console}");
    }
    assert!(!console.contains("scribble"), "writes to an rw bind mount are thrown away: {console}");
}

/// The Debian minbase layout `make test` makes with debootstrap (scripts/test-debian-image.sh).
fn debian_layout() -> Result<PathBuf, Skipped> {
    env_path("FLEDGE_TEST_DEBIAN_LAYOUT", "make test debootstraps one as root")
}

/// A multi-stage build on a real distribution: a Debian minbase made with debootstrap and
/// served from the local registry. Users and ownership by name, a cache mount, a secret,
/// USER, WORKDIR, ARG/ENV and COPY --from; the result boots and is checked from inside. A
/// failing dpkg step reports its output and exit code.
#[test]
fn a_debian_multi_stage_build_boots_with_its_users_and_files() {
    let kernel = need!(built_vmlinux());
    let layout = need!(debian_layout());
    let registry = need!(registry::start());
    registry.push(&layout, "minbase", "fledge/debian", false);
    let debian = format!("{}/fledge/debian:minbase", registry.host);
    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {debian} AS build\n\
             ARG GREETING=hello\n\
             ENV RELEASE_FILE=/etc/debian_version\n\
             RUN useradd --create-home --uid 1234 app && mkdir /out\n\
             RUN --mount=type=cache,target=/var/cache/fledge-test,sharing=locked date +%s >> /var/cache/fledge-test/runs && echo \"$GREETING from Debian $(cat $RELEASE_FILE)\" > /out/hello\n\
             RUN --mount=type=secret,id=token,required=true test \"$(cat /run/secrets/token)\" = s3cret && echo secret-ok > /out/secret\n\
             USER app\n\
             WORKDIR /home/app/work\n\
             COPY --chown=app:app notes.txt ./\n\
             RUN whoami > whoami && stat -c %U:%G notes.txt > owner && pwd > cwd\n\
             RUN --mount=type=cache,target=/home/app/.cache/tool,uid=1234,gid=1234,mode=0700 touch /home/app/.cache/tool/x && stat -c '%a %U' /home/app/.cache/tool > cache-root\n\
             FROM {debian}\n\
             COPY --from=build /out/ /out/\n\
             COPY --from=build /home/app/work/whoami /home/app/work/owner /home/app/work/cwd /home/app/work/cache-root /out/\n\
             RUN bash -c 'echo \"bash ${{BASH_VERSINFO[0]}}\"' > /out/bash && dpkg -s bash | grep -q '^Status: install ok installed'\n"
        ),
    );
    p.write("notes.txt", "notes\n");
    p.write("token", "s3cret\n");
    let out = run(fledge(&p, &kernel).args([
        "build",
        "Dockerfile",
        "--secret",
        "id=token,src=token",
        "-o",
        "debian.squashfs",
    ]));
    assert_success(&out);

    let console = look_inside(
        &p,
        &kernel,
        "debian.squashfs",
        180,
        "cat /out/hello /out/secret /out/whoami /out/owner /out/cwd /out/bash /out/cache-root; test -e /home/app || echo no-build-stage",
    );
    for expected in
        ["hello from Debian 12", "secret-ok", "app:app", "/home/app/work", "bash 5", "700 app", "no-build-stage"]
    {
        assert!(console.contains(expected), "{expected:?} in {console}");
    }
    assert!(console.lines().any(|l| l.trim() == "app"), "whoami in {console}");

    // A failing step on Debian: its output and dpkg's exit code.
    p.write("Dockerfile", &format!("FROM {debian}\nRUN dpkg -s no-such-package\n"));
    let out = run(fledge(&p, &kernel).args(["build", "Dockerfile", "-o", "failed.squashfs", "--progress", "plain"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("package 'no-such-package' is not installed"), "{text}");
    assert!(text.contains("exit code: 1"), "{text}");
    assert!(!p.path("failed.squashfs").exists());
}

/// Independent stages run at once, each on a build VM of its own (two allowed here): their
/// RUN steps overlap in time, as the rawjson timestamps show, and both results arrive.
#[test]
fn independent_stages_run_in_parallel_on_separate_vms() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/build-parallel");
    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {image} AS left\n\
             RUN /bin/busybox sleep 3 && /bin/busybox echo left > /left\n\
             FROM {image} AS right\n\
             RUN /bin/busybox sleep 3 && /bin/busybox echo right > /right\n\
             FROM {image}\n\
             COPY --from=left /left /out/\n\
             COPY --from=right /right /out/\n"
        ),
    );
    let mut cmd = fledge(&p, &kernel);
    cmd.env("FLEDGE_BUILD_VMS", "2").args(["build", "Dockerfile", "-o", "app.squashfs", "--progress", "rawjson"]);
    let out = run(&mut cmd);
    assert_success(&out);
    // name → (started, completed); RFC 3339 times of one format compare as strings.
    let mut spans: std::collections::HashMap<String, (String, String)> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let status: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(vertex) = status["vertexes"].get(0) else { continue };
        let span = spans.entry(vertex["name"].as_str().unwrap().to_string()).or_default();
        if let Some(t) = vertex["started"].as_str() {
            span.0 = t.to_string();
        }
        if let Some(t) = vertex["completed"].as_str() {
            span.1 = t.to_string();
        }
    }
    let span = |prefix: &str| {
        spans
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("{prefix} in {spans:?}"))
    };
    let (left, right) = (span("[left 2/2] RUN"), span("[right 2/2] RUN"));
    assert!(left.0 < right.1 && right.0 < left.1, "the two RUN steps overlap: {left:?} {right:?}");
    assert_eq!(spans.keys().filter(|n| n.starts_with("[internal] boot")).count(), 2, "{spans:?}");
    for (file, content) in [("/out/left", "left\n"), ("/out/right", "right\n")] {
        let cat = run(Command::new("unsquashfs").arg("-cat").arg(p.path("app.squashfs")).arg(file));
        assert_eq!(String::from_utf8_lossy(&cat.stdout), content);
    }
}

/// An image of many layers (more than microvm has virtio-mmio slots) still builds: with one
/// VM, booted for another stage's base, its 41 layers reach the guest as tar streams and
/// stack as overlay lowers.
#[test]
fn an_image_with_many_layers_builds_on_a_shared_vm() {
    let kernel = need!(built_vmlinux());
    let registry = need!(registry::start());
    let builder = Project::new();
    let small = layered_test_image(&registry, &builder, "fledge/build-small");
    let busybox = std::fs::read(busybox()).unwrap();
    let mut layers = vec![oci::tar_layer(&[
        oci::Entry::Dir("bin", 0o755),
        oci::Entry::File("bin/busybox", 0o755, &busybox),
        oci::Entry::Dir("layer", 0o755),
    ])];
    let names: Vec<String> = (0..40).map(|n| format!("layer/{n:02}")).collect();
    for name in &names {
        layers.push(oci::tar_layer(&[oci::Entry::File(name, 0o644, b"x\n")]));
    }
    let layout = builder.path("many");
    let manifest = oci::add_image(&layout, "amd64", &layers, serde_json::json!({}));
    oci::finish_layout(&layout, "v1", vec![manifest]);
    registry.push(&layout, "v1", "fledge/build-many", false);
    let many = format!("{}/fledge/build-many:v1", registry.host);

    let p = Project::new();
    p.write(
        "Dockerfile",
        &format!(
            "FROM {small} AS first\n\
             RUN /bin/busybox echo first > /first\n\
             FROM {many}\n\
             COPY --from=first /first /\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox ls /layer | /bin/busybox wc -l > /count\"]\n"
        ),
    );
    let mut cmd = fledge(&p, &kernel);
    cmd.env("FLEDGE_BUILD_VMS", "1").args(["build", "Dockerfile", "-o", "app.squashfs", "--progress", "plain"]);
    let out = run(&mut cmd);
    assert_success(&out);
    assert_eq!(stderr(&out).matches("[internal] boot").count(), 1, "one VM: {}", stderr(&out));
    let cat = run(Command::new("unsquashfs").arg("-cat").arg(p.path("app.squashfs")).arg("/count"));
    assert_eq!(String::from_utf8_lossy(&cat.stdout).trim(), "40");
}

/// The entries of the last layer of the OCI layout tarball `image`: (path, mode) pairs, and
/// the bytes of `file` in it.
fn last_layer(image: &std::path::Path, file: &str) -> (Vec<(String, u32)>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(std::fs::File::open(image).unwrap()).unpack(dir.path()).unwrap();
    let blob = |digest: &str| dir.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json =
        |digest: &str| serde_json::from_slice::<serde_json::Value>(&std::fs::read(blob(digest)).unwrap()).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest = json(index["manifests"][0]["digest"].as_str().unwrap());
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::open(blob(&layer)).unwrap(), &mut raw).unwrap();
    let plain = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut out).unwrap();
        out
    } else {
        raw
    };
    let (mut entries, mut bytes) = (Vec::new(), Vec::new());
    for entry in tar::Archive::new(&plain[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
        if path == file {
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        }
        entries.push((path, entry.header().mode().unwrap()));
    }
    entries.sort();
    (entries, bytes)
}

/// What BuildKit v0.32.2 (991535e0973488b6a429096d21fa13f81f2d89d8, OCI worker, runc 1.1.5)
/// built from these Dockerfiles on 2026-12-06: the RUN step sees /proc, the devices, /sys and
/// its hostname; its layer holds none of it, only the mount points runc created where the
/// base had none.
#[test]
fn run_steps_have_proc_dev_and_sys_as_buildkit_gives_them_and_no_layer_holds_them() {
    let kernel = need!(built_vmlinux());
    const PROBE: &str = "set -e; echo x > /dev/null; /bin/busybox grep -c ^Name: /proc/self/status > /probe; \
        /bin/busybox ls /dev/shm /sys >/dev/null; /bin/busybox hostname >> /probe; /bin/busybox readlink /dev/stdin >> /probe; \
        for d in null zero full random urandom tty; do /bin/busybox test -c /dev/$d; done; echo ok >> /probe";
    let p = Project::new();
    std::fs::copy(busybox(), p.path("busybox")).unwrap();
    p.write("base/dev/console", "console\n");
    std::fs::create_dir_all(p.path("base/proc")).unwrap();
    std::fs::create_dir_all(p.path("base/sys")).unwrap();
    p.write("etc/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n");
    let run = format!("RUN [\"/bin/busybox\",\"sh\",\"-c\",\"{PROBE}\"]\n");
    const HOSTS: &str = "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n";
    let hosts = "RUN [\"/bin/busybox\",\"sh\",\"-c\",\"/bin/busybox cat /etc/hosts > /probe\"]\n".to_string();
    // Also BuildKit's layer for the /etc case: it puts back the mtime of the directory that
    // held a mount point, and its differ leaves out directories equal to the lower's.
    let bare = vec![("dev", 0o755), ("probe", 0o644), ("proc", 0o755), ("sys", 0o755)];
    // A base without /dev, /proc and /sys, one that holds them (and a file in /dev), and one
    // with an /etc but no hosts file.
    let cases = [
        ("bare", String::new(), run.clone(), bare.clone(), "1\nbuildkitsandbox\n/proc/self/fd/0\nok\n"),
        ("holding", "COPY base/ /\n".into(), run, vec![("probe", 0o644)], "1\nbuildkitsandbox\n/proc/self/fd/0\nok\n"),
        ("etc", "COPY etc/ /\n".into(), hosts, bare, HOSTS),
    ];
    let mut failures = Vec::new();
    for (name, extra, run, expected, probed) in cases {
        p.write(&format!("{name}.Dockerfile"), &format!("FROM scratch\nCOPY busybox /bin/busybox\n{extra}{run}"));
        let out = common::run(fledge(&p, &kernel).args([
            "build",
            &format!("{name}.Dockerfile"),
            "-o",
            &format!("{name}.squashfs"),
            "--export-oci",
            &format!("{name}.tar"),
        ]));
        if !out.status.success() {
            failures.push(format!("{name}: the build failed:\n{}", stderr(&out)));
            continue;
        }
        let (entries, probe) = last_layer(&p.path(&format!("{name}.tar")), "probe");
        let expected: Vec<(String, u32)> = expected.into_iter().map(|(n, m)| (n.to_string(), m)).collect();
        if entries != expected {
            failures.push(format!("{name}: the RUN layer holds {entries:?}, BuildKit's {expected:?}"));
        }
        if probe != probed.as_bytes() {
            failures.push(format!("{name}: the step saw {:?}", String::from_utf8_lossy(&probe)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
