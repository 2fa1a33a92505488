//! Bad input of every kind gives a clear error that names the file and line, exits 1, never
//! panics, and leaves nothing behind in the project directory.

mod common;

use std::fs;

use common::*;

struct Case {
    name: &'static str,
    config: &'static str,
    manifest: Option<&'static str>,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    expect: &'static [&'static str],
}

/// Marks a case that has no manifest.toml at all.
const NO_MANIFEST: &str = "<no manifest.toml>";
const OK_MANIFEST: &str = "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\n";
/// A valid config; `{busybox}` is replaced by the busybox path.
const BASE: &str = "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nbusybox_path = \"{busybox}\"\n";

const fn case(name: &'static str, config: &'static str, expect: &'static [&'static str]) -> Case {
    Case { name, config, manifest: None, args: &[], env: &[], expect }
}

const fn manifest_case(name: &'static str, manifest: &'static str, expect: &'static [&'static str]) -> Case {
    Case { name, config: BASE, manifest: Some(manifest), args: &[], env: &[], expect }
}

const AGENTLESS: &str = "version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_path = \"{busybox}\"\n";

fn cases() -> Vec<Case> {
    vec![
        case("malformed toml", "version = \"1\nstrategy = \"initramfs\"\n", &["fledge.toml:1:"]),
        case("duplicate key", "version = \"1\"\nversion = \"1\"\n", &["fledge.toml:2:", "duplicate key"]),
        case(
            "missing version",
            "strategy = \"initramfs\"\n",
            &["'version' field is required", "fledge.toml:1:1", "version = \\\"1\\\""],
        ),
        case(
            "unsupported version",
            "version = \"2\"\nstrategy = \"initramfs\"\n",
            &["unsupported config version '2', expected '1'", "fledge.toml:1:11"],
        ),
        case(
            "version of the wrong type",
            "version = 1\nstrategy = \"initramfs\"\n",
            &["fledge.toml:1:11", "invalid type"],
        ),
        case("missing strategy", "version = \"1\"\n", &["'strategy' field is required"]),
        case(
            "invalid strategy",
            "version = \"1\"\nstrategy = \"rootfs\"\n",
            &["invalid strategy 'rootfs', must be 'oci_rootfs' or 'initramfs'", "fledge.toml:2:12"],
        ),
        case(
            "misspelt top-level key",
            "version = \"1\"\nstratgy = \"initramfs\"\n",
            &["unknown key `stratgy`", "did you mean `strategy`?", "fledge.toml:2:1"],
        ),
        case(
            "misspelt agent key",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsorce_strategy = \"local\"\n",
            &["unknown key `sorce_strategy`", "did you mean `source_strategy`?", "fledge.toml:4:1"],
        ),
        case(
            "misspelt source key",
            "version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_sha = \"x\"\n",
            &["did you mean `busybox_sha256`?", "fledge.toml:4:"],
        ),
        case(
            "misspelt table",
            "version = \"1\"\nstrategy = \"initramfs\"\n[mapping]\n\"a\" = \"/a\"\n",
            &["unknown key `mapping`", "did you mean `mappings`?"],
        ),
        case(
            "empty overlay_size",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"oci-layout:none\"\n[filesystem]\noverlay_size = \"\"\n",
            &[
                "'filesystem.overlay_size' is empty",
                "fledge.toml:6:16",
                "remove the line to use the default (\\\"1G\\\")",
            ],
        ),
        case(
            "empty filesystem type",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"oci-layout:none\"\n[filesystem]\ntype = \"\"\n",
            &["'filesystem.type' is empty", "fledge.toml:6:8"],
        ),
        case(
            "empty compression",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"oci-layout:none\"\n[filesystem]\ncompression = \" \"\n",
            &["'filesystem.compression' is empty", "fledge.toml:6:15"],
        ),
        case(
            "empty init path",
            "version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_path = \"{busybox}\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[init]\npath = \"\"\n",
            &["'init.path' is empty", "fledge.toml:9:8"],
        ),
        case(
            "empty manifest_format",
            "version = \"1\"\nstrategy = \"initramfs\"\nmanifest_format = \"\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nbusybox_path = \"{busybox}\"\n",
            &["'manifest_format' is empty", "fledge.toml:3:19"],
        ),
        case(
            "init none and path",
            "version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_path = \"{busybox}\"\n[init]\nnone = true\npath = \"agent\"\n",
            &["[init] cannot specify both none=true and path", "fledge.toml:5:1"],
        ),
        case(
            "agent with custom init",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\npath = \"agent\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n",
            &["'agent' section cannot be specified with custom init mode", "fledge.toml:5:1"],
        ),
        case(
            "agent with no init",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n",
            &["'agent' section cannot be specified with no-init mode"],
        ),
        case(
            "custom init file missing",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\npath = \"no-such-init\"\n",
            &["custom init file not found", "no-such-init", "fledge.toml:4:8"],
        ),
        case(
            "agent without strategy",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nversion = \"latest\"\n",
            &["'agent.source_strategy' is required"],
        ),
        case(
            "agent strategy unknown",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"ftp\"\n",
            &["invalid agent.source_strategy 'ftp', must be one of: release, local, http", "fledge.toml:4:19"],
        ),
        case(
            "release without version",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"release\"\n",
            &["'agent.version' is required when using 'release' source strategy"],
        ),
        case(
            "local without path",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\n",
            &["'agent.path' is required"],
        ),
        case(
            "local agent missing",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"missing-agent\"\n",
            &["agent path not found", "fledge.toml:5:8"],
        ),
        case(
            "local agent is a directory",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"adir\"\n",
            &["agent path is a directory, expected a file"],
        ),
        case(
            "http without url",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"http\"\n",
            &["'agent.url' is required"],
        ),
        case(
            "http url not http",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"http\"\nurl = \"ftp://x/kestrel\"\n",
            &["must be an http:// or https:// URL", "fledge.toml:5:7"],
        ),
        case(
            "malformed checksum",
            "version = \"1\"\nstrategy = \"initramfs\"\n[agent]\nsource_strategy = \"http\"\nurl = \"http://127.0.0.1:9/k\"\nchecksum = \"sha256:xyz\"\n",
            &["is not a sha256 checksum", "fledge.toml:6:12"],
        ),
        case(
            "busybox path missing",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"nope/busybox\"\n",
            &["busybox_path not found", "fledge.toml:6:16"],
        ),
        case(
            "busybox path and url",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\nbusybox_url = \"http://x/b\"\n",
            &["only one of 'source.busybox_url' or 'source.busybox_path'"],
        ),
        case(
            "busybox checksum mismatch",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\nbusybox_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
            &["checksum mismatch", "expected sha256:0000"],
        ),
        case(
            "busybox not an ELF",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"notelf.txt\"\n",
            &["is not an ELF executable"],
        ),
        case(
            "busybox url not http",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_url = \"/local/busybox\"\n",
            &["'source.busybox_url' must be an http:// or https:// URL", "busybox_path"],
        ),
        case(
            "mapping destination relative",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"hello\" = \"usr/bin/hello\"\n",
            &["mapping destination 'usr/bin/hello' must be an absolute path", "fledge.toml:8:11"],
        ),
        case(
            "mapping destination escapes",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"hello\" = \"/usr/../../etc/passwd\"\n",
            &["contains '..' which is not allowed", "fledge.toml:8:"],
        ),
        case(
            "mapping destination empty",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"hello\" = \"\"\n",
            &["mapping destination path cannot be empty for source 'hello'"],
        ),
        case(
            "mapping source missing",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"nothing-here\" = \"/x\"\n",
            &["mapping source not found", "fledge.toml:8:1"],
        ),
        case(
            "two mappings to one destination",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"hello\" = \"/x\"\n\"agent\" = \"/x\"\n",
            &["two mappings write '/x'"],
        ),
        case(
            "mapping replaces a directory",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"hello\" = \"/bin\"\n",
            &["mapping at ", "fledge.toml:8:1", "cannot replace directory /bin with a file"],
        ),
        case(
            "no init in none mode",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n",
            &["the image has no executable /init", "map your init program to /init"],
        ),
        case(
            "fifo in a mapped directory",
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\nnone = true\n[source]\nbusybox_path = \"{busybox}\"\n[mappings]\n\"withfifo\" = \"/data\"\n",
            &["mapping at ", "fledge.toml:8:1", "is a fifo; only files, directories and symlinks can be mapped"],
        ),
        case(
            "initramfs compressor unknown",
            "version = \"1\"\nstrategy = \"initramfs\"\n[filesystem]\ncompression = \"xz\"\n",
            &["invalid compression 'xz' for initramfs, must be one of: gzip, zstd, lz4, none", "fledge.toml:4:15"],
        ),
        case(
            "gzip level out of range",
            "version = \"1\"\nstrategy = \"initramfs\"\n[filesystem]\ncompression = \"gzip\"\ncompression_level = 12\n",
            &["gzip compression_level for initramfs must be between 1-9, got 12", "fledge.toml:5:21"],
        ),
        case(
            "level for an uncompressed archive",
            "version = \"1\"\nstrategy = \"initramfs\"\n[filesystem]\ncompression = \"none\"\ncompression_level = 3\n",
            &["compression 'none' takes no compression_level"],
        ),
        case(
            "filesystem type for initramfs",
            "version = \"1\"\nstrategy = \"initramfs\"\n[filesystem]\ntype = \"ext4\"\n",
            &["[filesystem] type applies to the oci_rootfs strategy only"],
        ),
        case(
            "oci_rootfs without a source",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n",
            &["either 'source.image' or 'source.dockerfile' is required for oci_rootfs strategy"],
        ),
        case(
            "oci_rootfs with image and dockerfile",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"nginx\"\ndockerfile = \"agent\"\n",
            &["only one of 'source.image' or 'source.dockerfile' may be specified for oci_rootfs strategy"],
        ),
        case(
            "malformed image reference",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"Nginx:latest\"\n",
            &["invalid image reference 'Nginx:latest'", "fledge.toml:4:9"],
        ),
        case(
            "filesystem type unknown",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"nginx\"\n[filesystem]\ntype = \"ntfs\"\n",
            &["invalid filesystem type 'ntfs'", "fledge.toml:6:8"],
        ),
        case(
            "squashfs level out of range",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"nginx\"\n[filesystem]\ncompression_level = 23\n",
            &["xz compression_level for squashfs must be between 0-22, got 23"],
        ),
        case(
            "overlay size unparsable",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"nginx\"\n[filesystem]\noverlay_size = \"lots\"\n",
            &["invalid overlay_size 'lots'"],
        ),
        case(
            "negative size buffer",
            "version = \"1\"\nstrategy = \"oci_rootfs\"\n[source]\nimage = \"nginx\"\n[filesystem]\ntype = \"ext4\"\nsize_buffer_mb = -1\n",
            &["filesystem.size_buffer_mb must be non-negative, got -1"],
        ),
        case(
            "manifest format unknown",
            "version = \"1\"\nstrategy = \"initramfs\"\nmanifest_format = \"volant-v2\"\n",
            &["invalid manifest format 'volant-v2'", "fledge.toml:3:19"],
        ),
        case(
            "several problems at once",
            "version = \"3\"\nstrategy = \"initramfs\"\n[filesystem]\ncompression = \"brotli\"\n",
            &["unsupported config version '3'", "invalid compression 'brotli'", "2 problems in"],
        ),
        manifest_case(
            "manifest without name",
            "version = \"1\"\nruntime = \"t\"\n",
            &["name is required", "manifest.toml:1:1"],
        ),
        manifest_case(
            "manifest schema version",
            "schema_version = \"v2\"\nname = \"t\"\nversion = \"1\"\nruntime = \"t\"\n",
            &["unsupported schema_version \"v2\" (expected \"v1\")", "manifest.toml:1:18"],
        ),
        manifest_case(
            "manifest cpu count",
            "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\n[resources]\ncpu_cores = 0\n",
            &["resources.cpu_cores must be between 1 and 1024, got 0", "manifest.toml:5:13"],
        ),
        manifest_case(
            "manifest memory too small",
            "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\n[resources]\nmemory_mb = 64\n",
            &["resources.memory_mb must be between 128"],
        ),
        manifest_case(
            "manifest network mode",
            "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\n[network]\nmode = \"nat\"\n",
            &["invalid network.mode 'nat'", "manifest.toml:5:8"],
        ),
        manifest_case(
            "manifest exposed port",
            "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\n[network]\n[[network.expose]]\nport = 70000\n",
            &["network.expose.port must be between 1 and 65535, got 70000"],
        ),
        manifest_case(
            "manifest misspelt table",
            "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\n[resorces]\ncpu_cores = 1\n",
            &["unknown key `resorces`", "did you mean `resources`?", "manifest.toml:4:"],
        ),
        manifest_case(
            "manifest unknown top-level key",
            "name = \"t\"\nversion = \"1\"\nruntime = \"t\"\nentrypoint = \"/x\"\n",
            &["unknown key `entrypoint`", "manifest.toml:4:1"],
        ),
        Case {
            name: "volant-v1 without http workload",
            config: BASE,
            manifest: Some("name = \"t\"\nversion = \"1\"\n[workload]\nentrypoint = \"/x\"\n"),
            args: &["--manifest-format", "volant-v1"],
            env: &[],
            expect: &["needs workload.type, workload.base_url", "manifest.toml:3:1"],
        },
        Case {
            name: "volant-v1 without manifest.toml",
            config: BASE,
            manifest: Some(NO_MANIFEST),
            args: &["--manifest-format", "volant-v1"],
            env: &[],
            expect: &["manifest.toml not found, and the volant-v1 manifest format needs one"],
        },
        Case {
            name: "output below a file",
            config: BASE,
            manifest: None,
            args: &["-o", "notelf.txt/x.cpio.gz"],
            env: &[],
            expect: &["notelf.txt is a file, not a directory"],
        },
        Case {
            name: "explicit manifest missing",
            config: BASE,
            manifest: None,
            args: &["-m", "nope.toml"],
            env: &[],
            expect: &["manifest file not found: nope.toml"],
        },
        Case {
            name: "config file missing",
            config: BASE,
            manifest: None,
            args: &["-c", "other.toml"],
            env: &[],
            expect: &["config file not found: other.toml"],
        },
        Case {
            name: "FLEDGE_AGENT not a file",
            config: "version = \"1\"\nstrategy = \"initramfs\"\n[source]\nbusybox_path = \"{busybox}\"\n",
            manifest: None,
            args: &[],
            env: &[("FLEDGE_AGENT", "/no/such/kestrel")],
            expect: &["FLEDGE_AGENT=/no/such/kestrel is not a readable file"],
        },
        Case {
            name: "agent unreachable and not cached",
            config: AGENTLESS,
            manifest: None,
            args: &[],
            env: &[("FLEDGE_AGENT_BASE_URL", "http://127.0.0.1:9/releases")],
            expect: &[
                "the kestrel agent could not be obtained",
                "FLEDGE_AGENT=/path/to/kestrel",
                "source_strategy = \\\"local\\\"",
            ],
        },
        Case {
            name: "dockerfile-only flag in config mode",
            config: BASE,
            manifest: None,
            args: &["--target", "x"],
            env: &[],
            expect: &["--dockerfile is required when using --output-initramfs, --context, --target, or --build-arg"],
        },
        Case {
            name: "config with a Dockerfile",
            config: BASE,
            manifest: None,
            args: &["agent", "-c", "fledge.toml"],
            env: &[],
            expect: &["--config cannot be used when building directly from a Dockerfile"],
        },
        Case {
            name: "two different Dockerfiles",
            config: BASE,
            manifest: None,
            args: &["a", "--dockerfile", "b"],
            env: &[],
            expect: &["dockerfile specified multiple times with differing values"],
        },
        Case {
            name: "Dockerfile is a directory",
            config: BASE,
            manifest: None,
            args: &["adir"],
            env: &[],
            expect: &["dockerfile path adir is a directory"],
        },
        Case {
            name: "bad build arg",
            config: BASE,
            manifest: None,
            args: &["agent", "--build-arg", "NOVALUE"],
            env: &[],
            expect: &["invalid --build-arg \"NOVALUE\": must be in KEY=VALUE form"],
        },
    ]
}

