//! The `initramfs` strategy: lay out the image tree (skeleton, BusyBox and its applet links,
//! the init chain for the chosen mode, the agent, mappings) and pack it as a compressed cpio.

pub mod cpio;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Compression, InitMode, Mapping};
use crate::guest_init;
use crate::mappings::{self, LocatedMappingError};
use crate::paths::ImagePath;
use crate::rootfs::walk::LayerSource;
use crate::rootfs::{FileData, Node, SpecialKind, Tree, TreeError};

/// Directories every initramfs starts with (mode 0755).
pub const SKELETON: [&str; 13] = [
    "/bin",
    "/sbin",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/tmp",
    "/run",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/var/log",
    "/root",
];

/// BusyBox applets linked in `/bin`: the original Fledge's 35 plus what an init script and
/// a shell session commonly need. All are in the pinned BusyBox 1.35 and Debian's
/// busybox-static; a missing one only fails when called.
pub const APPLETS: [&str; 60] = [
    "sh", "ash", "ls", "cat", "cp", "mv", "rm", "mkdir", "rmdir", "ln", "chmod", "chown", "ps", "kill", "mount",
    "umount", "grep", "sed", "awk", "find", "test", "echo", "printf", "true", "false", "sleep", "pwd", "cd", "env",
    "which", "tar", "gzip", "gunzip", "wget", "vi", "head", "tail", "wc", "sort", "uniq", "cut", "tr", "xargs", "ip",
    "ifconfig", "route", "hostname", "dmesg", "poweroff", "reboot", "sync", "uname", "date", "df", "du", "free",
    "chroot", "mknod", "id", "[",
];

/// Where custom mode installs the user's init; `/.volant_init` names it for Fledge's init.
pub const CUSTOM_INIT_PATH: &str = "/usr/libexec/fledge/init";
/// The original Fledge's handoff file: its first line is the program `/init` runs.
pub const HANDOFF_FILE: &str = "/.volant_init";
pub const AGENT_PATH: &str = "/bin/kestrel";

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Mapping(#[from] LocatedMappingError),
    #[error(
        "the image has no executable /init, so the kernel could not start it\n  = help: with [init] none = true, map your init program to /init in [mappings]"
    )]
    NoInit,
}

/// Everything that goes into the image besides the mappings, already fetched and verified.
pub struct Parts<'a> {
    pub busybox: &'a Path,
    pub init: &'a InitMode,
    /// Present exactly in default init mode.
    pub agent: Option<PathBuf>,
    pub mappings: &'a [Mapping],
}

fn path(s: &str) -> ImagePath {
    ImagePath::parse(s).expect("constant image paths are valid")
}

fn executable(host: &Path) -> Node {
    Node::File { mode: 0o755, data: FileData::Host(host.to_path_buf()) }
}

fn bytes(mode: u32, data: &[u8]) -> Node {
    Node::File { mode, data: FileData::Bytes(Arc::from(data)) }
}

/// Builds the image tree on `base` (empty, or an image's flattened filesystem). BusyBox
/// applet links are added only where the image has no such name; Fledge's init, agent and
/// mappings replace what is there. Mappings go last, so they can replace anything, `/init`
/// included.
pub fn assemble(parts: &Parts<'_>, base: Tree) -> Result<Tree, AssembleError> {
    let mut tree = base;
    for dir in SKELETON {
        tree.mkdir_all(&path(dir), 0o755)?;
    }
    // The kernel opens /dev/console for init before anything can mount devtmpfs.
    tree.replace(&path("/dev/console"), Node::Special { kind: SpecialKind::Char, mode: 0o600, major: 5, minor: 1 })?;
    tree.replace(&path("/bin/busybox"), executable(parts.busybox))?;
    for applet in APPLETS {
        let link = path("/bin").join(applet);
        let resolved = tree.resolve(&link, false)?;
        if tree.get(&resolved).is_none() {
            tree.insert(&link, Node::Symlink { target: "busybox".into() })?;
        }
    }
    match parts.init {
        InitMode::Default => {
            tree.replace(&path("/init"), bytes(0o755, guest_init::BINARY))?;
        }
        InitMode::Custom(host) => {
            tree.replace(&path("/init"), bytes(0o755, guest_init::BINARY))?;
            tree.replace(&path(CUSTOM_INIT_PATH), executable(host))?;
            tree.replace(&path(HANDOFF_FILE), bytes(0o644, format!("{CUSTOM_INIT_PATH}\n").as_bytes()))?;
        }
        InitMode::None => {}
    }
    if let Some(agent) = &parts.agent {
        tree.replace(&path(AGENT_PATH), executable(agent))?;
    }
    mappings::apply(&mut tree, parts.mappings)?;
    check_init(&tree)?;
    Ok(tree)
}

/// The kernel runs `/init` (following symlinks); without an executable one it panics.
fn check_init(tree: &Tree) -> Result<(), AssembleError> {
    let init = tree.resolve(&path("/init"), true)?;
    match tree.get(&init) {
        Some(Node::File { mode, .. }) if mode & 0o111 != 0 => Ok(()),
        _ => Err(AssembleError::NoInit),
    }
}

/// Packs `tree` (whose layer-backed files come from `layers`) as a cpio archive compressed
/// with `compression` into `out`.
pub fn pack<W: Write>(
    tree: &Tree,
    layers: &dyn LayerSource,
    compression: Compression,
    out: W,
    mtime: u32,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<(cpio::Stats, W)> {
    let mut encoder = crate::compress::Encoder::new(compression, out)?;
    let stats = cpio::write_tree(tree, layers, &mut encoder, mtime, progress)?;
    Ok((stats, encoder.finish()?))
}

/// Writes to `dest` an initramfs holding only `init` (one of [`guest_init`]'s binaries) and
/// `/dev/console`: the wrapper that boots rootfs images from a disk, the KVM probe's guest,
/// and (with the agent) a build VM.
pub fn init_only(dest: &Path, init: &'static [u8]) -> std::io::Result<()> {
    let mut tree = Tree::default();
    let console = Node::Special { kind: SpecialKind::Char, mode: 0o600, major: 5, minor: 1 };
    let init = Node::File { mode: 0o755, data: FileData::Bytes(init.into()) };
    for (p, node) in [("/dev", Node::Dir { mode: 0o755 }), ("/dev/console", console), ("/init", init)] {
        tree.insert(&path(p), node).map_err(std::io::Error::other)?;
    }
    let file = std::fs::File::create(dest)?;
    // LZ4: the fastest to write and to unpack in the guest (every kernel Fledge boots has it).
    let compression = Compression { compressor: crate::config::Compressor::Lz4, level: None };
    pack(&tree, &crate::rootfs::walk::NoLayers, compression, file, 0, &mut |_| {})?.1.sync_all()
}
