//! The 256-byte inode and the extent tree that maps a file's blocks.

use super::geometry::{BLOCK, Extent, INODE_SIZE};

pub const S_IFIFO: u16 = 0o010_000;
pub const S_IFCHR: u16 = 0o020_000;
pub const S_IFDIR: u16 = 0o040_000;
pub const S_IFBLK: u16 = 0o060_000;
pub const S_IFREG: u16 = 0o100_000;
pub const S_IFLNK: u16 = 0o120_000;

/// `EXT4_EXTENTS_FL`: `i_block` holds an extent tree.
pub const EXTENTS_FL: u32 = 0x80000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// Extent entries in the inode itself, and in one tree block after its header.
const ROOT_ENTRIES: usize = 4;
pub const LEAF_ENTRIES: usize = ((BLOCK - 12) / 12) as usize;
/// Bytes of the inode beyond the classic 128 (room for the nanosecond and creation times).
const EXTRA_ISIZE: u16 = 32;

/// One inode, as it will be written.
#[derive(Debug, Clone)]
pub struct Inode {
    /// File type and permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    pub flags: u32,
    pub block: [u8; 60],
    /// 4 KiB blocks held: data, extent tree blocks and the xattr block.
    pub blocks: u64,
    pub xattr_block: u64,
}

impl Default for Inode {
    fn default() -> Self {
        Self { mode: 0, uid: 0, gid: 0, size: 0, links: 1, flags: 0, block: [0; 60], blocks: 0, xattr_block: 0 }
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

impl Inode {
    /// An inode whose data is mapped by `root` (from [`extent_root`]).
    pub fn mapped(mode: u16, size: u64, root: [u8; 60], blocks: u64) -> Self {
        Self { mode, size, flags: EXTENTS_FL, block: root, blocks, links: 1, ..Self::default() }
    }

    /// An inode whose `i_block` holds the value itself (fast symlinks, devices, fifos).
    pub fn inline(mode: u16, size: u64, block: [u8; 60]) -> Self {
        Self { mode, size, block, links: 1, ..Self::default() }
    }

    /// The on-disk inode; every timestamp is `time`.
    pub fn encode(&self, time: u32) -> [u8; INODE_SIZE as usize] {
        let mut b = [0u8; INODE_SIZE as usize];
        let sectors = self.blocks * (BLOCK / 512);
        put16(&mut b, 0, self.mode);
        put16(&mut b, 2, self.uid as u16);
        put32(&mut b, 4, self.size as u32);
        for at in [8, 12, 16, 144] {
            put32(&mut b, at, time); // atime, ctime, mtime, crtime
        }
        put16(&mut b, 24, self.gid as u16);
        put16(&mut b, 26, self.links);
        put32(&mut b, 28, sectors as u32);
        put32(&mut b, 32, self.flags);
        b[40..100].copy_from_slice(&self.block);
        put32(&mut b, 104, self.xattr_block as u32);
        put32(&mut b, 108, (self.size >> 32) as u32);
        put16(&mut b, 116, (sectors >> 32) as u16);
        put16(&mut b, 118, (self.xattr_block >> 32) as u16);
        put16(&mut b, 120, (self.uid >> 16) as u16);
        put16(&mut b, 122, (self.gid >> 16) as u16);
        put16(&mut b, 128, EXTRA_ISIZE);
        b
    }
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, EXTENT_MAGIC);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

fn put_extent(b: &mut [u8], e: &Extent) {
    put32(b, 0, e.logical);
    put16(b, 4, e.len as u16);
    put16(b, 6, (e.start >> 32) as u16);
    put32(b, 8, e.start as u32);
}

/// The most leaf blocks a one-level tree indexes from the inode: 4 × 340 extents.
pub const MAX_LEAVES: usize = ROOT_ENTRIES;

/// How many tree blocks a file of `extents` extents needs besides its inode.
pub fn leaf_blocks(extents: usize) -> usize {
    if extents <= ROOT_ENTRIES { 0 } else { extents.div_ceil(LEAF_ENTRIES) }
}

/// The extent tree of `extents`: the 60-byte root for `i_block`, and the leaf blocks to write
/// at `leaves` (from [`leaf_blocks`]; at most four, which maps over 170 GB).
pub fn extent_root(extents: &[Extent], leaves: &[u64]) -> ([u8; 60], Vec<Vec<u8>>) {
    let mut root = [0u8; 60];
    if leaves.is_empty() {
        header(&mut root, extents.len(), ROOT_ENTRIES, 0);
        for (i, e) in extents.iter().enumerate() {
            put_extent(&mut root[12 + 12 * i..], e);
        }
        return (root, Vec::new());
    }
    assert!(leaves.len() <= MAX_LEAVES, "plan() refuses files whose tree would be deeper");
    header(&mut root, leaves.len(), ROOT_ENTRIES, 1);
    let mut blocks = Vec::new();
    for (i, (chunk, &at)) in extents.chunks(LEAF_ENTRIES).zip(leaves).enumerate() {
        let index = &mut root[12 + 12 * i..];
        put32(index, 0, chunk[0].logical);
        put32(index, 4, at as u32);
        put16(index, 8, (at >> 32) as u16);
        let mut leaf = vec![0u8; BLOCK as usize];
        header(&mut leaf, chunk.len(), LEAF_ENTRIES, 0);
        for (j, e) in chunk.iter().enumerate() {
            put_extent(&mut leaf[12 + 12 * j..], e);
        }
        blocks.push(leaf);
    }
    (root, blocks)
}

/// `i_block` of a device node: the old 8-bit encoding when it fits, as the kernel writes it.
pub fn device(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        put32(&mut b, 4, (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12));
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_trees_live_in_the_inode_and_big_ones_in_leaves() {
        let extents: Vec<Extent> =
            (0..5).map(|i| Extent { logical: i * 10, start: 1000 + u64::from(i) * 100, len: 10 }).collect();
        let (root, leaves) = extent_root(&extents[..4], &[]);
        assert_eq!(&root[..8], &[0x0A, 0xF3, 4, 0, 4, 0, 0, 0]);
        assert!(leaves.is_empty());
        assert_eq!(leaf_blocks(5), 1);
        let (root, leaves) = extent_root(&extents, &[77]);
        assert_eq!(&root[..8], &[0x0A, 0xF3, 1, 0, 4, 0, 1, 0], "depth 1, one index");
        assert_eq!(u32::from_le_bytes(root[16..20].try_into().unwrap()), 77);
        assert_eq!(&leaves[0][..6], &[0x0A, 0xF3, 5, 0, 84, 1], "five extents of 340");
    }

    #[test]
    fn large_device_numbers_use_the_new_encoding() {
        assert_eq!(&device(1, 3)[..4], &[3, 1, 0, 0]);
        let big = device(259, 300);
        assert_eq!(&big[..4], &[0; 4]);
        assert_eq!(
            u32::from_le_bytes(big[4..8].try_into().unwrap()),
            (300 & 0xff) | (259 << 8) | ((300 & !0xff) << 12)
        );
    }

    #[test]
    fn owners_above_65535_keep_their_high_half() {
        let inode = Inode { uid: 100_000, gid: 70_000, ..Inode::inline(S_IFIFO | 0o644, 0, [0; 60]) };
        let b = inode.encode(5);
        let uid = u32::from(u16::from_le_bytes([b[2], b[3]])) | u32::from(u16::from_le_bytes([b[120], b[121]])) << 16;
        assert_eq!(uid, 100_000);
        assert_eq!(u32::from_le_bytes(b[144..148].try_into().unwrap()), 5, "creation time");
    }
}