fn setup(case: &Case) -> Project {
    let p = Project::new();
    fs::copy(agent_binary(), p.path("agent")).unwrap();
    fs::copy(agent_binary(), p.path("hello")).unwrap();
    p.write("notelf.txt", "#!/bin/sh\n");
    fs::create_dir(p.path("adir")).unwrap();
    fs::create_dir(p.path("withfifo")).unwrap();
    nix::unistd::mkfifo(&p.path("withfifo/pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    p.write("fledge.toml", &case.config.replace("{busybox}", busybox()));
    if case.manifest != Some(NO_MANIFEST) {
        p.write("manifest.toml", case.manifest.unwrap_or(OK_MANIFEST));
    }
    p
}

#[test]
fn every_bad_input_is_a_located_error_with_no_output() {
    let cases = cases();
    assert!(cases.len() >= 30, "the issue asks for at least 30 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let p = setup(case);
        let before = p.listing();
        let mut cmd = p.fledge();
        cmd.arg("build").args(case.args);
        for (k, v) in case.env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd);
        let err = stderr(&out);
        let mut problems = Vec::new();
        if out.status.code() != Some(1) {
            problems.push(format!("exit status {:?}, expected 1", out.status.code()));
        }
        if !err.lines().any(|l| l.starts_with("error: ")) || err.contains("panicked") {
            problems.push("stderr must have an `error: ` line and no panic".to_string());
        }
        for needle in case.expect {
            let needle = needle.replace("\\\"", "\"");
            if !err.contains(&needle) {
                problems.push(format!("missing `{needle}`"));
            }
        }
        let after: Vec<String> = p.listing().into_iter().filter(|n| n != "cache" && n != "home").collect();
        if after != before {
            problems.push(format!("files left behind: {after:?} (before: {before:?})"));
        }
        if !problems.is_empty() {
            failures.push(format!("[{}] {}\n--- stderr:\n{err}", case.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// Runs `fledge ARGS` in `p` and checks a failure: exit 1, an `error: ` line, no panic, every
/// `expect` in stderr, no `refuse` in it, and no new file in the project directory.
fn assert_refused(p: &Project, cmd: &mut std::process::Command, expect: &[&str], refuse: &[&str]) {
    let outputs = || -> Vec<String> {
        p.listing().into_iter().filter(|n| !["cache", "home", "state"].contains(&n.as_str())).collect()
    };
    let before = outputs();
    let out = run(cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")) && !err.contains("panicked"), "{err}");
    for needle in expect {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    for needle in refuse {
        assert!(!err.contains(needle), "`{needle}` should not be in:\n{err}");
    }
    assert_eq!(outputs(), before, "nothing is written:\n{err}");
}

#[test]
fn image_commands_on_files_point_at_import_and_pull_refuses_them() {
    let p = Project::new();
    assert_refused(
        &p,
        p.fledge().args(["image", "inspect", "oci-layout:layout:v1"]),
        &["is not in the store", "fledge image import oci-layout:layout:v1"],
        &["fledge image pull"],
    );
    assert_refused(
        &p,
        p.fledge().args(["image", "pull", "oci-layout:layout:v1"]),
        &["oci-layout:layout:v1 names a file, not a registry", "fledge image import oci-layout:layout:v1"],
        &["https://", "Resolving"],
    );
    assert_refused(
        &p,
        p.fledge().args(["image", "pull", "docker-archive:app.tar"]),
        &["fledge image import docker-archive:app.tar"],
        &["https://"],
    );
}

#[test]
fn a_missing_copy_source_names_the_dockerfile_line() {
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch\n# a comment\nCOPY missing.txt /missing.txt\n");
    assert_refused(
        &p,
        p.fledge().args(["build", "Dockerfile"]),
        &["\"/missing.txt\" not found in the build context", "--> Dockerfile:3", "COPY missing.txt /missing.txt"],
        &[],
    );
}

#[test]
fn copy_from_a_name_that_is_no_stage_says_the_image_pull_failed_and_lists_the_stages() {
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch AS builder\nFROM scratch\nCOPY --from=nostage /x /y\n");
    // Docker Hub is reached through a proxy on a closed loopback port: nothing leaves the host.
    let mut cmd = p.fledge();
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env(var, "http://127.0.0.1:1");
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy").args(["build", "Dockerfile"]);
    assert_refused(
        &p,
        &mut cmd,
        &[
            "pulling image \"nostage\" failed",
            "--> Dockerfile:3",
            "if you meant a build stage, no stage named \"nostage\" exists",
            "\"builder\"",
        ],
        &["instruction's syntax"],
    );
}
