//! Real boots of built initramfs artifacts with `fledge run` under QEMU (TCG): Fledge's init
//! runs as PID 1, mounts the runtime filesystems, supervises the workload, reports its exit
//! status, which becomes `fledge run`'s, and powers the machine off.
//!
//! Needs `qemu-system-x86_64` and a kernel: `FLEDGE_TEST_KERNEL`, else the cached one from
//! `scripts/fetch-test-kernel.sh` (`make test` sets this up). Without them each test is skipped, saying why (tests/allowed-skips.txt).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("FLEDGE_TEST_KERNEL").filter(|k| !k.is_empty()) {
        return Some(PathBuf::from(k));
    }
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-test-kernel.sh"))
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Boots `initramfs` with `fledge run` (extra `args` after it); returns the console output
/// and fledge's exit code, which is the workload's status.
fn boot_with(p: &Project, kernel: &Path, initramfs: &Path, args: &[&str]) -> (String, Option<i32>) {
    let out = run(p
        .fledge()
        .args(["run", "-q", "--timeout", "120", "--accel", "tcg"])
        .arg(initramfs)
        .args(args)
        .env("FLEDGE_KERNEL_BZIMAGE", kernel)
        .env("TMPDIR", p.path(".")));
    (format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)), out.status.code())
}

fn boot(p: &Project, kernel: &Path, initramfs: &Path) -> (String, Option<i32>) {
    boot_with(p, kernel, initramfs, &[])
}

fn c_program(p: &Project, name: &str, source: &str) -> PathBuf {
    let src = p.write(&format!("{name}.c"), source);
    let out = p.path(name);
    assert_success(&run(Command::new("gcc").args(["-static", "-Os", "-s", "-o"]).arg(&out).arg(&src)));
    out
}

/// The kernel to boot, when QEMU is installed and a kernel is there; else the test is skipped.
fn boot_tools() -> Result<PathBuf, Skipped> {
    qemu()?;
    kernel().ok_or_else(|| skip("no test kernel (set FLEDGE_TEST_KERNEL or run scripts/fetch-test-kernel.sh)"))
}

/// Skips the test when QEMU is not installed.
fn qemu() -> Result<(), Skipped> {
    let installed = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    if installed { Ok(()) } else { Err(skip("qemu-system-x86_64 is not installed (apt install qemu-system-x86)")) }
}

fn project(init_table: &str) -> Project {
    let p = Project::new();
    p.write(
        "fledge.toml",
        &format!(
            "version = \"1\"\nstrategy = \"initramfs\"\n{init_table}\n[source]\nbusybox_path = \"{}\"\n",
            busybox()
        ),
    );
    p.write("manifest.toml", "name = \"boot\"\nversion = \"1\"\nruntime = \"boot\"\n");
    p
}

#[test]
fn default_mode_runs_the_agent_reports_its_status_and_powers_off() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(
        &p,
        "agent",
        r#"#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
int main(void) {
    struct stat st;
    printf("agent ppid=%d proc=%d tmp-mode=%o\n", getppid(), stat("/proc/self", &st) == 0, stat("/tmp", &st) == 0 ? st.st_mode & 07777 : 0);
    return 3;
}"#,
    );
    assert_success(&run(p.fledge().args(["build", "-o", "boot.cpio.gz"])));
    let (console, status) = boot(&p, &kernel, &p.path("boot.cpio.gz"));
    assert_eq!(status, Some(3), "fledge run exits with the agent's status:\n{console}");
    assert!(
        console.contains("agent ppid=1 proc=1 tmp-mode=1777"),
        "agent runs as init's child with /proc and a tmpfs /tmp:\n{console}"
    );
    assert!(console.contains("fledge-init: /bin/kestrel exited with status 3"), "{console}");
    assert!(console.contains("FLEDGE_EXIT_STATUS=3"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
fn custom_init_mode_runs_the_users_script_under_fledge_init() {
    let kernel = need!(boot_tools());
    let p = project("[init]\npath = \"my-init.sh\"\n");
    p.write_mode("my-init.sh", b"#!/bin/sh\necho \"custom init, parent $PPID, $(ls /dev/console)\"\nexit 7\n", 0o755);
    assert_success(&run(p.fledge().args(["build", "-o", "custom.cpio.gz"])));
    let (console, status) = boot(&p, &kernel, &p.path("custom.cpio.gz"));
    assert_eq!(status, Some(7), "{console}");
    assert!(console.contains("custom init, parent 1, /dev/console"), "{console}");
    assert!(console.contains("FLEDGE_EXIT_STATUS=7"), "{console}");
}

#[test]
fn orphans_are_reaped_and_a_killed_workload_reports_its_signal() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    // The agent leaves an orphan behind, then dies of SIGKILL: init must reap the orphan,
    // report 128+9 and still power off.
    c_program(
        &p,
        "agent",
        r#"#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    if (fork() == 0) { if (fork() == 0) { sleep(1); return 0; } return 0; }
    sleep(2);
    puts("agent: killing myself");
    fflush(stdout);
    raise(SIGKILL);
    return 0;
}"#,
    );
    assert_success(&run(p.fledge().args(["build", "-o", "k.cpio.gz"])));
    let (console, status) = boot(&p, &kernel, &p.path("k.cpio.gz"));
    assert_eq!(status, Some(137), "{console}");
    assert!(console.contains("agent: killing myself"), "{console}");
    assert!(console.contains("FLEDGE_EXIT_STATUS=137"), "{console}");
    let _ = fs::remove_file(p.path("k.cpio.gz"));
}

