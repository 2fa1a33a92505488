//! A build step's layer: what its overlay upper directory changed against the layers below,
//! decided and written as BuildKit's overlay differ does (BuildKit v0.32 `util/overlay`
//! `Changes` with containerd's `archive.ChangeWriter`), so that a RUN step's layer holds the
//! entries BuildKit's would:
//!
//! - the upper is walked in name order; an entry the lower holds alike (same type and
//!   permission bits, owner, device number and `security.capability`; for a non-directory
//!   also the size and the modification time, and the content or link target when both
//!   times have no sub-second part) is left out, so a directory a step only copied up (a
//!   mount point made and removed, a file created and deleted in it) is not in the layer;
//! - a whiteout (a 0:0 character device) becomes `.wh.NAME` only where the lower has NAME;
//! - an opaque directory the lower also holds is compared with it entry by entry: what the
//!   lower has and the upper lacks gets its own `.wh.NAME`; no `.wh..wh..opq` is written;
//! - every entry is preceded by its parent directories not yet written, as the upper has
//!   them; sockets are left out; of the extended attributes only `security.capability` is
//!   kept; names of one inode after the first are hard links to the first written.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::tarball::{self, xattr};

/// How an entry differs from the lower.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Change {
    Add,
    Modify,
    Delete,
    /// Alike, but one of several names of an inode: the name is linked if the inode is
    /// written.
    Unmodified,
}

/// Writes the layer of `upper` over `lower` (the layers below, merged) into `tar`.
pub fn write<W: Write>(tar: &mut tar::Builder<W>, upper: &Path, lower: &Path) -> std::io::Result<()> {
    let mut writer = ChangeWriter {
        tar,
        upper,
        added_dirs: HashSet::new(),
        inode_source: HashMap::new(),
        inode_refs: HashMap::new(),
    };
    walk_upper(&mut writer, upper, lower, Path::new(""))
}

/// The names in `dir`, sorted by their bytes (Go's `filepath.Walk` order); none if `dir` is
/// not a directory.
fn names(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    let mut names = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>()?,
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) || e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    Ok(names)
}

/// The lower's entry at `path`, `None` if it has none.
fn lower_entry(path: &Path) -> std::io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn walk_upper<W: Write>(w: &mut ChangeWriter<'_, W>, upper: &Path, lower: &Path, rel: &Path) -> std::io::Result<()> {
    for name in names(&upper.join(rel))? {
        let path = rel.join(&name);
        let meta = std::fs::symlink_metadata(upper.join(&path))?;
        let base = lower_entry(&lower.join(&path))?;
        if is_whiteout(&meta) {
            if base.is_some() {
                w.change(Change::Delete, &path)?;
            }
            continue;
        }
        match &base {
            Some(base) if same(base, &meta, &lower.join(&path), &upper.join(&path))? => {}
            Some(_) => w.change(Change::Modify, &path)?,
            None => w.change(Change::Add, &path)?,
        }
        if meta.is_dir() {
            if base.is_some() && opaque(&upper.join(&path))? {
                compare(w, upper, lower, &path, base.as_ref())?;
            } else {
                walk_upper(w, upper, lower, &path)?;
            }
        }
    }
    Ok(())
}

