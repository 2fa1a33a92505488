//! `fledge kernel build`: the kernel `make test` built (once, cached under the test cache)
//! is found again without rebuilding, and it boots a Fledge initramfs with `fledge run`,
//! found through the state directory like any user's.
//!
//! Needs `FLEDGE_TEST_KERNEL_STATE` (the state directory `make test` built the kernel in) and
//! QEMU; without them each test is skipped, saying why (tests/allowed-skips.txt).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn fledge_with_state(p: &Project, state: &std::path::Path) -> Command {
    let mut cmd = p.fledge();
    cmd.env("FLEDGE_STATE_DIR", state).env_remove("FLEDGE_KERNEL_VMLINUX").env_remove("FLEDGE_KERNEL_BZIMAGE");
    cmd
}

#[test]
fn a_built_kernel_is_reused_and_boots_an_initramfs() {
    let state = need!(built_kernel_state());
    let p = Project::new();
    let started = Instant::now();
    let out = run(fledge_with_state(&p, &state).args(["kernel", "build"]));
    assert_success(&out);
    assert!(stderr(&out).contains("is built already"), "the cached build is reused: {}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(120), "no rebuild");
    let config = std::fs::read_to_string(state.join("kernel/config")).unwrap();
    for option in [
        "CONFIG_VIRTIO_BLK=y",
        "CONFIG_SQUASHFS_ZSTD=y",
        "CONFIG_EROFS_FS=y",
        "CONFIG_EXT4_FS=y",
        "CONFIG_OVERLAY_FS=y",
        "CONFIG_VIRTIO_VSOCKETS=y",
    ] {
        assert!(config.lines().any(|l| l == option), "{option} built in");
    }

    p.write(
        "fledge.toml",
        &format!(
            "version = \"1\"\nstrategy = \"initramfs\"\n[init]\npath = \"check.sh\"\n[source]\nbusybox_path = \"{}\"\n",
            busybox()
        ),
    );
    p.write("manifest.toml", "name = \"k\"\nversion = \"1\"\nruntime = \"k\"\n");
    p.write_mode("check.sh", b"#!/bin/sh\nsleep 1\necho \"kernel $(uname -r) up\"\nexit 9\n", 0o755); // sleep: timers work
    assert_success(&run(p.fledge().args(["build", "-o", "k.cpio.gz"])));
    let out = run(fledge_with_state(&p, &state).args(["run", "-q", "--accel", "tcg", "--timeout", "120", "k.cpio.gz"]));
    let console = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(9), "{console}{}", stderr(&out));
    assert!(console.contains("kernel 6.1") && console.contains(" up"), "{console}");
}

#[test]
fn a_missing_source_tarball_is_a_clear_error() {
    let p = Project::new();
    let out = run(p.fledge().args(["kernel", "build", "--source", "no-such-linux.tar.xz"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open the kernel source no-such-linux.tar.xz"), "{}", stderr(&out));
    assert!(!p.path("state/kernel/vmlinux").exists());
}

#[test]
fn rootfs_images_boot_read_only_under_a_writable_overlay() {
    let state = need!(built_kernel_state());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/runnable");
    let p = Project::new();
    std::fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("manifest.toml", "name = \"r\"\nversion = \"1\"\nruntime = \"r\"\n");
    let mut kinds = vec![("squashfs", "r.squashfs"), ("ext4", "r.img")];
    if nix::unistd::Uid::effective().is_root() {
        kinds.push(("erofs", "r.erofs")); // this image has owners only root can stage for mkfs.erofs
    }
    let check = "cat /etc/motd; stat -c 'owner %u:%g mode %a' /home/user/notes; \
                 test -e /etc/hostname || echo 'whiteout applied'; \
                 echo x > /etc/written && echo \"overlay \"writable; exit 6";
    for (kind, out) in kinds {
        p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"{image}\"\n[filesystem]\ntype = \"{kind}\"\n"));
        assert_success(&run(p.fledge().args(["build", "-o", out])));
        let before = std::fs::read(p.path(out)).unwrap();
        let result = run(fledge_with_state(&p, &state).args([
            "run",
            "-q",
            "--accel",
            "tcg",
            "--timeout",
            "120",
            "--overlay-size",
            "16M",
            out,
            "--",
            "sh",
            "-c",
            check,
        ]));
        let console = String::from_utf8_lossy(&result.stdout);
        assert_eq!(result.status.code(), Some(6), "{kind}: {console}{}", stderr(&result));
        for expected in ["from the upper layer", "owner 1000:1000 mode 600", "whiteout applied", "overlay writable"] {
            assert!(console.contains(expected), "{kind}: {expected:?} in {console}");
        }
        assert!(std::fs::read(p.path(out)).unwrap() == before, "{kind}: the image is never written");
    }
}

#[test]
fn a_debian_kernel_package_is_imported_with_the_modules_guests_need() {
    let kernel = need!(env_path("FLEDGE_TEST_KERNEL", "make test fetches Debian's cloud kernel"));
    let deb = kernel.parent().unwrap().join("package.deb");
    skip_unless!(deb.is_file(), "{} is missing (scripts/fetch-test-kernel.sh keeps it)", deb.display());
    let registry = need!(registry::start());
    let p = Project::new();
    let state = p.path("imported");
    let out = run(fledge_with_state(&p, &state).arg("kernel").arg("import").arg(&deb));
    assert_success(&out);
    for module in ["virtio_blk", "squashfs", "overlay", "vmw_vsock_virtio_transport"] {
        assert!(stderr(&out).contains(module), "{module} packed: {}", stderr(&out));
    }
    let vmlinux = std::fs::read(state.join("kernel/vmlinux")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF", "the ELF inside the bzImage");

    // A squashfs rootfs boots on it: the modules load before the disk is mounted.
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/distro-kernel");
    std::fs::copy(agent_binary(), p.path("agent")).unwrap();
    p.write("manifest.toml", "name = \"d\"\nversion = \"1\"\nruntime = \"d\"\n");
    p.write("fledge.toml", &format!("version = \"1\"\nstrategy = \"oci_rootfs\"\n[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n[source]\nimage = \"{image}\"\n"));
    assert_success(&run(p.fledge().args(["build", "-o", "d.squashfs"])));
    let result = run(fledge_with_state(&p, &state).args([
        "run",
        "-q",
        "--accel",
        "tcg",
        "--timeout",
        "120",
        "d.squashfs",
        "--",
        "sh",
        "-c",
        "cat /etc/motd; exit 8",
    ]));
    let console = String::from_utf8_lossy(&result.stdout);
    assert_eq!(result.status.code(), Some(8), "{console}{}", stderr(&result));
    assert!(console.contains("from the upper layer") && !console.contains("cannot load module"), "{console}");
}

#[test]
fn importing_something_that_is_not_a_kernel_is_a_clear_error() {
    let p = Project::new();
    p.write("notes.txt", "not a kernel");
    let out = run(p.fledge().args(["kernel", "import", "notes.txt"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("notes.txt: not a bzImage kernel"), "{}", stderr(&out));
    assert!(!p.path("state/kernel/bzImage").exists(), "nothing installed");
}
