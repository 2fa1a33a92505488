//! Flattening an image's layers into one [`Tree`] in a streaming pass over each layer's tar:
//! whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`), hard links, symlinks,
//! devices, fifos, modes, owners, xattrs (PAX `SCHILY.xattr.*`) and long names. File bytes
//! stay in the layer blobs: the tree records where each file's data is, and writers read the
//! layers again, in order, when packing. Nothing is unpacked onto the host.
//!
//! Hostile entries are refused: a path with a `..` component or a hard link to one. Absolute
//! paths are taken relative to the image root, and symlinks are only data: resolution inside
//! the tree never leaves the image.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};

use crate::digest::Sha256Digest;
use crate::image::spec::Manifest;
use crate::paths::ImagePath;
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

/// Applies every layer of `layers`, bottom first, to `tree`.
pub fn flatten(layers: &ImageLayers<'_>, tree: &mut Tree) -> Result<(), FlattenError> {
    for (i, digest) in layers.digests.iter().enumerate() {
        let layer = i as u32 + 1;
        let read_err = |source| FlattenError::Read { layer, digest: digest.to_string(), source };
        let mut archive = tar::Archive::new(layers.open(i as u32).map_err(read_err)?);
        let mut added: HashSet<ImagePath> = HashSet::new();
        for (index, entry) in archive.entries().map_err(read_err)?.enumerate() {
            crate::interrupt::check().map_err(read_err)?;
            let mut entry = entry.map_err(read_err)?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let hostile =
                |problem| FlattenError::Hostile { layer, digest: digest.to_string(), path: shown.clone(), problem };
            let path = entry_path(&raw).map_err(hostile)?;
            let tree_err =
                |source| FlattenError::Tree { layer, digest: digest.to_string(), path: shown.clone(), source };
            let name = path.file_name().unwrap_or("");
            let parent = || path.parent().unwrap_or_else(ImagePath::root);

            if name == OPAQUE {
                let dir = tree.resolve(&parent(), true).map_err(tree_err)?;
                for below in tree.descendants(&dir) {
                    if !added.iter().any(|a| a.starts_with(&below) || below.starts_with(a)) {
                        tree.remove(&below);
                    }
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                let dir = tree.resolve(&parent(), true).map_err(tree_err)?;
                tree.remove(&dir.join(hidden));
                continue;
            }

            let header = entry.header();
            let mode = header.mode().map_err(read_err)? & 0o7777;
            let kind = header.entry_type();
            let device = || -> io::Result<(u32, u32)> {
                Ok((header.device_major()?.unwrap_or(0), header.device_minor()?.unwrap_or(0)))
            };
            let node = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => Node::File {
                    mode,
                    data: FileData::Layer { layer: i as u32, index: index as u64, size: entry.size() },
                },
                tar::EntryType::Directory => Node::Dir { mode },
                tar::EntryType::Symlink => {
                    let target =
                        entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                    Node::Symlink { target }
                }
                tar::EntryType::Link => {
                    let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                    let target = entry_path(&target).map_err(|_| hostile("is a hard link that leaves the image"))?;
                    let resolved = tree.resolve(&target, false).map_err(tree_err)?;
                    match tree.get(&resolved) {
                        Some(node @ Node::File { .. }) => node.clone(),
                        _ => return Err(hostile("is a hard link to a file that is not in the image")),
                    }
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let (major, minor) = device().map_err(read_err)?;
                    let kind = if kind == tar::EntryType::Char { SpecialKind::Char } else { SpecialKind::Block };
                    Node::Special { kind, mode, major, minor }
                }
                tar::EntryType::Fifo => Node::Special { kind: SpecialKind::Fifo, mode, major: 0, minor: 0 },
                other => {
                    return Err(FlattenError::Unsupported {
                        layer,
                        digest: digest.to_string(),
                        path: shown,
                        kind: other,
                    });
                }
            };
            let attrs = Attrs {
                uid: header.uid().map_err(read_err)? as u32,
                gid: header.gid().map_err(read_err)? as u32,
                xattrs: xattrs(&mut entry).map_err(read_err)?,
            };
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
