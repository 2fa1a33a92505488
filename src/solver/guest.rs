//! The build VM of a build: booted once, it keeps every layer it has been given (each in its
//! own directory, in overlay form, on a scratch ext4 disk) and runs each ExecOp in a fresh
//! overlay upper over the layers of the op's root, with the op's cache, tmpfs and secret
//! mounts. The upper's diff comes back as an OCI layer, which is stored and whose directory
//! stays in the guest as a lower layer for the steps that follow. Mount points a step needed
//! are removed again before the diff is taken, so they never reach a layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fledge_agent::client::{ExecIo, ExitStatus, Process};
use fledge_agent::pb as agent;
use fledge_llb::pb;
use fledge_vmm::Disk;

use crate::build_vm::BuildVm;
use crate::digest::Sha256Digest;
use crate::microvm::Machine;
use crate::store::Store;

/// Where the guest keeps layers, uppers and roots (the scratch disk).
const WORK: &str = "/fledge";
/// Secrets live in memory only.
const SECRETS: &str = "/run/fledge-secrets";
/// The largest diff a step may produce.
const MAX_DIFF: u64 = 64 << 30;
/// Build VM memory: steps run package managers and compilers.
pub const MEMORY_MIB: u32 = 2048;
/// Size of the sparse scratch disk and of each cache volume.
const VOLUME_MB: u64 = 16 << 10;

/// The op's proxy settings as the process's variables, each in both cases, after the op's
/// own as BuildKit's executor appends them (they are kept out of the op's env so that they
/// stay out of the cache key and the image).
fn proxy_env(proxy: Option<&pb::ProxyEnv>) -> Vec<String> {
    let Some(p) = proxy else { return Vec::new() };
    let settings = [
        ("HTTP_PROXY", &p.http_proxy),
        ("HTTPS_PROXY", &p.https_proxy),
        ("FTP_PROXY", &p.ftp_proxy),
        ("NO_PROXY", &p.no_proxy),
        ("ALL_PROXY", &p.all_proxy),
    ];
    let set = settings.into_iter().filter(|(_, value)| !value.is_empty());
    set.flat_map(|(name, value)| [format!("{name}={value}"), format!("{}={value}", name.to_ascii_lowercase())])
        .collect()
}

/// Disks the build VM gets: the scratch disk, the first step's base as a read-only image,
/// then one volume per cache id.
pub struct Volumes {
    _dir: tempfile::TempDir,
    disks: Vec<Disk>,
    /// The layers the base image holds (flattened), bottom first.
    base: Vec<Sha256Digest>,
    /// Cache id → its volume's index (`fledge-cache-N`).
    caches: BTreeMap<String, usize>,
    /// The caches whose volumes this build made, until a mount first fills them.
    fresh: HashSet<String>,
    /// Held while the build runs, so two builds never write one cache volume at once.
    _locks: Vec<std::fs::File>,
}

/// A cache mount's volume: its id, and the mode and owner its root starts with (an owned
/// cache: `--mount=type=cache,uid=,gid=,mode=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheVolume {
    pub id: String,
    pub root: (u32, u32, u32),
}

/// A sparse ext4 image of [`VOLUME_MB`] at `path` (Fledge's own writer; no root
/// privileges), its root directory with `(mode, uid, gid)`; with `inner`, the root is 0755
/// and holds the directory `inner` with them instead.
fn empty_ext4(path: &Path, (mode, uid, gid): (u32, u32, u32), inner: Option<&str>) -> Result<()> {
    let fs = crate::config::Filesystem {
        kind: Some(crate::config::FsType::Ext4),
        overlay_size: String::new(),
        size_buffer_mb: VOLUME_MB,
        preallocate: false,
    };
    let mut tree = crate::rootfs::Tree::default();
    let root = crate::paths::ImagePath::root();
    let dir = inner.map_or_else(|| root.clone(), |name| root.join(name));
    tree.replace(&root, crate::rootfs::Node::Dir { mode: 0o755 })?;
    tree.replace(&dir, crate::rootfs::Node::Dir { mode: mode & 0o7777 })?;
    tree.set_attrs(&dir, crate::rootfs::Attrs { uid, gid, xattrs: Vec::new() });
    crate::ext4::write(&tree, &crate::rootfs::walk::NoLayers, path, &fs, 0, &mut |_| {})?;
    Ok(())
}

/// The directory of a cache volume a cache mount shows: not the volume's root, which holds
/// the filesystem's `lost+found` (a BuildKit cache starts empty).
const CACHE_DIR: &str = "cache";

