//! The image index: which manifest each image name points at. One small JSON file per name,
//! replaced atomically, so concurrent builds never corrupt each other's entries.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, io_err};
use crate::digest::Sha256Digest;

/// An index entry: `name` (a normalised reference, e.g. `docker.io/library/nginx:alpine`)
/// → the manifest `digest` (of an image manifest, already resolved for a platform).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub digest: String,
    /// Where the image came from (`registry`, `oci-layout:PATH`, `docker-archive:PATH`).
    pub source: String,
    pub platform: String,
}

impl ImageRecord {
    pub fn manifest_digest(&self) -> Result<Sha256Digest, StoreError> {
        self.digest.parse().map_err(|reason| StoreError::CorruptIndex { path: self.name.clone(), reason })
    }
}

impl Store {
    fn index_path(&self, name: &str) -> PathBuf {
        self.root.join("images").join(format!("{}.json", Sha256Digest::of_bytes(name.as_bytes()).hex()))
    }

    /// Points `record.name` at `record.digest`, replacing an older entry.
    pub fn tag(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let path = self.index_path(&record.name);
        let dir = path.parent().expect("index files live in images/");
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
        serde_json::to_writer_pretty(tmp.as_file_mut(), record).map_err(|e| io_err(&path)(e.into()))?;
        tmp.as_file().sync_all().map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        Ok(())
    }

    pub fn lookup(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.index_path(name);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| StoreError::CorruptIndex { path: path.display().to_string(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes the entry for `name`; returns whether there was one.
    pub fn untag(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.index_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every entry, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let data = fs::read(&path).map_err(io_err(&path))?;
                out.push(serde_json::from_slice(&data).map_err(|e| StoreError::CorruptIndex {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?);
            }
        }
        out.sort_by(|a: &ImageRecord, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lookup_list_untag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        let digest = Sha256Digest::of_bytes(b"m").to_string();
        let rec = |name: &str| ImageRecord {
            name: name.into(),
            digest: digest.clone(),
            source: "registry".into(),
            platform: "linux/amd64".into(),
        };
        store.tag(&rec("docker.io/library/b:1")).unwrap();
        store.tag(&rec("docker.io/library/a:1")).unwrap();
        assert_eq!(store.lookup("docker.io/library/a:1").unwrap(), Some(rec("docker.io/library/a:1")));
        let names: Vec<String> = store.images().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["docker.io/library/a:1", "docker.io/library/b:1"]);
        assert!(store.untag("docker.io/library/a:1").unwrap());
        assert!(!store.untag("docker.io/library/a:1").unwrap());
        assert_eq!(store.lookup("docker.io/library/a:1").unwrap(), None);
    }
}
