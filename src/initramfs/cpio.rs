//! A cpio "newc" writer for image trees: entries in path order, owner root, inode numbers
//! counted from 1 in that order, one fixed mtime: the archive depends only on the tree.
//!
//! Files that come from the same host path with the same mode are hard links of one inode:
//! the first in path order carries the data, the others have size 0 (the kernel links them
//! to the first; GNU cpio reads it too).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::interrupt;
use crate::rootfs::{FileData, Node, Tree};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Totals of a written archive.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub data_bytes: u64,
}

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a str,
}

fn write_header(out: &mut impl Write, h: &Header<'_>) -> io::Result<()> {
    let namesize = h.name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    write!(
        out,
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        h.ino, h.mode, 0, 0, h.nlink, h.mtime, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0
    )?;
    out.write_all(h.name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + namesize)
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    out.write_all(&[0; 3][..(4 - len % 4) % 4])
}

fn too_big(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{what} is 4 GiB or larger, which a cpio (newc) initramfs cannot hold; put such files in a rootfs image (strategy = \"oci_rootfs\") instead"
        ),
    )
}

/// Writes `tree` as a newc archive with `mtime` on every entry; `progress` gets data bytes.
pub fn write_tree(tree: &Tree, out: &mut impl Write, mtime: u32, progress: &mut dyn FnMut(u64)) -> io::Result<Stats> {
    let mut stats = Stats::default();
    let links = link_counts(tree);
    let mut written_links: HashMap<(&Path, u32), u32> = HashMap::new();
    for (ino, (path, node)) in (1u32..).zip(tree.iter()) {
        interrupt::check()?;
        let full = path.to_string();
        let name = if path.is_root() { "." } else { &full[1..] };
        match node {
            Node::Dir { mode } => {
                write_header(out, &Header { ino, mode: S_IFDIR | mode, nlink: 2, mtime, size: 0, rdev: (0, 0), name })?;
            }
            Node::CharDevice { mode, major, minor } => {
                write_header(
                    out,
                    &Header { ino, mode: S_IFCHR | mode, nlink: 1, mtime, size: 0, rdev: (*major, *minor), name },
                )?;
            }
            Node::Symlink { target } => {
                let size = u32::try_from(target.len()).map_err(|_| too_big(&full))?;
                write_header(out, &Header { ino, mode: S_IFLNK | 0o777, nlink: 1, mtime, size, rdev: (0, 0), name })?;
                out.write_all(target.as_bytes())?;
                pad(out, target.len())?;
            }
            Node::File { mode, data } => {
                let header = Header { ino, mode: S_IFREG | mode, nlink: 1, mtime, size: 0, rdev: (0, 0), name };
                let written = match data {
                    FileData::Bytes(bytes) => {
                        let size = u32::try_from(bytes.len()).map_err(|_| too_big(&full))?;
                        write_header(out, &Header { size, ..header })?;
                        out.write_all(bytes)?;
                        bytes.len() as u64
                    }
                    FileData::Host(host) => {
                        let key = (host.as_path(), *mode);
                        let nlink = links.get(&key).copied().unwrap_or(1);
                        match written_links.get(&key) {
                            Some(&first) => {
                                write_header(out, &Header { ino: first, nlink, ..header })?;
                                0
                            }
                            None => {
                                if nlink > 1 {
                                    written_links.insert(key, ino);
                                }
                                write_host_file(out, host, Header { nlink, ..header }, progress)?
                            }
                        }
                    }
                };
                pad(out, written as usize)?;
                stats.data_bytes += written;
            }
        }
        stats.entries += 1;
    }
    write_header(out, &Header { ino: 0, mode: 0, nlink: 1, mtime: 0, size: 0, rdev: (0, 0), name: "TRAILER!!!" })?;
    Ok(stats)
}

/// How many entries share each (host path, mode): the hard-link groups.
fn link_counts(tree: &Tree) -> HashMap<(&Path, u32), u32> {
    let mut counts = HashMap::new();
    for (_, node) in tree.iter() {
        if let Node::File { mode, data: FileData::Host(host) } = node {
            *counts.entry((host.as_path(), *mode)).or_insert(0) += 1;
        }
    }
    counts
}

/// Writes `header` (with the file's size) and streams the host file's bytes.
fn write_host_file(
    out: &mut impl Write,
    host: &Path,
    header: Header<'_>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", host.display()));
    let file = File::open(host).map_err(context)?;
    let len = file.metadata().map_err(context)?.len();
    let size = u32::try_from(len).map_err(|_| too_big(&host.display().to_string()))?;
    write_header(out, &Header { size, ..header })?;
    let copied = copy_with_progress(&mut file.take(len), out, progress).map_err(context)?;
    if copied != len {
        return Err(context(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was being packed")));
    }
    Ok(len)
}

fn copy_with_progress(reader: &mut impl Read, out: &mut impl Write, progress: &mut dyn FnMut(u64)) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
        progress(n as u64);
        interrupt::check()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::ImagePath;
    use std::sync::Arc;

    #[test]
    fn layout_matches_newc() {
        let mut tree = Tree::default();
        tree.insert(
            &ImagePath::parse("/a").unwrap(),
            Node::File { mode: 0o644, data: FileData::Bytes(Arc::from(&b"hi"[..])) },
        )
        .unwrap();
        let mut out = Vec::new();
        let stats = write_tree(&tree, &mut out, 7, &mut |_| {}).unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(&out[..6], b"070701");
        // Root entry: 110-byte header + ".\0" padded to 112.
        assert_eq!(&out[110..112], b".\0");
        let second = &out[112..];
        assert_eq!(&second[6..14], b"00000002", "inode numbers follow path order");
        assert_eq!(&second[14..22], b"000081A4", "regular file 0644");
        assert_eq!(&second[46..54], b"00000007", "fixed mtime");
        assert_eq!(&second[110..112], b"a\0");
        assert_eq!(&second[112..116], b"hi\0\0", "data padded to 4 bytes");
        assert!(out.len() % 4 == 0);
        assert!(String::from_utf8_lossy(&out).contains("TRAILER!!!"));
    }
}
