//! Layers travel compressed. Build steps store their layers as plain tar; a cache carries each
//! as a zstd (or gzip) blob annotated with the plain layer's digest, and an import
//! decompresses it back into the store, checking that digest. The compressed copy is made
//! once per layer: it is kept in the store and remembered by a derived record (until a prune
//! removes it).

use std::collections::BTreeMap;
use std::io::BufReader;

use anyhow::{Context, Result, bail};

use super::descriptor;
use crate::compress::Encoder;
use crate::config::{Compression, Compressor};
use crate::digest::Sha256Digest;
use crate::image::spec::Descriptor;
use crate::store::{Expected, Store};

/// The annotations naming the plain layer a compressed blob carries, and its size (which
/// bounds the decompression).
pub const LAYER_ANNOTATION: &str = "dev.fledge.cache.layer";
const SIZE_ANNOTATION: &str = "dev.fledge.cache.layer.size";
/// Derived record of a plain layer: its compressed copy (`zstd sha256:…`).
const COMPRESSED_RECORD: &str = "cache-compressed-v1";
const PLAIN_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How a cache carries plain layers: `compression=` (BuildKit's option), zstd by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn parse(value: Option<&str>) -> Result<Self> {
        Ok(match value {
            None | Some("zstd") => Self::Zstd,
            Some("gzip") => Self::Gzip,
            Some("uncompressed") => Self::Uncompressed,
            Some(other) => bail!("compression={other}: expected zstd (the default), gzip or uncompressed"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Uncompressed => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// The descriptor of the blob that carries `layer`: the layer itself when it is compressed
/// already or `compression` says so, else its compressed copy (made now if there is none).
pub fn carried(store: &Store, layer: &Sha256Digest, compression: LayerCompression) -> Result<Descriptor> {
    let media_type = crate::image::built::layer_media_type(store, layer)?;
    let size = |digest: &Sha256Digest| -> Result<u64> {
        Ok(std::fs::metadata(store.blob_path(digest)).with_context(|| format!("layer {digest}"))?.len())
    };
    if media_type != PLAIN_TAR || compression == LayerCompression::Uncompressed {
        return Ok(descriptor(media_type, layer, size(layer)?));
    }
    let remembered = store.read_derived(COMPRESSED_RECORD, layer).and_then(|record| {
        let text = String::from_utf8(record).ok()?;
        let (name, digest) = text.split_once(' ')?;
        let digest: Sha256Digest = digest.parse().ok()?;
        (name == compression.name() && store.has_blob(&digest)).then_some(digest)
    });
    let compressed = match remembered {
        Some(digest) => digest,
        None => {
            let digest = compress(store, layer, compression)?;
            store.write_derived(COMPRESSED_RECORD, layer, format!("{} {digest}", compression.name()).as_bytes())?;
            digest
        }
    };
    let mut carried = descriptor(&format!("{PLAIN_TAR}+{}", compression.name()), &compressed, size(&compressed)?);
    carried.annotations = BTreeMap::from([
        (LAYER_ANNOTATION.to_string(), layer.to_string()),
        (SIZE_ANNOTATION.to_string(), size(layer)?.to_string()),
    ]);
    Ok(carried)
}

/// Compresses blob `layer` into a new blob, streaming (a thread compresses into a pipe the
/// store reads from).
fn compress(store: &Store, layer: &Sha256Digest, compression: LayerCompression) -> Result<Sha256Digest> {
    let compressor = match compression {
        LayerCompression::Gzip => Compression { compressor: Compressor::Gzip, level: Some(6) },
        _ => Compression { compressor: Compressor::Zstd, level: Some(3) },
    };
    let mut plain = store.open_blob(layer)?;
    let (mut compressed, into) = std::io::pipe()?;
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut encoder = Encoder::new(compressor, into)?;
            std::io::copy(&mut plain, &mut encoder)?;
            encoder.finish().map(drop)
        });
        let stored = store.write_blob(&mut compressed, None, &format!("compressed {layer}"));
        drop(compressed);
        let written = writer.join().map_err(|_| anyhow::anyhow!("compressing {layer} failed (panic)"))?;
        // The store's error first (a full disk, say: the writer then only saw the pipe
        // close). A blob stored from a writer that failed is cut short; nothing refers to it
        // and a prune removes it.
        let (digest, _) = stored?;
        written.with_context(|| format!("compressing {layer}"))?;
        Ok(digest)
    })
}

