//! The content-addressed store under `$FLEDGE_STATE_DIR/store`:
//!
//! ```text
//! store/
//!   lock                 flock: shared for readers and writers of blobs, exclusive for prune
//!   blobs/sha256/<hex>   immutable content, verified before it is renamed into place
//!   images/<hex>.json    image index: one file per name (hex = sha256 of the name)
//!   derived/<kind>/<hex> caches computed from blob <hex> (e.g. a layer's entry list)
//!   tmp/                 blobs being written (removed on failure; cleared by prune)
//! ```
//!
//! Blobs are written to `tmp/`, hashed while streaming, checked against the expected digest,
//! fsynced and renamed, so a blob under `blobs/` always has the content its name says, and a
//! refused or interrupted write leaves nothing behind. Any number of builds may share the
//! store: blob writes are idempotent, index entries are replaced atomically, and only
//! `prune` takes the lock exclusively.

mod derived;
mod index;
mod prune;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::digest::{HashingWriter, Sha256Digest};

pub use index::ImageRecord;
pub use prune::Pruned;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} has digest {actual}, expected {expected}; it was not stored")]
    DigestMismatch { what: String, expected: Sha256Digest, actual: Sha256Digest },
    #[error("{what} is {actual} bytes, expected {expected}; it was not stored")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no state directory: set FLEDGE_STATE_DIR (or HOME)")]
    NoStateDir,
    #[error("blob {0} is not in the store")]
    MissingBlob(Sha256Digest),
    #[error("image index entry {path} is corrupt: {reason}")]
    CorruptIndex { path: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.display().to_string(), source }
}

/// What a blob must be, when the caller knows (from a manifest or descriptor).
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub digest: Sha256Digest,
    pub size: Option<u64>,
}

pub struct Store {
    root: PathBuf,
}

/// The store locks this process holds, by store root. A process keeps its lock from its
/// first open of a store until it exits, so a `prune` (which needs the lock exclusively)
/// never runs between two phases of one build, e.g. after its steps stored their layers and
/// before it packs them.
static LEASES: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

impl Store {
    /// Opens (creating if needed) the store in `state_dir`; this process shares it with others
    /// from now until it exits.
    pub fn open(state_dir: Option<&Path>) -> Result<Self, StoreError> {
        Self::open_with(state_dir, false)
    }

    /// Opens the store for this process alone (waits for every other process using it to
    /// exit; an earlier shared open of this process is turned into the exclusive one).
    pub fn open_exclusive(state_dir: Option<&Path>) -> Result<Self, StoreError> {
        Self::open_with(state_dir, true)
    }

