//! The superblock, the group descriptor table and the journal's own superblock.

use super::geometry::{BLOCKS_PER_GROUP, DESC_SIZE, FIRST_INODE, Geometry, INODE_SIZE};

const MAGIC: u16 = 0xEF53;
/// `has_journal`, `ext_attr`, `dir_index`.
const COMPAT: u32 = 0x4 | 0x8 | 0x20;
/// `filetype`, `extent`.
const INCOMPAT: u32 = 0x2 | 0x40;
/// `sparse_super`, `large_file`, `huge_file`, `dir_nlink`, `extra_isize`.
const RO_COMPAT: u32 = 0x1 | 0x2 | 0x8 | 0x20 | 0x40;
pub const JOURNAL_INODE: u32 = 8;

/// What the superblock records besides the geometry.
pub struct Identity {
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    pub time: u32,
    /// The journal inode's `i_block` and size, backed up in the superblock.
    pub journal_block: [u8; 60],
    pub journal_size: u64,
}

/// Free space when the allocator stopped at `next` and inodes `1..=last_inode` are used.
pub struct Usage {
    pub next: u64,
    pub last_inode: u32,
    /// Directories per group.
    pub dirs: Vec<u16>,
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn free_blocks(geo: &Geometry, usage: &Usage, group: u32) -> u64 {
    geo.group_end(group) - geo.group_start(group) - geo.used_blocks(group, usage.next)
}

fn free_inodes(geo: &Geometry, usage: &Usage, group: u32) -> u32 {
    geo.inodes_per_group - geo.used_inodes(group, usage.last_inode)
}

/// The 1024-byte superblock as stored in `group` (copies differ only in that number).
pub fn superblock(geo: &Geometry, id: &Identity, usage: &Usage, group: u32) -> Vec<u8> {
    let free: u64 = (0..geo.groups).map(|g| free_blocks(geo, usage, g)).sum();
    let free_ino: u64 = (0..geo.groups).map(|g| u64::from(free_inodes(geo, usage, g))).sum();
    let mut b = vec![0u8; 1024];
    put(&mut b, 0x00, &(geo.inodes() as u32).to_le_bytes());
    put(&mut b, 0x04, &(geo.blocks as u32).to_le_bytes());
    put(&mut b, 0x0C, &(free as u32).to_le_bytes());
    put(&mut b, 0x10, &(free_ino as u32).to_le_bytes());
    put(&mut b, 0x18, &2u32.to_le_bytes()); // 4 KiB blocks
    put(&mut b, 0x1C, &2u32.to_le_bytes()); // and clusters
    put(&mut b, 0x20, &(BLOCKS_PER_GROUP as u32).to_le_bytes());
    put(&mut b, 0x24, &(BLOCKS_PER_GROUP as u32).to_le_bytes());
    put(&mut b, 0x28, &geo.inodes_per_group.to_le_bytes());
    put(&mut b, 0x30, &id.time.to_le_bytes()); // last write
    put(&mut b, 0x36, &u16::MAX.to_le_bytes()); // no mount-count checks
    put(&mut b, 0x38, &MAGIC.to_le_bytes());
    put(&mut b, 0x3A, &1u16.to_le_bytes()); // cleanly unmounted
    put(&mut b, 0x3C, &1u16.to_le_bytes()); // on errors, continue
    put(&mut b, 0x40, &id.time.to_le_bytes()); // last check
    put(&mut b, 0x4C, &1u32.to_le_bytes()); // dynamic revision
    put(&mut b, 0x54, &FIRST_INODE.to_le_bytes());
    put(&mut b, 0x58, &(INODE_SIZE as u16).to_le_bytes());
    put(&mut b, 0x5A, &(group as u16).to_le_bytes());
    put(&mut b, 0x5C, &COMPAT.to_le_bytes());
    put(&mut b, 0x60, &INCOMPAT.to_le_bytes());
    put(&mut b, 0x64, &RO_COMPAT.to_le_bytes());
    put(&mut b, 0x68, &id.uuid);
    put(&mut b, 0xE0, &JOURNAL_INODE.to_le_bytes());
    put(&mut b, 0xEC, &id.hash_seed);
    b[0xFC] = 1; // half-MD4 directory hashes
    b[0xFD] = 1; // s_jnl_blocks holds the journal inode's block map
    put(&mut b, 0x100, &0x0Cu32.to_le_bytes()); // user_xattr and acl by default, as mke2fs
    put(&mut b, 0x108, &id.time.to_le_bytes()); // creation
    put(&mut b, 0x10C, &id.journal_block);
    put(&mut b, 0x148, &((id.journal_size >> 32) as u32).to_le_bytes());
    put(&mut b, 0x14C, &(id.journal_size as u32).to_le_bytes());
    put(&mut b, 0x15C, &32u16.to_le_bytes()); // minimum and wanted extra inode size
    put(&mut b, 0x15E, &32u16.to_le_bytes());
    put(&mut b, 0x160, &1u32.to_le_bytes()); // signed directory hashes, as x86 mke2fs
    b
}

/// The group descriptor table, padded to whole blocks.
pub fn descriptors(geo: &Geometry, usage: &Usage) -> Vec<u8> {
    let mut b = vec![0u8; (geo.gdt_blocks * super::geometry::BLOCK) as usize];
    for g in 0..geo.groups {
        let d = &mut b[(u64::from(g) * DESC_SIZE) as usize..][..DESC_SIZE as usize];
        put(d, 0x00, &(geo.block_bitmap(g) as u32).to_le_bytes());
        put(d, 0x04, &(geo.inode_bitmap(g) as u32).to_le_bytes());
        put(d, 0x08, &(geo.inode_table(g) as u32).to_le_bytes());
        put(d, 0x0C, &(free_blocks(geo, usage, g) as u16).to_le_bytes());
        put(d, 0x0E, &(free_inodes(geo, usage, g) as u16).to_le_bytes());
        put(d, 0x10, &usage.dirs[g as usize].to_le_bytes());
    }
    b
}

/// A bitmap block whose first `used` bits are set, and every bit from `valid` on (the
/// padding beyond the group's blocks or inodes).
pub fn bitmap(used: u64, valid: u64) -> Vec<u8> {
    let mut b = vec![0u8; super::geometry::BLOCK as usize];
    let set = |b: &mut [u8], from: u64, to: u64| {
        for bit in from..to {
            b[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    };
    set(&mut b, 0, used);
    set(&mut b, valid, super::geometry::BLOCK * 8);
    b
}

/// The superblock of an empty, clean internal journal (jbd2 v2; big-endian).
pub fn journal_superblock(blocks: u64, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    put(&mut b, 0x00, &0xC03B_3998u32.to_be_bytes());
    put(&mut b, 0x04, &4u32.to_be_bytes()); // superblock v2
    put(&mut b, 0x0C, &(super::geometry::BLOCK as u32).to_be_bytes());
    put(&mut b, 0x10, &(blocks as u32).to_be_bytes());
    put(&mut b, 0x14, &1u32.to_be_bytes()); // first log block
    put(&mut b, 0x18, &1u32.to_be_bytes()); // first transaction
    put(&mut b, 0x30, uuid);
    put(&mut b, 0x40, &1u32.to_be_bytes()); // one filesystem uses it
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_mark_the_used_prefix_and_the_padding() {
        let b = bitmap(10, 4000 * 8 + 3);
        assert_eq!(&b[..2], &[0xFF, 0x03]);
        assert_eq!(b[2], 0);
        assert_eq!(b[4000], 0xF8);
        assert!(b[4001..].iter().all(|&x| x == 0xFF));
    }
}
