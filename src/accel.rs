//! How guests run: KVM only where a probe boot shows this host's KVM runs a stock guest. On
//! some hosts `/dev/kvm` opens and `KVM_CREATE_VM` succeeds, yet guests die of emulation
//! failures (nested, shadow-paging KVM), so only booting tells. The probe boots the kernel
//! with an initramfs holding just guest-init (which finds no workload and reports 127), waits up to [`PROBE_TIMEOUT`] for its exit
//! report, and the answer is remembered per host kernel and guest kernel under
//! `$FLEDGE_STATE_DIR/vmm/`.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use fledge_vmm::qemu::{Accel, Qemu};
use fledge_vmm::{Backend, VmSpec};
use sha2::{Digest, Sha256};

use crate::guest_report::Lines;

/// A working KVM boots guest-init in well under a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// KVM if `/dev/kvm` is usable and a probe boot of `kernel` under it succeeds, else TCG.
pub fn auto(kernel: &Path, acpi: bool, state_dir: Option<&Path>) -> Accel {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        tracing::debug!("/dev/kvm is not usable; guests run under TCG");
        return Accel::Tcg;
    }
    let record = state_dir.map(|dir| dir.join("vmm").join(format!("kvm-probe-{}", probe_key(kernel))));
    if let Some(answer) = record.as_ref().and_then(|r| std::fs::read_to_string(r).ok()) {
        return if answer.trim() == "kvm" { Accel::Kvm } else { Accel::Tcg };
    }
    let works = match probe(kernel, acpi) {
        Ok(works) => works,
        Err(e) => {
            // No answer (QEMU missing, a launch failure): use TCG now, probe again next time.
            tracing::debug!("KVM probe could not run: {e:#}");
            return Accel::Tcg;
        }
    };
    tracing::info!(
        "KVM probe: {}",
        if works { "guests boot under KVM" } else { "KVM cannot boot guests here; using TCG" }
    );
    if let Some(record) = record
        && let Some(dir) = record.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = std::fs::write(&record, if works { "kvm\n" } else { "tcg\n" });
    }
    if works { Accel::Kvm } else { Accel::Tcg }
}

/// The host kernel and the guest kernel file: what the probe's answer depends on.
fn probe_key(kernel: &Path) -> String {
    let mut h = Sha256::new();
    h.update(std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default());
    h.update(kernel.as_os_str().as_encoded_bytes());
    if let Ok(meta) = std::fs::metadata(kernel) {
        h.update(meta.len().to_le_bytes());
        h.update(format!("{:?}", meta.modified().ok()));
    }
    hex::encode(&h.finalize()[..8])
}

fn probe(kernel: &Path, acpi: bool) -> anyhow::Result<bool> {
    let dir = tempfile::Builder::new().prefix("kvm-probe-").tempdir_in(crate::scratch::state_tmp()?)?;
    let initrd = dir.path().join("probe.cpio.gz");
    crate::initramfs::init_only(&initrd, crate::guest_init::BINARY)?;
    let spec = VmSpec {
        kernel: kernel.to_path_buf(),
        initrd: Some(initrd),
        disks: Vec::new(),
        cmdline: "console=ttyS0 reboot=t panic=-1 quiet".into(),
        cpus: 1,
        memory_mib: 256,
        acpi,
        vsock_cid: None,
        network: false,
        work_dir: dir.path().to_path_buf(),
    };
    let mut vm = Qemu::new(Accel::Kvm).launch(&spec)?;
    let mut console = vm.take_console().expect("a new VM has its console");
    let reader = std::thread::spawn(move || {
        let mut lines = Lines::default();
        let mut buf = [0u8; 4096];
        loop {
            match console.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) if lines.feed(&buf[..n]).is_some() => return true,
                Ok(_) => {}
            }
        }
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while !reader.is_finished()
        && Instant::now() < deadline
        && vm.wait_until(Instant::now() + Duration::from_millis(50))?.is_none()
    {}
    vm.stop()?;
    Ok(reader.join().unwrap_or(false))
}
