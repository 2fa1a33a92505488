//! The command-line surface: version, help everywhere, quiet mode, exit codes.

mod common;

use std::process::Command;

use common::*;

#[test]
fn version_prints_three_lines() {
    let out = run(Command::new(FLEDGE).arg("version"));
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], format!("fledge version {}", env!("CARGO_PKG_VERSION")));
    assert!(lines[1].starts_with("  build date: ") && lines[2].starts_with("  git commit: "));
}

#[test]
fn help_is_available_everywhere() {
    for args in [&["--help"][..], &["build", "--help"], &["version", "--help"], &["help", "build"]] {
        let out = run(Command::new(FLEDGE).args(args));
        assert_success(&out);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: fledge"), "{args:?}: {text}");
    }
    let build_help = String::from_utf8(run(Command::new(FLEDGE).args(["build", "--help"])).stdout).unwrap();
    for flag in [
        "--config",
        "--manifest",
        "--output",
        "--context",
        "--target",
        "--build-arg",
        "--output-initramfs",
        "--manifest-format",
        "--verbose",
        "--quiet",
    ] {
        assert!(build_help.contains(flag), "build --help lacks {flag}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let out = run(Command::new(FLEDGE).args(["build", "--no-such-flag"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--no-such-flag"));
    let out = run(Command::new(FLEDGE).args(["build", "--manifest-format", "xml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("fledge, volant-v1"), "{}", stderr(&out));
}

#[test]
fn quiet_builds_print_nothing_and_plain_builds_show_steps() {
    let p = Project::new();
    p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{}\"\n[mappings]\n\"init\" = \"/init\"\n", busybox()));
    std::fs::copy(agent_binary(), p.path("init")).unwrap();
    p.write("manifest.toml", "name = \"q\"\nversion = \"1\"\nruntime = \"q\"\n");
    let quiet = run(p.fledge().args(["build", "-q"]));
    assert_success(&quiet);
    assert!(quiet.stderr.is_empty() && quiet.stdout.is_empty(), "{}", stderr(&quiet));
    let plain = run(p.fledge().args(["build"]));
    assert_success(&plain);
    let err = stderr(&plain);
    assert!(err.contains("=> Packing q.cpio.gz") && err.contains("Built q.cpio.gz"), "{err}");
}

/// An empty target is an image without layers, as in BuildKit (tests/parity has BuildKit's).
#[test]
fn an_empty_scratch_target_builds_an_image_without_layers() {
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch\nLABEL a=b\n");
    let mut build = p.fledge();
    build.env("FLEDGE_AGENT", agent_binary()).args([
        "build",
        "Dockerfile",
        "-o",
        "empty.squashfs",
        "--export-oci",
        "empty.tar",
    ]);
    assert_success(&run(&mut build));
    let dir = tempfile::tempdir().unwrap();
    tar::Archive::new(std::fs::File::open(p.path("empty.tar")).unwrap()).unpack(dir.path()).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("blobs/sha256").join(digest)).unwrap()).unwrap();
    assert_eq!(manifest["layers"], serde_json::json!([]), "{manifest}");
}

/// A stage name used twice is BuildKit's lint warning, and names the last such stage.
#[test]
fn a_repeated_stage_name_warns_and_means_the_last_stage() {
    let p = Project::new();
    p.write("a.txt", "a\n");
    p.write("Dockerfile", "FROM scratch AS dup\nCOPY a.txt /first\nFROM scratch AS dup\nCOPY a.txt /second\nFROM scratch\nCOPY --from=dup / /\n");
    let mut build = p.fledge();
    build.env("FLEDGE_AGENT", agent_binary()).args(["build", "Dockerfile", "-o", "dup.squashfs"]);
    let out = run(&mut build);
    assert_success(&out);
    assert!(
        stderr(&out).contains("Dockerfile:3: DuplicateStageName: Duplicate stage name \"dup\""),
        "{}",
        stderr(&out)
    );
    let listing = run(Command::new("unsquashfs").arg("-lc").arg(p.path("dup.squashfs")));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("/second") && !listing.contains("/first"), "{listing}");
}

