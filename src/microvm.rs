//! What every Fledge microVM shares, whether it runs an artifact (`fledge run`) or build
//! steps (a build VM serving the agent): the kernel and its modules, the accelerator, the
//! backend, the base kernel command line and sizing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fledge_vmm::cloud_hypervisor::CloudHypervisor;
use fledge_vmm::qemu::{Accel, Qemu};
use fledge_vmm::{Backend, Disk, VmSpec};

use crate::cli::{AccelChoice, VmmChoice};
use crate::dirs;

/// The kernel, accelerator and backend chosen for a VM.
#[derive(Clone)]
pub struct Machine {
    pub vmm: VmmChoice,
    pub accel: Accel,
    pub kernel: GuestKernel,
}

impl Machine {
    /// Finds the kernel and decides the accelerator (Cloud Hypervisor always runs guests
    /// under KVM; QEMU as `accel` says, probing KVM for `auto`).
    pub fn choose(vmm: VmmChoice, accel_choice: AccelChoice) -> Result<Machine> {
        let kernel = kernel()?;
        let accel = match vmm {
            VmmChoice::Qemu => accel(accel_choice, &kernel.image, kernel.acpi),
            VmmChoice::CloudHypervisor => Accel::Kvm,
        };
        Ok(Machine { vmm, accel, kernel })
    }

    pub fn backend(&self) -> Box<dyn Backend> {
        match self.vmm {
            VmmChoice::Qemu => Box::new(Qemu::new(self.accel)),
            VmmChoice::CloudHypervisor => Box::new(CloudHypervisor::from_env()),
        }
    }

    /// The VM for `initrd` (with the kernel's modules appended, written under `work`),
    /// `disks` and the full kernel command line `cmdline`.
    pub fn spec(
        &self,
        initrd: &Path,
        disks: Vec<Disk>,
        cmdline: String,
        (cpus, memory_mib): (u32, u32),
        work: &Path,
    ) -> Result<VmSpec> {
        let initrd = match &self.kernel.modules {
            Some(modules) => with_modules(initrd, modules, work)?,
            None => initrd.to_path_buf(),
        };
        Ok(VmSpec {
            kernel: self.kernel.image.clone(),
            initrd: Some(initrd),
            disks,
            cmdline,
            cpus,
            memory_mib,
            acpi: self.kernel.acpi,
            vsock_cid: None,
            network: false,
            work_dir: work.to_path_buf(),
        })
    }
}

/// The kernel parameters every guest gets: the serial console, and no reboot
/// after a panic (the VMM exits instead). Under TCG two calibrations are skipped that the
/// emulated CPU makes slow: the TSC's (its rate is the host's; on a loaded host the kernel
/// could even hang measuring it) and, with one vCPU on a machine without ACPI, the local APIC
/// timer's (QEMU's PIT serves instead; with ACPI tables a distro kernel finds no such timer
/// and would sleep forever), which saves about 0.25 s of every boot.
pub fn guest_cmdline(accel: Accel, cpus: u32, acpi: bool) -> String {
    let mut line = String::from("console=ttyS0 reboot=t panic=-1");
    if accel == Accel::Tcg {
        if let Some(khz) = host_tsc_khz() {
            line.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if cpus == 1 && !acpi {
            line.push_str(" noapictimer");
        }
    }
    line
}

/// The host's TSC rate, measured (20 ms): a TCG guest's TSC ticks at it. `/proc/cpuinfo`'s
/// "cpu MHz" is the current core clock, which frequency scaling moves away from the TSC's.
#[cfg(target_arch = "x86_64")]
fn host_tsc_khz() -> Option<u64> {
    // SAFETY: rdtsc has no preconditions on x86_64.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (start, ticks) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(20));
    let (elapsed, ticks) = (start.elapsed(), tsc().wrapping_sub(ticks));
    let khz = ticks as f64 / elapsed.as_secs_f64() / 1000.0;
    // A rate no x86 machine has means the measurement was disturbed: let the guest calibrate.
    (100_000.0..20_000_000.0).contains(&khz).then_some(khz.round() as u64)
}

#[cfg(not(target_arch = "x86_64"))]
fn host_tsc_khz() -> Option<u64> {
    None
}

/// The kernel to boot.
#[derive(Clone)]
pub struct GuestKernel {
    pub image: PathBuf,
    /// Fledge's own kernels say in the `config` beside them; others (distro kernels) are
    /// assumed to need ACPI.
    pub acpi: bool,
    /// An imported distro kernel's modules (`fledge kernel import`), appended to the initramfs.
    pub modules: Option<PathBuf>,
}

fn kernel() -> Result<GuestKernel> {
    let kernel = fledge_vmm::kernel::discover(dirs::state_dir().as_deref(), |v| std::env::var(v).ok())?;
    let image = kernel.vmlinux.or(kernel.bzimage).expect("discover returns a kernel with at least one image");
    // A kernel `fledge kernel build` made has its `config` beside it, wherever it is named
    // from; modules are only taken from Fledge's own kernel directories.
    let acpi = image.parent().and_then(crate::kernel_build::has_acpi).unwrap_or(true);
    let modules = match kernel.origin {
        fledge_vmm::KernelOrigin::Environment => None,
        _ => image.parent().map(|d| d.join("modules.cpio")).filter(|m| m.is_file()),
    };
    Ok(GuestKernel { image, acpi, modules })
}

/// `modules` (an uncompressed cpio) followed by `initrd`: the kernel unpacks concatenated
/// archives in turn. The modules go first because a legacy LZ4 initramfs has no end marker,
/// so nothing may follow it; each archive starts on a 4-byte boundary.
fn with_modules(initrd: &Path, modules: &Path, work: &Path) -> Result<PathBuf> {
    let joined = work.join("initrd-with-modules");
    let mut out = std::fs::File::create(&joined)?;
    let mut written = 0;
    for part in [modules, initrd] {
        let padding = &[0; 3][..(4 - written % 4) % 4];
        std::io::Write::write_all(&mut out, padding)?;
        written += padding.len();
        written += std::io::copy(
            &mut std::fs::File::open(part).with_context(|| format!("cannot read {}", part.display()))?,
            &mut out,
        )? as usize;
    }
    Ok(joined)
}

fn accel(choice: AccelChoice, kernel: &Path, acpi: bool) -> Accel {
    match choice {
        AccelChoice::Auto => crate::accel::auto(kernel, acpi, dirs::state_dir().as_deref()),
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_tsc_rate_is_plausible() {
        let khz = host_tsc_khz().expect("an x86_64 host has a TSC");
        assert!((100_000..20_000_000).contains(&khz), "{khz} kHz");
    }

    #[test]
    fn tcg_skips_the_apic_timer_calibration_only_with_one_cpu_and_no_acpi() {
        assert!(guest_cmdline(Accel::Tcg, 1, false).contains(" noapictimer"));
        assert!(!guest_cmdline(Accel::Tcg, 2, false).contains("noapictimer"));
        assert!(!guest_cmdline(Accel::Tcg, 1, true).contains("noapictimer"), "distro kernels keep the APIC timer");
        assert!(!guest_cmdline(Accel::Kvm, 1, false).contains("noapictimer"));
    }
}
