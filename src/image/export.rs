//! Writing a stored image as an OCI image layout tarball (`oci-archive`), which skopeo,
//! podman, buildah and BuildKit read, and which `fledge image import` reads back. Entries are
//! in a fixed order with fixed times and owners, so the same image gives the same bytes.

use std::collections::BTreeSet;
use std::io::{self, Write};

use fledge_llb::ImageRef;
use serde_json::json;

use super::spec::OCI_MANIFEST;
use super::stored::StoredImage;
use crate::digest::Sha256Digest;
use crate::store::Store;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Writes `image` as an OCI layout tarball into `out`.
pub fn export(store: &Store, image: &StoredImage, out: impl Write) -> io::Result<()> {
    let manifest_digest: Sha256Digest = image.record.manifest_digest().map_err(io::Error::other)?;
    let manifest_bytes = store.read_blob(&manifest_digest).map_err(io::Error::other)?;
    let tag = ImageRef::parse(&image.record.name).ok().and_then(|r| r.tag).unwrap_or_else(|| "latest".into());
    let media_type =
        if image.manifest.media_type.is_empty() { OCI_MANIFEST.to_string() } else { image.manifest.media_type.clone() };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": manifest_digest.to_string(),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag, "io.fledge.image.name": image.record.name},
        }],
    }))
    .expect("JSON values serialize");

    let mut blobs: BTreeSet<Sha256Digest> = BTreeSet::from([manifest_digest]);
    for d in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
        blobs.insert(d.digest.parse().map_err(io::Error::other)?);
    }
    let mut builder = tar::Builder::new(out);
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    builder.append_data(&mut header(tar::EntryType::Regular, 0o644, layout.len() as u64), "oci-layout", &layout[..])?;
    builder.append_data(&mut header(tar::EntryType::Regular, 0o644, index.len() as u64), "index.json", &index[..])?;
    for dir in ["blobs/", "blobs/sha256/"] {
        builder.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), dir, io::empty())?;
    }
    for digest in blobs {
        let file = store.open_blob(&digest).map_err(io::Error::other)?;
        let size = file.metadata()?.len();
        let mut reader = crate::interrupt::Checked(file);
        builder.append_data(
            &mut header(tar::EntryType::Regular, 0o644, size),
            format!("blobs/sha256/{}", digest.hex()),
            &mut reader,
        )?;
    }
    builder.into_inner()?.flush()
}
