//! `[mappings]`: host files and directories copied into the image, with the original Fledge's
//! permission rules (fixed to use the in-image destination for files inside mapped
//! directories, and to keep private files private).
//!
//! Host symlinks inside a mapped directory are kept as symlinks, never followed, so nothing
//! outside the mapped tree is read; the top-level source may itself be a symlink (the user
//! named it explicitly) and is followed. Host hard links stay hard links: every link of a
//! host inode points at the same source path, which the packers store once.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Mapping;
use crate::paths::ImagePath;
use crate::rootfs::{FileData, Node, Tree, TreeError};

/// A problem with one mapping, found while packing, with where the mapping is written.
#[derive(Debug, thiserror::Error)]
#[error("mapping at {location}: {problem}")]
pub struct LocatedMappingError {
    pub location: String,
    #[source]
    pub problem: MappingError,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("mapping source {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("mapping source {path} is a {kind}; only files, directories and symlinks can be mapped")]
    Unsupported { path: String, kind: &'static str },
    #[error("mapping symlink {path} has a target that is not valid UTF-8")]
    NonUtf8Link { path: String },
    #[error("mapping to {dest}: {source}")]
    Tree { dest: String, source: TreeError },
}

const EXEC_DIRS: [&str; 8] =
    ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/opt/bin", "/opt/sbin"];
const LIB_DIRS: [&str; 6] = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64"];

fn under_any(dest: &ImagePath, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| dest.starts_with(&ImagePath::parse(d).expect("constant paths are valid")))
}

fn is_shared_library(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

/// The mode a mapped regular file gets in the image.
///
/// - a source with any execute bit: rw bits kept, x added wherever r is set, setuid, setgid
///   and sticky dropped (0744 → 0755, 0700 → 0700);
/// - else under an executable directory (`/bin`, `/usr/local/sbin`, …): 0755;
/// - else a shared library (`*.so`, `*.so.*`) under a library directory: 0755;
/// - else 0644, or 0600 when the source is not readable by others (secrets stay private).
pub fn file_mode(dest: &ImagePath, source_mode: u32) -> u32 {
    if source_mode & 0o111 != 0 {
        let rw = source_mode & 0o666;
        return rw | ((rw & 0o444) >> 2);
    }
    if under_any(dest, &EXEC_DIRS) {
        return 0o755;
    }
    if under_any(dest, &LIB_DIRS) && dest.file_name().is_some_and(is_shared_library) {
        return 0o755;
    }
    if source_mode & 0o004 == 0 { 0o600 } else { 0o644 }
}

/// Applies `mappings` in order (sorted by destination, so deeper mappings win).
pub fn apply(tree: &mut Tree, mappings: &[Mapping]) -> Result<(), LocatedMappingError> {
    let mut copier = Copier { tree, inodes: HashMap::new() };
    for m in mappings {
        copier.apply(m).map_err(|problem| LocatedMappingError { location: m.location.clone(), problem })?;
    }
    Ok(())
}

struct Copier<'a> {
    tree: &'a mut Tree,
    /// First path seen for each multiply-linked host inode.
    inodes: HashMap<(u64, u64), PathBuf>,
}

impl Copier<'_> {
    fn apply(&mut self, m: &Mapping) -> Result<(), MappingError> {
        let meta = fs::metadata(&m.source).map_err(|source| io_err(&m.source, source))?;
        if meta.is_dir() {
            let dest = self.tree.mkdir_all(&m.dest, 0o755).map_err(|e| tree_err(&m.dest, e))?;
            self.copy_dir(&m.source, &dest)
        } else {
            self.add_entry(&m.source, &meta, &m.dest)
        }
    }

    fn copy_dir(&mut self, dir: &Path, dest: &ImagePath) -> Result<(), MappingError> {
        let mut entries: Vec<_> =
            fs::read_dir(dir).map_err(|e| io_err(dir, e))?.collect::<Result<_, _>>().map_err(|e| io_err(dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(io_err(&path, std::io::Error::other("file name is not valid UTF-8")));
            };
            let target = dest.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
            if meta.is_dir() {
                let made = self.tree.mkdir_all(&target, 0o755).map_err(|e| tree_err(&target, e))?;
                self.copy_dir(&path, &made)?;
            } else {
                self.add_entry(&path, &meta, &target)?;
            }
        }
        Ok(())
    }

    /// Adds one non-directory host entry (file or symlink) at `dest`.
    fn add_entry(&mut self, path: &Path, meta: &fs::Metadata, dest: &ImagePath) -> Result<(), MappingError> {
        let kind = meta.file_type();
        let node = if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| io_err(path, e))?;
            let target =
                target.to_str().ok_or_else(|| MappingError::NonUtf8Link { path: path.display().to_string() })?;
            Node::Symlink { target: target.to_string() }
        } else if kind.is_file() {
            let source = if meta.nlink() > 1 {
                self.inodes.entry((meta.dev(), meta.ino())).or_insert_with(|| path.to_path_buf()).clone()
            } else {
                path.to_path_buf()
            };
            Node::File { mode: file_mode(dest, meta.permissions().mode()), data: FileData::Host(source) }
        } else {
            let kind = match () {
                _ if kind.is_fifo() => "fifo",
                _ if kind.is_socket() => "socket",
                _ if kind.is_block_device() => "block device",
                _ => "character device",
            };
            return Err(MappingError::Unsupported { path: path.display().to_string(), kind });
        };
        self.tree.insert(dest, node).map_err(|e| tree_err(dest, e))?;
        Ok(())
    }
}

fn io_err(path: &Path, source: std::io::Error) -> MappingError {
    MappingError::Io { path: path.display().to_string(), source }
}

fn tree_err(dest: &ImagePath, source: TreeError) -> MappingError {
    MappingError::Tree { dest: dest.to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    #[test]
    fn executable_sources_are_normalised() {
        assert_eq!(file_mode(&p("/x"), 0o755), 0o755);
        assert_eq!(file_mode(&p("/x"), 0o744), 0o755);
        assert_eq!(file_mode(&p("/x"), 0o700), 0o700);
        assert_eq!(file_mode(&p("/x"), 0o4755), 0o755);
    }

    #[test]
    fn fhs_directories_promote_to_executable() {
        assert_eq!(file_mode(&p("/usr/local/bin/tool"), 0o644), 0o755);
        assert_eq!(file_mode(&p("/usr/lib/libx.so.1"), 0o644), 0o755);
        assert_eq!(file_mode(&p("/usr/lib/notes.txt"), 0o644), 0o644);
        assert_eq!(file_mode(&p("/usr/binary"), 0o644), 0o644);
    }

    #[test]
    fn private_files_stay_private() {
        assert_eq!(file_mode(&p("/etc/secret"), 0o600), 0o600);
        assert_eq!(file_mode(&p("/etc/public"), 0o664), 0o644);
    }
}
