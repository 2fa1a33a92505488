//! Where everything goes: block groups, their metadata, and the allocator for the rest.
//!
//! The layout is classic ext4 without `flex_bg`: every group starts with its superblock and
//! descriptor-table copy (groups 0, 1 and powers of 3, 5 and 7 only: `sparse_super`), then its
//! block bitmap, inode bitmap and inode table; data fills the rest. Blocks are handed out from
//! one cursor that only moves forward, and inodes are numbered in order, so the used blocks
//! and inodes of every group are a prefix of it: bitmaps and free counts follow from two
//! numbers.

use std::io;

pub const BLOCK: u64 = 4096;
pub const BLOCKS_PER_GROUP: u64 = 8 * BLOCK;
pub const INODE_SIZE: u64 = 256;
const INODES_PER_BLOCK: u64 = BLOCK / INODE_SIZE;
/// Group descriptors without the `64bit` feature.
pub const DESC_SIZE: u64 = 32;
/// The longest initialized extent.
pub const MAX_EXTENT: u64 = 32768;
/// mke2fs's default inode ratio, so a writable rootfs has room for new files.
const BYTES_PER_INODE: u64 = 16384;
/// The last group must fit its metadata and at least this much data, as mke2fs demands.
const MIN_LAST_GROUP_DATA: u64 = 256;
/// Inodes 1–10 are reserved; 11 is the first ordinary one.
pub const FIRST_INODE: u32 = 11;

/// The filesystem's shape, fixed before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub blocks: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    pub gdt_blocks: u64,
    pub itable_blocks: u64,
    pub journal_blocks: u64,
}

/// mke2fs's default journal size for a filesystem of `blocks` 4 KiB blocks (and, where mke2fs
/// would make none, its smallest: every image gets a journal).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

fn is_power_of(mut n: u32, base: u32) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

impl Geometry {
    fn new(blocks: u64, min_inodes: u64) -> Self {
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let inodes = min_inodes.max(blocks * BLOCK / BYTES_PER_INODE);
        let inodes_per_group = inodes.div_ceil(groups).next_multiple_of(INODES_PER_BLOCK);
        Self {
            blocks,
            groups: groups as u32,
            inodes_per_group: inodes_per_group as u32,
            gdt_blocks: (groups * DESC_SIZE).div_ceil(BLOCK),
            itable_blocks: inodes_per_group / INODES_PER_BLOCK,
            journal_blocks: journal_blocks(blocks),
        }
    }

    /// The smallest geometry with room for `content` blocks of data and metadata, `entries`
    /// inodes and `free` spare blocks; `None` beyond ext4's 2^32 blocks.
    pub fn fit(content: u64, entries: u64, free: u64) -> Option<Self> {
        let min_inodes = entries + u64::from(FIRST_INODE);
        let mut blocks = content + free;
        loop {
            let geo = Self::new(blocks, min_inodes);
            let last = geo.groups - 1;
            let last_needs = geo.data_start(last) - geo.group_start(last) + MIN_LAST_GROUP_DATA;
            let want = (content + free + geo.metadata_blocks() + geo.journal_blocks)
                .max(geo.group_start(last) + last_needs)
                .max(min_inodes.div_ceil(BLOCKS_PER_GROUP).saturating_sub(1) * BLOCKS_PER_GROUP + last_needs);
            if want > u64::from(u32::MAX) {
                return None;
            }
            if want <= blocks && u64::from(geo.inodes_per_group) <= BLOCKS_PER_GROUP {
                return Some(geo);
            }
            blocks = want.max(blocks + 1);
        }
    }

    pub fn inodes(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.inodes_per_group)
    }

    /// Groups 0, 1 and powers of 3, 5 and 7 carry superblock and descriptor copies.
    pub fn has_super(&self, group: u32) -> bool {
        group <= 1 || is_power_of(group, 3) || is_power_of(group, 5) || is_power_of(group, 7)
    }

    pub fn group_start(&self, group: u32) -> u64 {
        u64::from(group) * BLOCKS_PER_GROUP
    }

    pub fn group_end(&self, group: u32) -> u64 {
        (self.group_start(group) + BLOCKS_PER_GROUP).min(self.blocks)
    }

    pub fn block_bitmap(&self, group: u32) -> u64 {
        self.group_start(group) + if self.has_super(group) { 1 + self.gdt_blocks } else { 0 }
    }

    pub fn inode_bitmap(&self, group: u32) -> u64 {
        self.block_bitmap(group) + 1
    }

    pub fn inode_table(&self, group: u32) -> u64 {
        self.block_bitmap(group) + 2
    }

    pub fn data_start(&self, group: u32) -> u64 {
        self.inode_table(group) + self.itable_blocks
    }

    fn metadata_blocks(&self) -> u64 {
        (0..self.groups).map(|g| self.data_start(g) - self.group_start(g)).sum()
    }

    /// Blocks of `group` in use when the allocator's cursor is at `next`.
    pub fn used_blocks(&self, group: u32, next: u64) -> u64 {
        next.clamp(self.data_start(group), self.group_end(group)) - self.group_start(group)
    }

    /// Inodes of `group` in use when inodes `1..=last` are.
    pub fn used_inodes(&self, group: u32, last: u32) -> u32 {
        let first = group * self.inodes_per_group;
        last.saturating_sub(first).min(self.inodes_per_group)
    }
}

