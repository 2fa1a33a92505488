//! The QEMU backend: `-M microvm` with the serial console on QEMU's stdout and QMP on a Unix
//! socket for lifecycle. KVM or TCG as the caller chooses (on hosts where `/dev/kvm` exists
//! but cannot run stock guests, only a probe boot tells; see the Fledge docs).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::qmp::Qmp;
use crate::{Backend, Vm, VmSpec, VmmError};

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation: slow but works everywhere.
    Tcg,
}

#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
}

/// How long QEMU may take to open its QMP socket.
const STARTUP: Duration = Duration::from_secs(10);
/// How long a guest gets to stop after QMP `quit` before it is killed.
const GRACE: Duration = Duration::from_secs(2);

impl Qemu {
    pub fn new(accel: Accel) -> Self {
        Self { binary: PathBuf::from("qemu-system-x86_64"), accel }
    }

    /// QEMU's arguments for `spec`, with QMP at `qmp` and, if `spec` wants vsock, the
    /// vhost-user socket of `vhost-device-vsock` at `vhost_user`.
    pub fn args(&self, spec: &VmSpec, qmp: &Path, vhost_user: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str| args.push(a.into());
        // Without ACPI, QEMU lists the virtio-mmio devices on the kernel command line.
        // vhost-user devices need guest memory the daemon can map: a shared memfd.
        let machine = format!(
            "microvm,acpi={}{}",
            if spec.acpi { "on" } else { "off" },
            if spec.vsock_cid.is_some() { ",memory-backend=mem" } else { "" }
        );
        push("-M");
        push(&machine);
        match self.accel {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host,-arch-capabilities"].iter().for_each(|a| push(a)),
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"].iter().for_each(|a| push(a)),
        }
        for a in ["-m", &format!("{}M", spec.memory_mib), "-smp", &spec.cpus.to_string()] {
            push(a);
        }
        for a in ["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot"] {
            push(a);
        }
        if spec.acpi && (!spec.disks.is_empty() || spec.vsock_cid.is_some() || spec.network) {
            push("-global");
            push("virtio-mmio.force-legacy=false");
        }
        if spec.vsock_cid.is_some() {
            push("-object");
            push(&format!("memory-backend-memfd,id=mem,size={}M,share=on", spec.memory_mib));
            args.push("-chardev".into());
            args.push(join(&["socket,id=vsock0,path=".as_ref(), &option_value(vhost_user)]));
            args.push("-device".into());
            args.push("vhost-user-vsock-device,chardev=vsock0".into());
        }
        if spec.network {
            for a in ["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"] {
                args.push(a.into());
            }
        }
        args.push("-qmp".into());
        args.push(join(&["unix:".as_ref(), &option_value(qmp), ",server=on,wait=off".as_ref()]));
        args.push("-kernel".into());
        args.push(spec.kernel.clone().into());
        if let Some(initrd) = &spec.initrd {
            args.push("-initrd".into());
            args.push(initrd.clone().into());
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            let ro = if disk.read_only { "on" } else { "off" };
            args.push("-drive".into());
            args.push(join(&[
                format!("id=disk{i},if=none,format=raw,read-only={ro},file=").as_ref(),
                &option_value(&disk.path),
            ]));
            args.push("-device".into());
            let serial = disk.serial.as_ref().map(|s| format!(",serial={s}")).unwrap_or_default();
            args.push(format!("virtio-blk-device,drive=disk{i}{serial}").into());
        }
        args.push("-append".into());
        args.push(spec.cmdline.clone().into());
        args
    }
}

fn join(parts: &[&std::ffi::OsStr]) -> OsString {
    parts.iter().fold(OsString::new(), |mut s, p| {
        s.push(p);
        s
    })
}

