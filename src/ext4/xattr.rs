//! Extended attributes, kept in one block per distinct set (shared by reference count, as
//! the kernel shares them). POSIX ACLs are converted from the xattr form that tar carries to
//! ext4's own compact form.

use super::geometry::BLOCK;

const MAGIC: u32 = 0xEA02_0000;
const HEADER: usize = 32;
/// The kernel stops sharing a block beyond this many references.
pub const MAX_REFS: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XattrError {
    #[error("extended attribute {0}: ext4 has no namespace for it (it keeps user., trusted., security. and system.)")]
    Namespace(String),
    #[error("extended attributes take {0} bytes; ext4 keeps at most {BLOCK} bytes of them per file")]
    TooLarge(usize),
    #[error("extended attribute {0} is not a valid POSIX ACL")]
    Acl(String),
}

/// ext4's name index for `name`, and the part of the name stored.
fn split(name: &str) -> Option<(u8, &str)> {
    match name {
        "system.posix_acl_access" => return Some((2, "")),
        "system.posix_acl_default" => return Some((3, "")),
        "system.richacl" => return Some((8, "")),
        _ => {}
    }
    [("user.", 1), ("trusted.", 4), ("security.", 6), ("system.", 7)]
        .into_iter()
        .find_map(|(prefix, index)| name.strip_prefix(prefix).map(|rest| (index, rest)))
        .filter(|(_, rest)| !rest.is_empty() && rest.len() <= 255)
}

/// An ACL from its xattr form (version 2, 8-byte entries) to ext4's (version 1, with the id
/// left out of entries that have none).
fn acl_to_disk(name: &str, value: &[u8]) -> Result<Vec<u8>, XattrError> {
    let bad = || XattrError::Acl(name.to_string());
    if value.len() < 4 || u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) != 2 || value.len() % 8 != 4 {
        return Err(bad());
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for entry in value[4..].chunks(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        out.extend_from_slice(&entry[..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}                    // owner, owning group, mask, other
            0x02 | 0x08 => out.extend_from_slice(&entry[4..]), // a named user or group
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// The kernel's entry hash: over the stored name, then the value as little-endian words.
fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash = 0u32;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ u32::from(c);
    }
    for word in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..word.len()].copy_from_slice(word);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(w);
    }
    hash
}

/// The attribute block for `xattrs` (names with their namespace prefix), referenced by
/// `refs` inodes.
pub fn block(xattrs: &[(String, Vec<u8>)], refs: u32) -> Result<Vec<u8>, XattrError> {
    let mut entries = Vec::with_capacity(xattrs.len());
    for (name, value) in xattrs {
        let (index, stored) = split(name).ok_or_else(|| XattrError::Namespace(name.clone()))?;
        let value = if matches!(index, 2 | 3) { acl_to_disk(name, value)? } else { value.clone() };
        entries.push((index, stored.as_bytes(), value));
    }
    // The kernel searches a block assuming this order.
    entries.sort_by(|a, b| (a.0, a.1.len(), a.1).cmp(&(b.0, b.1.len(), b.1)));
    let need = HEADER
        + 4
        + entries
            .iter()
            .map(|(_, n, v)| (16 + n.len()).next_multiple_of(4) + v.len().next_multiple_of(4))
            .sum::<usize>();
    if need > BLOCK as usize {
        return Err(XattrError::TooLarge(need));
    }

    let mut b = vec![0u8; BLOCK as usize];
    let mut at = HEADER;
    let mut value_end = b.len();
    let mut block_hash = 0u32;
    for (index, name, value) in &entries {
        let hash = entry_hash(name, value);
        let offset = if value.is_empty() { 0 } else { value_end - value.len().next_multiple_of(4) };
        b[offset..offset + value.len()].copy_from_slice(value);
        if !value.is_empty() {
            value_end = offset;
        }
        b[at] = name.len() as u8;
        b[at + 1] = *index;
        b[at + 2..at + 4].copy_from_slice(&(offset as u16).to_le_bytes());
        b[at + 8..at + 12].copy_from_slice(&(value.len() as u32).to_le_bytes());
        b[at + 12..at + 16].copy_from_slice(&hash.to_le_bytes());
        b[at + 16..at + 16 + name.len()].copy_from_slice(name);
        at += (16 + name.len()).next_multiple_of(4);
        block_hash = (block_hash << 16) ^ (block_hash >> 16) ^ hash;
    }
    b[..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&refs.to_le_bytes());
    b[8..12].copy_from_slice(&1u32.to_le_bytes());
    b[12..16].copy_from_slice(&block_hash.to_le_bytes());
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_the_way_the_kernel_searches_them() {
        let b = block(
            &[
                ("user.zz".into(), b"1".to_vec()),
                ("security.capability".into(), vec![1; 20]),
                ("user.a".into(), b"2".to_vec()),
            ],
            3,
        )
        .unwrap();
        assert_eq!(&b[..8], &[0x00, 0x00, 0x02, 0xEA, 3, 0, 0, 0]);
        // user.a (index 1, length 1), user.zz (1, 2), security.capability (6, 10)
        assert_eq!((b[32], b[33], &b[48..49]), (1, 1, &b"a"[..]));
        assert_eq!((b[52], b[53], &b[68..70]), (2, 1, &b"zz"[..]));
        assert_eq!((b[72], b[73]), (10, 6));
        let offset = u16::from_le_bytes([b[34], b[35]]) as usize;
        assert_eq!(b[offset], b'2');
    }

    #[test]
    fn acls_are_converted_to_the_ext4_form() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in
            [(1u16, 7u16, u32::MAX), (2, 5, 1000), (4, 5, u32::MAX), (0x10, 7, u32::MAX), (0x20, 0, u32::MAX)]
        {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let disk = acl_to_disk("system.posix_acl_access", &acl).unwrap();
        assert_eq!(disk.len(), 4 + 4 + 8 + 4 + 4 + 4);
        assert_eq!(&disk[8..16], &[2, 0, 5, 0, 0xE8, 3, 0, 0]);
        assert!(acl_to_disk("system.posix_acl_access", b"junk").is_err());
    }

    #[test]
    fn unknown_namespaces_and_oversized_sets_are_errors() {
        assert_eq!(block(&[("os2.x".into(), vec![])], 1), Err(XattrError::Namespace("os2.x".into())));
        assert!(matches!(block(&[("user.big".into(), vec![0; 5000])], 1), Err(XattrError::TooLarge(_))));
    }

    #[test]
    fn the_hash_covers_name_and_value() {
        assert_ne!(entry_hash(b"a", b"1"), entry_hash(b"a", b"2"));
        assert_eq!(entry_hash(b"", b""), 0);
    }
}