#[test]
fn poweroff_inside_the_guest_powers_off() {
    let kernel = need!(boot_tools());
    let p = project("[init]\npath = \"my-init.sh\"\n");
    p.write_mode("my-init.sh", b"#!/bin/sh\necho asking for power-off\npoweroff\nsleep 30\necho STILL ALIVE\n", 0o755);
    assert_success(&run(p.fledge().args(["build", "-o", "off.cpio.gz"])));
    let started = Instant::now();
    let (console, status) = boot(&p, &kernel, &p.path("off.cpio.gz"));
    assert_eq!(status, Some(0), "a power-off from inside counts as success: {console}");
    assert!(console.contains("fledge-init: power-off requested"), "{console}");
    assert!(!console.contains("STILL ALIVE"), "{console}");
    assert!(started.elapsed() < Duration::from_secs(30), "powered off without waiting for the script");
}

#[test]
fn an_initramfs_made_from_a_registry_image_boots_with_its_files_and_owners() {
    let kernel = need!(boot_tools());
    let registry = need!(registry::start());
    let builder = Project::new();
    let image = layered_test_image(&registry, &builder, "fledge/bootable");
    let p = Project::new();
    p.write(
        "fledge.toml",
        &format!("version = \"1\"\nstrategy = \"initramfs\"\n[init]\npath = \"check.sh\"\n[source]\nimage = \"{image}\"\nbusybox_path = \"{}\"\n", busybox()),
    );
    p.write("manifest.toml", "name = \"img\"\nversion = \"1\"\nruntime = \"img\"\n");
    p.write_mode("check.sh", b"#!/bin/sh\ncat /etc/motd\nstat -c 'owner %u:%g mode %a' /home/user/notes\ntest -e /etc/hostname || echo 'whiteout applied'\n", 0o755);
    assert_success(&run(p.fledge().args(["build", "-o", "img.cpio.gz"])));
    let (console, status) = boot(&p, &kernel, &p.path("img.cpio.gz"));
    assert_eq!(status, Some(0), "{console}");
    assert!(console.contains("from the upper layer"), "{console}");
    assert!(console.contains("owner 1000:1000 mode 600"), "{console}");
    assert!(console.contains("whiteout applied"), "{console}");
    assert!(console.contains("FLEDGE_EXIT_STATUS=0"), "{console}");
}

#[test]
fn a_command_after_dashes_replaces_the_workload_and_its_status_is_returned() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(&p, "agent", "int main(void) { return 0; }");
    assert_success(&run(p.fledge().args(["build", "-o", "cmd.cpio.gz"])));
    let (console, status) = boot_with(
        &p,
        &kernel,
        &p.path("cmd.cpio.gz"),
        &["--", "sh", "-c", "echo \"to stdout\"; echo to-stderr >&2; grep SigIgn /proc/self/status; exit 42"],
    );
    assert_eq!(status, Some(42), "{console}");
    assert!(console.contains("to stdout") && console.contains("to-stderr"), "{console}");
    assert!(
        console.contains("SigIgn:\t0000000000000000"),
        "the workload ignores no signal (SIGPIPE is reset): {console}"
    );
}

#[test]
fn a_hanging_guest_is_stopped_at_the_timeout_and_leaves_nothing_behind() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(&p, "agent", "#include <unistd.h>\nint main(void) { for (;;) pause(); }");
    assert_success(&run(p.fledge().args(["build", "-o", "hang.cpio.gz"])));
    let tmp = p.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let started = Instant::now();
    let out = run(p
        .fledge()
        .args(["run", "-q", "--timeout", "5", "--accel", "tcg"])
        .arg(p.path("hang.cpio.gz"))
        .env("FLEDGE_KERNEL_BZIMAGE", &kernel)
        .env("TMPDIR", &tmp));
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not finish within 5 s"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "no socket or temporary directory left");
    let qemus = run(Command::new("pgrep").args(["-f", &p.path("hang.cpio.gz").display().to_string()]));
    assert!(qemus.stdout.is_empty(), "no QEMU left running: {}", String::from_utf8_lossy(&qemus.stdout));
}

