//! Derived records: facts computed from a blob that are costly to recompute, kept beside it
//! and keyed by its digest (`derived/<kind>/<hex>`), e.g. the entry list of a layer, so a
//! second build need not decompress the layer twice. A record is a cache: readers treat a
//! missing or unreadable one as absent, writers replace it atomically, and prune removes the
//! records of blobs it removes. Kinds carry a format version in their name.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use super::{Store, StoreError, io_err};
use crate::digest::Sha256Digest;

impl Store {
    fn derived_path(&self, kind: &str, digest: &Sha256Digest) -> PathBuf {
        self.root.join("derived").join(kind).join(digest.hex())
    }

    /// The `kind` record of blob `digest`, if one was written.
    pub fn read_derived(&self, kind: &str, digest: &Sha256Digest) -> Option<Vec<u8>> {
        fs::read(self.derived_path(kind, digest)).ok()
    }

    /// Stores the `kind` record of blob `digest`, replacing any other.
    pub fn write_derived(&self, kind: &str, digest: &Sha256Digest, data: &[u8]) -> Result<(), StoreError> {
        let dest = self.derived_path(kind, digest);
        let dir = dest.parent().expect("derived records live in a directory");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp_dir = self.tmp_dir()?;
        let mut tmp = tempfile::Builder::new().prefix("derived-").tempfile_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        tmp.write_all(data).map_err(io_err(&tmp_dir))?;
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        Ok(())
    }

    /// Removes every derived record whose blob is no longer stored; returns how many.
    pub(super) fn prune_derived(&self) -> Result<usize, StoreError> {
        let root = self.root.join("derived");
        let Ok(kinds) = fs::read_dir(&root) else { return Ok(0) };
        let mut removed = 0;
        for kind in kinds {
            let kind = kind.map_err(io_err(&root))?.path();
            for record in fs::read_dir(&kind).map_err(io_err(&kind))? {
                let path = record.map_err(io_err(&kind))?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let live = format!("sha256:{name}").parse::<Sha256Digest>().is_ok_and(|d| self.has_blob(&d));
                if !live {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_exclusive(Some(dir.path())).unwrap();
        let blob = store.write_bytes(b"layer", None, "layer").unwrap();
        assert_eq!(store.read_derived("entries-v1", &blob), None);
        store.write_derived("entries-v1", &blob, b"[1]").unwrap();
        store.write_derived("entries-v1", &blob, b"[2]").unwrap();
        assert_eq!(store.read_derived("entries-v1", &blob).as_deref(), Some(&b"[2]"[..]));
        assert_eq!(store.prune_derived().unwrap(), 0);
        fs::remove_file(store.blob_path(&blob)).unwrap();
        assert_eq!(store.prune_derived().unwrap(), 1);
        assert_eq!(store.read_derived("entries-v1", &blob), None);
    }
}
