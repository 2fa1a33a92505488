//! Builds OCI image layouts for tests from real files: layers are tar streams made here
//! (gzip-compressed), with whatever entries a test needs (whiteouts, links, xattrs).

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use sha2::Digest;

pub fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// One tar entry of a test layer.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// A device node or fifo.
    Special(&'a str, tar::EntryType, u32, u32),
    /// A hard link to an earlier entry.
    HardLink(&'a str, &'a str),
    /// A file with an owner and xattrs.
    Owned {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
        uid: u64,
        gid: u64,
        xattrs: &'a [(&'a str, &'a [u8])],
    },
}

/// A tar layer whose single entry has a raw (possibly hostile) name, bypassing the tar
/// crate's own path checks.
pub fn raw_name_layer(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// An uncompressed tar layer.
pub fn tar_layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                builder.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::File(path, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            Entry::Special(path, kind, major, minor) => {
                h.set_entry_type(*kind);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                builder.append_data(&mut h, path, &[][..]).unwrap();
            }
            Entry::HardLink(path, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                h.set_size(0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            Entry::Owned { path, mode, data, uid, gid, xattrs } => {
                let keys: Vec<String> = xattrs.iter().map(|(k, _)| format!("SCHILY.xattr.{k}")).collect();
                builder
                    .append_pax_extensions(keys.iter().map(String::as_str).zip(xattrs.iter().map(|(_, v)| *v)))
                    .unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, *data).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// A gzip-compressed tar archive (for ADD to unpack).
pub fn tar_gz(entries: &[Entry<'_>]) -> Vec<u8> {
    gzip(&tar_layer(entries))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn put_blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256(data);
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// Writes one image (config + gzip layers) into `layout`; returns its manifest descriptor.
pub fn add_image(layout: &Path, arch: &str, layers: &[Vec<u8>], run_config: Value) -> Value {
    add_image_as(layout, arch, layers, run_config, true)
}

/// [`add_image`] with uncompressed layers (a big layer costs no compression time).
pub fn add_plain_image(layout: &Path, layers: &[Vec<u8>]) -> Value {
    add_image_as(layout, "amd64", layers, json!({}), false)
}

fn add_image_as(layout: &Path, arch: &str, layers: &[Vec<u8>], run_config: Value, compress: bool) -> Value {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let diff_ids: Vec<String> = layers.iter().map(|l| format!("sha256:{}", sha256(l))).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| match compress {
            true => {
                let gz = gzip(l);
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put_blob(layout, &gz), "size": gz.len()})
            }
            false => json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": put_blob(layout, l), "size": l.len()}),
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(layout, &config), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put_blob(layout, &manifest), "size": manifest.len(), "platform": {"architecture": arch, "os": "linux"}})
}

/// Writes `index.json` naming `manifests` under `tag` (one entry, or a nested index for
/// several platforms).
pub fn finish_layout(layout: &Path, tag: &str, manifests: Vec<Value>) -> String {
    let top = if manifests.len() == 1 {
        manifests.into_iter().next().unwrap()
    } else {
        let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})).unwrap();
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put_blob(layout, &index), "size": index.len()})
    };
    let mut top = top;
    top["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    let digest = top["digest"].as_str().unwrap().to_string();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).unwrap(),
    )
    .unwrap();
    digest
}