impl Volumes {
    /// The scratch disk (a temporary file), `base` as a read-only image (made once per layer
    /// stack and kept in the store), and the persistent cache `volumes` (made on first use), kept under
    /// `caches_dir` and locked for this build.
    pub fn prepare(
        store: &Store,
        base: &[Sha256Digest],
        caches_dir: &Path,
        volumes: &[CacheVolume],
    ) -> Result<Volumes> {
        let dir = tempfile::Builder::new().prefix("build-").tempdir_in(crate::scratch::state_tmp()?)?;
        let scratch = dir.path().join("scratch.ext4");
        empty_ext4(&scratch, (0o755, 0, 0), None)?;
        let mut disks = vec![Disk { path: scratch, read_only: false, serial: Some("fledge-work".into()) }];
        if !base.is_empty() {
            disks.push(Disk { path: base_image(store, base)?, read_only: true, serial: Some("fledge-base".into()) });
        }
        let mut caches = BTreeMap::new();
        let mut fresh = HashSet::new();
        let mut locks = Vec::new();
        std::fs::create_dir_all(caches_dir)?;
        for (n, CacheVolume { id, root }) in volumes.iter().enumerate() {
            // `-v2`: the cache is the volume's CACHE_DIR (earlier volumes showed their root).
            let path = caches_dir.join(format!("{}-v2.ext4", Sha256Digest::of_bytes(id.as_bytes()).hex()));
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path.with_extension("lock"))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).context("cannot lock a cache volume");
            }
            if !path.exists() {
                let tmp = path.with_extension("new");
                empty_ext4(&tmp, *root, Some(CACHE_DIR))?;
                std::fs::rename(&tmp, &path)?;
                fresh.insert(id.clone());
            }
            disks.push(Disk { path, read_only: false, serial: Some(format!("fledge-cache-{n}")) });
            caches.insert(id.clone(), n);
            locks.push(lock);
        }
        Ok(Volumes { _dir: dir, disks, base: base.to_vec(), caches, fresh, _locks: locks })
    }
}

/// A read-only squashfs (lz4: cheap to read in an emulated guest) of `layers` flattened, made
/// once per layer stack under the store's `base-images/`. Attaching it costs nothing, where
/// sending the layers into the guest would copy all of them.
fn base_image(store: &Store, layers: &[Sha256Digest]) -> Result<PathBuf> {
    let key = Sha256Digest::of_bytes(layers.iter().map(|l| l.hex()).collect::<Vec<_>>().join(",").as_bytes());
    let dir = store.root().join("base-images");
    let path = dir.join(format!("{}.squashfs", key.hex()));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)?;
    let image_layers = crate::image::flatten::ImageLayers::from_digests(store, layers.to_vec());
    let mut tree = crate::rootfs::Tree::default();
    crate::image::flatten::flatten(&image_layers, &mut tree)?;
    crate::rootfs::limits::check(&tree)?;
    let tmp = tempfile::Builder::new().prefix("base-").suffix(".squashfs").tempfile_in(&dir)?;
    let lz4 = crate::config::Compression { compressor: crate::config::Compressor::Lz4, level: None };
    crate::squashfs::write(&tree, &image_layers, tmp.path(), lz4, 0, &mut |_| {})?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(path)
}

/// Overlay's `lowerdir` order (top first) for layer directories given bottom first. A layer
/// can recur in a stack (two steps that made the same change); overlayfs refuses a directory
/// twice, and only the topmost occurrence matters (it applies all of its changes again over
/// whatever came between), so the others are dropped.
fn overlay_lowers(bottom_first: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    bottom_first.into_iter().rev().filter(|dir| seen.insert(dir.clone())).collect()
}

pub struct Guest {
    vm: BuildVm,
    /// Whether steps can have a network (QEMU's user-mode networking).
    network: bool,
    volumes: Volumes,
    /// Layers the guest holds, and the directory each is in.
    layers: HashMap<Sha256Digest, String>,
    next: usize,
}

fn mount_request(source: &str, target: &str, fstype: &str, options: &str) -> agent::MountRequest {
    agent::MountRequest {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        options: options.into(),
        ..Default::default()
    }
}

