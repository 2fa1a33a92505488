//! The build VM of a build: booted once, it keeps every layer it has been given (each in its
//! own directory, in overlay form) and runs each ExecOp in a fresh overlay upper over the
//! layers of the op's root. The upper's diff comes back as an OCI layer, which is stored and
//! whose directory stays in the guest as a lower layer for the steps that follow.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result, bail};
use fledge_agent::client::{ExecIo, ExitStatus, Process};
use fledge_agent::pb as agent;
use fledge_llb::pb;

use crate::build_vm::BuildVm;
use crate::digest::Sha256Digest;
use crate::microvm::Machine;
use crate::store::Store;

/// Where the guest keeps layers, uppers and roots (a tmpfs).
const WORK: &str = "/fledge";
/// The largest diff a step may produce.
const MAX_DIFF: u64 = 64 << 30;
/// Build VM size: steps run package managers and compilers. Under TCG a second vCPU buys
/// little on small hosts and slows the boot, so it gets one.
const MEMORY_MIB: u32 = 2048;

pub struct Guest {
    vm: BuildVm,
    /// Layers the guest holds, and the directory each is in.
    layers: HashMap<Sha256Digest, String>,
    next: usize,
}

impl Guest {
    pub async fn boot(machine: &Machine) -> Result<Guest> {
        let cpus = if machine.accel == fledge_vmm::qemu::Accel::Tcg { 1 } else { 2 };
        let mut vm = BuildVm::boot(machine, Vec::new(), (cpus, MEMORY_MIB)).await?;
        let tmpfs = agent::MountRequest {
            source: "tmpfs".into(),
            target: WORK.into(),
            fstype: "tmpfs".into(),
            options: "mode=0755".into(),
            read_only: false,
        };
        vm.agent().mount(tmpfs).await?;
        // An empty lower layer, for steps on scratch.
        vm.agent().put_tar(&format!("{WORK}/empty"), std::io::Cursor::new(vec![0u8; 1024])).await?;
        Ok(Guest { vm, layers: HashMap::new(), next: 0 })
    }

    pub async fn shutdown(self) -> Result<()> {
        self.vm.shutdown().await
    }

    /// Sends a stored layer blob (decompressed on the host) unless the guest has it.
    async fn ensure(&mut self, store: &Store, layer: &Sha256Digest) -> Result<String> {
        if let Some(dir) = self.layers.get(layer) {
            return Ok(dir.clone());
        }
        let dir = format!("{WORK}/l{}", self.layers.len());
        let blob = store.blob_path(layer);
        let (reader, mut writer) = std::io::pipe()?;
        let feeder = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&blob)?);
            std::io::copy(&mut crate::image::flatten::decompress(file)?, &mut writer)?;
            Ok(())
        });
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
        let sent = self.vm.agent().put_layer(&dir, pipe).await;
        feeder.await?.with_context(|| format!("cannot read layer {layer}"))?;
        sent?;
        self.layers.insert(*layer, dir.clone());
        Ok(dir)
    }

    /// Runs `meta` on top of `base`; returns the stored diff layer.
    pub async fn run(&mut self, store: &Store, base: &[Sha256Digest], meta: &pb::Meta) -> Result<Sha256Digest> {
        let mut lower = Vec::new();
        for layer in base {
            lower.push(self.ensure(store, layer).await?);
        }
        lower.reverse();
        if lower.is_empty() {
            lower.push(format!("{WORK}/empty"));
        }
        let step = self.next;
        self.next += 1;
        let (upper, root) = (format!("{WORK}/u{step}/upper"), format!("{WORK}/r{step}"));
        let overlay = agent::MountOverlayRequest {
            lower,
            upper: upper.clone(),
            work: format!("{WORK}/u{step}/work"),
            target: root.clone(),
        };
        self.vm.agent().mount_overlay(overlay).await?;
        let process = Process {
            args: meta.args.clone(),
            env: meta.env.clone(),
            cwd: meta.cwd.clone(),
            user: meta.user.clone(),
            root: root.clone(),
        };
        let (mut stdout, mut stderr) = (tokio::io::stderr(), tokio::io::stderr());
        let io = ExecIo { stdin: None, stdout: &mut stdout, stderr: &mut stderr, signals: None };
        let status = self.vm.agent().exec(&process, io).await?;
        if status != ExitStatus::Exited(0) {
            bail!("process {:?} did not complete successfully: exit code: {}", meta.args, status.code());
        }
        self.vm.agent().unmount(&root).await?;
        let diff = tempfile::Builder::new().prefix("diff-").tempfile_in(store.root().join("tmp"))?;
        let mut file = tokio::fs::File::from_std(diff.reopen()?);
        self.vm.agent().get_layer_diff(&upper, &mut file, MAX_DIFF).await?;
        drop(file);
        let (digest, _) = store.write_blob(&mut diff.reopen()?, None, "a build step's layer")?;
        // The upper is this layer in overlay form already: later steps stack on it.
        self.layers.insert(digest, upper);
        Ok(digest)
    }
}
