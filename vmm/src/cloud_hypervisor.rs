//! The Cloud Hypervisor backend: `cloud-hypervisor --api-socket` driven through its REST API
//! (HTTP/1.1 with hyper over the Unix socket): `vmm.ping`, `vm.create`, `vm.boot`, `vm.info`,
//! `vm.shutdown`, `vm.delete`, `vmm.shutdown`. The serial console is CH's stdout; vsock is
//! CH's own hybrid socket.
//!
//! Cloud Hypervisor can exit 0 after a vCPU failure, so its exit status never stands for the
//! guest's result: callers read the guest's own report (console or vsock).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Backend, Vm, VmSpec, VmmError};

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long CH may take to open its API socket.
const STARTUP: Duration = Duration::from_secs(10);

/// A client of one Cloud Hypervisor process's REST API.
pub struct Api {
    socket: PathBuf,
}

impl Api {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// One request; the response body on a 2xx status, else an error with CH's words.
    fn call(&self, method: &str, endpoint: &str, body: Option<&Value>) -> Result<Vec<u8>, VmmError> {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(VmmError::io("a runtime for the Cloud Hypervisor API"))?;
        let what = format!("Cloud Hypervisor {endpoint}");
        runtime.block_on(async {
            let exchange = async {
                let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(VmmError::io(&what))?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .map_err(|e| VmmError::Protocol(format!("{what}: {e}")))?;
                tokio::spawn(connection);
                let payload = body.map(Value::to_string).unwrap_or_default();
                let request = hyper::Request::builder()
                    .method(method)
                    .uri(format!("/api/v1/{endpoint}"))
                    .header("Host", "localhost")
                    .header("Content-Type", "application/json")
                    .body(Full::new(Bytes::from(payload)))
                    .map_err(|e| VmmError::Protocol(format!("{what}: {e}")))?;
                let response =
                    sender.send_request(request).await.map_err(|e| VmmError::Protocol(format!("{what}: {e}")))?;
                let status = response.status();
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| VmmError::Protocol(format!("{what}: {e}")))?
                    .to_bytes()
                    .to_vec();
                if !status.is_success() {
                    return Err(VmmError::Protocol(format!(
                        "{what} answered {status}: {}",
                        String::from_utf8_lossy(&bytes).trim()
                    )));
                }
                Ok(bytes)
            };
            tokio::time::timeout(CALL_TIMEOUT, exchange)
                .await
                .map_err(|_| VmmError::Protocol(format!("{what} did not answer within {CALL_TIMEOUT:?}")))?
        })
    }

    fn json(&self, method: &str, endpoint: &str) -> Result<Value, VmmError> {
        let bytes = self.call(method, endpoint, None)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            VmmError::Protocol(format!("Cloud Hypervisor {endpoint} sent something that is not JSON: {e}"))
        })
    }

    /// `vmm.ping`: the VMM's version and features.
    pub fn ping(&self) -> Result<Value, VmmError> {
        self.json("GET", "vmm.ping")
    }

    pub fn create(&self, config: &Value) -> Result<(), VmmError> {
        self.call("PUT", "vm.create", Some(config)).map(drop)
    }

    pub fn boot(&self) -> Result<(), VmmError> {
        self.call("PUT", "vm.boot", None).map(drop)
    }

    /// `vm.info`: the VM's configuration and `state` (`Created`, `Running`, …).
    pub fn info(&self) -> Result<Value, VmmError> {
        self.json("GET", "vm.info")
    }

    pub fn shutdown(&self) -> Result<(), VmmError> {
        self.call("PUT", "vm.shutdown", None).map(drop)
    }

    pub fn delete(&self) -> Result<(), VmmError> {
        self.call("PUT", "vm.delete", None).map(drop)
    }

    pub fn shutdown_vmm(&self) -> Result<(), VmmError> {
        self.call("PUT", "vmm.shutdown", None).map(drop)
    }
}

/// The `vm.create` body for `spec`: serial on CH's stdout, vsock on `vsock_socket`.
pub fn vm_config(spec: &VmSpec, vsock_socket: Option<&Path>) -> Value {
    let mut payload = json!({ "kernel": spec.kernel, "cmdline": spec.cmdline });
    if let Some(initrd) = &spec.initrd {
        payload["initramfs"] = json!(initrd);
    }
    let mut config = json!({
        "cpus": { "boot_vcpus": spec.cpus, "max_vcpus": spec.cpus },
        "memory": { "size": u64::from(spec.memory_mib) << 20 },
        "payload": payload,
        "serial": { "mode": "Tty" },
        "console": { "mode": "Off" },
    });
    if !spec.disks.is_empty() {
        config["disks"] = spec
            .disks
            .iter()
            .map(|d| {
                let mut disk = json!({ "path": d.path, "readonly": d.read_only });
                if let Some(serial) = &d.serial {
                    disk["serial"] = json!(serial);
                }
                disk
            })
            .collect();
    }
    if let (Some(cid), Some(socket)) = (spec.vsock_cid, vsock_socket) {
        config["vsock"] = json!({ "cid": cid, "socket": socket });
    }
    config
}