impl Guest {
    pub async fn boot(machine: &Machine, volumes: Volumes) -> Result<Guest> {
        // Under TCG a second vCPU buys little on small hosts and slows the boot.
        let cpus = if machine.accel == fledge_vmm::qemu::Accel::Tcg { 1 } else { 2 };
        // Cloud Hypervisor networks only through tap devices, which need privileges.
        let network = machine.vmm == crate::cli::VmmChoice::Qemu;
        let mut vm = BuildVm::boot(machine, volumes.disks.clone(), (cpus, MEMORY_MIB), network).await?;
        let agent = vm.agent();
        agent.mount(mount_request("serial:fledge-work", WORK, "ext4", "")).await?;
        agent.mount(mount_request("tmpfs", SECRETS, "tmpfs", "mode=0700")).await?;
        if !volumes.base.is_empty() {
            agent
                .mount(agent::MountRequest {
                    read_only: true,
                    ..mount_request("serial:fledge-base", &format!("{WORK}/base"), "squashfs", "")
                })
                .await?;
        }
        for n in volumes.caches.values() {
            agent
                .mount(mount_request(&format!("serial:fledge-cache-{n}"), &format!("{WORK}/cache{n}"), "ext4", ""))
                .await?;
        }
        // An empty lower layer, for steps on scratch.
        agent.put_tar(&format!("{WORK}/empty"), std::io::Cursor::new(vec![0u8; 1024])).await?;
        Ok(Guest { vm, network, volumes, layers: HashMap::new(), next: 0 })
    }

