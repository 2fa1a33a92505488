//! `fledge run ARTIFACT`: boots an initramfs or a rootfs image in a microVM with the configured kernel, streams
//! the guest's console, and exits with the workload's status (what guest-init reports, or the
//! status in the kernel's panic when the image's own init exits). A guest that outlives
//! `--timeout` is stopped and `fledge run` exits 124; Ctrl-C stops it and exits 130. No VMM
//! process, socket or temporary file is left behind either way.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fledge_vmm::qemu::Accel;
use fledge_vmm::{Disk, Vm};

use crate::cli::RunArgs;
use crate::guest_report::Lines;
use crate::interrupt;
use crate::microvm::{self, Machine};
use crate::progress::Progress;

/// Exit status when the guest outlived `--timeout` (as timeout(1)).
const TIMED_OUT: u8 = 124;
/// The kernel's command-line limit on x86.
const MAX_CMDLINE: usize = 2048;

/// What an artifact is, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum ArtifactKind {
    Initramfs,
    Rootfs(&'static str),
}

fn kind_of(path: &Path) -> Result<ArtifactKind> {
    let mut head = vec![0u8; 1088];
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = file.read(&mut head).with_context(|| format!("cannot read {}", path.display()))?;
    head.truncate(n);
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    Ok(
        if at(0, &[0x1f, 0x8b])
            || at(0, &[0x28, 0xb5, 0x2f, 0xfd])
            || at(0, &[0x02, 0x21, 0x4c, 0x18])
            || at(0, b"070701")
        {
            ArtifactKind::Initramfs
        } else if at(0, b"hsqs") {
            ArtifactKind::Rootfs("squashfs")
        } else if at(1080, &[0x53, 0xef]) {
            ArtifactKind::Rootfs("ext4")
        } else if at(1024, &[0xe2, 0xe1, 0xf5, 0xe0]) {
            ArtifactKind::Rootfs("erofs")
        } else {
            bail!(
                "{}: not an artifact Fledge can boot (expected an initramfs .cpio.gz/.lz4/.zst or a squashfs, ext4 or erofs image)",
                path.display()
            )
        },
    )
}

/// The kernel command line; `command` (if any) goes to guest-init as `fledge.cmd=`: its
/// arguments NUL-terminated, in base64, so quotes, spaces and newlines survive (QEMU appends
/// device parameters at the end, so ` -- ARGS` cannot be used).
fn cmdline(
    accel: Accel,
    cpus: u32,
    acpi: bool,
    verbose: bool,
    root_params: &str,
    command: &[String],
) -> Result<String> {
    use base64::Engine;
    let mut line = microvm::guest_cmdline(accel, cpus, acpi);
    line.push_str(root_params);
    if !verbose {
        line.push_str(" quiet");
    }
    if !command.is_empty() {
        let argv: Vec<u8> = command.iter().flat_map(|a| a.bytes().chain([0])).collect();
        line.push_str(" fledge.cmd=");
        line.push_str(&base64::engine::general_purpose::STANDARD.encode(argv));
    }
    // QEMU adds about 40 bytes per virtio-mmio device.
    if line.len() + 200 >= MAX_CMDLINE {
        bail!(
            "the command is too long for the kernel command line ({} of about {} bytes)",
            line.len(),
            MAX_CMDLINE - 200
        );
    }
    Ok(line)
}

/// Copies the console to stdout on a thread; returns the first status it reports.
fn watch_console(mut console: Box<dyn Read + Send>) -> std::thread::JoinHandle<Option<u8>> {
    std::thread::spawn(move || {
        let mut lines = Lines::default();
        let mut status = None;
        let mut buf = [0u8; 8192];
        let stdout = std::io::stdout();
        loop {
            match console.read(&mut buf) {
                Ok(0) | Err(_) => return status,
                Ok(n) => {
                    let mut out = stdout.lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    // The last report wins: guest-init's own comes after anything the workload printed.
                    status = lines.feed(&buf[..n]).or(status);
                }
            }
        }
    })
}