#[test]
fn run_refuses_what_it_cannot_boot_with_a_clear_error() {
    let p = Project::new();
    p.write("notes.txt", "hello");
    let out = run(p.fledge().args(["run", "notes.txt"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("notes.txt: not an artifact Fledge can boot"), "{}", stderr(&out));
    let out = run(p.fledge().args(["run", "missing.cpio.gz"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open missing.cpio.gz"), "{}", stderr(&out));
}

#[test]
fn auto_acceleration_probes_kvm_once_and_remembers_the_answer() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(&p, "agent", "int main(void) { return 5; }");
    assert_success(&run(p.fledge().args(["build", "-o", "auto.cpio.gz"])));
    let state = p.path("state");
    let boot = || {
        run(p
            .fledge()
            .args(["run", "-q", "--accel", "auto"])
            .arg(p.path("auto.cpio.gz"))
            .env("FLEDGE_KERNEL_BZIMAGE", &kernel)
            .env("FLEDGE_STATE_DIR", &state))
    };
    let first = boot();
    assert_eq!(first.status.code(), Some(5), "{}", stderr(&first));
    let records: Vec<_> = fs::read_dir(state.join("vmm")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let answer = fs::read_to_string(&records[0]).unwrap();
    assert!(answer == "kvm\n" || answer == "tcg\n", "{answer:?}");
    eprintln!("KVM probe on this host: {}", answer.trim());
    let started = Instant::now();
    let second = boot();
    assert_eq!(second.status.code(), Some(5), "{}", stderr(&second));
    assert!(started.elapsed() < Duration::from_secs(60));
    let qemus = run(Command::new("pgrep").args(["-f", "fledge-kvm-probe"]));
    assert!(qemus.stdout.is_empty(), "the probe VM is gone");
}

#[test]
fn ctrl_c_stops_the_guest_and_exits_130_leaving_nothing_behind() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(
        &p,
        "agent",
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { puts(\"agent up\"); fflush(stdout); for (;;) pause(); }",
    );
    assert_success(&run(p.fledge().args(["build", "-o", "int.cpio.gz"])));
    let tmp = p.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut child = p
        .fledge()
        .args(["run", "-q", "--accel", "tcg", "--timeout", "120"])
        .arg(p.path("int.cpio.gz"))
        .env("FLEDGE_KERNEL_BZIMAGE", &kernel)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the guest is up, then press Ctrl-C (SIGINT to fledge, as a terminal does).
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("agent up") {
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(n > 0, "the guest ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "no socket or temporary directory left");
    let qemus = run(Command::new("pgrep").args(["-f", &p.path("int.cpio.gz").display().to_string()]));
    assert!(qemus.stdout.is_empty(), "no QEMU left running");
}

#[test]
fn with_init_none_the_status_comes_from_the_kernels_panic() {
    let kernel = need!(boot_tools());
    let p = project("[init]\nnone = true\n[mappings]\n\"my-init\" = \"/init\"\n");
    p.write_mode("my-init", b"#!/bin/sh\necho \"own init, pid $$\"\nexit 3\n", 0o755);
    assert_success(&run(p.fledge().args(["build", "-o", "none.cpio.gz"])));
    let (console, status) = boot(&p, &kernel, &p.path("none.cpio.gz"));
    assert!(console.contains("own init, pid 1"), "{console}");
    assert_eq!(status, Some(3), "the status in \"Attempted to kill init! exitcode=0x300\": {console}");
}

#[test]
fn cloud_hypervisor_missing_is_a_clear_error() {
    let kernel = need!(boot_tools());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(&p, "agent", "int main(void) { return 0; }");
    assert_success(&run(p.fledge().args(["build", "-o", "ch.cpio.gz"])));
    let out = run(p
        .fledge()
        .args(["run", "--vmm", "cloud-hypervisor", "ch.cpio.gz"])
        .env("FLEDGE_KERNEL_BZIMAGE", &kernel)
        .env("CLOUDHYPERVISOR", "/nonexistent/cloud-hypervisor"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("set CLOUDHYPERVISOR to its binary"), "{}", stderr(&out));
}

#[test]
fn a_kernel_qemu_cannot_load_fails_fast_with_qemus_reason() {
    need!(qemu());
    let p = project("[agent]\nsource_strategy = \"local\"\npath = \"agent\"\n");
    c_program(&p, "agent", "int main(void) { return 0; }");
    assert_success(&run(p.fledge().args(["build", "-o", "k.cpio.gz"])));
    p.write("not-a-kernel", "hello");
    let started = Instant::now();
    let out = run(p
        .fledge()
        .args(["run", "--accel", "tcg", "k.cpio.gz"])
        .env("FLEDGE_KERNEL_BZIMAGE", p.path("not-a-kernel")));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("QEMU failed"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(8), "no wait for a QMP socket that never comes");
}
