//! The Cloud Hypervisor API client against Cloud Hypervisor's own words: a recorded exchange
//! with a real `cloud-hypervisor` (fixtures/, captured by scripts/capture-ch-fixtures.sh, the
//! version inside) replayed over a Unix socket, and, where a binary is available
//! (`CLOUDHYPERVISOR` or on PATH), the same calls against the real thing. Booting is not
//! exercised here: it needs a host whose KVM runs guests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use fledge_vmm::cloud_hypervisor::{Api, CloudHypervisor, vm_config};
use fledge_vmm::{Disk, VmSpec};
use serde_json::Value;

fn fixture() -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("cloud-hypervisor-"))
        .collect();
    files.sort();
    serde_json::from_slice(&std::fs::read(files.last().expect("a recorded exchange")).unwrap()).unwrap()
}

/// Serves the recorded responses in order, checking each request's method and endpoint.
fn replay(exchanges: Vec<Value>, socket: &Path) -> std::thread::JoinHandle<Vec<String>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for exchange in exchanges {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                if header == "\r\n" {
                    break;
                }
                if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let expected = format!(
                "{} /api/v1/{} HTTP/1.1\r\n",
                exchange["method"].as_str().unwrap(),
                exchange["endpoint"].as_str().unwrap()
            );
            assert_eq!(request_line, expected);
            seen.push(format!("{} {}", exchange["endpoint"].as_str().unwrap(), String::from_utf8_lossy(&body)));
            let status = exchange["status"].as_u64().unwrap();
            let response = exchange["response"].as_str().unwrap();
            write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
                response.len()
            )
            .unwrap();
        }
        seen
    })
}

fn spec(kernel: &str) -> VmSpec {
    VmSpec {
        kernel: kernel.into(),
        initrd: None,
        disks: Vec::<Disk>::new(),
        cmdline: "console=ttyS0".into(),
        cpus: 1,
        memory_mib: 256,
        acpi: true,
        vsock_cid: None,
        network: false,
        work_dir: std::env::temp_dir(),
    }
}

/// The calls Fledge makes, and what each must produce, against `api`.
fn exercise(api: &Api, kernel: &str) {
    let ping = api.ping().unwrap();
    assert!(ping["version"].as_str().is_some_and(|v| !v.is_empty()), "{ping}");
    api.create(&vm_config(&spec(kernel), None)).unwrap();
    let info = api.info().unwrap();
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(info["config"]["payload"]["kernel"], kernel);
    let again = api.create(&vm_config(&spec(kernel), None)).unwrap_err().to_string();
    assert!(again.contains("vm.create answered"), "a second VM is refused with CH's reason: {again}");
    api.delete().unwrap();
    api.shutdown_vmm().unwrap();
}

#[test]
fn the_client_handles_a_recorded_cloud_hypervisor_exchange() {
    let fixture = fixture();
    eprintln!("replaying {}", fixture["version"]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let server = replay(fixture["exchanges"].as_array().unwrap().clone(), &socket);
    exercise(&Api::new(&socket), fixture["kernel_placeholder"].as_str().unwrap());
    let seen = server.join().unwrap();
    assert!(seen[1].starts_with("vm.create {") && seen[1].contains("\"payload\""), "{seen:?}");
}

#[test]
fn the_client_works_against_a_real_cloud_hypervisor_when_one_is_installed() {
    let ch = CloudHypervisor::from_env();
    fledge_test_support::skip_unless!(
        std::process::Command::new(&ch.binary).arg("--version").output().is_ok(),
        "no cloud-hypervisor binary (set CLOUDHYPERVISOR); the recorded exchange covers the client"
    );
    let process = ch.start(&std::env::temp_dir()).unwrap();
    let kernel = process.dir().join("vmlinux");
    std::fs::write(&kernel, b"not booted").unwrap();
    exercise(&process.api, kernel.to_str().unwrap());
}
