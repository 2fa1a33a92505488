//! ext4 rootfs images, written directly in one streaming pass: no `mke2fs`, no staging
//! directory, no root, no loop device, no mount.
//!
//! Guarantees:
//! - the image passes `e2fsck -fn` and carries every entry's mode, owner, xattrs (POSIX ACLs
//!   included), hard links, symlinks, device nodes and fifos exactly as the tree says;
//! - file bytes stream from their source (an image layer, a host file) to their final place
//!   in the image, written once, never staged or held in memory;
//! - equal trees give byte-identical images: inodes are numbered in walk order, the UUID and
//!   directory hash seed come from the tree, and every timestamp is the build's time;
//! - the filesystem is sized from the content plus the configured free space, with mke2fs's
//!   inode ratio and journal size, so a writable rootfs behaves like a `mkfs.ext4` one.
//!
//! Features: `has_journal ext_attr dir_index filetype extent sparse_super large_file
//! huge_file dir_nlink extra_isize`, 4 KiB blocks, 256-byte inodes. Not written:
//! `metadata_csum`, `64bit`, `flex_bg` and `resize_inode` (the kernel mounts the result and
//! `tune2fs` can enable the first later); images are limited to 16 TiB.

mod dir;
mod geometry;
mod inode;
mod superblock;
mod xattr;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::Filesystem;
use crate::paths::ImagePath;
use crate::rootfs::walk::{LayerSource, Payload, Sink, walk};
use crate::rootfs::{Attrs, FileData, Node, SpecialKind, Tree};
use crate::stage::tree_id;
use dir::Entry;
use geometry::{Allocator, BLOCK, Extent, FIRST_INODE, Geometry, INODE_SIZE};
use inode::Inode;
use superblock::{Identity, JOURNAL_INODE, Usage};
pub use xattr::XattrError;

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{path}: the name {name:?} is {len} bytes long; ext4 names hold at most 255 bytes")]
    NameTooLong { path: String, name: String, len: usize },
    #[error("{path}: the symlink target is {len} bytes long; ext4 holds at most 4095")]
    TargetTooLong { path: String, len: usize },
    #[error("{path}: {source}")]
    Xattr { path: String, source: XattrError },
    #[error("the image would need more than 16 TiB; ext4 images written by Fledge stop there")]
    TooLarge,
    #[error("{path}: {bytes} bytes is more than one file in Fledge's ext4 images can hold (about 170 GB)")]
    FileTooLarge { path: String, bytes: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

const ROOT_INODE: u32 = 2;
/// mke2fs gives `lost+found` 16 KiB, so e2fsck can reconnect files without allocating.
const LOST_FOUND_BLOCKS: usize = 4;

fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}

/// What the tree needs, counted before anything is written; refuses what ext4 cannot hold.
struct Plan {
    content_blocks: u64,
    entries: u64,
    has_lost_found: bool,
}

fn plan(tree: &Tree) -> Result<Plan, Ext4Error> {
    let mut content = LOST_FOUND_BLOCKS as u64;
    let (mut names, mut name_bytes, mut dirs) = (0u64, 0u64, 0u64);
    let mut counted = std::collections::HashSet::new();
    for crate::rootfs::Entry { path, node, attrs } in tree.iter() {
        crate::interrupt::check()?;
        if let Some(name) = path.file_name() {
            if name.len() > dir::MAX_NAME {
                let (path, name, len) = (path.to_string(), name.to_string(), name.len());
                return Err(Ext4Error::NameTooLong { path, name, len });
            }
            names += 1;
            name_bytes += name.len() as u64;
        }
        if !attrs.xattrs.is_empty() {
            xattr::block(&attrs.xattrs, 1).map_err(|source| Ext4Error::Xattr { path: path.to_string(), source })?;
            content += 1;
        }
        content += match node {
            Node::Dir { .. } => {
                dirs += 1;
                1
            }
            Node::File { mode, data } if counted.insert((data, *mode)) || !data.linkable() => {
                let size = match data {
                    FileData::Host(host) => {
                        std::fs::metadata(host).map_err(|e| crate::interrupt::annotate(e, host.display()))?.len()
                    }
                    FileData::Bytes(bytes) => bytes.len() as u64,
                    FileData::Layer { size, .. } => *size,
                };
                let n = blocks(size);
                // Extents end at group boundaries: about one per group the file spans.
                let leaves =
                    inode::leaf_blocks((n / geometry::MAX_EXTENT + n / geometry::BLOCKS_PER_GROUP + 2) as usize);
                if leaves > inode::MAX_LEAVES {
                    return Err(Ext4Error::FileTooLarge { path: path.to_string(), bytes: size });
                }
                n + leaves as u64
            }
            Node::Symlink { target } if target.len() >= BLOCK as usize => {
                return Err(Ext4Error::TargetTooLong { path: path.to_string(), len: target.len() });
            }
            Node::Symlink { target } if target.len() >= 60 => 1,
            _ => 0,
        };
    }
    content += dir::blocks_for(names, name_bytes) + dirs;
    let has_lost_found = tree.get(&ImagePath::root().join("lost+found")).is_some();
    Ok(Plan { content_blocks: content, entries: tree.len() as u64, has_lost_found })
}

