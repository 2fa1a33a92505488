//! A cpio "newc" writer: a [`Sink`] for [`walk`], which fixes the entry order and hard links.
//! Inode numbers count from 1 in writing order and every entry gets one fixed mtime, so the
//! archive depends only on the tree. A hard-linked file's bytes go with its first name; the
//! others have size 0 and the same inode (the kernel links them to the first; GNU cpio reads
//! it too).

use std::collections::HashMap;
use std::io::{self, Write};

use crate::paths::ImagePath;
use crate::rootfs::walk::{LayerSource, Payload, Sink, walk};
use crate::rootfs::{Attrs, Node, SpecialKind, Tree};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFIFO: u32 = 0o010_000;

/// Totals of a written archive.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub data_bytes: u64,
}

#[derive(Clone, Copy)]
struct Header<'a> {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
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
        h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0
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

struct CpioSink<'w, W> {
    out: &'w mut W,
    mtime: u32,
    next_ino: u32,
    inodes: HashMap<ImagePath, u32>,
    stats: Stats,
}

impl<W: Write> Sink for CpioSink<'_, W> {
    fn entry(&mut self, path: &ImagePath, node: &Node, attrs: &Attrs, payload: Payload<'_>) -> io::Result<()> {
        let full = path.to_string();
        let name = if path.is_root() { "." } else { &full[1..] };
        let ino = self.next_ino;
        self.next_ino += 1;
        let h = Header {
            ino,
            mode: 0,
            uid: attrs.uid,
            gid: attrs.gid,
            nlink: 1,
            mtime: self.mtime,
            size: 0,
            rdev: (0, 0),
            name,
        };
        match (node, payload) {
            (Node::Dir { mode }, _) => write_header(self.out, &Header { mode: S_IFDIR | mode, nlink: 2, ..h })?,
            (Node::Special { kind, mode, major, minor }, _) => {
                let kind_bits = match kind {
                    SpecialKind::Char => S_IFCHR,
                    SpecialKind::Block => S_IFBLK,
                    SpecialKind::Fifo => S_IFIFO,
                };
                write_header(self.out, &Header { mode: kind_bits | mode, rdev: (*major, *minor), ..h })?;
            }
            (Node::Symlink { target }, _) => {
                let size = u32::try_from(target.len()).map_err(|_| too_big(&full))?;
                write_header(self.out, &Header { mode: S_IFLNK | 0o777, size, ..h })?;
                self.out.write_all(target.as_bytes())?;
                pad(self.out, target.len())?;
            }
            (Node::File { mode, .. }, Payload::Link { to, links }) => {
                let first =
                    *self.inodes.get(to).ok_or_else(|| io::Error::other(format!("{full}: link to unwritten {to}")))?;
                write_header(self.out, &Header { ino: first, mode: S_IFREG | mode, nlink: links, ..h })?;
            }
            (Node::File { mode, .. }, Payload::Data { reader, size, links }) => {
                let size32 = u32::try_from(size).map_err(|_| too_big(&full))?;
                write_header(self.out, &Header { mode: S_IFREG | mode, nlink: links, size: size32, ..h })?;
                let copied = io::copy(reader, self.out)?;
                if copied != size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{full}: expected {size} bytes, got {copied}"),
                    ));
                }
                pad(self.out, size as usize)?;
                if links > 1 {
                    self.inodes.insert(path.clone(), ino);
                }
                self.stats.data_bytes += size;
            }
            (Node::File { .. }, Payload::None) => unreachable!("walk always sends files with data or a link"),
        }
        self.stats.entries += 1;
        Ok(())
    }
}

/// Writes `tree` as a newc archive with `mtime` on every entry; `progress` gets data bytes.
pub fn write_tree(
    tree: &Tree,
    layers: &dyn LayerSource,
    out: &mut impl Write,
    mtime: u32,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Stats> {
    let mut sink = CpioSink { out, mtime, next_ino: 1, inodes: HashMap::new(), stats: Stats::default() };
    walk(tree, layers, &mut sink, progress)?;
    let stats = sink.stats;
    write_header(
        out,
        &Header { ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, size: 0, rdev: (0, 0), name: "TRAILER!!!" },
    )?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::FileData;
    use crate::rootfs::walk::NoLayers;
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
        let stats = write_tree(&tree, &NoLayers, &mut out, 7, &mut |_| {}).unwrap();
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
