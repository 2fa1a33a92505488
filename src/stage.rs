//! Staging a tree as a real directory, for the filesystem tools that only read directories
//! (`mkfs.erofs`). The stage lives next to the output, is written with ordinary
//! permissions (so no privilege is needed and every file stays readable), and is removed when
//! dropped. What a plain directory cannot hold without privilege (exact modes, owners, device
//! nodes, xattrs) is kept per entry; [`Stage::apply_metadata`] applies it as far as the user
//! may, and [`Stage::needs_root`] says what only root could.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::paths::ImagePath;
use crate::rootfs::walk::{LayerSource, Payload, Sink, walk};
use crate::rootfs::{Attrs, Node, SpecialKind, Tree};

const BLOCK: u64 = 4096;

/// One staged entry and the metadata the stage does not carry.
pub struct StagedEntry {
    pub path: ImagePath,
    /// Where it is in the stage (specials are not created there).
    pub host: PathBuf,
    /// File type bits (`S_IFREG`, …).
    pub type_bits: u32,
    pub mode: u32,
    pub attrs: Attrs,
    pub special: Option<(SpecialKind, u32, u32)>,
}

/// A staged tree; the directory is deleted on drop.
pub struct Stage {
    pub work: tempfile::TempDir,
    pub root: PathBuf,
    /// In writing order: parents before children.
    pub entries: Vec<StagedEntry>,
    /// Content rounded to 4 KiB blocks, for sizing images.
    pub content_bytes: u64,
    pub data_bytes: u64,
}

fn staged(root: &Path, path: &ImagePath) -> PathBuf {
    path.components().iter().fold(root.to_path_buf(), |p, c| p.join(c))
}

fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK
}

struct StageSink<'a> {
    stage: &'a mut Stage,
}

impl Sink for StageSink<'_> {
    fn entry(&mut self, path: &ImagePath, node: &Node, attrs: &Attrs, payload: Payload<'_>) -> io::Result<()> {
        let stage = &mut *self.stage;
        let host = staged(&stage.root, path);
        let (type_bits, mode, special) = match node {
            Node::Dir { mode } => {
                if !path.is_root() {
                    fs::create_dir(&host)?;
                }
                stage.content_bytes += BLOCK;
                (0o040_000, *mode, None)
            }
            Node::File { mode, .. } => {
                match payload {
                    Payload::Data { reader, size, .. } => {
                        io::copy(reader, &mut File::create(&host)?)?;
                        stage.content_bytes += blocks(size);
                        stage.data_bytes += size;
                    }
                    Payload::Link { to, .. } => fs::hard_link(staged(&stage.root, to), &host)?,
                    Payload::None => unreachable!("walk always sends files with data or a link"),
                }
                (0o100_000, *mode, None)
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(target, &host)?;
                stage.content_bytes += if target.len() >= 60 { blocks(target.len() as u64) } else { 0 };
                (0o120_000, 0o777, None)
            }
            Node::Special { kind, mode, major, minor } => {
                let bits = match kind {
                    SpecialKind::Char => 0o020_000,
                    SpecialKind::Block => 0o060_000,
                    SpecialKind::Fifo => 0o010_000,
                };
                (bits, *mode, Some((*kind, *major, *minor)))
            }
        };
        stage.entries.push(StagedEntry { path: path.clone(), host, type_bits, mode, attrs: attrs.clone(), special });
        Ok(())
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
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

/// Gives a staged entry its exact metadata (owners only as root).
fn apply(entry: &StagedEntry, root: bool) -> io::Result<()> {
    let host = &entry.host;
    let c = cpath(host)?;
    if let Some((_, major, minor)) = entry.special {
        // SAFETY: `c` is a valid NUL-terminated path; mknod has no other preconditions.
        let rc = unsafe { libc::mknod(c.as_ptr(), entry.type_bits | entry.mode, libc::makedev(major, minor)) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (name, value) in &entry.attrs.xattrs {
        let n = CString::new(name.as_bytes()).map_err(io::Error::other)?;
        // SAFETY: valid path and name strings, and a value buffer of the given length.
        let rc = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if root {
        std::os::unix::fs::lchown(host, Some(entry.attrs.uid), Some(entry.attrs.gid))?;
    }
    if entry.type_bits != 0o120_000 {
        fs::set_permissions(host, fs::Permissions::from_mode(entry.mode))?;
    }
    Ok(())
}

impl Stage {
    /// The first entry only root could stage faithfully, and why.
    pub fn needs_root(&self) -> Option<(&StagedEntry, String)> {
        self.entries.iter().find_map(|e| needs_root(e).map(|why| (e, why)))
    }

    /// Gives every staged entry its exact mode, xattrs and device node, and as `root` its
    /// owner; on failure, names the host path.
    pub fn apply_metadata(&self, root: bool) -> Result<(), (PathBuf, io::Error)> {
        // Children before parents, so a read-only directory is made read-only last.
        for entry in self.entries.iter().rev() {
            apply(entry, root).map_err(|e| (entry.host.clone(), e))?;
        }
        Ok(())
    }
}

/// Stages `tree` in a new 0700 directory of this process's scratch area under the state
/// directory (`crate::scratch`): never beside the output, where other users may traverse, and
/// swept by the next build if this one is killed.
pub fn stage(tree: &Tree, layers: &dyn LayerSource, progress: &mut dyn FnMut(u64)) -> io::Result<Stage> {
    let work = tempfile::Builder::new().prefix("stage-").tempdir_in(crate::scratch::state_tmp()?)?;
    let root = work.path().join("root");
    fs::create_dir(&root)?;
    let mut stage = Stage { work, root, entries: Vec::new(), content_bytes: 0, data_bytes: 0 };
    walk(tree, layers, &mut StageSink { stage: &mut stage }, progress)?;
    Ok(stage)
}

/// A stable id from what the tree holds, for filesystem UUIDs and hash seeds.
pub fn tree_id(tree: &Tree) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    for crate::rootfs::Entry { path, node, .. } in tree.iter() {
        crate::interrupt::check()?;
        h.update(path.to_string().as_bytes());
        h.update(format!("{node:?}").as_bytes());
    }
    Ok(h.finalize().into())
}

/// [`tree_id`] as UUID text.
pub fn tree_uuid(tree: &Tree) -> io::Result<String> {
    let hex = hex::encode(&tree_id(tree)?[..16]);
    Ok(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}
