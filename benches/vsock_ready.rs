//! Cold boot to a guest that answers on vsock, and the host-guest round trip over vsock,
//! measured from the host (run by bench/boot.sh, which builds the initramfs and kernel):
//!
//!   FLEDGE_BENCH_KERNEL=vmlinux FLEDGE_BENCH_INITRD=wait.cpio.gz cargo bench --bench vsock_ready
//!
//! Each boot starts QEMU (TCG unless FLEDGE_ACCEL=kvm) with a vsock device and times the first
//! accepted `CONNECT` on guest-init's ready port; then it times 100 connect-and-greet round
//! trips on the running guest. Prints the medians over RUNS boots (default 10).

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fledge_vmm::qemu::{Accel, Qemu};
use fledge_vmm::{Backend, VmSpec, vsock};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| panic!("set {name}"));
    let (kernel, initrd) = (var("FLEDGE_BENCH_KERNEL"), var("FLEDGE_BENCH_INITRD"));
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let accel = if std::env::var("FLEDGE_ACCEL").as_deref() == Ok("kvm") { Accel::Kvm } else { Accel::Tcg };
    let spec = VmSpec {
        kernel,
        initrd: Some(initrd),
        disks: Vec::new(),
        // What `fledge run` gives a guest, plus the ready listener.
        cmdline: format!("{} quiet fledge.ready_port=1024", fledge::commands::run::guest_cmdline(accel, 1, false)),
        cpus: 1,
        memory_mib: 256,
        acpi: false,
        vsock_cid: Some(3),
    };
    let (mut ready, mut round_trips) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let mut vm = Qemu::new(accel).launch(&spec).expect("boot");
        let socket = vm.vsock_socket().expect("vsock").to_path_buf();
        let mut stream = vsock::connect(&socket, 1024, Duration::from_secs(60)).expect("guest ready");
        ready.push(started.elapsed());
        let mut greeting = Vec::new();
        stream.read_to_end(&mut greeting).expect("greeting");
        for _ in 0..100 {
            let t = Instant::now();
            let mut s = vsock::connect(&socket, 1024, Duration::from_secs(5)).expect("connect");
            s.read_to_end(&mut greeting).expect("greeting");
            round_trips.push(t.elapsed());
        }
        vm.stop().expect("stop");
    }
    println!("vsock ready (cold boot, median of {runs}): {:.3} s", median(ready).as_secs_f64());
    println!(
        "vsock round trip (median of {}): {:.2} ms",
        round_trips.len(),
        median(round_trips).as_secs_f64() * 1000.0
    );
}
