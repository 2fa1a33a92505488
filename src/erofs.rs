//! EROFS rootfs images through Debian's `mkfs.erofs` 1.5, which reads only directories. The
//! tree is staged (see [`crate::stage`]); as root every entry then gets its exact owner, mode,
//! device number and xattrs before `mkfs.erofs` reads it, so the image has full fidelity. As
//! another user that is possible only when the image needs no privilege: everything owned by
//! root (written with `--all-root`), no device nodes, only `user.*` xattrs; otherwise the build
//! stops with an error naming the entry and why. `-T` pins every timestamp and the UUID comes
//! from the tree, so equal inputs give equal images.

use std::io;
use std::path::Path;
use std::process::Command;

use crate::config::{Compression, Compressor};
use crate::rootfs::Tree;
use crate::rootfs::walk::LayerSource;
use crate::stage::{is_root, stage, tree_uuid};

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("mkfs.erofs is not installed\n  = help: install erofs-utils (Debian: apt install erofs-utils)")]
    Missing,
    #[error("mkfs.erofs failed: {0}")]
    Failed(String),
    #[error(
        "an erofs image of this tree needs root: {path} {why}\n  = help: run the build as root, or use type = \"squashfs\" or \"ext4\", which keep owners and devices without root"
    )]
    NeedsRoot { path: String, why: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ErofsError + '_ {
    move |source| ErofsError::Io { path: path.display().to_string(), source }
}

/// Writes `tree` as an EROFS image at `dest`; returns the file bytes packed.
pub fn write(
    tree: &Tree,
    layers: &dyn LayerSource,
    dest: &Path,
    compression: Option<Compression>,
    mtime: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ErofsError> {
    let root = is_root();
    let staged = stage(tree, layers, progress).map_err(io_at(dest))?;
    if !root && let Some((entry, why)) = staged.needs_root() {
        return Err(ErofsError::NeedsRoot { path: entry.path.to_string(), why });
    }
    staged.apply_metadata(root).map_err(|(path, e)| io_at(&path)(e))?;
    let mut cmd = Command::new("mkfs.erofs");
    crate::interrupt::dies_with_parent(&mut cmd);
    cmd.arg("--quiet").arg(format!("-T{mtime}")).arg(format!("-U{}", tree_uuid(tree).map_err(io_at(dest))?));
    if !root {
        cmd.arg("--all-root");
    }
    match compression {
        Some(Compression { compressor: Compressor::Lz4hc, level: Some(level) }) => cmd.arg(format!("-zlz4hc,{level}")),
        Some(Compression { compressor: Compressor::Lz4, .. }) => cmd.arg("-zlz4"),
        _ => &mut cmd,
    };
    let out = crate::interrupt::output(cmd.arg(dest).arg(&staged.root))
        .map_err(|e| if e.kind() == io::ErrorKind::NotFound { ErofsError::Missing } else { io_at(dest)(e) })?;
    if !out.status.success() {
        return Err(ErofsError::Failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(staged.data_bytes)
}
