//! A built image as an OCI image in the store: the layers a Dockerfile build produced,
//! described by a config (the frontend's, completed with `rootfs.diff_ids`) and a manifest,
//! so it can be exported like any stored image. Layer media types come from the blobs
//! themselves (build steps store plain tar; base image layers keep their compression).

use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, Result};
use serde_json::json;

use super::flatten::decompress;
use super::spec::{Manifest, OCI_MANIFEST, Platform};
use super::stored::StoredImage;
use crate::digest::Sha256Digest;
use crate::store::{ImageRecord, Store};

const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The derived-record kind holding a layer blob's diff id (the digest of its tar).
const DIFF_ID_RECORD: &str = "diff-id-v1";

/// Writes the config and manifest of a built image into the store; returns the image,
/// recorded under `name` (not tagged: it stays out of `fledge image list`).
fn store_built(store: &Store, layers: &[Sha256Digest], image: &serde_json::Value, name: &str) -> Result<StoredImage> {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let (media_type, diff_id) = describe(store, layer)?;
        let size = std::fs::metadata(store.blob_path(layer))?.len();
        descriptors.push(json!({"mediaType": media_type, "digest": layer.to_string(), "size": size}));
        diff_ids.push(diff_id.to_string());
    }
    let mut config = image.clone();
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = store.write_bytes(&config_bytes, None, "a built image's config")?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": descriptors,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = store.write_bytes(&manifest_bytes, None, "a built image's manifest")?;
    let platform = Platform::host();
    let record = ImageRecord {
        name: name.to_string(),
        digest: manifest_digest.to_string(),
        source: "build".into(),
        platform: platform.to_string(),
    };
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)?;
    let config = serde_json::from_value(config).context("the frontend's image config")?;
    Ok(StoredImage { record, manifest, config })
}

/// A layer's media type, by the compression its first bytes show.
fn media_type_of(start: &[u8]) -> &'static str {
    match start {
        [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "application/vnd.oci.image.layer.v1.tar+zstd",
        _ => "application/vnd.oci.image.layer.v1.tar",
    }
}

/// A stored layer blob's media type.
pub fn layer_media_type(store: &Store, layer: &Sha256Digest) -> Result<&'static str> {
    let mut start = Vec::with_capacity(4);
    store.open_blob(layer)?.take(4).read_to_end(&mut start)?;
    Ok(media_type_of(&start))
}

/// A layer blob's media type (by its compression) and diff id, remembered per blob.
fn describe(store: &Store, layer: &Sha256Digest) -> Result<(&'static str, Sha256Digest)> {
    let mut reader = BufReader::with_capacity(1 << 20, store.open_blob(layer)?);
    let media_type = media_type_of(reader.fill_buf()?);
    if media_type.ends_with(".tar") {
        return Ok((media_type, *layer));
    }
    if let Some(known) = store.read_derived(DIFF_ID_RECORD, layer).and_then(|b| String::from_utf8(b).ok()?.parse().ok())
    {
        return Ok((media_type, known));
    }
    let tar: Box<dyn Read> = decompress(reader)?;
    let (diff_id, _) = Sha256Digest::of_reader(tar).with_context(|| format!("layer {layer} does not decompress"))?;
    store.write_derived(DIFF_ID_RECORD, layer, diff_id.to_string().as_bytes())?;
    Ok((media_type, diff_id))
}

/// Writes the built image as an OCI image layout tarball at `path` (atomically); returns the
/// manifest's digest.
pub fn write_archive(
    store: &Store,
    layers: &[Sha256Digest],
    image: &serde_json::Value,
    name: &str,
    path: &std::path::Path,
) -> Result<Sha256Digest> {
    let built = store_built(store, layers, image, name)?;
    let mut pending = crate::output::Pending::new(path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, pending.file());
    super::export::export(store, &built, &mut out).with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::flush(&mut out)?;
    drop(out);
    pending.commit()?;
    Ok(built.record.manifest_digest()?)
}
