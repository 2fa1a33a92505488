//! The sending side of fsutil's transfer protocol, which is how buildkitd reads a local
//! directory (the build context, the Dockerfile's directory) through the session:
//! one STAT per entry, depth-first in byte order with `/` before every other character, an
//! empty STAT to end the list, then DATA for each file the daemon REQuests (by its index in
//! the list), and FIN to finish. Which entries are sent is decided here, from the patterns the
//! daemon passes (`include-patterns`, `exclude-patterns`), as fsutil's filter does.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fledge_llb::patterns::{Excludes, Includes};

use crate::pb::fsutil_types::{Packet, Stat, packet::PacketType};

/// Go's `os.FileMode` bits for what is not a permission.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
}

/// An entry to send: its STAT and, for a regular file, where its bytes are.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stat: Stat,
    pub file: Option<PathBuf>,
}

/// Which entries of a directory are sent.
pub struct Filter {
    includes: Includes,
    excludes: Excludes,
}

impl Filter {
    pub fn new(includes: Vec<String>, excludes: &[String]) -> Self {
        Filter { includes: Includes::new(&includes), excludes: Excludes::new(excludes) }
    }

    fn included(&self, path: &str) -> bool {
        self.includes.includes(path)
    }

    fn may_include_below(&self, path: &str) -> bool {
        self.includes.may_include_below(path)
    }
}

/// The follow paths (`followpaths`) the daemon names, with every symlink on the way
/// resolved inside `root` (fsutil's `FollowLinks`): a link and what it points to are both
/// sent, so `COPY dirlink /dst/` finds the directory behind the link. A wildcard in a last
/// component stays a pattern (the include filter matches it).
pub fn follow_links(root: &Path, paths: &[String]) -> Vec<String> {
    let mut resolved = std::collections::BTreeSet::new();
    for path in paths {
        follow(root, path, &mut resolved, 0);
    }
    resolved.into_iter().collect()
}

/// Adds `path` to `resolved`, resolving the links on the way; `depth` stops link loops.
fn follow(root: &Path, path: &str, resolved: &mut std::collections::BTreeSet<String>, depth: usize) {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut current: Vec<String> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            current.pop();
            continue;
        }
        current.push(part.to_string());
        let here = current.join("/");
        let rest = parts[i + 1..].join("/");
        let link = std::fs::symlink_metadata(root.join(&here))
            .ok()
            .filter(|m| m.file_type().is_symlink())
            .and_then(|_| std::fs::read_link(root.join(&here)).ok());
        if let Some(target) = link {
            if !resolved.insert(here.clone()) || depth > 40 {
                return;
            }
            let target = target.to_string_lossy().into_owned();
            let base = if target.starts_with('/') { String::new() } else { current[..current.len() - 1].join("/") };
            follow(root, &format!("{base}/{target}/{rest}"), resolved, depth + 1);
            return;
        }
    }
    resolved.insert(current.join("/"));
}

/// The entries of `root` the filter lets through, in the order the protocol wants.
pub fn walk(root: &Path, filter: &Filter) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    walk_dir(root, "", filter, &mut entries)?;
    Ok(entries)
}

fn walk_dir(dir: &Path, prefix: &str, filter: &Filter, out: &mut Vec<Entry>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let name = name.to_string_lossy().into_owned();
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let full = dir.join(&name);
        let meta = full.symlink_metadata()?;
        let excluded = filter.excludes.excludes(&path);
        if meta.is_dir() {
            let here = out.len();
            if !excluded && filter.included(&path) {
                out.push(Entry { stat: stat(&path, &full, &meta)?, file: None });
                walk_dir(&full, &path, filter, out)?;
            } else if filter.may_include_below(&path) || excluded {
                // A child may still be sent (an include below, or a `!` re-include); then so
                // is this directory, before it.
                let mut below = Vec::new();
                walk_dir(&full, &path, filter, &mut below)?;
                if !below.is_empty() {
                    out.insert(here, Entry { stat: stat(&path, &full, &meta)?, file: None });
                    out.extend(below);
                }
            }
        } else if !excluded && filter.included(&path) {
            let file = meta.is_file().then(|| full.clone());
            out.push(Entry { stat: stat(&path, &full, &meta)?, file });
        }
    }
    Ok(())
}

