//! MicroVM layer for Fledge: guest kernel discovery and the backends that boot guests.
//!
//! A [`Backend`] turns a [`VmSpec`] (kernel, initramfs, disks, command line, size) into a
//! running [`Vm`]. Guarantees every backend keeps:
//! - the guest's serial console is a byte stream the caller reads ([`Vm::take_console`]);
//! - [`Vm::stop`] ends the guest (politely, then by force) and [`Drop`] does the same, so no
//!   VMM process, socket or temporary file outlives the `Vm`, also on errors and Ctrl-C;
//! - nothing the guest prints is trusted: the VMM's exit status never stands in for the
//!   guest's result (Cloud Hypervisor exits 0 after a vCPU failure), callers read the
//!   guest's own report from the console or vsock.
//!
//! Backends: [`qemu`] (`-M microvm`, QMP; KVM or TCG) and [`cloud_hypervisor`] (its REST
//! API over a Unix socket; needs a working KVM to boot).

pub mod cloud_hypervisor;
pub mod kernel;
pub mod qemu;
mod qmp;
pub mod vsock;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Instant;

pub use kernel::{Kernel, KernelError, KernelOrigin};

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// A PVH-capable ELF `vmlinux` or a `bzImage`.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Block devices, in order (`/dev/vda`, `/dev/vdb`, …).
    pub disks: Vec<Disk>,
    pub cmdline: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Describe the machine with ACPI tables (distro kernels need them; Fledge's minimal
    /// kernel has no ACPI and finds virtio-mmio devices on its command line instead).
    pub acpi: bool,
    /// Give the guest a vsock device with this context id (3 or more), reachable from the
    /// host through [`Vm::vsock_socket`].
    pub vsock_cid: Option<u32>,
    /// User-mode networking (NAT inside the VMM, no root, no tap): the guest's virtio-net
    /// interface reaches the host at 10.0.2.2 and resolves names through 10.0.2.3.
    pub network: bool,
    /// The directory the VMM keeps its sockets and files in (in a directory of its own
    /// below it, removed when the VM stops); the caller chooses where temporary files live.
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// The virtio-blk serial (at most 20 bytes), which the guest reads from
    /// `/sys/block/*/serial` to tell its disks apart.
    pub serial: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{program} is not installed\n  = help: {help}")]
    Missing { program: String, help: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Protocol(String),
}

impl VmmError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
        let what = what.into();
        move |source| VmmError::Io { what, source }
    }
}

/// A virtual machine monitor that can boot guests.
pub trait Backend {
    fn name(&self) -> &'static str;
    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError>;
}

/// A running guest.
pub trait Vm: Send {
    /// The serial console's output (once; later calls return `None`).
    fn take_console(&mut self) -> Option<Box<dyn Read + Send>>;
    /// Waits until the VMM exits or `deadline` passes (`Ok(None)`).
    fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, VmmError>;
    /// Ends the guest: a polite request first, then by force; idempotent.
    fn stop(&mut self) -> Result<(), VmmError>;
    /// The hybrid vsock socket for [`vsock::connect`], when the spec asked for vsock.
    fn vsock_socket(&self) -> Option<&std::path::Path>;
    /// What the VMM itself said (its error output), for reports when a guest ends badly.
    fn diagnostics(&self) -> String {
        String::new()
    }
}
