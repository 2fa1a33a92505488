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

#[test]
fn dockerfile_mode_refuses_what_it_cannot_build_with_a_clear_error() {
    let p = Project::new();
    p.write("Dockerfile", "FROM scratch\n");
    let out = run(p.fledge().args(["build", "Dockerfile"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the target stage is empty"), "{}", stderr(&out));
    let out = run(p.fledge().args(["build", "Dockerfile", "--output-initramfs"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--output-initramfs is not supported yet"), "{}", stderr(&out));
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