/// Free space the original Fledge left: `size_buffer_mb`, or 25% of the content clamped to
/// 64–1024 MiB.
fn free_blocks(content_blocks: u64, fs_config: &Filesystem) -> u64 {
    const MIB: u64 = 1 << 20;
    let bytes = match fs_config.size_buffer_mb {
        0 => (content_blocks * BLOCK / 4).clamp(64 * MIB, 1024 * MIB),
        mb => mb * MIB,
    };
    blocks(bytes)
}

/// Buffers writes that continue one another into large sequential ones.
struct Output {
    file: File,
    buf: Vec<u8>,
    at: u64,
}

impl Output {
    const FLUSH_AT: usize = 8 << 20;

    fn seek(&mut self, offset: u64) -> io::Result<()> {
        if offset != self.at + self.buf.len() as u64 {
            self.flush()?;
            self.at = offset;
        }
        Ok(())
    }

    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= Self::FLUSH_AT { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes `bytes` at block `block`.
    fn put(&mut self, block: u64, bytes: &[u8]) -> io::Result<()> {
        self.seek(block * BLOCK)?;
        self.buf.extend_from_slice(bytes);
        self.maybe_flush()
    }

    /// Copies exactly `len` bytes of `reader` to block `block` onwards.
    fn copy(&mut self, block: u64, reader: &mut dyn Read, mut len: u64) -> io::Result<()> {
        self.seek(block * BLOCK)?;
        while len > 0 {
            let chunk = len.min(1 << 20) as usize;
            let start = self.buf.len();
            self.buf.resize(start + chunk, 0);
            reader.read_exact(&mut self.buf[start..])?;
            len -= chunk as u64;
            self.maybe_flush()?;
        }
        Ok(())
    }
}

struct DirRecord {
    inode: u32,
    parent: u32,
    entries: Vec<Entry>,
    min_blocks: usize,
}

/// The image being written: inodes and directories collect in memory (a few dozen bytes per
/// entry); file bytes go straight to their blocks.
struct Writer<'g> {
    geo: &'g Geometry,
    alloc: Allocator<'g>,
    out: Output,
    /// Index `n` is inode `n + 1`; `None` for unused reserved inodes (1–10 always exist).
    inodes: Vec<Option<Inode>>,
    dirs: Vec<DirRecord>,
    /// Directories by path, spelled out: a path as a string takes its length in memory,
    /// as components it took ten times that, which a deep tree multiplies.
    dir_of: HashMap<String, usize>,
    /// Files other names will link to.
    linked: HashMap<ImagePath, u32>,
    /// Distinct xattr sets and the inodes that carry each.
    xattr_sets: HashMap<Vec<(String, Vec<u8>)>, Vec<u32>>,
    has_lost_found: bool,
    data_bytes: u64,
}

