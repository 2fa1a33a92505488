//! The limits every image Fledge packs must fit, checked over the whole [`Tree`] before any
//! packer writes a byte, so no packer truncates a name, fails half-way on a temporary file,
//! or writes an entry the booted kernel cannot create.
//!
//! One rule for every format, the strictest of them (documented in docs/configuration.md,
//! "Limits"):
//! - a name holds at most 255 bytes: Linux's `NAME_MAX`, and what ext4, erofs and btrfs
//!   store (mksquashfs would silently cut a longer one to 256; the kernel cannot create it
//!   from an initramfs);
//! - a path, from the image root, holds at most 4095 bytes: `PATH_MAX` less its NUL, the
//!   longest name an initramfs entry may have and the longest path one system call takes;
//! - a symlink target holds at most 4095 bytes: what `symlink(2)` accepts and what ext4's
//!   4 KiB blocks hold;
//! - a name is never empty, `.` or `..`, and holds no `/` or NUL byte;
//! - one image layer holds at most [`MAX_LAYER_ENTRIES`] entries (checked as the layer is
//!   read, with its names and path lengths, so a hostile layer is refused before it costs
//!   memory or time), and adds at most as many to the image, the parent directories its
//!   entries imply included (checked as it is applied);
//! - the image's paths add up to at most [`MAX_PATH_BYTES`] (checked after each layer): a
//!   4 KiB entry `c/d/d/…/f` implies 2047 directories whose paths add up to 4 MiB, and
//!   everything that lists the tree (the packers' tar and cpio headers, the checks) spells
//!   them out, so a few KiB of layer must not cost minutes and gigabytes.

use crate::paths::ImagePath;
use crate::rootfs::{Node, Tree};

/// Longest name of one entry, in bytes (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest absolute path and symlink target, in bytes (`PATH_MAX` without its NUL).
pub const PATH_MAX: usize = 4095;

/// Most entries one image layer may hold: a million files and more is what the largest
/// published images hold in all their layers together, and the flattened tree of so many
/// entries takes a few hundred MB of memory.
pub const MAX_LAYER_ENTRIES: usize = 1 << 20;

/// Most bytes the absolute paths of all an image's entries may add up to: 2^20 entries with
/// paths of 128 bytes, more than the largest published images hold.
pub const MAX_PATH_BYTES: u64 = 1 << 27;

/// How long a path may be shown in an error before its middle is elided.
const SHOWN: usize = 160;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error(
        "{path}: the name is {len} bytes long; Linux file names hold at most {NAME_MAX} bytes\n  = help: shorten the name where it comes from (the image layer, the Dockerfile or [mappings]); no filesystem Fledge writes can hold it"
    )]
    NameTooLong { path: String, len: usize },
    #[error(
        "{path}: the path is {len} bytes long; Linux paths hold at most {PATH_MAX} bytes\n  = help: shorten the directory names or nest the entry less deeply where it comes from (the image layer, the Dockerfile or [mappings])"
    )]
    PathTooLong { path: String, len: usize },
    #[error(
        "{path}: the symlink target is {len} bytes long; Linux symlinks hold at most {PATH_MAX} bytes\n  = help: point the link at a shorter path where it comes from (the image layer or the Dockerfile)"
    )]
    TargetTooLong { path: String, len: usize },
    #[error(
        "the layer holds more than {MAX_LAYER_ENTRIES} entries (entry {entries} was refused)\n  = help: split the content over several layers (one layer per RUN or COPY step)"
    )]
    TooManyEntries { entries: usize },
    #[error(
        "the layer adds more than {MAX_LAYER_ENTRIES} entries to the image, counting the parent directories its entries imply\n  = help: split the content over several layers, or nest it less deeply"
    )]
    AddsTooManyEntries,
    #[error(
        "the image's paths add up to more than {MAX_PATH_BYTES} bytes (every entry's absolute path, parent directories included)\n  = help: deep directory chains repeated are the usual cause; nest the content less deeply"
    )]
    TooManyPathBytes,
    #[error("{path}: {name:?} is not a file name (names are not empty, `.` or `..`, and hold no `/` or NUL byte)")]
    BadName { path: String, name: String },
}

/// Checks every entry of `tree` against the limits above; the first entry that breaks one is
/// the error.
pub fn check(tree: &Tree) -> Result<(), LimitError> {
    tree.iter().try_for_each(|e| check_entry(&e.path, e.node))
}

