//! Layer content against the config's `rootfs.diff_ids`: the digest of each layer's
//! uncompressed tar must be the one the image config names at its position, or the config
//! describes another filesystem than the layers build (and a signed config proves nothing).
//! Checked on every pull and import, whatever the store already holds; the uncompressed
//! digest of a blob is computed once (while it downloads, or in one streaming pass) and kept
//! as a derived record of the blob.

use std::io::{self, BufRead, BufReader, Read};

use super::flatten::decompress;
use super::spec::{ImageConfig, Manifest};
use crate::digest::{HashingWriter, Sha256Digest};
use crate::store::{Store, StoreError};

/// The derived-record kind holding a layer blob's uncompressed digest.
pub(super) const DIFF_ID_RECORD: &str = "layer-diff-id-v1";

#[derive(Debug, thiserror::Error)]
pub enum DiffIdError {
    #[error(
        "the manifest lists {layers} layers but the config's rootfs.diff_ids lists {diff_ids}; nothing was recorded\n  = help: the image is malformed: rebuild or re-export it"
    )]
    Count { layers: usize, diff_ids: usize },
    #[error(
        "layer {layer} ({digest}) unpacks to content with digest {actual}, but the config's rootfs.diff_ids[{index}] is {claimed}; nothing was recorded\n  = help: the config does not describe these layers: rebuild or re-export the image"
    )]
    Mismatch { layer: usize, index: usize, digest: Sha256Digest, actual: Sha256Digest, claimed: String },
    #[error("layer {layer} ({digest}) cannot be decompressed: {source}")]
    Read { layer: usize, digest: Sha256Digest, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A reader that hashes what passes through it.
pub(super) struct Hashing<R> {
    inner: R,
    hasher: HashingWriter<io::Sink>,
}

impl<R: Read> Hashing<R> {
    pub(super) fn new(inner: R) -> Self {
        Self { inner, hasher: HashingWriter::new(io::sink()) }
    }

    /// Reads what is left and returns the digest of everything read.
    pub(super) fn finish(mut self) -> io::Result<Sha256Digest> {
        io::copy(&mut self.inner, &mut self.hasher)?;
        Ok(self.hasher.finish().0)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        io::Write::write_all(&mut self.hasher, &buf[..n])?;
        Ok(n)
    }
}

/// [`check`] for the stored image whose manifest is `manifest`.
pub fn check_stored(store: &Store, manifest: &Sha256Digest) -> Result<(), DiffIdError> {
    let corrupt = |what: &str, reason: String| StoreError::CorruptIndex { path: format!("{what} {manifest}"), reason };
    let manifest: Manifest =
        serde_json::from_slice(&store.read_blob(manifest)?).map_err(|e| corrupt("manifest", e.to_string()))?;
    let config_digest: Sha256Digest = manifest.config.digest.parse().map_err(|e| corrupt("config of", e))?;
    let config: ImageConfig =
        serde_json::from_slice(&store.read_blob(&config_digest)?).map_err(|e| corrupt("config of", e.to_string()))?;
    check(store, &manifest, &config)
}

/// Checks every layer of `manifest` against `config`'s diff_ids (a config without any, as
/// some old images have, is not checked).
pub fn check(store: &Store, manifest: &Manifest, config: &ImageConfig) -> Result<(), DiffIdError> {
    let claimed = &config.rootfs.diff_ids;
    if claimed.is_empty() {
        return Ok(());
    }
    if claimed.len() != manifest.layers.len() {
        return Err(DiffIdError::Count { layers: manifest.layers.len(), diff_ids: claimed.len() });
    }
    for (index, (layer, claimed)) in manifest.layers.iter().zip(claimed).enumerate() {
        let digest: Sha256Digest = layer
            .digest
            .parse()
            .map_err(|reason| StoreError::CorruptIndex { path: format!("layer {}", layer.digest), reason })?;
        let actual = diff_id(store, &digest).map_err(|source| match source {
            Failure::Store(e) => DiffIdError::Store(e),
            Failure::Read(source) => DiffIdError::Read { layer: index + 1, digest, source },
        })?;
        if claimed.parse::<Sha256Digest>().ok() != Some(actual) {
            return Err(DiffIdError::Mismatch { layer: index + 1, index, digest, actual, claimed: claimed.clone() });
        }
    }
    Ok(())
}

enum Failure {
    Store(StoreError),
    Read(io::Error),
}

/// The uncompressed digest of layer blob `digest`: its own digest for a plain tar, else from
/// its record, else computed in one streaming pass and recorded.
fn diff_id(store: &Store, digest: &Sha256Digest) -> Result<Sha256Digest, Failure> {
    if let Some(record) = store.read_derived(DIFF_ID_RECORD, digest)
        && let Some(recorded) = std::str::from_utf8(&record).ok().and_then(|r| r.parse().ok())
    {
        return Ok(recorded);
    }
    let mut reader = BufReader::with_capacity(1 << 20, store.open_blob(digest).map_err(Failure::Store)?);
    let compressed =
        matches!(reader.fill_buf().map_err(Failure::Read)?, [0x1f, 0x8b, ..] | [0x28, 0xb5, 0x2f, 0xfd, ..]);
    if !compressed {
        return Ok(*digest);
    }
    let stream = decompress(reader).map_err(Failure::Read)?;
    let (actual, _) = Sha256Digest::of_reader(crate::interrupt::Checked(stream)).map_err(Failure::Read)?;
    record(store, digest, &actual);
    Ok(actual)
}

/// Keeps `diff_id` as the record of blob `digest` (a lost record is only recomputed).
pub(super) fn record(store: &Store, digest: &Sha256Digest, diff_id: &Sha256Digest) {
    if let Err(e) = store.write_derived(DIFF_ID_RECORD, digest, diff_id.to_string().as_bytes()) {
        tracing::debug!("cannot record the diff_id of layer {digest}: {e}");
    }
}
