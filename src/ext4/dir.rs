//! Directory blocks: linear lists of `ext4_dir_entry_2` records. No hash index is written (the
//! kernel reads linear directories of any size, and adds an index itself when one grows).

use super::geometry::BLOCK;

pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHR: u8 = 3;
pub const FT_BLK: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SYMLINK: u8 = 7;

/// The longest name a record holds.
pub const MAX_NAME: usize = 255;

fn record_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub name: Box<[u8]>,
    pub inode: u32,
    pub kind: u8,
}

/// Packs records into blocks; the last record of each block stretches to its end.
struct Packer {
    out: Vec<u8>,
    last: usize,
}

impl Packer {
    fn close_block(&mut self) {
        let end = self.out.len().next_multiple_of(BLOCK as usize);
        let len = (end - self.last) as u16;
        self.out[self.last + 4..self.last + 6].copy_from_slice(&len.to_le_bytes());
        self.out.resize(end, 0);
    }

    fn push(&mut self, name: &[u8], inode: u32, kind: u8) {
        let len = record_len(name.len());
        let used = self.out.len() % BLOCK as usize;
        if used != 0 && used + len > BLOCK as usize {
            self.close_block();
        }
        self.last = self.out.len();
        self.out.extend_from_slice(&inode.to_le_bytes());
        self.out.extend_from_slice(&(len as u16).to_le_bytes());
        self.out.push(name.len() as u8);
        self.out.push(kind);
        self.out.extend_from_slice(name);
        self.out.resize(self.last + len, 0);
    }
}

/// The blocks of a directory (`me`, below `parent`) holding `entries`, at least `min_blocks`
/// long (extra blocks hold one empty record each, as mke2fs gives `lost+found`).
pub fn encode(me: u32, parent: u32, entries: &[Entry], min_blocks: usize) -> Vec<u8> {
    let mut p = Packer { out: Vec::new(), last: 0 };
    p.push(b".", me, FT_DIR);
    p.push(b"..", parent, FT_DIR);
    for e in entries {
        p.push(&e.name, e.inode, e.kind);
    }
    p.close_block();
    while p.out.len() < min_blocks * BLOCK as usize {
        p.last = p.out.len();
        p.out.resize(p.last + 8, 0);
        p.close_block();
    }
    p.out
}

/// An upper bound on the blocks of a directory whose names have `name_bytes` bytes in all.
pub fn blocks_for(names: u64, name_bytes: u64) -> u64 {
    let records = 24 + names * 11 + name_bytes; // 8-byte headers, padding up to 3 bytes
    // A block wastes at most one record's worth at its end.
    records.div_ceil(BLOCK - record_len(MAX_NAME) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(block: &[u8]) -> Vec<(u32, u16, Vec<u8>)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < block.len() {
            let inode = u32::from_le_bytes(block[at..at + 4].try_into().unwrap());
            let len = u16::from_le_bytes([block[at + 4], block[at + 5]]);
            let name = block[at + 8..at + 8 + block[at + 6] as usize].to_vec();
            out.push((inode, len, name));
            at += len as usize;
        }
        out
    }

    #[test]
    fn dot_entries_come_first_and_the_last_record_fills_the_block() {
        let out = encode(12, 2, &[Entry { name: (*b"etc").into(), inode: 13, kind: FT_DIR }], 1);
        assert_eq!(out.len(), 4096);
        assert_eq!(records(&out), [(12, 12, b".".to_vec()), (2, 12, b"..".to_vec()), (13, 4072, b"etc".to_vec())]);
    }

    #[test]
    fn records_never_straddle_blocks_and_the_estimate_is_an_upper_bound() {
        let names: Vec<Entry> = (0..500)
            .map(|i| Entry { name: format!("{i:0>200}").into_bytes().into(), inode: 20 + i, kind: FT_REG })
            .collect();
        let out = encode(11, 2, &names, 1);
        let blocks = out.len() / 4096;
        let mut seen = 0;
        for block in out.chunks(4096) {
            let r = records(block);
            assert_eq!(r.iter().map(|(_, len, _)| *len as usize).sum::<usize>(), 4096);
            seen += r.len();
        }
        assert_eq!(seen, 502);
        assert!(blocks as u64 <= blocks_for(500, 500 * 200), "{blocks}");
    }

    #[test]
    fn padding_blocks_hold_one_empty_record() {
        let out = encode(11, 2, &[], 4);
        assert_eq!(out.len(), 4 * 4096);
        assert_eq!(records(&out[4096..8192]), [(0, 4096, vec![])]);
    }
}