    fn open_with(state_dir: Option<&Path>, exclusive: bool) -> Result<Self, StoreError> {
        let root = state_dir.ok_or(StoreError::NoStateDir)?.join("store");
        for dir in ["blobs/sha256", "images", "tmp"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        let lock_path = root.join("lock");
        let mut leases = LEASES.lock().unwrap_or_else(|e| e.into_inner());
        let held = leases.iter().position(|(r, _)| *r == root);
        let lock = match held {
            Some(i) => &leases[i].1,
            None => {
                let lock = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(io_err(&lock_path))?;
                lock.lock_shared().map_err(io_err(&lock_path))?;
                leases.push((root.clone(), lock));
                &leases.last().expect("just pushed").1
            }
        };
        if exclusive {
            lock.lock().map_err(io_err(&lock_path))?;
        }
        Ok(Self { root })
    }

    /// This process's directory for temporary files of the store (see `crate::scratch`):
    /// on the store's filesystem, so a finished file is renamed into place.
    pub fn tmp_dir(&self) -> Result<PathBuf, StoreError> {
        let parent = self.root.join("tmp");
        crate::scratch::dir(&parent).map_err(io_err(&parent))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Sha256Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Checks that the stored blob `digest` has the size a descriptor gives it (a blob
    /// already in the store is checked against every descriptor that names it).
    pub fn check_size(&self, digest: &Sha256Digest, expected: u64, what: &str) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        let actual = fs::metadata(&path).map_err(io_err(&path))?.len();
        if actual != expected {
            return Err(StoreError::SizeMismatch { what: what.to_string(), expected, actual });
        }
        Ok(())
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, digest: &Sha256Digest) -> Result<File, StoreError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound { StoreError::MissingBlob(*digest) } else { io_err(&path)(e) }
        })
    }

    /// Reads a whole (small) blob, e.g. a manifest or config.
    pub fn read_blob(&self, digest: &Sha256Digest) -> Result<Vec<u8>, StoreError> {
        let mut data = Vec::new();
        self.open_blob(digest)?.read_to_end(&mut data).map_err(io_err(&self.blob_path(digest)))?;
        Ok(data)
    }

    /// Streams `reader` into the store, verifying it against `expected` (if given) before it
    /// becomes visible. `what` names the content in errors. Returns the digest and size.
    pub fn write_blob(
        &self,
        reader: &mut dyn Read,
        expected: Option<Expected>,
        what: &str,
    ) -> Result<(Sha256Digest, u64), StoreError> {
        // Always read the whole stream and verify it, even when the blob is already stored
        // (another process may have stored it meanwhile): a caller scanning the same bytes
        // (the prescan) must see all of them, and a descriptor's size is checked whatever the
        // store holds. Renaming over an existing blob replaces it with the same bytes.
        let tmp_dir = self.tmp_dir()?;
        let mut tmp = tempfile::Builder::new().prefix("blob-").tempfile_in(&tmp_dir).map_err(io_err(&tmp_dir))?;
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()));
        copy(reader, &mut writer).map_err(|source| StoreError::Io { path: what.to_string(), source })?;
        let (actual, size, buffered) = writer.finish();
        let file = buffered.into_inner().map_err(|e| io_err(&tmp_dir)(e.into_error()))?;
        if let Some(e) = expected {
            if e.digest != actual {
                return Err(StoreError::DigestMismatch { what: what.to_string(), expected: e.digest, actual });
            }
            if let Some(expected_size) = e.size
                && expected_size != size
            {
                return Err(StoreError::SizeMismatch { what: what.to_string(), expected: expected_size, actual: size });
            }
        }
        file.sync_all().map_err(io_err(&tmp_dir))?;
        let dest = self.blob_path(&actual);
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        Ok((actual, size))
    }

    /// Stores bytes already in memory (manifests, configs).
    pub fn write_bytes(&self, data: &[u8], expected: Option<Expected>, what: &str) -> Result<Sha256Digest, StoreError> {
        Ok(self.write_blob(&mut &data[..], expected, what)?.0)
    }
}

fn copy(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        crate::interrupt::check()?;
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_before_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        let good = Sha256Digest::of_bytes(b"hello");
        let d = store.write_bytes(b"hello", Some(Expected { digest: good, size: Some(5) }), "greeting").unwrap();
        assert_eq!(d, good);
        assert_eq!(store.read_blob(&good).unwrap(), b"hello");

        let err = store
            .write_bytes(
                b"tampered",
                Some(Expected { digest: Sha256Digest::of_bytes(b"other"), size: None }),
                "layer x",
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&Sha256Digest::of_bytes(b"tampered")));
        assert_eq!(fs::read_dir(store.tmp_dir().unwrap()).unwrap().count(), 1, "no temporary file left but the lock");
        assert_eq!(fs::read_dir(store.root().join("blobs/sha256")).unwrap().count(), 1);
    }

    #[test]
    fn size_is_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        let err = store
            .write_bytes(b"abc", Some(Expected { digest: Sha256Digest::of_bytes(b"abc"), size: Some(4) }), "cfg")
            .unwrap_err();
        assert!(matches!(err, StoreError::SizeMismatch { expected: 4, actual: 3, .. }), "{err}");
    }
}
