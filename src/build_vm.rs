//! A build VM: a microVM whose PID 1 (guest-init) serves the agent over vsock instead of
//! running a workload. The build engine boots one per stage chain, hands it layers as
//! read-only disks or tar streams, runs commands through [`BuildVm::agent`], and powers it
//! off. The VM's initramfs holds only guest-init (plus an imported kernel's modules).
//!
//! Guarantees: a VM that does not bring its agent up within the timeout is stopped and the
//! error carries the end of its console; dropping a [`BuildVm`] stops the VM (the backend's
//! `Drop`), so no VMM process, socket or temporary file outlives it.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fledge_agent::DEFAULT_PORT;
use fledge_agent::client::AgentClient;
use fledge_vmm::{Disk, Vm};

use crate::microvm::{self, Machine};

/// How long a guest may take from launch to an answering agent (TCG boots take about 1 s;
/// a loaded CI host many times that).
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a build VM is booted before its agent's silence is an error.
const BOOT_ATTEMPTS: u32 = 2;
/// How much of the console is kept for error reports.
const CONSOLE_TAIL: usize = 8 * 1024;

/// The end of the guest's console, collected on a thread.
#[derive(Clone, Default)]
struct ConsoleTail(Arc<Mutex<Vec<u8>>>);

impl ConsoleTail {
    fn follow(&self, mut console: Box<dyn Read + Send>) {
        let tail = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = console.read(&mut buf) {
                let mut kept = tail.0.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(CONSOLE_TAIL);
                kept.drain(..excess);
            }
        });
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

pub struct BuildVm {
    vm: Box<dyn Vm>,
    agent: AgentClient,
    console: ConsoleTail,
    /// Holds the initramfs until the VM is gone.
    _work: tempfile::TempDir,
}

impl BuildVm {
    /// Boots a build VM on `machine` with `disks` attached (in order: `/dev/vda`, `/dev/vdb`,
    /// ..., each also known by its serial), with user-mode networking when `network`, and
    /// waits for its agent.
    pub async fn boot(
        machine: &Machine,
        disks: Vec<Disk>,
        (cpus, memory_mib): (u32, u32),
        network: bool,
    ) -> Result<BuildVm> {
        let work = tempfile::Builder::new().prefix("vm-").tempdir_in(crate::scratch::state_tmp()?)?;
        let initrd = work.path().join("init.cpio.lz4");
        crate::initramfs::init_only(&initrd, crate::guest_init::WITH_AGENT)
            .context("cannot write the build VM's initramfs")?;
        let mut cmdline = format!(
            "{} quiet fledge.agent_port={DEFAULT_PORT}",
            microvm::guest_cmdline(machine.accel, cpus, machine.kernel.acpi)
        );
        if network {
            cmdline.push_str(" fledge.net=user");
        }
        let mut spec = machine.spec(&initrd, disks, cmdline, (cpus, memory_mib), work.path())?;
        spec.vsock_cid = Some(3);
        spec.network = network;
        let backend = machine.backend();
        // A guest whose agent never answers is stopped and booted once more: under TCG a
        // boot very rarely hangs in the kernel, and one hang should not fail a build.
        let mut attempt = 1;
        loop {
            let mut vm = backend.launch(&spec)?;
            let console = ConsoleTail::default();
            console.follow(vm.take_console().expect("a new VM has its console"));
            let socket = vm.vsock_socket().expect("the spec asked for vsock").to_path_buf();
            let started = Instant::now();
            let connected = tokio::select! {
                connected = AgentClient::connect(&socket, DEFAULT_PORT, AGENT_TIMEOUT) => connected,
                () = crate::interrupt::stopped() => {
                    let _ = vm.stop();
                    return Err(std::io::Error::other(crate::interrupt::Interrupted).into());
                }
            };
            match connected {
                Ok(agent) => {
                    tracing::debug!("build VM agent ready after {:?}", started.elapsed());
                    return Ok(BuildVm { vm, agent, console, _work: work });
                }
                Err(e) => {
                    let _ = vm.stop();
                    let said = vm.diagnostics();
                    let vmm =
                        if said.is_empty() { String::new() } else { format!("\n{} said: {said}", backend.name()) };
                    let error = anyhow::anyhow!(
                        "the build VM's agent did not come up: {e}{vmm}\nits console ended with:\n{}",
                        console.text()
                    );
                    if attempt == BOOT_ATTEMPTS {
                        return Err(error);
                    }
                    tracing::warn!("{error:#}\nbooting it again");
                    attempt += 1;
                }
            }
        }
    }

    /// The guest's agent.
    pub fn agent(&mut self) -> &mut AgentClient {
        &mut self.agent
    }

    /// Powers the guest off through its agent and waits (briefly) for the VMM to exit; the
    /// VM is stopped by force if it does not.
    pub async fn shutdown(self) -> Result<()> {
        let BuildVm { mut vm, mut agent, console, _work } = self;
        let asked = agent.power_off().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut vm, exited) = tokio::task::spawn_blocking(move || {
            let exited = vm.wait_until(deadline);
            (vm, exited)
        })
        .await?;
        vm.stop()?;
        asked?;
        if exited?.is_none() {
            anyhow::bail!(
                "the build VM did not power off when asked; it was stopped\nits console ended with:\n{}",
                console.text()
            );
        }
        Ok(())
    }
}