/// A run of blocks holding part of a file: `len` blocks from `start`, at block `logical` of
/// the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u32,
    pub start: u64,
    pub len: u32,
}

/// Hands out data blocks in order, stepping over each group's metadata.
pub struct Allocator<'g> {
    geo: &'g Geometry,
    next: u64,
}

impl<'g> Allocator<'g> {
    pub fn new(geo: &'g Geometry) -> Self {
        Self { geo, next: geo.data_start(0) }
    }

    /// The first block never handed out.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// `count` blocks as extents, contiguous within each group.
    pub fn allocate(&mut self, count: u64) -> io::Result<Vec<Extent>> {
        let mut extents = Vec::new();
        let mut logical = 0;
        while logical < count {
            let group = (self.next / BLOCKS_PER_GROUP) as u32;
            if self.next >= self.geo.blocks {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the ext4 image is full (Fledge sized it too small: please report this)",
                ));
            }
            self.next = self.next.max(self.geo.data_start(group));
            let len = (count - logical).min(self.geo.group_end(group) - self.next).min(MAX_EXTENT);
            if len > 0 {
                extents.push(Extent { logical: logical as u32, start: self.next, len: len as u32 });
                self.next += len;
                logical += len;
            } else {
                self.next = self.geo.group_end(group);
            }
        }
        Ok(extents)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_sit_in_groups_zero_one_and_powers_of_three_five_seven() {
        let geo = Geometry::fit(0, 0, 100 * BLOCKS_PER_GROUP).unwrap();
        let with: Vec<u32> = (0..geo.groups).filter(|&g| geo.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81]);
    }

    #[test]
    fn fit_leaves_the_free_space_asked_for_and_a_usable_last_group() {
        for (content, entries, free) in [(10, 5, 16384), (40_000, 7000, 20_000), (300_000, 70_000, 16384)] {
            let geo = Geometry::fit(content, entries, free).unwrap();
            let meta: u64 = (0..geo.groups).map(|g| geo.data_start(g) - geo.group_start(g)).sum();
            assert!(geo.blocks >= content + free + meta + geo.journal_blocks, "{geo:?}");
            assert!(geo.inodes() >= entries + 11);
            let last = geo.groups - 1;
            assert!(geo.group_end(last) >= geo.data_start(last) + MIN_LAST_GROUP_DATA, "{geo:?}");
            assert!(u64::from(geo.inodes_per_group) <= BLOCKS_PER_GROUP);
        }
    }

    #[test]
    fn many_small_files_get_enough_groups_for_their_inodes() {
        let geo = Geometry::fit(1000, 100_000, 16384).unwrap();
        assert!(geo.inodes() >= 100_011 && u64::from(geo.inodes_per_group) <= BLOCKS_PER_GROUP, "{geo:?}");
    }

    #[test]
    fn allocation_skips_metadata_and_splits_at_group_ends() {
        let geo = Geometry::fit(70_000, 10, 0).unwrap();
        let mut alloc = Allocator::new(&geo);
        let extents = alloc.allocate(40_000).unwrap();
        assert_eq!(extents[0].start, geo.data_start(0));
        let in_group_0 = (geo.group_end(0) - geo.data_start(0)).min(MAX_EXTENT);
        assert_eq!(extents[0].len as u64, in_group_0);
        assert_eq!(extents[1].start, geo.data_start(1), "{extents:?}");
        assert_eq!(extents.iter().map(|e| e.len as u64).sum::<u64>(), 40_000);
        assert_eq!(extents[1].logical as u64, in_group_0);
        assert_eq!(geo.used_blocks(0, alloc.next()), BLOCKS_PER_GROUP);
        assert_eq!(geo.used_blocks(2, alloc.next()), geo.data_start(2) - geo.group_start(2));
    }

    #[test]
    fn even_a_tiny_image_gets_a_journal() {
        let geo = Geometry::fit(10, 10, 256).unwrap();
        assert_eq!(geo.journal_blocks, 1024, "{geo:?}");
        assert!(geo.blocks >= 1024 + 266);
    }

    #[test]
    fn an_overfull_image_is_an_error_not_a_panic() {
        let geo = Geometry::fit(10, 10, 0).unwrap();
        let mut alloc = Allocator::new(&geo);
        assert_eq!(alloc.allocate(geo.blocks).unwrap_err().kind(), io::ErrorKind::StorageFull);
    }
}