/// A path as a value inside a QEMU option list, where a comma is written twice.
fn option_value(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        let dir = tempfile::Builder::new()
            .prefix("qemu-")
            .tempdir_in(&spec.work_dir)
            .map_err(VmmError::io("a VM directory"))?;
        let qmp_path = dir.path().join("qmp.sock");
        let vhost_user = dir.path().join("vhost-user.sock");
        let vsock_uds = dir.path().join("vsock.uds");
        let daemon = match spec.vsock_cid {
            Some(cid) => Some(vsock_daemon(cid, &vhost_user, &vsock_uds)?),
            None => None,
        };
        let spawned = Command::new(&self.binary)
            .args(self.args(spec, &qmp_path, &vhost_user))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches Fledge, which stops the guest in order.
            .process_group(0)
            .pre_exec_kill_with_parent()
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VmmError::Missing {
                    program: self.binary.display().to_string(),
                    help: "install QEMU (Debian: apt install qemu-system-x86)",
                },
                _ => VmmError::io(format!("starting {}", self.binary.display()))(e),
            });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                if let Some(mut daemon) = daemon {
                    let _ = daemon.kill();
                    let _ = daemon.wait();
                }
                return Err(e);
            }
        };
        let stderr = collect(child.stderr.take().expect("piped"));
        let vsock = daemon.is_some().then_some(vsock_uds);
        let mut vm = QemuVm { child, qmp: None, stderr, daemon, vsock, _dir: dir, stopped: false };
        let child = &mut vm.child;
        match Qmp::connect(&qmp_path, STARTUP, || matches!(child.try_wait(), Ok(None))) {
            Ok(qmp) => vm.qmp = Some(qmp),
            Err(e) => {
                vm.stop()?;
                let said = vm.stderr_text();
                return Err(if said.is_empty() { e } else { VmmError::Protocol(format!("QEMU failed: {said}")) });
            }
        }
        Ok(Box::new(vm))
    }
}

/// Processes that must not outlive Fledge, even when it is killed or exits on a second Ctrl-C.
trait KillWithParent {
    fn pre_exec_kill_with_parent(&mut self) -> &mut Self;
}

impl KillWithParent for Command {
    fn pre_exec_kill_with_parent(&mut self) -> &mut Self {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            self.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            })
        }
    }
}

/// Starts `vhost-device-vsock` for guest `cid` and waits for its vhost-user socket.
fn vsock_daemon(cid: u32, vhost_user: &Path, uds: &Path) -> Result<Child, VmmError> {
    let mut daemon = Command::new("vhost-device-vsock")
        .arg("--guest-cid")
        .arg(cid.to_string())
        .arg("--socket")
        .arg(vhost_user)
        .arg("--uds-path")
        .arg(uds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .pre_exec_kill_with_parent()
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => VmmError::Missing {
                program: "vhost-device-vsock".into(),
                help: "install it with `cargo install vhost-device-vsock` (QEMU's vsock goes through it)",
            },
            _ => VmmError::io("starting vhost-device-vsock")(e),
        })?;
    let deadline = Instant::now() + STARTUP;
    while !vhost_user.exists() {
        if let Some(status) = daemon.try_wait().map_err(VmmError::io("vhost-device-vsock"))? {
            return Err(VmmError::Protocol(format!("vhost-device-vsock exited at start ({status})")));
        }
        if Instant::now() >= deadline {
            let _ = daemon.kill();
            let _ = daemon.wait();
            return Err(VmmError::Protocol("vhost-device-vsock did not create its socket".into()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(daemon)
}

/// Collects a pipe into a shared string on a thread.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = pipe.read_to_string(&mut buf);
        sink.lock().expect("not poisoned").push_str(&buf);
    });
    text
}

struct QemuVm {
    child: Child,
    qmp: Option<Qmp>,
    stderr: Arc<Mutex<String>>,
    /// `vhost-device-vsock`, when the guest has vsock; stopped with the VM.
    daemon: Option<Child>,
    vsock: Option<PathBuf>,
    /// Holds the QMP socket; removed on drop.
    _dir: tempfile::TempDir,
    stopped: bool,
}

impl QemuVm {
    fn stderr_text(&self) -> String {
        // The collector finishes when QEMU exits; give it a moment.
        std::thread::sleep(Duration::from_millis(50));
        self.stderr.lock().expect("not poisoned").trim().to_string()
    }
}

