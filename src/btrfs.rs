//! btrfs rootfs images, a legacy option, through `mkfs.btrfs --rootdir`, which reads only a
//! directory and copies owners, modes, device nodes and xattrs from it. Reproducing a tree's
//! owners and device nodes in a directory takes root, so these builds need root: as another
//! user Fledge stops before writing anything and says so. Debian's btrfs-progs 6.2 loses
//! device numbers, so trees with device nodes are refused too. The UUID comes from the tree, but
//! btrfs-progs 6.2 stamps creation times and generations itself, so two builds are not
//! byte-identical (squashfs, ext4 and erofs are).

use std::io;
use std::path::Path;
use std::process::Command;

use crate::config::Filesystem;
use crate::rootfs::walk::LayerSource;
use crate::rootfs::{Node, SpecialKind, Tree};
use crate::stage::{is_root, stage, tree_uuid};

#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error("mkfs.btrfs is not installed\n  = help: install btrfs-progs (Debian: apt install btrfs-progs)")]
    Missing,
    #[error("mkfs.btrfs failed: {0}")]
    Failed(String),
    #[error(
        "btrfs images need root: mkfs.btrfs copies owners and device nodes from a staged directory, which only root can create\n  = help: run the build as root, or use type = \"squashfs\", \"ext4\" or \"erofs\", which work without root"
    )]
    NeedsRoot,
    #[error(
        "{0} is a device node, and Debian's mkfs.btrfs 6.2 writes every device number as 0:0\n  = help: use type = \"ext4\", \"squashfs\" or \"erofs\", which keep device nodes"
    )]
    DeviceNode(String),
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BtrfsError + '_ {
    move |source| BtrfsError::Io { path: path.display().to_string(), source }
}

/// Content plus metadata room (btrfs keeps two copies of metadata and small files live in
/// it) plus the configured free space; mkfs.btrfs needs at least 128 MiB.
fn image_size(content: u64, fs_config: &Filesystem) -> u64 {
    const MIB: u64 = 1 << 20;
    let buffer = match fs_config.size_buffer_mb {
        0 => (content / 4).clamp(64 * MIB, 1024 * MIB),
        mb => mb * MIB,
    };
    (content + content / 4 + 64 * MIB + buffer).max(128 * MIB).div_ceil(MIB) * MIB
}

/// Writes `tree` as a btrfs image at `dest`; returns the file bytes packed.
pub fn write(
    tree: &Tree,
    layers: &dyn LayerSource,
    dest: &Path,
    fs_config: &Filesystem,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, BtrfsError> {
    if !is_root() {
        return Err(BtrfsError::NeedsRoot);
    }
    let device = |node: &Node| matches!(node, Node::Special { kind: SpecialKind::Char | SpecialKind::Block, .. });
    if let Some(crate::rootfs::Entry { path, .. }) = tree.iter().find(|e| device(e.node)) {
        return Err(BtrfsError::DeviceNode(path.to_string()));
    }
    let staged = stage(tree, layers, progress).map_err(io_at(dest))?;
    staged.apply_metadata(true).map_err(|(path, e)| io_at(&path)(e))?;
    let file = std::fs::File::create(dest).map_err(io_at(dest))?;
    let size = image_size(staged.content_bytes, fs_config);
    file.set_len(size).map_err(io_at(dest))?;
    if fs_config.preallocate {
        crate::output::preallocate(&file, size).map_err(io_at(dest))?;
    }
    drop(file);
    let uuid = tree_uuid(tree).map_err(io_at(dest))?;
    let mut cmd = Command::new("mkfs.btrfs");
    crate::interrupt::dies_with_parent(&mut cmd)
        .args(["-q", "-f", "-U", &uuid, "--rootdir"])
        .arg(&staged.root)
        .arg(dest);
    let out = crate::interrupt::output(&mut cmd)
        .map_err(|e| if e.kind() == io::ErrorKind::NotFound { BtrfsError::Missing } else { io_at(dest)(e) })?;
    if !out.status.success() {
        return Err(BtrfsError::Failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(staged.data_bytes)
}
