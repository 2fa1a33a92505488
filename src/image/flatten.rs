//! Flattening an image's layers into one [`Tree`] from a streaming pass over each layer's tar:
//! whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`), hard links, symlinks,
//! devices, fifos, modes, owners, xattrs (PAX `SCHILY.xattr.*`) and long names. File bytes
//! stay in the layer blobs: the tree records where each file's data is, and writers read the
//! layers again, in order, when packing. Nothing is unpacked onto the host. The pass over a
//! layer is recorded in the store (its entry list, keyed by the layer digest), so the next
//! build of an image reads each layer once, not twice.
//!
//! Hostile entries are refused: a path with a `..` component or a hard link to one. Absolute
//! paths are taken relative to the image root, and symlinks are only data: resolution inside
//! the tree never leaves the image.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::image::spec::Manifest;
use crate::paths::ImagePath;
use crate::rootfs::limits::{self, LimitError};
use crate::rootfs::walk::LayerSource;
use crate::rootfs::{Attrs, FileData, Node, SpecialKind, Tree, TreeError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error("layer {layer} ({digest}): entry '{path}' {problem}; the layer was refused")]
    Hostile { layer: u32, digest: String, path: String, problem: &'static str },
    #[error("layer {layer} ({digest}): {source}")]
    Read { layer: u32, digest: String, source: io::Error },
    #[error("layer {layer} ({digest}): entry '{path}': {source}")]
    Tree { layer: u32, digest: String, path: String, source: TreeError },
    #[error("layer {layer} ({digest}): {source}")]
    Limit { layer: u32, digest: String, source: LimitError },
    #[error("layer {layer} ({digest}): entry '{path}' has unsupported type {kind:?}")]
    Unsupported { layer: u32, digest: String, path: String, kind: tar::EntryType },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The layers of a stored image, decompressed on demand (gzip, zstd or plain tar, by content).
pub struct ImageLayers<'s> {
    store: &'s Store,
    digests: Vec<Sha256Digest>,
}

impl<'s> ImageLayers<'s> {
    pub fn new(store: &'s Store, manifest: &Manifest) -> Result<Self, StoreError> {
        let digests = manifest
            .layers
            .iter()
            .map(|l| {
                l.digest
                    .parse()
                    .map_err(|reason| StoreError::CorruptIndex { path: format!("layer {}", l.digest), reason })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { store, digests })
    }

    /// Layer blobs already in the store, bottom first (a build's layers).
    pub fn from_digests(store: &'s Store, digests: Vec<Sha256Digest>) -> Self {
        Self { store, digests }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

impl LayerSource for ImageLayers<'_> {
    fn open(&self, layer: u32) -> io::Result<Box<dyn Read + '_>> {
        let digest = self.digests.get(layer as usize).ok_or_else(|| io::Error::other(format!("no layer {layer}")))?;
        let file = self.store.open_blob(digest).map_err(io::Error::other)?;
        decompress(BufReader::with_capacity(1 << 20, file))
    }
}

/// A reader of the tar inside a layer blob, whatever its compression.
pub fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let magic = reader.fill_buf()?;
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::Decoder::with_buffer(reader)?),
        _ => Box::new(reader),
    })
}

/// A tar entry name as a path in the image (relative and absolute names alike), or why it is
/// refused.
fn entry_path(raw: &[u8]) -> Result<ImagePath, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "is not valid UTF-8")?;
    ImagePath::parse(&format!("/{text}")).map_err(|_| "has a '..' component")
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";
/// The derived-record kind holding a layer's entries (bump the version when the format changes).
pub(super) const ENTRIES_RECORD: &str = "layer-entries-v1";

/// What a tar entry is, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    File { size: u64 },
    Dir,
    Symlink { target: String },
    HardLink { target: String },
    Char { major: u32, minor: u32 },
    Block { major: u32, minor: u32 },
    Fifo,
}

/// One entry of a layer's tar: everything flattening needs. A layer's entries are scanned
/// once and kept in the store, so later builds skip that decompression pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry {
    /// Position in the tar stream, where writers find a file's bytes.
    index: u64,
    /// The name as the tar has it, for messages.
    name: String,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Identifies the layer in errors.
