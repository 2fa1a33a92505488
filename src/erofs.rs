//! EROFS rootfs images through Debian's `mkfs.erofs` 1.5, which reads only directories. The
//! tree is staged (see [`crate::stage`]); as root every entry then gets its exact owner, mode,
//! device number and xattrs before `mkfs.erofs` reads it, so the image has full fidelity. As
//! another user that is possible only when the image needs no privilege: everything owned by
//! root (written with `--all-root`), no device nodes, only `user.*` xattrs; otherwise the build
//! stops with an error naming the entry and why. `-T` pins every timestamp and the UUID comes
//! from the tree, so equal inputs give equal images.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::config::{Compression, Compressor};
use crate::rootfs::walk::LayerSource;
use crate::rootfs::{SpecialKind, Tree};
use crate::stage::{StagedEntry, stage, tree_uuid};

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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ErofsError + '_ {
    move |source| ErofsError::Io { path: path.display().to_string(), source }
}

/// Why a non-root user cannot reproduce `entry` faithfully, if they cannot.
fn needs_root(entry: &StagedEntry) -> Option<String> {
    if entry.attrs.uid != 0 || entry.attrs.gid != 0 {
        return Some(format!("is owned by {}:{}", entry.attrs.uid, entry.attrs.gid));
    }
    if matches!(entry.special, Some((SpecialKind::Char | SpecialKind::Block, _, _))) {
        return Some("is a device node".into());
    }
    entry
        .attrs
        .xattrs
        .iter()
        .find(|(name, _)| !name.starts_with("user."))
        .map(|(name, _)| format!("has the xattr {name}"))
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("staged paths have no NUL bytes")
}

/// Gives a staged entry its exact metadata (owners only as root).
fn apply(entry: &StagedEntry, root: bool) -> Result<(), ErofsError> {
    let host = &entry.host;
    let c = cpath(host);
    if let Some((_, major, minor)) = entry.special {
        // SAFETY: `c` is a valid NUL-terminated path; mknod has no other preconditions.
        let rc = unsafe { libc::mknod(c.as_ptr(), entry.type_bits | entry.mode, libc::makedev(major, minor)) };
        if rc != 0 {
            return Err(io_at(host)(io::Error::last_os_error()));
        }
    }
    for (name, value) in &entry.attrs.xattrs {
        let n = CString::new(name.as_bytes()).map_err(|e| io_at(host)(io::Error::other(e)))?;
        // SAFETY: valid path and name strings, and a value buffer of the given length.
        let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc != 0 {
            return Err(io_at(host)(io::Error::last_os_error()));
        }
    }
    if root {
        std::os::unix::fs::lchown(host, Some(entry.attrs.uid), Some(entry.attrs.gid)).map_err(io_at(host))?;
    }
    if entry.type_bits != 0o120_000 {
        std::fs::set_permissions(host, std::fs::Permissions::from_mode(entry.mode)).map_err(io_at(host))?;
    }
    Ok(())
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
    let staged = stage(tree, layers, dest, progress).map_err(io_at(dest))?;
    if !root && let Some((entry, why)) = staged.entries.iter().find_map(|e| needs_root(e).map(|why| (e, why))) {
        return Err(ErofsError::NeedsRoot { path: entry.path.to_string(), why });
    }
    // Children before parents, so a read-only directory is made read-only last.
    for entry in staged.entries.iter().rev() {
        apply(entry, root)?;
    }
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet").arg(format!("-T{mtime}")).arg(format!("-U{}", tree_uuid(tree)));
    if !root {
        cmd.arg("--all-root");
    }
    match compression {
        Some(Compression { compressor: Compressor::Lz4hc, level: Some(level) }) => cmd.arg(format!("-zlz4hc,{level}")),
        Some(Compression { compressor: Compressor::Lz4, .. }) => cmd.arg("-zlz4"),
        _ => &mut cmd,
    };
    let out = cmd
        .arg(dest)
        .arg(&staged.root)
        .output()
        .map_err(|e| if e.kind() == io::ErrorKind::NotFound { ErofsError::Missing } else { io_at(dest)(e) })?;
    if !out.status.success() {
        return Err(ErofsError::Failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(staged.data_bytes)
}
