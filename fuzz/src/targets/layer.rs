//! Layer tar reading and flattening: the input is a layer blob (plain, gzip or zstd tar),
//! stored in a temporary store and flattened over a fixed base layer into a tree, as an
//! image's layers are.

use fledge::digest::Sha256Digest;
use fledge::image::flatten::{ImageLayers, flatten};
use fledge::rootfs::Tree;
use fledge::store::Store;
use tar::{EntryType, Header};

use crate::{Rng, Target, mutate};

/// A new store every so many inputs, so a long run does not fill the disk with records.
const INPUTS_PER_STORE: usize = 1000;

pub struct Layer {
    dir: tempfile::TempDir,
    store: Store,
    base: Sha256Digest,
    inputs: usize,
}

impl Layer {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (store, base) = fresh_store(&dir);
        Layer { dir, store, base, inputs: 0 }
    }
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn fresh_store(dir: &tempfile::TempDir) -> (Store, Sha256Digest) {
    let store = Store::open(Some(dir.path())).expect("a store in a temporary directory");
    let base = tar_of(&[
        Entry { path: b"etc/".to_vec(), kind: EntryType::Directory, data: Vec::new(), link: Vec::new() },
        Entry {
            path: b"etc/passwd".to_vec(),
            kind: EntryType::Regular,
            data: b"root:x:0:0\n".to_vec(),
            link: Vec::new(),
        },
        Entry { path: b"bin/sh".to_vec(), kind: EntryType::Symlink, data: Vec::new(), link: b"busybox".to_vec() },
        Entry { path: b"opt/d/f".to_vec(), kind: EntryType::Regular, data: b"f".to_vec(), link: Vec::new() },
    ]);
    let base = store.write_bytes(&base, None, "the base layer").expect("the base layer is stored");
    (store, base)
}

impl Target for Layer {
    fn name(&self) -> &'static str {
        "layer"
    }

    fn run(&mut self, input: &[u8]) {
        self.inputs += 1;
        if self.inputs.is_multiple_of(INPUTS_PER_STORE) {
            let _ = std::fs::remove_dir_all(self.dir.path().join("store"));
            (self.store, self.base) = fresh_store(&self.dir);
        }
        let layer = self.store.write_bytes(input, None, "the fuzzed layer").expect("the layer is stored");
        let layers = ImageLayers::from_digests(&self.store, vec![self.base, layer]);
        let mut tree = Tree::default();
        if let Err(e) = flatten(&layers, &mut tree) {
            drop(e.to_string());
        }
    }

    fn mutate(&self, base: &[u8], _: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        match rng.below(3) {
            0 => tar_of(&entries(rng)),
            1 => with_checksums(mutate::bytes(base, rng)),
            _ => mutate::bytes(base, rng),
        }
    }
}

/// One tar entry to write, names and link targets as raw bytes (hostile ones included).
struct Entry {
    path: Vec<u8>,
    kind: EntryType,
    data: Vec<u8>,
    link: Vec<u8>,
}

const NAMES: &[&[u8]] = &[
    b"etc",
    b"etc/passwd",
    b"etc/.wh.passwd",
    b"opt/d/.wh..wh..opq",
    b".wh.etc",
    b"bin/sh",
    b"bin/busybox",
    b"../escape",
    b"/abs/path",
    b"./dot",
    b"a/../../b",
    b"dir/",
    b"",
    b"a//b",
    b"x\xffy",
    b"hl",
    b"opt/d/f/g",
];

fn random_name(rng: &mut Rng) -> Vec<u8> {
    let mut name = rng.pick(NAMES).to_vec();
    if rng.one_in(8) {
        // Longer than the header's 100 bytes: a GNU long name or PAX path.
        name = [b"long/".repeat(30), name].concat();
    }
    name
}

fn entries(rng: &mut Rng) -> Vec<Entry> {
    (0..1 + rng.below(8))
        .map(|_| {
            let kind = *rng.pick(&[
                EntryType::Regular,
                EntryType::Directory,
                EntryType::Symlink,
                EntryType::Link,
                EntryType::Char,
                EntryType::Block,
                EntryType::Fifo,
                EntryType::XHeader,
                EntryType::GNULongName,
                EntryType::new(b'Z'),
            ]);
            let data = match kind {
                EntryType::XHeader => {
                    rng.pick(&[&b"30 SCHILY.xattr.user.a=value\n"[..], b"12 path=a/b\n", b"9 x"]).to_vec()
                }
                _ if rng.one_in(2) => b"data".repeat(rng.below(300)),
                _ => Vec::new(),
            };
            Entry { path: random_name(rng), kind, data, link: random_name(rng) }
        })
        .collect()
}

/// A tar of `entries`, headers written field by field so any name goes in as it is.
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry.kind);
        header.set_mode(0o755);
        header.set_size(entry.data.len() as u64);
        if entry.path.len() > 100 {
            let mut long = Header::new_gnu();
            long.set_entry_type(EntryType::GNULongName);
            long.set_size(entry.path.len() as u64 + 1);
            long.set_cksum();
            out.extend_from_slice(long.as_bytes());
            out.extend_from_slice(&entry.path);
            out.push(0);
            pad(&mut out);
        }
        let name = &mut header.as_old_mut().name;
        let len = entry.path.len().min(100);
        name[..len].copy_from_slice(&entry.path[..len]);
        let link = &mut header.as_old_mut().linkname;
        let len = entry.link.len().min(100);
        link[..len].copy_from_slice(&entry.link[..len]);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&entry.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(512), 0);
}

/// Fixes the checksum of every block that looks like a header (`ustar` magic), so a mutated
/// header field is read rather than refused as corrupt.
fn with_checksums(mut data: Vec<u8>) -> Vec<u8> {
    for block in data.chunks_exact_mut(512) {
        if &block[257..262] == b"ustar" {
            let mut header = Header::new_old();
            header.as_mut_bytes().copy_from_slice(block);
            header.set_cksum();
            block.copy_from_slice(header.as_bytes());
        }
    }
    data
}