fn check_entry(path: &ImagePath, node: &Node) -> Result<(), LimitError> {
    check_path(path)?;
    match node {
        Node::Symlink { target } if target.len() > PATH_MAX => {
            Err(LimitError::TargetTooLong { path: shorten(&path.to_string()), len: target.len() })
        }
        _ => Ok(()),
    }
}

/// Checks the names and the length of one path (its depth is bounded by its length: at most
/// 2048 components fit in [`PATH_MAX`] bytes).
pub fn check_path(path: &ImagePath) -> Result<(), LimitError> {
    let shown = || shorten(&path.to_string());
    if let Some(name) = path.file_name() {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(LimitError::BadName { path: shown(), name: name.to_string() });
        }
        if name.len() > NAME_MAX {
            return Err(LimitError::NameTooLong { path: shown(), len: name.len() });
        }
    }
    let len = path.components().iter().map(|c| c.len() + 1).sum();
    if len > PATH_MAX {
        return Err(LimitError::PathTooLong { path: shown(), len });
    }
    Ok(())
}

/// Checks the number of entries read so far from one image layer.
pub fn check_count(entries: usize) -> Result<(), LimitError> {
    if entries > MAX_LAYER_ENTRIES {
        return Err(LimitError::TooManyEntries { entries });
    }
    Ok(())
}

/// Checks what applying one layer did to `tree`: `created_before` is [`Tree::created`] before
/// the layer.
pub fn check_growth(tree: &Tree, created_before: u64) -> Result<(), LimitError> {
    if tree.created() - created_before > MAX_LAYER_ENTRIES as u64 {
        return Err(LimitError::AddsTooManyEntries);
    }
    Ok(())
}

/// Checks the sum of the paths of `tree` (after a layer is applied).
pub fn check_path_bytes(tree: &Tree) -> Result<(), LimitError> {
    if tree.path_bytes(MAX_PATH_BYTES) > MAX_PATH_BYTES {
        return Err(LimitError::TooManyPathBytes);
    }
    Ok(())
}

/// `path` as an error shows it: whole when short, else its start and end around `…`.
fn shorten(path: &str) -> String {
    if path.len() <= SHOWN {
        return path.to_string();
    }
    let head = (0..=SHOWN * 2 / 3).rev().find(|&i| path.is_char_boundary(i)).unwrap_or(0);
    let tail = (path.len() - SHOWN / 3..=path.len()).find(|&i| path.is_char_boundary(i)).unwrap_or(path.len());
    format!("{}…{}", &path[..head], &path[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::FileData;

    fn tree_with(path: &str, node: Node) -> Tree {
        let mut tree = Tree::default();
        tree.insert(&ImagePath::parse(path).unwrap(), node).unwrap();
        tree
    }

    fn file() -> Node {
        Node::File { mode: 0o644, data: FileData::Bytes(b"x".as_slice().into()) }
    }

    #[test]
    fn limits_are_inclusive() {
        let at = format!("/{}", "n".repeat(NAME_MAX));
        assert_eq!(check(&tree_with(&at, file())), Ok(()));
        let over = format!("/{}", "n".repeat(NAME_MAX + 1));
        assert!(matches!(check(&tree_with(&over, file())), Err(LimitError::NameTooLong { len: 256, .. })));
        let target = "t".repeat(PATH_MAX);
        assert_eq!(check(&tree_with("/l", Node::Symlink { target: target.clone() })), Ok(()));
        let long = Node::Symlink { target: target + "t" };
        assert!(matches!(check(&tree_with("/l", long)), Err(LimitError::TargetTooLong { len: 4096, .. })));
    }

    #[test]
    fn a_path_counts_its_slashes() {
        // 16 components of "/" + 255 bytes = 4096 bytes; 15 and a shorter last one fit.
        let parts: Vec<String> = (0..16).map(|_| "p".repeat(NAME_MAX)).collect();
        let fits = format!("/{}/{}", parts[..15].join("/"), "p".repeat(254));
        assert_eq!(fits.len(), PATH_MAX);
        assert_eq!(check(&tree_with(&fits, file())), Ok(()));
        let over = format!("/{}", parts.join("/"));
        assert!(matches!(check(&tree_with(&over, file())), Err(LimitError::PathTooLong { len: 4096, .. })));
    }

    #[test]
    fn long_paths_are_shown_by_their_ends() {
        let path = format!("/{}/end", "é".repeat(300));
        let shown = shorten(&path);
        assert!(shown.starts_with("/éé") && shown.ends_with("éé/end") && shown.contains('…'), "{shown}");
        assert!(shown.len() < SHOWN + 8);
        assert_eq!(shorten("/short"), "/short");
    }
}