pub(super) struct LayerId<'a> {
    pub layer: u32,
    pub digest: &'a Sha256Digest,
}

impl LayerId<'_> {
    fn read(&self, source: io::Error) -> FlattenError {
        FlattenError::Read { layer: self.layer, digest: self.digest.to_string(), source }
    }

    fn hostile(&self, path: &str, problem: &'static str) -> FlattenError {
        FlattenError::Hostile { layer: self.layer, digest: self.digest.to_string(), path: path.to_string(), problem }
    }

    fn limit(&self, source: LimitError) -> FlattenError {
        FlattenError::Limit { layer: self.layer, digest: self.digest.to_string(), source }
    }

    fn tree(&self, path: &str, source: TreeError) -> FlattenError {
        FlattenError::Tree { layer: self.layer, digest: self.digest.to_string(), path: path.to_string(), source }
    }
}

/// Reads a layer's tar stream into its entries, refusing hostile and unsupported ones.
pub(super) fn scan(reader: impl Read, id: &LayerId<'_>) -> Result<Vec<Entry>, FlattenError> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for (index, entry) in archive.entries().map_err(|e| id.read(e))?.enumerate() {
        crate::interrupt::check().map_err(|e| id.read(e))?;
        limits::check_count(index + 1).map_err(|e| id.limit(e))?;
        let mut entry = entry.map_err(|e| id.read(e))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let path = entry_path(&raw).map_err(|problem| id.hostile(&name, problem))?;
        limits::check_path(&path).map_err(|e| id.limit(e))?;
        let header = entry.header();
        let mode = header.mode().map_err(|e| id.read(e))? & 0o7777;
        let (uid, gid) = (header.uid().map_err(|e| id.read(e))? as u32, header.gid().map_err(|e| id.read(e))? as u32);
        let device = || -> io::Result<(u32, u32)> {
            Ok((header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0)))
        };
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File { size: entry.size() },
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned());
                Kind::Symlink { target: target.unwrap_or_default() }
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                entry_path(&target).map_err(|_| id.hostile(&name, "is a hard link that leaves the image"))?;
                Kind::HardLink { target: String::from_utf8_lossy(&target).into_owned() }
            }
            tar::EntryType::Char => {
                let (major, minor) = device().map_err(|e| id.read(e))?;
                Kind::Char { major, minor }
            }
            tar::EntryType::Block => {
                let (major, minor) = device().map_err(|e| id.read(e))?;
                Kind::Block { major, minor }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(FlattenError::Unsupported {
                    layer: id.layer,
                    digest: id.digest.to_string(),
                    path: name,
                    kind: other,
                });
            }
        };
        let xattrs = xattrs(&mut entry).map_err(|e| id.read(e))?;
        entries.push(Entry { index: index as u64, name, kind, mode, uid, gid, xattrs });
    }
    Ok(entries)
}

/// The entries of layer `i`: from the store's record, or scanned now (and recorded).
fn layer_entries(layers: &ImageLayers<'_>, i: usize, id: &LayerId<'_>) -> Result<Vec<Entry>, FlattenError> {
    let digest = &layers.digests[i];
    if let Some(entries) =
        layers.store.read_derived(ENTRIES_RECORD, digest).and_then(|r| serde_json::from_slice(&r).ok())
    {
        return Ok(entries);
    }
    let entries = scan(layers.open(i as u32).map_err(|e| id.read(e))?, id)?;
    let record = serde_json::to_vec(&entries).map_err(|e| id.read(e.into()))?;
    layers.store.write_derived(ENTRIES_RECORD, digest, &record)?;
    Ok(entries)
}