/// Below `rel`, the upper against the lower, entry by entry (continuity's double walk, for
/// an opaque directory): `lower_dir` is the lower's entry at `rel`.
fn compare<W: Write>(
    w: &mut ChangeWriter<'_, W>,
    upper: &Path,
    lower: &Path,
    rel: &Path,
    lower_dir: Option<&Metadata>,
) -> std::io::Result<()> {
    let lower_names = if lower_dir.is_some_and(Metadata::is_dir) { names(&lower.join(rel))? } else { Vec::new() };
    let mut upper_names = Vec::new();
    for name in names(&upper.join(rel))? {
        // What the upper hides inside an opaque directory is not there at all.
        if !is_whiteout(&std::fs::symlink_metadata(upper.join(rel).join(&name))?) {
            upper_names.push(name);
        }
    }
    let (mut l, mut u) = (lower_names.iter().peekable(), upper_names.iter().peekable());
    loop {
        let order = match (l.peek(), u.peek()) {
            (None, None) => return Ok(()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        };
        match order {
            std::cmp::Ordering::Less => w.change(Change::Delete, &rel.join(l.next().expect("peeked")))?,
            std::cmp::Ordering::Greater => {
                let path = rel.join(u.next().expect("peeked"));
                w.change(Change::Add, &path)?;
                if std::fs::symlink_metadata(upper.join(&path))?.is_dir() {
                    compare(w, upper, lower, &path, None)?;
                }
            }
            std::cmp::Ordering::Equal => {
                l.next();
                let path = rel.join(u.next().expect("peeked"));
                let (a, b) =
                    (std::fs::symlink_metadata(lower.join(&path))?, std::fs::symlink_metadata(upper.join(&path))?);
                if !same(&a, &b, &lower.join(&path), &upper.join(&path))? {
                    w.change(Change::Modify, &path)?;
                } else if !b.is_dir() && b.nlink() > 1 {
                    w.change(Change::Unmodified, &path)?;
                }
                if b.is_dir() {
                    compare(w, upper, lower, &path, Some(&a))?;
                }
            }
        }
    }
}

/// Whether the overlay marked the upper directory `path` as hiding the lower's.
fn opaque(path: &Path) -> std::io::Result<bool> {
    for key in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if xattr(path, key)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// BuildKit's `sameDirent`: whether the lower's entry `a` and the upper's `b` are alike.
fn same(a: &Metadata, b: &Metadata, a_path: &Path, b_path: &Path) -> std::io::Result<bool> {
    if a.mode() != b.mode() || a.uid() != b.uid() || a.gid() != b.gid() || a.rdev() != b.rdev() {
        return Ok(false);
    }
    if xattr(a_path, "security.capability")? != xattr(b_path, "security.capability")? {
        return Ok(false);
    }
    if a.is_dir() {
        return Ok(true);
    }
    if a.len() != b.len() || a.mtime() != b.mtime() {
        return Ok(false);
    }
    if a.mtime_nsec() != 0 || b.mtime_nsec() != 0 {
        return Ok(a.mtime_nsec() == b.mtime_nsec());
    }
    if a.file_type().is_symlink() {
        return Ok(std::fs::read_link(a_path)? == std::fs::read_link(b_path)?);
    }
    if a.len() == 0 {
        return Ok(true);
    }
    same_content(a_path, b_path)
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// containerd's `ChangeWriter`: writes each change, its parents first.
struct ChangeWriter<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    upper: &'a Path,
    /// Directories written (or being written as a parent).
    added_dirs: HashSet<PathBuf>,
    /// Of an inode with several names: the name its content was written under.
    inode_source: HashMap<(u64, u64), PathBuf>,
    /// Of an inode not written yet: its unchanged names, linked once it is.
    inode_refs: HashMap<(u64, u64), Vec<PathBuf>>,
}

impl<W: Write> ChangeWriter<'_, W> {
    fn change(&mut self, kind: Change, path: &Path) -> std::io::Result<()> {
        if kind == Change::Delete {
            let name = format!(".wh.{}", path.file_name().unwrap_or_default().to_string_lossy());
            let whiteout = path.with_file_name(name);
            self.include_parents(&whiteout)?;
            return tarball::marker(self.tar, &whiteout, 0);
        }
        let meta = std::fs::symlink_metadata(self.upper.join(path))?;
        if meta.file_type().is_socket() {
            return Ok(());
        }
        let mut additional = Vec::new();
        if !meta.is_dir() && meta.nlink() > 1 {
            let inode = (meta.dev(), meta.ino());
            if let Some(source) = self.inode_source.get(&inode).cloned() {
                self.include_parents(path)?;
                return tarball::hard_link(self.tar, &meta, path, &source);
            }
            if kind == Change::Unmodified {
                self.inode_refs.entry(inode).or_default().push(path.to_path_buf());
                return Ok(());
            }
            self.inode_source.insert(inode, path.to_path_buf());
            additional = self.inode_refs.remove(&inode).unwrap_or_default();
        } else if kind == Change::Unmodified {
            return Ok(());
        }
        self.include_parents(path)?;
        let full = self.upper.join(path);
        let capability = xattr(&full, "security.capability")?;
        let attributes: Vec<(String, Vec<u8>)> =
            capability.into_iter().map(|v| ("security.capability".to_string(), v)).collect();
        tarball::entry(self.tar, &full, &meta, path, &attributes)?;
        if meta.is_dir() {
            self.added_dirs.insert(path.to_path_buf());
        }
        for extra in additional {
            self.include_parents(&extra)?;
            tarball::hard_link(self.tar, &meta, &extra, path)?;
        }
        Ok(())
    }

    /// Writes the parent of `path` first if it has not been written.
    fn include_parents(&mut self, path: &Path) -> std::io::Result<()> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !self.added_dirs.contains(parent) => {
                self.added_dirs.insert(parent.to_path_buf());
                self.change(Change::Modify, parent)
            }
            _ => Ok(()),
        }
    }
}