/// The STAT of one entry. Owners are sent as 0: the daemon builds as root and a context's
/// files belong to root in the image, whoever owns them here.
fn stat(path: &str, full: &Path, meta: &std::fs::Metadata) -> std::io::Result<Stat> {
    let kind = meta.file_type();
    let unix = meta.permissions().mode();
    let mut mode = unix & 0o777;
    for (bit, go) in [(0o4000, go_mode::SETUID), (0o2000, go_mode::SETGID), (0o1000, go_mode::STICKY)] {
        if unix & bit != 0 {
            mode |= go;
        }
    }
    mode |= if kind.is_dir() {
        go_mode::DIR
    } else if kind.is_symlink() {
        go_mode::SYMLINK
    } else if kind.is_char_device() {
        go_mode::DEVICE | go_mode::CHAR_DEVICE
    } else if kind.is_block_device() {
        go_mode::DEVICE
    } else if kind.is_fifo() {
        go_mode::NAMED_PIPE
    } else {
        0
    };
    let linkname =
        if kind.is_symlink() { std::fs::read_link(full)?.to_string_lossy().into_owned() } else { String::new() };
    let (major, minor) = if kind.is_char_device() || kind.is_block_device() {
        let dev = meta.rdev();
        (i64::from(libc_major(dev)), i64::from(libc_minor(dev)))
    } else {
        (0, 0)
    };
    Ok(Stat {
        path: path.to_string(),
        mode,
        uid: 0,
        gid: 0,
        size: if kind.is_file() { meta.len() as i64 } else { 0 },
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        linkname,
        devmajor: major,
        devminor: minor,
        xattrs: Default::default(),
    })
}

/// Linux's encoding of device numbers (glibc's `gnu_dev_major`/`gnu_dev_minor`).
fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// The packets that end a STAT list, carry a file's bytes, and finish.
pub fn end_of_stats() -> Packet {
    Packet { r#type: PacketType::PacketStat as i32, stat: None, id: 0, data: Vec::new() }
}

pub fn data(id: u32, data: Vec<u8>) -> Packet {
    Packet { r#type: PacketType::PacketData as i32, stat: None, id, data }
}

pub fn fin() -> Packet {
    Packet { r#type: PacketType::PacketFin as i32, stat: None, id: 0, data: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.stat.path.as_str()).collect()
    }

    #[test]
    fn entries_come_depth_first_with_slash_before_everything() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a/b", "a-b", "a.txt", "c/d/e"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).unwrap();
        let entries = walk(dir.path(), &Filter::new(Vec::new(), &[])).unwrap();
        assert_eq!(paths(&entries), ["a", "a/b", "a-b", "a.txt", "c", "c/d", "c/d/e", "link"]);
        let link = &entries[7].stat;
        assert_eq!((link.mode & go_mode::SYMLINK, link.linkname.as_str()), (go_mode::SYMLINK, "a.txt"));
        assert_eq!(entries[0].stat.mode & go_mode::DIR, go_mode::DIR);
        assert_eq!(entries[3].stat.size, 5);
        assert!(entries[3].file.is_some() && entries[0].file.is_none());
        assert!(entries[7].file.is_none(), "a link is sent as a link, never as its target's bytes");
    }

    #[test]
    fn links_out_of_the_directory_are_sent_as_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("file")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dir")).unwrap();
        let follow = Filter::new(vec!["file".into(), "dir/secret".into()], &[]);
        assert_eq!(follow_links(dir.path(), &["link".into(), "a.txt".into()]), ["a.txt", "link"]);
        let entries = walk(dir.path(), &follow).unwrap();
        assert_eq!(paths(&entries), ["file"], "nothing below a linked directory");
        assert!(entries[0].file.is_none() && entries[0].stat.mode & go_mode::SYMLINK != 0);
    }

    #[test]
    fn includes_and_excludes_choose_what_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["Dockerfile", "Dockerfile.dockerignore", "src/main.rs", "src/gen/x.rs", "target/out", "notes.log"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        let only = Filter::new(vec!["Dockerfile".into(), "Dockerfile.dockerignore".into()], &[]);
        assert_eq!(paths(&walk(dir.path(), &only).unwrap()), ["Dockerfile", "Dockerfile.dockerignore"]);
        let ignore =
            Filter::new(Vec::new(), &["target".into(), "*.log".into(), "src/gen".into(), "!src/gen/x.rs".into()]);
        assert_eq!(
            paths(&walk(dir.path(), &ignore).unwrap()),
            ["Dockerfile", "Dockerfile.dockerignore", "src", "src/gen", "src/gen/x.rs", "src/main.rs"]
        );
        let nested = Filter::new(vec!["src/main.rs".into()], &[]);
        assert_eq!(paths(&walk(dir.path(), &nested).unwrap()), ["src", "src/main.rs"]);
    }
}