/// The initramfs and disks that boot `artifact`, and what the command line must add. A
/// rootfs image boots from a read-only disk under an initramfs holding only Fledge's init,
/// which mounts it below a tmpfs overlay (see guest-init's `rootfs`), so the image is never
/// changed.
fn boot_media(args: &RunArgs, work: &Path) -> Result<(PathBuf, Vec<Disk>, String)> {
    Ok(match kind_of(&args.artifact)? {
        ArtifactKind::Initramfs => (args.artifact.clone(), Vec::new(), String::new()),
        ArtifactKind::Rootfs(format) => {
            let wrapper = work.join("init.cpio.lz4");
            crate::initramfs::init_only(&wrapper, crate::guest_init::BINARY)?;
            let mut params = format!(" fledge.root=/dev/vda fledge.rootfstype={format}");
            if let Some(size) = &args.overlay_size {
                let bytes = crate::paths::parse_size(size)
                    .with_context(|| format!("--overlay-size {size}: expected a size, e.g. 256M or 1G"))?;
                params.push_str(&format!(" fledge.overlay_size={}k", bytes.div_ceil(1024)));
            }
            (wrapper, vec![Disk { path: args.artifact.clone(), read_only: true, serial: None }], params)
        }
    })
}

pub fn run(args: &RunArgs, verbose: bool, progress: &Progress) -> Result<u8> {
    let work = tempfile::Builder::new().prefix("fledge-run-").tempdir()?;
    let (initrd, disks, root_params) = boot_media(args, work.path())?;
    let memory_mib = crate::paths::parse_size(&args.memory)
        .map(|b| b >> 20)
        .filter(|&mib| mib >= 64)
        .with_context(|| format!("--memory {}: expected a size of at least 64M, e.g. 512M or 2G", args.memory))?;
    let machine = Machine::choose(args.vmm, args.accel)?;
    let spec = machine.spec(
        &initrd,
        disks,
        cmdline(machine.accel, args.cpus, machine.kernel.acpi, verbose, &root_params, &args.command)?,
        (args.cpus, memory_mib as u32),
        work.path(),
    )?;
    let backend = machine.backend();
    progress.say(&format!("Booting {} ({}, {:?})", args.artifact.display(), backend.name(), machine.accel));
    let mut vm = backend.launch(&spec)?;
    let console = watch_console(vm.take_console().expect("a new VM has its console"));
    let outcome = wait(vm.as_mut(), args.timeout);
    vm.stop()?;
    let status = console.join().unwrap_or(None);
    match outcome? {
        Waited::Exited => status.with_context(|| {
            let said = vm.diagnostics();
            let vmm = if said.is_empty() { String::new() } else { format!("; {} said: {said}", backend.name()) };
            format!(
                "the guest stopped without reporting an exit status (see its console output above{vmm})\n  = help: rerun with --verbose to see the kernel's messages"
            )
        }),
        Waited::TimedOut => {
            eprintln!("error: the guest did not finish within {} s; it was stopped", args.timeout);
            Ok(TIMED_OUT)
        }
    }
}

enum Waited {
    Exited,
    TimedOut,
}

/// Waits for the VMM to exit, the timeout (0: none) or Ctrl-C.
fn wait(vm: &mut dyn Vm, timeout_secs: u64) -> Result<Waited> {
    let deadline = (timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(timeout_secs));
    loop {
        interrupt::check()?;
        let slice = Instant::now() + Duration::from_millis(100);
        let until = deadline.map_or(slice, |d| d.min(slice));
        if vm.wait_until(until)?.is_some() {
            return Ok(Waited::Exited);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Waited::TimedOut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_recognised_by_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        assert_eq!(kind_of(&write("a", &[0x1f, 0x8b, 8, 0])).unwrap(), ArtifactKind::Initramfs);
        assert_eq!(kind_of(&write("b", b"hsqs....")).unwrap(), ArtifactKind::Rootfs("squashfs"));
        let mut ext4 = vec![0u8; 2048];
        ext4[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(kind_of(&write("c", &ext4)).unwrap(), ArtifactKind::Rootfs("ext4"));
        assert!(kind_of(&write("d", b"hello")).unwrap_err().to_string().contains("not an artifact Fledge can boot"));
    }

    #[test]
    fn a_command_goes_to_init_encoded_whole() {
        let line =
            cmdline(Accel::Kvm, 1, true, false, "", &["sh".into(), "-c".into(), "echo \"hi\"\n".into()]).unwrap();
        assert_eq!(line, "console=ttyS0 reboot=t panic=-1 quiet fledge.cmd=c2gALWMAZWNobyAiaGkiCgA=");
        assert!(cmdline(Accel::Kvm, 1, true, false, "", &["x".repeat(3000)]).is_err());
        assert!(!cmdline(Accel::Kvm, 1, true, true, "", &[]).unwrap().contains("quiet"));
        let root = cmdline(Accel::Kvm, 1, true, false, " fledge.root=/dev/vda", &[]).unwrap();
        assert!(root.starts_with("console=ttyS0 reboot=t panic=-1 fledge.root=/dev/vda"));
    }
}