/// Applies one layer's entries to `tree`: whiteouts and opaque markers remove what lower
/// layers put there; everything else replaces what was at its path.
fn apply(entries: Vec<Entry>, layer_index: u32, tree: &mut Tree, id: &LayerId<'_>) -> Result<(), FlattenError> {
    let mut added: BTreeSet<ImagePath> = BTreeSet::new();
    let created_before = tree.created();
    for entry in entries {
        crate::interrupt::check().map_err(|e| id.read(e))?;
        limits::check_growth(tree, created_before).map_err(|e| id.limit(e))?;
        let path = entry_path(entry.name.as_bytes()).map_err(|problem| id.hostile(&entry.name, problem))?;
        let tree_err = |source| id.tree(&entry.name, source);
        let name = path.file_name().unwrap_or("");
        let parent = || path.parent().unwrap_or_else(ImagePath::root);

        if name == OPAQUE {
            let dir = tree.resolve(&parent(), true).map_err(tree_err)?;
            make_opaque(tree, &dir, &added);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let dir = tree.resolve(&parent(), true).map_err(tree_err)?;
            tree.remove(&dir.join(hidden));
            continue;
        }

        let mode = entry.mode;
        let node = match entry.kind {
            Kind::File { size } => {
                Node::File { mode, data: FileData::Layer { layer: layer_index, index: entry.index, size } }
            }
            Kind::Dir => Node::Dir { mode },
            Kind::Symlink { target } => Node::Symlink { target },
            Kind::HardLink { target } => {
                let target = entry_path(target.as_bytes())
                    .map_err(|_| id.hostile(&entry.name, "is a hard link that leaves the image"))?;
                let resolved = tree.resolve(&target, false).map_err(tree_err)?;
                match tree.get(&resolved) {
                    Some(node @ Node::File { .. }) => node.clone(),
                    _ => return Err(id.hostile(&entry.name, "is a hard link to a file that is not in the image")),
                }
            }
            Kind::Char { major, minor } => Node::Special { kind: SpecialKind::Char, mode, major, minor },
            Kind::Block { major, minor } => Node::Special { kind: SpecialKind::Block, mode, major, minor },
            Kind::Fifo => Node::Special { kind: SpecialKind::Fifo, mode, major: 0, minor: 0 },
        };
        let attrs = Attrs { uid: entry.uid, gid: entry.gid, xattrs: entry.xattrs };
        if path.is_root() {
            if let Node::Dir { .. } = node {
                tree.insert(&path, node).map_err(tree_err)?;
                tree.set_attrs(&path, attrs);
            }
            continue;
        }
        let placed = tree.replace(&path, node).map_err(tree_err)?;
        tree.set_attrs(&placed, attrs);
        added.insert(placed);
    }
    limits::check_growth(tree, created_before).map_err(|e| id.limit(e))
}

/// Removes what lower layers put below `dir`: everything but the entries this layer `added`,
/// what lies below them and the directories that lead to them. One pass in path order, so
/// the work grows with the entries, not with entries times additions.
fn make_opaque(tree: &mut Tree, dir: &ImagePath, added: &BTreeSet<ImagePath>) {
    let mut kept_or_gone: Option<ImagePath> = None;
    for below in tree.descendants(dir) {
        if kept_or_gone.as_ref().is_some_and(|done| below.starts_with(done)) {
            continue;
        }
        if added.contains(&below) {
            kept_or_gone = Some(below);
            continue;
        }
        let leads_to_added = added.range(&below..).next().is_some_and(|a| a.starts_with(&below));
        if !leads_to_added {
            tree.remove(&below);
            kept_or_gone = Some(below);
        }
    }
}

/// Applies every layer of `layers`, bottom first, to `tree`.
pub fn flatten(layers: &ImageLayers<'_>, tree: &mut Tree) -> Result<(), FlattenError> {
    for (i, digest) in layers.digests.iter().enumerate() {
        let id = LayerId { layer: i as u32 + 1, digest };
        let entries = layer_entries(layers, i, &id)?;
        apply(entries, i as u32, tree, &id)?;
        limits::check_path_bytes(tree).map_err(|e| id.limit(e))?;
    }
    Ok(())
}

/// `SCHILY.xattr.*` PAX records of an entry, sorted by name.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for ext in extensions {
            let ext = ext?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_are_relative_and_never_climb() {
        assert_eq!(entry_path(b"./usr/bin/").unwrap().to_string(), "/usr/bin");
        assert_eq!(entry_path(b"/etc/passwd").unwrap().to_string(), "/etc/passwd");
        assert!(entry_path(b"a/../../etc").is_err());
    }
}