/// The plain layer a blob stands for: the blob itself, or (when annotated) the layer named
/// by its annotation.
pub fn layer_of(blob: &Descriptor) -> Result<Sha256Digest> {
    blob.annotations.get(LAYER_ANNOTATION).unwrap_or(&blob.digest).parse().map_err(anyhow::Error::msg)
}

/// After a fetch of `blob`: the plain layer it carries, decompressed into the store (at most
/// the annotated size) and checked against the annotated digest; the blob is then known as
/// that layer's compressed copy.
pub fn arrived(store: &Store, blob: &Descriptor) -> Result<Sha256Digest> {
    let digest: Sha256Digest = blob.digest.parse().map_err(anyhow::Error::msg)?;
    if !blob.annotations.contains_key(LAYER_ANNOTATION) {
        return Ok(digest);
    }
    let layer = layer_of(blob)?;
    let size: u64 = blob
        .annotations
        .get(SIZE_ANNOTATION)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("blob {digest} does not say the size of the layer it carries"))?;
    let plain = crate::image::flatten::decompress(BufReader::with_capacity(1 << 20, store.open_blob(&digest)?))?;
    let mut bounded = std::io::Read::take(plain, size.saturating_add(1));
    let expected = Expected { digest: layer, size: Some(size) };
    store.write_blob(&mut bounded, Some(expected), &format!("cache layer {layer}"))?;
    let name = match crate::image::built::layer_media_type(store, &digest)? {
        media if media.ends_with("+gzip") => "gzip",
        _ => "zstd",
    };
    store.write_derived(COMPRESSED_RECORD, &layer, format!("{name} {digest}").as_bytes())?;
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_travels_compressed_and_arrives_plain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_exclusive(Some(dir.path())).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let data = vec![b'x'; 100_000];
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "big.txt", &data[..]).unwrap();
        let layer = store.write_bytes(&tar.into_inner().unwrap(), None, "layer").unwrap();
        for compression in [LayerCompression::Zstd, LayerCompression::Gzip] {
            let blob = carried(&store, &layer, compression).unwrap();
            assert_eq!(blob.annotations[LAYER_ANNOTATION], layer.to_string());
            assert!(blob.size < 10_000, "{compression:?} compresses: {}", blob.size);
            assert_eq!(carried(&store, &layer, compression).unwrap().digest, blob.digest, "made once");
            // Another store receives the compressed blob and gets the plain layer back.
            let other_dir = tempfile::tempdir().unwrap();
            let other = Store::open_exclusive(Some(other_dir.path())).unwrap();
            let bytes = store.read_blob(&blob.digest.parse().unwrap()).unwrap();
            other.write_bytes(&bytes, None, "compressed").unwrap();
            assert_eq!(arrived(&other, &blob).unwrap(), layer);
            assert_eq!(other.read_blob(&layer).unwrap(), store.read_blob(&layer).unwrap());
        }
        let plain = carried(&store, &layer, LayerCompression::Uncompressed).unwrap();
        assert_eq!(plain.digest, layer.to_string());
        assert!(plain.annotations.is_empty());
        // A blob that lies about its layer is refused.
        let mut liar = carried(&store, &layer, LayerCompression::Zstd).unwrap();
        let other_layer = store.write_bytes(b"not the layer", None, "other").unwrap();
        liar.annotations.insert(LAYER_ANNOTATION.into(), other_layer.to_string());
        let other_dir = tempfile::tempdir().unwrap();
        let other = Store::open_exclusive(Some(other_dir.path())).unwrap();
        other.write_bytes(&store.read_blob(&liar.digest.parse().unwrap()).unwrap(), None, "c").unwrap();
        assert!(arrived(&other, &liar).is_err());
    }
}