/// Cloud Hypervisor as a [`Backend`].
#[derive(Debug, Clone)]
pub struct CloudHypervisor {
    pub binary: PathBuf,
}

impl CloudHypervisor {
    /// The binary named by `CLOUDHYPERVISOR`, else `cloud-hypervisor` on `PATH`.
    pub fn from_env() -> Self {
        let binary = std::env::var_os("CLOUDHYPERVISOR").filter(|v| !v.is_empty()).map(PathBuf::from);
        Self { binary: binary.unwrap_or_else(|| PathBuf::from("cloud-hypervisor")) }
    }

    /// Starts the VMM with its API socket (in a new directory below `work_dir`), without a VM.
    pub fn start(&self, work_dir: &Path) -> Result<Process, VmmError> {
        let dir =
            tempfile::Builder::new().prefix("ch-").tempdir_in(work_dir).map_err(VmmError::io("a VM directory"))?;
        let socket = dir.path().join("api.sock");
        let mut arg = std::ffi::OsString::from("path=");
        arg.push(&socket);
        let child = Command::new(&self.binary)
            .arg("--api-socket")
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => VmmError::Missing {
                    program: self.binary.display().to_string(),
                    help: "install Cloud Hypervisor, or set CLOUDHYPERVISOR to its binary (or use --vmm qemu)",
                },
                _ => VmmError::io(format!("starting {}", self.binary.display()))(e),
            })?;
        let mut process = Process { child, api: Api::new(&socket), dir, stopped: false };
        let deadline = Instant::now() + STARTUP;
        loop {
            if process.api.ping().is_ok() {
                return Ok(process);
            }
            if Instant::now() >= deadline {
                process.stop()?;
                return Err(VmmError::Protocol("Cloud Hypervisor did not open its API socket".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running `cloud-hypervisor` process; stopped (API, then kill) on drop.
pub struct Process {
    child: Child,
    pub api: Api,
    dir: tempfile::TempDir,
    stopped: bool,
}

impl Process {
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn stop(&mut self) -> Result<(), VmmError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.child.try_wait().map_err(VmmError::io("waiting for Cloud Hypervisor"))?.is_none() {
            let _ = self.api.shutdown_vmm();
            let deadline = Instant::now() + Duration::from_secs(2);
            while self.child.try_wait().map_err(VmmError::io("waiting for Cloud Hypervisor"))?.is_none() {
                if Instant::now() >= deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.child.wait().map_err(VmmError::io("waiting for Cloud Hypervisor"))?;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Backend for CloudHypervisor {
    fn name(&self) -> &'static str {
        "cloud-hypervisor"
    }

    fn launch(&self, spec: &VmSpec) -> Result<Box<dyn Vm>, VmmError> {
        if spec.network {
            // CH networks only through tap devices, which need privileges Fledge does not take.
            return Err(VmmError::Protocol(
                "Cloud Hypervisor has no user-mode networking (it needs a tap device); use --vmm qemu (FLEDGE_VMM=qemu) for guests that need a network".into(),
            ));
        }
        let process = self.start(&spec.work_dir)?;
        let vsock = spec.vsock_cid.map(|_| process.dir().join("vsock.sock"));
        process.api.create(&vm_config(spec, vsock.as_deref()))?;
        process.api.boot()?;
        Ok(Box::new(ChVm { process, vsock }))
    }
}

struct ChVm {
    process: Process,
    vsock: Option<PathBuf>,
}

impl Vm for ChVm {
    fn take_console(&mut self) -> Option<Box<dyn Read + Send>> {
        self.process.child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>)
    }

    fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, VmmError> {
        loop {
            if let Some(status) = self.process.child.try_wait().map_err(VmmError::io("waiting for Cloud Hypervisor"))? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) -> Result<(), VmmError> {
        self.process.stop()
    }

    fn vsock_socket(&self) -> Option<&Path> {
        self.vsock.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_config_carries_payload_size_disks_and_vsock() {
        let spec = VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/i.cpio.gz".into()),
            disks: vec![crate::Disk { path: "/r.squashfs".into(), read_only: true, serial: None }],
            cmdline: "console=ttyS0".into(),
            cpus: 2,
            memory_mib: 512,
            acpi: true,
            vsock_cid: Some(3),
            network: false,
            work_dir: "/w".into(),
        };
        let config = vm_config(&spec, Some(Path::new("/d/vsock.sock")));
        assert_eq!(config["payload"]["kernel"], "/k/vmlinux");
        assert_eq!(config["payload"]["initramfs"], "/i.cpio.gz");
        assert_eq!(config["cpus"]["boot_vcpus"], 2);
        assert_eq!(config["memory"]["size"], 512u64 << 20);
        assert_eq!(config["disks"][0], json!({ "path": "/r.squashfs", "readonly": true }));
        assert_eq!(config["vsock"], json!({ "cid": 3, "socket": "/d/vsock.sock" }));
        assert_eq!(config["serial"]["mode"], "Tty");
    }
}