#[test]
fn dockerfile_mode_refuses_what_it_cannot_build_with_a_clear_error() {
    let p = Project::new();
    p.write("Bad", "FROM scratch\nCOPY --nope a b\n");
    let out = run(p.fledge().args(["build", "Bad"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown flag: --nope") && stderr(&out).contains("Bad:2:1"), "{}", stderr(&out));
    assert!(!p.path("state/store/cache-mounts").exists());
}

#[test]
fn a_dockerfile_without_run_steps_builds_without_a_kernel_or_a_vm() {
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch\nWORKDIR /app\nCOPY a.txt b.txt ./\n");
    p.write("a.txt", "a\n");
    p.write("b.txt", "b\n");
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_AGENT", agent_binary()).env_remove("FLEDGE_KERNEL_VMLINUX").env_remove("FLEDGE_KERNEL_BZIMAGE");
    assert_success(&run(cmd.args(["build", "Dockerfile", "-o", "app.squashfs"])));
    let listing = run(Command::new("unsquashfs").arg("-lln").arg(p.path("app.squashfs")));
    let listing = String::from_utf8_lossy(&listing.stdout);
    for expected in ["squashfs-root/app/a.txt", "squashfs-root/app/b.txt", "squashfs-root/bin/kestrel"] {
        assert!(listing.contains(expected), "{expected} in {listing}");
    }
}

/// Every output of a Dockerfile build, from a Dockerfile without RUN (no VM needed): a rootfs
/// and an initramfs in direct mode and from `[source] dockerfile` in fledge.toml, and the OCI
/// image tarball of `--export-oci`, which skopeo reads and `fledge image import` takes back.
#[test]
fn dockerfile_builds_reach_every_output() {
    let p = Project::new();
    p.write(
        "app/Dockerfile",
        "FROM scratch\nARG WHO=nobody\nCOPY greeting.txt /etc/\nENV WHO=$WHO\nWORKDIR /srv\nCMD [\"/bin/sh\"]\n",
    );
    p.write("app/greeting.txt", "hello\n");
    let fledge = || {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary()).env("FLEDGE_BUSYBOX", busybox());
        cmd
    };

    // Direct mode: an initramfs with BusyBox and the built files; the image's defaults reach
    // the manifest; and the OCI tarball beside it.
    let out = run(fledge().args([
        "build",
        "app/Dockerfile",
        "--output-initramfs",
        "--build-arg",
        "WHO=you",
        "--export-oci",
        "app.tar",
        "-o",
        "out/",
    ]));
    assert_success(&out);
    let archive = common::decompress("gzip", &p.path("out/app.cpio.gz"));
    let listing = common::cpio_listing(&archive);
    for expected in ["etc/greeting.txt", "bin/busybox", "bin/kestrel", "init"] {
        assert!(common::entry(&listing, expected).is_some(), "{expected} in {listing:?}");
    }
    assert_eq!(common::cpio_member(&archive, "etc/greeting.txt"), b"hello\n");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("out/app.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["env"]["WHO"], "you", "{manifest}");
    assert_eq!(manifest["workload"]["workdir"], "/srv", "{manifest}");

    let inspect = run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", p.path("app.tar").display())));
    assert_success(&inspect);
    let oci_manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(oci_manifest["layers"].as_array().unwrap().len(), 2, "COPY and WORKDIR: {oci_manifest}");
    let config = run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", p.path("app.tar").display())));
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2, "{config}");
    assert!(config["config"]["Env"].as_array().unwrap().iter().any(|e| e == "WHO=you"), "{config}");
    assert_success(&run(fledge().args(["image", "import"]).arg(format!("oci-layout:{}", p.path("app.tar").display()))));

    // [source] dockerfile in fledge.toml: both strategies, with target and build args.
    p.write("fledge.toml", "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\ndockerfile = \"app/Dockerfile\"\n[source.build_args]\nWHO = \"config\"\n");
    p.write("manifest.toml", "name = \"cfg\"\nversion = \"1\"\nruntime = \"cfg\"\n");
    assert_success(&run(fledge().args(["build", "-o", "rootfs/"])));
    let listing = run(Command::new("unsquashfs").arg("-lln").arg(p.path("rootfs/plugin.squashfs")));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("squashfs-root/etc/greeting.txt"));
    let manifest = std::fs::read_to_string(p.path("rootfs/plugin.manifest.json")).unwrap();
    assert!(manifest.contains("WHO") && manifest.contains("config"), "{manifest}");
    p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"initramfs\"\n[source]\ndockerfile = \"app/Dockerfile\"\nbusybox_path = \"{}\"\n", busybox()));
    assert_success(&run(fledge().args(["build", "-o", "initramfs/"])));
    let archive = common::decompress("gzip", &p.path("initramfs/cfg.cpio.gz"));
    assert_eq!(common::cpio_member(&archive, "etc/greeting.txt"), b"hello\n");

    // Build-only flags without a Dockerfile build are refused, naming the config.
    p.write(
        "fledge.toml",
        &format!("version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_path = \"{}\"\n", busybox()),
    );
    let out = run(fledge().args(["build", "--export-oci", "x.tar"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("need a Dockerfile build") && stderr(&out).contains("fledge.toml"),
        "{}",
        stderr(&out)
    );
    assert!(!p.path("x.tar").exists());
}

/// `fledge build --llb`: the definition `fledge debug llb --format pb` writes builds into the
/// same files as the Dockerfile itself; a file that is not a definition is a clear error.
#[test]
fn an_llb_definition_builds_like_its_dockerfile() {
    let p = Project::new();
    p.write("ctx/Dockerfile", "FROM scratch\nCOPY --chmod=0755 tool.sh /usr/bin/tool\nWORKDIR /srv\nCOPY data/ ./\n");
    p.write("ctx/tool.sh", "#!/bin/sh\n");
    p.write("ctx/data/a.txt", "a\n");
    let fledge = || {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary());
        cmd
    };
    let def = run(fledge().args(["debug", "llb", "--format", "pb", "ctx/Dockerfile"]));
    assert_success(&def);
    std::fs::write(p.path("app.pb"), &def.stdout).unwrap();
    assert_success(&run(fledge().args(["build", "ctx/Dockerfile", "-o", "from-dockerfile.squashfs"])));
    assert_success(&run(fledge().args(["build", "--llb", "app.pb", "--context", "ctx", "-o", "from-llb.squashfs"])));
    let listing = |image: &str| {
        let out = run(Command::new("unsquashfs").arg("-lln").arg(p.path(image)));
        // mode, owner, size and path: not the date and time columns
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                [0, 1, 2, 5].iter().filter_map(|&i| f.get(i).copied()).collect::<Vec<_>>().join(" ")
            })
            .collect::<Vec<_>>()
    };
    let from_llb = listing("from-llb.squashfs");
    assert_eq!(listing("from-dockerfile.squashfs"), from_llb);
    assert!(
        from_llb.iter().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("squashfs-root/usr/bin/tool")),
        "{from_llb:?}"
    );
    assert!(from_llb.iter().any(|l| l.ends_with("squashfs-root/srv/a.txt")), "{from_llb:?}");

    p.write("bad.pb", "not protobuf at all, surely");
    let out = run(fledge().args(["build", "--llb", "bad.pb", "-o", "bad.squashfs"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad.pb is not an LLB definition")
            && stderr(&out).contains("fledge debug llb --format pb"),
        "{}",
        stderr(&out)
    );
    let out = run(fledge().args(["build", "--llb", "app.pb", "ctx/Dockerfile"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--llb builds a definition as it is"), "{}", stderr(&out));
}

/// `--build-context NAME=DIR`: a local directory that `FROM NAME` builds on and
/// `COPY --from=NAME` reads, with its own `.dockerignore`, cached by its content.
#[test]
fn a_local_directory_is_a_named_context() {
    let p = Project::new();
    p.write(
        "ctx/Dockerfile",
        "FROM assets AS files\nFROM scratch\nCOPY --from=assets /docs/readme.txt /readme.txt\nCOPY --from=files /logo.txt /logo.txt\n",
    );
    p.write("assets/docs/readme.txt", "read me\n");
    p.write("assets/logo.txt", "logo\n");
    p.write("assets/secret.txt", "kept out\n");
    p.write("assets/.dockerignore", "secret.txt\n");
    let build = |args: &[&str]| {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary()).args(["build", "ctx/Dockerfile"]);
        run(cmd.args(args))
    };
    let assets = format!("assets={}", p.path("assets").display());
    assert_success(&build(&["--build-context", &assets, "-o", "app.squashfs"]));
    let cat = |path: &str| run(Command::new("unsquashfs").arg("-cat").arg(p.path("app.squashfs")).arg(path)).stdout;
    assert_eq!(cat("/readme.txt"), b"read me\n");
    assert_eq!(cat("/logo.txt"), b"logo\n");
    assert_success(&build(&["--build-context", &assets, "--target", "files", "-o", "files.squashfs"]));
    let listing = run(Command::new("unsquashfs").arg("-l").arg(p.path("files.squashfs")));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("/docs/readme.txt") && listing.contains("/logo.txt"), "{listing}");
    assert!(!listing.contains("secret.txt"), "its .dockerignore holds: {listing}");

    // A changed file is seen (the cache follows the directory's content).
    p.write("assets/docs/readme.txt", "read me again\n");
    assert_success(&build(&["--build-context", &assets, "-o", "app.squashfs"]));
    assert_eq!(cat("/readme.txt"), b"read me again\n");

    for (spec, needle) in [
        (format!("context={}", p.path("assets").display()), "names the build's own directory"),
        ("assets=./no-such-dir".to_string(), "./no-such-dir is not a directory"),
        ("assets=git://example.com/x".to_string(), "not supported yet"),
    ] {
        let out = build(&["--build-context", &spec, "-o", "bad.squashfs"]);
        assert_eq!(out.status.code(), Some(1), "{spec}");
        assert!(stderr(&out).contains(needle), "{needle:?} in {}", stderr(&out));
        assert!(!p.path("bad.squashfs").exists());
    }
}

/// `--build-context NAME=oci-layout:PATH` (or `NAME=docker-image://REF`): a FROM naming it
/// builds on that image, a layout needing no registry; a malformed one is a clear error.
#[test]
fn a_named_context_from_an_oci_layout_is_a_base_without_a_registry() {
    let p = Project::new();
    let layer = common::oci::tar_layer(&[
        common::oci::Entry::Dir("etc", 0o755),
        common::oci::Entry::File("etc/base-release", 0o644, b"from the layout\n"),
    ]);
    let manifest =
        common::oci::add_image(&p.path("layout"), "amd64", &[layer], serde_json::json!({"Env": ["FROM_LAYOUT=1"]}));
    common::oci::finish_layout(&p.path("layout"), "v1", vec![manifest]);
    p.write("ctx/Dockerfile", "FROM base\nCOPY app.txt /app/\n");
    p.write("ctx/app.txt", "app\n");
    let fledge = || {
        let mut cmd = p.fledge();
        cmd.env("FLEDGE_AGENT", agent_binary());
        cmd
    };
    let context = format!("base=oci-layout:{}:v1", p.path("layout").display());
    assert_success(&run(fledge().args(["build", "ctx/Dockerfile", "--build-context", &context, "-o", "app.squashfs"])));
    let cat = |path: &str| run(Command::new("unsquashfs").arg("-cat").arg(p.path("app.squashfs")).arg(path)).stdout;
    assert_eq!(cat("/etc/base-release"), b"from the layout\n");
    assert_eq!(cat("/app/app.txt"), b"app\n");
    let manifest = std::fs::read_to_string(p.path("app.manifest.json")).unwrap();
    assert!(manifest.contains("FROM_LAYOUT"), "the base's config is used: {manifest}");

    // docker-image://REF: from the store, pulled into it first when missing (this part is
    // skipped without a registry).
    if let Ok(registry) = registry::start() {
        registry.push(&p.path("layout"), "v1", "fledge/named-context", false);
        let context = format!("base=docker-image://{}/fledge/named-context:v1", registry.host);
        assert_success(&run(fledge().args([
            "build",
            "ctx/Dockerfile",
            "--build-context",
            &context,
            "-o",
            "pulled.squashfs",
        ])));
        let cat = run(Command::new("unsquashfs").arg("-cat").arg(p.path("pulled.squashfs")).arg("/etc/base-release"));
        assert_eq!(cat.stdout, b"from the layout\n");
    }

    let out =
        run(fledge().args(["build", "ctx/Dockerfile", "--build-context", "base=/somewhere", "-o", "bad.squashfs"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/somewhere is not a directory (expected NAME=DIR"), "{}", stderr(&out));
}