impl Writer<'_> {
    fn add_inode(&mut self, inode: Inode) -> u32 {
        self.inodes.push(Some(inode));
        self.inodes.len() as u32
    }

    fn inode(&mut self, number: u32) -> &mut Inode {
        self.inodes[number as usize - 1].as_mut().expect("allocated inode")
    }

    /// Maps `extents` into an extent tree, writing leaf blocks if it needs them; returns
    /// `i_block` and the leaf count.
    fn map(&mut self, extents: &[Extent]) -> io::Result<([u8; 60], u64)> {
        let leaves: Vec<u64> = match inode::leaf_blocks(extents.len()) {
            0 => Vec::new(),
            n => self.alloc.allocate(n as u64)?.iter().flat_map(|e| e.start..e.start + u64::from(e.len)).collect(),
        };
        let (root, blocks) = inode::extent_root(extents, &leaves);
        for (at, block) in leaves.iter().zip(blocks) {
            self.out.put(*at, &block)?;
        }
        Ok((root, leaves.len() as u64))
    }

    /// A new inode holding `len` bytes of `reader` (zero-padded to whole blocks).
    fn data_inode(&mut self, mode: u16, reader: &mut dyn Read, len: u64) -> io::Result<u32> {
        let n = blocks(len);
        let extents = self.alloc.allocate(n)?;
        let mut left = len;
        for e in &extents {
            let bytes = left.min(u64::from(e.len) * BLOCK);
            self.out.copy(e.start, reader, bytes)?;
            left -= bytes;
        }
        let pad = (n * BLOCK - len) as usize;
        self.out.buf.resize(self.out.buf.len() + pad, 0);
        let (root, leaves) = self.map(&extents)?;
        Ok(self.add_inode(Inode::mapped(mode, len, root, n + leaves)))
    }

    /// The directory holding `path` (walk writes every directory before its entries).
    fn parent_dir(&self, path: &ImagePath) -> io::Result<usize> {
        path.parent()
            .and_then(|parent| self.dir_of.get(&parent.to_string()).copied())
            .ok_or_else(|| io::Error::other(format!("{path}: its directory was not written before it")))
    }

    fn link(&mut self, path: &ImagePath, inode: u32, kind: u8) -> io::Result<()> {
        let dir = self.parent_dir(path)?;
        let name = path.file_name().expect("not the root").as_bytes().into();
        self.dirs[dir].entries.push(Entry { name, inode, kind });
        Ok(())
    }

    fn new_dir(&mut self, path: &ImagePath, inode: u32, parent: u32, min_blocks: usize) {
        self.dir_of.insert(path.to_string(), self.dirs.len());
        self.dirs.push(DirRecord { inode, parent, entries: Vec::new(), min_blocks });
    }

    fn root(&mut self, mode: u16) {
        self.inodes[ROOT_INODE as usize - 1] = Some(Inode { mode, ..Inode::default() });
        self.new_dir(&ImagePath::root(), ROOT_INODE, ROOT_INODE, 1);
        if !self.has_lost_found {
            let lost = self.add_inode(Inode { mode: inode::S_IFDIR | 0o700, ..Inode::default() });
            let path = ImagePath::root().join("lost+found");
            self.dirs[0].entries.push(Entry { name: (*b"lost+found").into(), inode: lost, kind: dir::FT_DIR });
            self.new_dir(&path, lost, ROOT_INODE, LOST_FOUND_BLOCKS);
        }
    }
}

fn perm(mode: u32) -> u16 {
    (mode & 0o7777) as u16
}

