//! Garbage collection: blobs no image in the index refers to (through its manifest: the
//! config and layers) are deleted, with the store locked exclusively so no build is using it.
//! That includes the layers of build steps (their cache records then miss, and the steps run
//! again) and the base images build VMs attach (`base-images/`, made again on demand). Cache
//! mount volumes (`cache-mounts/`) are kept: they are the caches builds asked for.

use std::collections::HashSet;
use std::fs;

use super::{Store, StoreError, io_err};
use crate::digest::Sha256Digest;

/// What a prune removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub blobs: usize,
    pub bytes: u64,
}

#[derive(serde::Deserialize)]
struct Refs {
    #[serde(default)]
    config: Option<Ref>,
    #[serde(default)]
    layers: Vec<Ref>,
}

#[derive(serde::Deserialize)]
struct Ref {
    digest: String,
}

impl Store {
    /// Deletes unreferenced blobs and leftover temporary files. Call on a store opened with
    /// [`Store::open_exclusive`].
    pub fn prune(&self) -> Result<Pruned, StoreError> {
        let mut keep: HashSet<Sha256Digest> = HashSet::new();
        for record in self.images()? {
            let manifest = record.manifest_digest()?;
            keep.insert(manifest);
            let Ok(bytes) = self.read_blob(&manifest) else {
                tracing::warn!("{}: its manifest {manifest} is missing from the store", record.name);
                continue;
            };
            let refs: Refs = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::CorruptIndex { path: record.name.clone(), reason: e.to_string() })?;
            for r in refs.config.iter().chain(&refs.layers) {
                if let Ok(d) = r.digest.parse() {
                    keep.insert(d);
                }
            }
        }
        let mut pruned = Pruned::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err(&blobs))? {
            let path = entry.map_err(io_err(&blobs))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let referenced = format!("sha256:{name}").parse::<Sha256Digest>().is_ok_and(|d| keep.contains(&d));
            if !referenced {
                pruned.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(io_err(&path))?;
                pruned.blobs += 1;
            }
        }
        self.prune_derived()?;
        let bases = self.root.join("base-images");
        for entry in fs::read_dir(&bases).into_iter().flatten() {
            let path = entry.map_err(io_err(&bases))?.path();
            pruned.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let tmp = self.root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            let _ = fs::remove_file(&path);
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ImageRecord;
    use super::*;

    #[test]
    fn keeps_what_images_use_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_exclusive(Some(dir.path())).unwrap();
        let layer = store.write_bytes(b"layer", None, "layer").unwrap();
        let config = store.write_bytes(b"{}", None, "config").unwrap();
        let orphan = store.write_bytes(b"orphan", None, "orphan").unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":2}},"layers":[{{"digest":"{layer}","size":5}}]}}"#
        );
        let m = store.write_bytes(manifest.as_bytes(), None, "manifest").unwrap();
        store
            .tag(&ImageRecord {
                name: "x".into(),
                digest: m.to_string(),
                source: "test".into(),
                platform: "linux/amd64".into(),
            })
            .unwrap();
        assert_eq!(store.prune().unwrap(), Pruned { blobs: 1, bytes: 6 });
        assert!(!store.has_blob(&orphan) && store.has_blob(&layer) && store.has_blob(&config) && store.has_blob(&m));
        store.untag("x").unwrap();
        // A build VM's base image goes too; it is made again when needed.
        std::fs::create_dir_all(dir.path().join("store/base-images")).unwrap();
        std::fs::write(dir.path().join("store/base-images/a.squashfs"), b"sq").unwrap();
        assert_eq!(store.prune().unwrap(), Pruned { blobs: 3, bytes: 5 + 2 + 2 + manifest.len() as u64 });
        assert!(!dir.path().join("store/base-images/a.squashfs").exists());
    }
}