impl Vm for QemuVm {
    fn take_console(&mut self) -> Option<Box<dyn Read + Send>> {
        self.child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)
    }

    fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, VmmError> {
        loop {
            if let Some(status) = self.child.try_wait().map_err(VmmError::io("waiting for QEMU"))? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) -> Result<(), VmmError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.child.try_wait().map_err(VmmError::io("waiting for QEMU"))?.is_none() {
            if let Some(qmp) = self.qmp.as_mut() {
                let _ = qmp.execute("quit");
            }
            if self.wait_until(Instant::now() + GRACE)?.is_none() {
                let _ = self.child.kill();
            }
        }
        self.child.wait().map_err(VmmError::io("waiting for QEMU"))?;
        if let Some(daemon) = self.daemon.as_mut() {
            let _ = daemon.kill();
            daemon.wait().map_err(VmmError::io("waiting for vhost-device-vsock"))?;
        }
        Ok(())
    }

    fn vsock_socket(&self) -> Option<&Path> {
        self.vsock.as_deref()
    }

    fn diagnostics(&self) -> String {
        self.stderr_text()
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/a b/initrd.cpio.gz".into()),
            disks: vec![crate::Disk { path: "/img/a,b.squashfs".into(), read_only: true, serial: None }],
            cmdline: "console=ttyS0 quiet".into(),
            cpus: 2,
            memory_mib: 256,
            acpi: true,
            vsock_cid: None,
            network: false,
            work_dir: std::env::temp_dir(),
        }
    }

    fn text(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn user_networking_is_a_virtio_net_device_on_slirp() {
        let spec = VmSpec { network: true, ..spec() };
        let args: Vec<String> = Qemu::new(Accel::Tcg)
            .args(&spec, Path::new("/q"), Path::new("/v"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(at("-netdev").as_deref(), Some("user,id=net0"));
        assert!(args.iter().any(|a| a == "virtio-net-device,netdev=net0"));
    }

    #[test]
    fn tcg_microvm_with_console_qmp_and_disks() {
        let args = text(&Qemu::new(Accel::Tcg).args(&spec(), Path::new("/run/q.sock"), Path::new("/run/v.sock")));
        let at = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(at("-M"), "microvm,acpi=on");
        assert_eq!(at("-accel"), "tcg");
        assert_eq!(at("-m"), "256M");
        assert_eq!(at("-smp"), "2");
        assert_eq!(at("-serial"), "stdio");
        assert_eq!(at("-qmp"), "unix:/run/q.sock,server=on,wait=off");
        assert_eq!(at("-initrd"), "/a b/initrd.cpio.gz", "paths are single arguments");
        assert_eq!(at("-drive"), "id=disk0,if=none,format=raw,read-only=on,file=/img/a,,b.squashfs");
        assert_eq!(at("-device"), "virtio-blk-device,drive=disk0");
        assert_eq!(at("-append"), "console=ttyS0 quiet");
        assert!(args.contains(&"-no-reboot".to_string()) && args.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn kvm_uses_the_host_cpu_without_arch_capabilities() {
        let args = text(&Qemu::new(Accel::Kvm).args(&spec(), Path::new("/q"), Path::new("/v")));
        assert!(args.windows(2).any(|w| w == ["-cpu", "host,-arch-capabilities"]));
        assert!(args.windows(2).any(|w| w == ["-accel", "kvm"]));
    }

    #[test]
    fn vsock_adds_shared_memory_and_the_vhost_user_device() {
        let spec = VmSpec { vsock_cid: Some(3), acpi: false, disks: Vec::new(), ..spec() };
        let args = text(&Qemu::new(Accel::Tcg).args(&spec, Path::new("/q"), Path::new("/d/vhu.sock")));
        assert!(args.windows(2).any(|w| w == ["-M", "microvm,acpi=off,memory-backend=mem"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["-object", "memory-backend-memfd,id=mem,size=256M,share=on"]));
        assert!(args.windows(2).any(|w| w == ["-chardev", "socket,id=vsock0,path=/d/vhu.sock"]));
        assert!(args.windows(2).any(|w| w == ["-device", "vhost-user-vsock-device,chardev=vsock0"]));
    }

    #[test]
    fn a_missing_qemu_is_a_clear_error() {
        let qemu = Qemu { binary: "/nonexistent/qemu".into(), accel: Accel::Tcg };
        let err = qemu.launch(&spec()).err().expect("fails");
        assert!(err.to_string().contains("apt install qemu-system-x86"), "{err}");
    }
}