    /// Whether the guest has `layer` at hand (sent, made here, or on the base image disk).
    pub fn holds(&self, layer: &Sha256Digest) -> bool {
        self.layers.contains_key(layer) || self.volumes.base.contains(layer)
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

    /// Mounts the op's extra mounts under `root` (`shown`: by destination, the layers a bind
    /// mount shows or a new cache starts from); returns (target, created) to undo, and the
    /// secret environment variables.
    async fn mounts(
        &mut self,
        store: &Store,
        exec: &pb::ExecOp,
        root: &str,
        secrets: &HashMap<String, PathBuf>,
        shown: &HashMap<String, Vec<Sha256Digest>>,
    ) -> Result<(Vec<(String, Vec<String>)>, Vec<String>)> {
        let mut mounted = Vec::new();
        let networked = exec.network == pb::NetMode::Unset as i32;
        if networked && !self.network {
            bail!(
                "this step needs a network, which Cloud Hypervisor cannot give without a tap device: use FLEDGE_VMM=qemu, or RUN --network=none"
            );
        }
        // Every step gets BuildKit's hosts file, and the VM's resolver when it has a network,
        // bound over its own; mount points the root lacked are removed afterwards.
        let resolver = networked.then_some((fledge_agent::STEP_RESOLV_CONF, "/etc/resolv.conf"));
        for (file, dest) in resolver.into_iter().chain([(fledge_agent::STEP_HOSTS, "/etc/hosts")]) {
            let request = agent::MountRequest {
                source: file.into(),
                target: format!("{root}{dest}"),
                bind: true,
                read_only: true,
                ..Default::default()
            };
            if let Some(created) = self.vm.agent().mount(request).await? {
                mounted.push((format!("{root}{dest}"), created));
            }
        }
        for mount in exec.mounts.iter().filter(|m| m.dest != "/") {
            let target = format!("{root}{}", mount.dest);
            let request = match pb::MountType::try_from(mount.mount_type) {
                Ok(pb::MountType::Cache) => {
                    let id = mount.cache_opt.as_ref().map(|c| c.id.clone()).unwrap_or_default();
                    let n = *self.volumes.caches.get(&id).context("a cache mount the build did not prepare")?;
                    if let Some(layers) = shown.get(&mount.dest)
                        && self.volumes.fresh.remove(&id)
                    {
                        self.seed(store, layers, &mount.selector, &format!("{WORK}/cache{n}/{CACHE_DIR}")).await?;
                    }
                    agent::MountRequest {
                        source: format!("{WORK}/cache{n}/{CACHE_DIR}"),
                        target: target.clone(),
                        bind: true,
                        ..Default::default()
                    }
                }
                Ok(pb::MountType::Tmpfs) => {
                    let size = mount.tmpfs_opt.as_ref().map_or(0, |t| t.size);
                    let options = if size > 0 { format!("size={size}") } else { String::new() };
                    mount_request("tmpfs", &target, "tmpfs", &options)
                }
                Ok(pb::MountType::Secret) => {
                    let opt = mount.secret_opt.clone().unwrap_or_default();
                    let Some(source) =
                        self.secret(&opt.id, secrets, opt.optional, (opt.mode, opt.uid, opt.gid)).await?
                    else {
                        continue;
                    };
                    agent::MountRequest {
                        source,
                        target: target.clone(),
                        bind: true,
                        read_only: true,
                        ..Default::default()
                    }
                }
                Ok(pb::MountType::Bind) => {
                    let layers = shown.get(&mount.dest).context("a bind mount without its filesystem")?;
                    let source = self.stack(store, layers).await?;
                    mounted.push((source.clone(), Vec::new()));
                    let selector = mount.selector.trim_matches('/');
                    agent::MountRequest {
                        source: if selector.is_empty() { source } else { format!("{source}/{selector}") },
                        target: target.clone(),
                        bind: true,
                        read_only: mount.readonly,
                        ..Default::default()
                    }
                }
                Ok(pb::MountType::Ssh) => {
                    if mount.ssh_opt.as_ref().is_some_and(|o| o.optional) {
                        continue;
                    }
                    bail!(
                        "RUN --mount=type=ssh ({}): the embedded engine does not forward an SSH agent into the build VM\n  = help: fetch with credentials from --mount=type=secret, or build with FLEDGE_BUILDKIT_MODE=daemon",
                        mount.dest
                    );
                }
                _ => bail!("{} mounts are not supported by the embedded engine ({})", mount.mount_type, mount.dest),
            };
            if let Some(created) = self.vm.agent().mount(request).await? {
                mounted.push((target, created));
            }
        }
        let mut env = Vec::new();
        for secret in &exec.secretenv {
            let Some(path) = secrets.get(&secret.id) else {
                if secret.optional {
                    continue;
                }
                bail!("secret {}: not found: pass --secret id={},src=FILE", secret.id, secret.id);
            };
            let value =
                std::fs::read_to_string(path).with_context(|| format!("cannot read secret {}", path.display()))?;
            // The file as it is, a final newline included, as BuildKit passes it.
            env.push(format!("{}={value}", secret.name));
        }
        Ok((mounted, env))
    }

    /// `layers` stacked in an overlay of their own (writes go to a throwaway upper); returns
    /// where it is mounted. The caller unmounts it.
    async fn stack(&mut self, store: &Store, layers: &[Sha256Digest]) -> Result<String> {
        let mut lower = vec![format!("{WORK}/empty")];
        for layer in layers {
            lower.push(self.ensure(store, layer).await?);
        }
        let lower = overlay_lowers(lower);
        let id = self.next;
        self.next += 1;
        let dir = format!("{WORK}/b{id}");
        let overlay = agent::MountOverlayRequest {
            lower,
            upper: format!("{dir}/upper"),
            work: format!("{dir}/work"),
            target: format!("{dir}/root"),
        };
        self.vm.agent().mount_overlay(overlay).await?;
        Ok(format!("{dir}/root"))
    }

    /// Fills a new cache volume at `volume` from `layers` (the cache mount's `from`) at
    /// `selector` (its `source`), as BuildKit starts such a cache. The files pass through a
    /// temporary file on the host, never held in memory.
    async fn seed(&mut self, store: &Store, layers: &[Sha256Digest], selector: &str, volume: &str) -> Result<()> {
        let source = self.stack(store, layers).await?;
        let selector = selector.trim_matches('/');
        let dir = if selector.is_empty() { source.clone() } else { format!("{source}/{selector}") };
        let tar = tempfile::Builder::new().prefix("seed-").tempfile_in(store.tmp_dir()?)?;
        let mut file = tokio::fs::File::from_std(tar.reopen()?);
        self.vm.agent().get_tar(&dir, &mut file, MAX_DIFF).await?;
        drop(file);
        self.vm.agent().put_tar(volume, tokio::fs::File::from_std(tar.reopen()?)).await?;
        self.vm.agent().unmount(&source, Vec::new()).await?;
        Ok(())
    }

    /// Puts secret `id` into the guest's memory; `None` when optional and not given.
    async fn secret(
        &mut self,
        id: &str,
        secrets: &HashMap<String, PathBuf>,
        optional: bool,
        (mode, uid, gid): (u32, u32, u32),
    ) -> Result<Option<String>> {
        let Some(path) = secrets.get(id) else {
            if optional {
                return Ok(None);
            }
            bail!("secret {id}: not found: pass --secret id={id},src=FILE");
        };
        let file =
            tokio::fs::File::open(path).await.with_context(|| format!("cannot read secret {}", path.display()))?;
        let guest_path = format!("{SECRETS}/{}", Sha256Digest::of_bytes(id.as_bytes()).hex());
        self.vm.agent().write_file(&guest_path, (mode, uid, gid), file).await?;
        Ok(Some(guest_path))
    }

    /// Runs `exec` on top of `base`; returns the stored diff layer.
    pub async fn run(
        &mut self,
        store: &Store,
        base: &[Sha256Digest],
        exec: &pb::ExecOp,
        secrets: &HashMap<String, PathBuf>,
        shown: &HashMap<String, Vec<Sha256Digest>>,
        (stdout, stderr): (
            &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
            &mut (dyn tokio::io::AsyncWrite + Send + Unpin),
        ),
    ) -> Result<Sha256Digest> {
        let meta = exec.meta.clone().unwrap_or_default();
        // The attached base image stands for its layers when this base starts with them.
        let image = &self.volumes.base;
        let (mut lower, rest) = if !image.is_empty() && base.starts_with(image) {
            (vec![format!("{WORK}/base")], &base[image.len()..])
        } else {
            (Vec::new(), base)
        };
        for layer in rest {
            lower.push(self.ensure(store, layer).await?);
        }
        let mut lower = overlay_lowers(lower);
        if lower.is_empty() {
            lower.push(format!("{WORK}/empty"));
        }
        let step = self.next;
        self.next += 1;
        let (upper, root) = (format!("{WORK}/u{step}/upper"), format!("{WORK}/r{step}"));
        let overlay = agent::MountOverlayRequest {
            lower: lower.clone(),
            upper: upper.clone(),
            work: format!("{WORK}/u{step}/work"),
            target: root.clone(),
        };
        self.vm.agent().mount_overlay(overlay).await?;
        let (mounted, secret_env) = self.mounts(store, exec, &root, secrets, shown).await?;
        let process = Process {
            args: meta.args.clone(),
            env: meta.env.iter().cloned().chain(proxy_env(meta.proxy_env.as_ref())).chain(secret_env).collect(),
            cwd: meta.cwd.clone(),
            user: meta.user.clone(),
            root: root.clone(),
            no_network: exec.network == pb::NetMode::None as i32,
            insecure: exec.security == pb::SecurityMode::Insecure as i32,
        };
        let io = ExecIo { stdin: None, stdout, stderr, signals: None };
        // A process that could not start failed as BuildKit reports it.
        let status = self
            .vm
            .agent()
            .exec(&process, io)
            .await
            .with_context(|| format!("process {:?} did not complete successfully", meta.args))?;
        for (target, created) in mounted.into_iter().rev() {
            self.vm.agent().unmount(&target, created).await?;
        }
        if status != ExitStatus::Exited(0) {
            bail!("process {:?} did not complete successfully: exit code: {}", meta.args, status.code());
        }
        self.vm.agent().unmount(&root, Vec::new()).await?;
        let diff = tempfile::Builder::new().prefix("diff-").tempfile_in(store.tmp_dir()?)?;
        let mut file = tokio::fs::File::from_std(diff.reopen()?);
        // The layers below, merged, for the differ to leave out what the step left alike.
        // One directory is its own view; an overlay without an upper needs two lowers.
        let (view, mounted_view) = match lower.as_slice() {
            [only] => (only.clone(), false),
            _ => {
                let view = format!("{WORK}/v{step}");
                let overlay = agent::MountOverlayRequest {
                    lower,
                    upper: String::new(),
                    work: String::new(),
                    target: view.clone(),
                };
                self.vm.agent().mount_overlay(overlay).await?;
                (view, true)
            }
        };
        self.vm.agent().get_layer_diff(&upper, &view, &mut file, MAX_DIFF).await?;
        if mounted_view {
            self.vm.agent().unmount(&view, Vec::new()).await?;
        }
        drop(file);
        let (digest, _) = store.write_blob(&mut diff.reopen()?, None, "a build step's layer")?;
        // The upper is this layer in overlay form already: later steps stack on it.
        self.layers.insert(digest, upper);
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_recurring_layer_keeps_only_its_topmost_place() {
        let dirs = ["base", "a", "b", "a", "c", "c"].map(String::from).to_vec();
        assert_eq!(super::overlay_lowers(dirs), ["c", "a", "b", "base"]);
    }

    #[test]
    fn proxy_settings_reach_the_step_in_both_cases() {
        let proxy = super::pb::ProxyEnv { http_proxy: "h".into(), no_proxy: "n".into(), ..Default::default() };
        assert_eq!(super::proxy_env(Some(&proxy)), ["HTTP_PROXY=h", "http_proxy=h", "NO_PROXY=n", "no_proxy=n"]);
        assert!(super::proxy_env(None).is_empty());
    }
}