impl Sink for Writer<'_> {
    fn entry(&mut self, path: &ImagePath, node: &Node, attrs: &Attrs, payload: Payload<'_>) -> io::Result<()> {
        if let Payload::Link { to, .. } = payload {
            let inode = self.linked[to];
            return self.link(path, inode, dir::FT_REG);
        }
        let (number, kind) = match node {
            Node::Dir { mode } if path.is_root() => {
                self.root(inode::S_IFDIR | perm(*mode));
                (ROOT_INODE, dir::FT_DIR)
            }
            Node::Dir { mode } => {
                let parent = self.dirs[self.parent_dir(path)?].inode;
                let number = self.add_inode(Inode { mode: inode::S_IFDIR | perm(*mode), ..Inode::default() });
                self.new_dir(path, number, parent, 1);
                (number, dir::FT_DIR)
            }
            Node::File { mode, .. } => {
                let Payload::Data { reader, size, links } = payload else {
                    unreachable!("walk sends files with data or as links")
                };
                let number = self.data_inode(inode::S_IFREG | perm(*mode), reader, size)?;
                self.inode(number).links = links as u16;
                if links > 1 {
                    self.linked.insert(path.clone(), number);
                }
                self.data_bytes += size;
                (number, dir::FT_REG)
            }
            Node::Symlink { target } if target.len() < 60 => {
                let mut block = [0u8; 60];
                block[..target.len()].copy_from_slice(target.as_bytes());
                (self.add_inode(Inode::inline(inode::S_IFLNK | 0o777, target.len() as u64, block)), dir::FT_SYMLINK)
            }
            Node::Symlink { target } => {
                let len = target.len() as u64;
                (self.data_inode(inode::S_IFLNK | 0o777, &mut target.as_bytes(), len)?, dir::FT_SYMLINK)
            }
            Node::Special { kind, mode, major, minor } => {
                let (bits, ft, block) = match kind {
                    SpecialKind::Char => (inode::S_IFCHR, dir::FT_CHR, inode::device(*major, *minor)),
                    SpecialKind::Block => (inode::S_IFBLK, dir::FT_BLK, inode::device(*major, *minor)),
                    SpecialKind::Fifo => (inode::S_IFIFO, dir::FT_FIFO, [0; 60]),
                };
                (self.add_inode(Inode::inline(bits | perm(*mode), 0, block)), ft)
            }
        };
        let inode = self.inode(number);
        (inode.uid, inode.gid) = (attrs.uid, attrs.gid);
        if !attrs.xattrs.is_empty() {
            self.xattr_sets.entry(attrs.xattrs.clone()).or_default().push(number);
        }
        if !path.is_root() {
            self.link(path, number, kind)?;
        }
        Ok(())
    }
}

impl Writer<'_> {
    /// Writes the directories, xattr blocks, inode tables, bitmaps, descriptors and
    /// superblocks once every entry is in.
    fn finish(mut self, id: &Identity) -> io::Result<u64> {
        let mut dirs = std::mem::take(&mut self.dirs);
        let mut per_group = vec![0u16; self.geo.groups as usize];
        for d in &mut dirs {
            crate::interrupt::check()?;
            d.entries.sort();
            let bytes = dir::encode(d.inode, d.parent, &d.entries, d.min_blocks);
            let n = blocks(bytes.len() as u64);
            let extents = self.alloc.allocate(n)?;
            let mut rest = &bytes[..];
            for e in &extents {
                let (now, later) = rest.split_at((u64::from(e.len) * BLOCK) as usize);
                self.out.put(e.start, now)?;
                rest = later;
            }
            let (root, leaves) = self.map(&extents)?;
            let subdirs = d.entries.iter().filter(|e| e.kind == dir::FT_DIR).count();
            let inode = self.inode(d.inode);
            (inode.size, inode.block, inode.blocks) = (bytes.len() as u64, root, n + leaves);
            inode.flags = inode::EXTENTS_FL;
            // With dir_nlink, a count that would overflow is 1 ("many").
            inode.links = u16::try_from(2 + subdirs).ok().filter(|&n| n <= 65000).unwrap_or(1);
            per_group[((d.inode - 1) / self.geo.inodes_per_group) as usize] += 1;
        }

        let mut sets: Vec<_> = std::mem::take(&mut self.xattr_sets).into_iter().collect();
        sets.sort();
        for (xattrs, inodes) in sets {
            for sharing in inodes.chunks(xattr::MAX_REFS) {
                let block = xattr::block(&xattrs, sharing.len() as u32).map_err(io::Error::other)?;
                let at = self.alloc.allocate(1)?[0].start;
                self.out.put(at, &block)?;
                for &number in sharing {
                    let inode = self.inode(number);
                    inode.xattr_block = at;
                    inode.blocks += 1;
                }
            }
        }
        self.out.flush()?;

        let geo = self.geo;
        let last_inode = self.inodes.len() as u32;
        let usage = Usage { next: self.alloc.next(), last_inode, dirs: per_group };
        for g in 0..geo.groups {
            crate::interrupt::check()?;
            let first = (g * geo.inodes_per_group) as usize;
            let last = (first + geo.inodes_per_group as usize).min(self.inodes.len());
            if first < last {
                let mut table = Vec::with_capacity((last - first) * INODE_SIZE as usize);
                for inode in &self.inodes[first..last] {
                    table.extend_from_slice(&inode.as_ref().map_or([0; INODE_SIZE as usize], |i| i.encode(id.time)));
                }
                self.out.file.write_all_at(&table, geo.inode_table(g) * BLOCK)?;
            }
            let blocks_in_group = geo.group_end(g) - geo.group_start(g);
            let used = geo.used_blocks(g, usage.next);
            self.out.file.write_all_at(&superblock::bitmap(used, blocks_in_group), geo.block_bitmap(g) * BLOCK)?;
            let used = u64::from(geo.used_inodes(g, last_inode));
            let bitmap = superblock::bitmap(used, u64::from(geo.inodes_per_group));
            self.out.file.write_all_at(&bitmap, geo.inode_bitmap(g) * BLOCK)?;
            if geo.has_super(g) {
                let sb = superblock::superblock(geo, id, &usage, g);
                let start = geo.group_start(g) * BLOCK;
                self.out.file.write_all_at(&sb, if g == 0 { 1024 } else { start })?;
                self.out.file.write_all_at(&superblock::descriptors(geo, &usage), start + BLOCK)?;
            }
        }
        Ok(self.data_bytes)
    }
}

