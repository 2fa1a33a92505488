//! The build VM's agent, measured from the host (run by bench/boot.sh, which builds the
//! kernel):
//!
//!   FLEDGE_BENCH_KERNEL=vmlinux cargo bench --bench agent
//!
//! Each of RUNS boots (default 10) times a cold `BuildVm::boot`: the initramfs written, the
//! VMM started, the guest booted and its agent answering gRPC over vsock. On the running
//! guest it then times 10 exec round trips (`busybox true`: spawn, exit, status back) and 10
//! `Info` calls. Prints the medians, per backend that can run here: QEMU always (TCG unless
//! FLEDGE_ACCEL=kvm), Cloud Hypervisor when its binary is found and KVM works.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fledge::build_vm::BuildVm;
use fledge::cli::VmmChoice;
use fledge::microvm::{GuestKernel, Machine};
use fledge_agent::client::{ExecIo, ExitStatus, Process};
use fledge_vmm::cloud_hypervisor::CloudHypervisor;
use fledge_vmm::qemu::Accel;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn measure(machine: &Machine, runs: usize) -> (Duration, Duration, Duration) {
    let busybox = std::fs::read("/bin/busybox").expect("the host's static busybox (apt install busybox-static)");
    let (mut ready, mut exec, mut info) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        let mut vm = BuildVm::boot(machine, Vec::new(), (1, 256), false).await.expect("boot");
        ready.push(started.elapsed());
        let agent = vm.agent();
        agent.write_file("/bin/busybox", (0o755, 0, 0), std::io::Cursor::new(busybox.clone())).await.expect("write");
        let process = Process { args: vec!["/bin/busybox".into(), "true".into()], ..Process::default() };
        for _ in 0..10 {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let t = Instant::now();
            let io = ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, signals: None };
            assert_eq!(agent.exec(&process, io).await.expect("exec"), ExitStatus::Exited(0));
            exec.push(t.elapsed());
            let t = Instant::now();
            agent.info().await.expect("info");
            info.push(t.elapsed());
        }
        vm.shutdown().await.expect("power off");
    }
    (median(ready), median(exec), median(info))
}

fn machine(vmm: VmmChoice, accel: Accel, image: &Path, acpi: bool) -> Machine {
    Machine { vmm, accel, kernel: GuestKernel { image: image.to_path_buf(), acpi, modules: None } }
}

fn main() {
    let kernel = std::env::var_os("FLEDGE_BENCH_KERNEL").map(PathBuf::from).expect("set FLEDGE_BENCH_KERNEL");
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let acpi = kernel.parent().and_then(fledge::kernel_build::has_acpi).unwrap_or(true);
    let accel = if std::env::var("FLEDGE_ACCEL").as_deref() == Ok("kvm") { Accel::Kvm } else { Accel::Tcg };
    let mut machines = vec![("qemu", machine(VmmChoice::Qemu, accel, &kernel, acpi))];
    let ch = CloudHypervisor::from_env();
    if std::process::Command::new(&ch.binary).arg("--version").output().is_err() {
        println!("cloud-hypervisor: skipped, no binary (cloud-hypervisor on PATH or CLOUDHYPERVISOR)");
    } else if fledge::accel::auto(&kernel, acpi, None) != Accel::Kvm {
        println!("cloud-hypervisor: skipped, KVM does not run guests on this host");
    } else {
        machines.push(("cloud-hypervisor", machine(VmmChoice::CloudHypervisor, Accel::Kvm, &kernel, acpi)));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (name, machine) in machines {
        let (ready, exec, info) = runtime.block_on(measure(&machine, runs));
        println!("{name} ({:?}), median of {runs} boots:", machine.accel);
        println!("  cold boot to agent ready: {:.3} s", ready.as_secs_f64());
        println!("  exec round trip (busybox true): {:.2} ms", ms(exec));
        println!("  info round trip: {:.2} ms", ms(info));
    }
}