/// The journal: allocated first, empty and clean.
fn journal(writer: &mut Writer<'_>, uuid: &[u8; 16]) -> io::Result<([u8; 60], u64)> {
    let n = writer.geo.journal_blocks;
    let extents = writer.alloc.allocate(n)?;
    writer.out.put(extents[0].start, &superblock::journal_superblock(n, uuid))?;
    let (root, leaves) = writer.map(&extents)?;
    let inode = Inode::mapped(inode::S_IFREG | 0o600, n * BLOCK, root, n + leaves);
    writer.inodes[JOURNAL_INODE as usize - 1] = Some(inode);
    Ok((root, n * BLOCK))
}

/// Writes `tree` as an ext4 image at `dest` (overwritten); returns the file bytes packed.
pub fn write(
    tree: &Tree,
    layers: &dyn LayerSource,
    dest: &Path,
    fs_config: &Filesystem,
    mtime: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Ext4Error> {
    let plan = plan(tree)?;
    let free = free_blocks(plan.content_blocks, fs_config);
    let geo = Geometry::fit(plan.content_blocks, plan.entries, free).ok_or(Ext4Error::TooLarge)?;
    let file = File::create(dest)?;
    file.set_len(geo.blocks * BLOCK)?;
    if fs_config.preallocate {
        crate::output::preallocate(&file, geo.blocks * BLOCK)?;
    }
    let id = tree_id(tree)?;
    let uuid: [u8; 16] = id[..16].try_into().expect("16 bytes");
    let hash_seed: [u8; 16] =
        Sha256::digest([&id[..], b"ext4 directory hash seed"].concat())[..16].try_into().expect("16 bytes");
    let mut writer = Writer {
        geo: &geo,
        alloc: Allocator::new(&geo),
        out: Output { file, buf: Vec::new(), at: 0 },
        inodes: vec![None; FIRST_INODE as usize - 1],
        dirs: Vec::new(),
        dir_of: HashMap::new(),
        linked: HashMap::new(),
        xattr_sets: HashMap::new(),
        has_lost_found: plan.has_lost_found,
        data_bytes: 0,
    };
    let (journal_block, journal_size) = journal(&mut writer, &uuid)?;
    walk(tree, layers, &mut writer, progress)?;
    let identity = Identity { uuid, hash_seed, time: mtime, journal_block, journal_size };
    Ok(writer.finish(&identity)?)
}
