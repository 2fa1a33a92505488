//! Verified downloads with a content-addressed cache, for BusyBox and the agent.
//!
//! Blobs live at `<cache>/downloads/sha256/<hex>` and are re-verified on every use; a URL
//! index (`<cache>/downloads/urls/<sha256 of url>`) remembers what a URL last served, so a
//! download without a pinned checksum still works offline once it has been fetched. Writes are
//! temp file + fsync + rename, so concurrent builds and interrupted downloads never leave a
//! partial blob.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::{HashingWriter, Sha256Digest};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Mismatch { url: String, expected: Sha256Digest, actual: Sha256Digest },
    #[error("cannot download {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("download cache {path}: {source}")]
    Cache { path: String, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("no cache directory: set FLEDGE_CACHE_DIR (or HOME) so downloads can be stored")]
    NoCacheDir,
    #[error("download interrupted")]
    Interrupted(#[source] io::Error),
}

/// How to trade freshness against working offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The URL's content never changes (pinned version or checksum): use the cache if it has it.
    CacheFirst,
    /// The URL may move (e.g. `latest`): try the network, fall back to the cache.
    NetworkFirst,
}

pub struct Fetcher {
    root: Option<PathBuf>,
}

impl Fetcher {
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        Self { root: cache_dir.map(|d| d.join("downloads")) }
    }

    fn root(&self) -> Result<&Path, FetchError> {
        self.root.as_deref().ok_or(FetchError::NoCacheDir)
    }

    fn blob_path(&self, digest: &Sha256Digest) -> Result<PathBuf, FetchError> {
        Ok(self.root()?.join("sha256").join(digest.hex()))
    }

    fn index_path(&self, url: &str) -> Result<PathBuf, FetchError> {
        Ok(self.root()?.join("urls").join(Sha256Digest::of_bytes(url.as_bytes()).hex()))
    }

    /// A cached blob that still hashes to `digest`; a corrupt one is deleted.
    fn cached(&self, digest: &Sha256Digest) -> Option<PathBuf> {
        let path = self.blob_path(digest).ok()?;
        let (actual, _) = Sha256Digest::of_reader(File::open(&path).ok()?).ok()?;
        if actual == *digest {
            return Some(path);
        }
        tracing::warn!("removing corrupt cache entry {}", path.display());
        let _ = fs::remove_file(&path);
        None
    }

    fn cached_for_url(&self, url: &str) -> Option<(PathBuf, Sha256Digest)> {
        let text = fs::read_to_string(self.index_path(url).ok()?).ok()?;
        let digest: Sha256Digest = text.parse().ok()?;
        Some((self.cached(&digest)?, digest))
    }

    /// Returns a local file with the content of `url`, verified against `expected` if given.
    pub fn fetch(
        &self,
        url: &str,
        expected: Option<Sha256Digest>,
        policy: Policy,
    ) -> Result<(PathBuf, Sha256Digest), FetchError> {
        if let Some(digest) = expected
            && let Some(path) = self.cached(&digest)
        {
            return Ok((path, digest));
        }
        let remembered = || self.cached_for_url(url).filter(|(_, d)| expected.is_none_or(|e| e == *d));
        if policy == Policy::CacheFirst
            && let Some(hit) = remembered()
        {
            return Ok(hit);
        }
        match self.download(url, expected) {
            Ok(hit) => Ok(hit),
            Err(err @ FetchError::Network { .. }) => match remembered() {
                Some(hit) => {
                    tracing::warn!("{err}; using the copy cached earlier ({})", hit.1);
                    Ok(hit)
                }
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    fn download(&self, url: &str, expected: Option<Sha256Digest>) -> Result<(PathBuf, Sha256Digest), FetchError> {
        let root = self.root()?.to_path_buf();
        let cache_err = |path: &Path, source| FetchError::Cache { path: path.display().to_string(), source };
        let blobs = root.join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| cache_err(&blobs, e))?;
        let net_err = |reason: String| FetchError::Network { url: url.to_string(), reason };

        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .proxy(ureq::Proxy::try_from_env())
            .build()
            .into();
        let mut response = agent.get(url).call().map_err(|e| net_err(e.to_string()))?;
        let mut tmp =
            tempfile::Builder::new().prefix(".download-").tempfile_in(&blobs).map_err(|e| cache_err(&blobs, e))?;
        let mut writer = HashingWriter::new(tmp.as_file_mut());
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        copy_interruptible(&mut reader, &mut writer).map_err(|e| {
            if crate::interrupt::is_interrupt(&e) { FetchError::Interrupted(e) } else { net_err(e.to_string()) }
        })?;
        let (actual, _, file) = writer.finish();
        file.sync_all().map_err(|e| cache_err(tmp.path(), e))?;
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(FetchError::Mismatch { url: url.to_string(), expected, actual });
        }
        let blob = self.blob_path(&actual)?;
        tmp.persist(&blob).map_err(|e| cache_err(&blob, e.error))?;
        self.remember(url, &actual);
        Ok((blob, actual))
    }

    /// Records which blob `url` served; failure only costs offline reuse, so it is a warning.
    fn remember(&self, url: &str, digest: &Sha256Digest) {
        let result = (|| -> io::Result<()> {
            let path = self.index_path(url).map_err(io::Error::other)?;
            let dir = path.parent().expect("index entries live in a directory");
            fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(digest.to_string().as_bytes())?;
            tmp.persist(&path)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!("cannot record {url} in the download cache: {e}");
        }
    }
}

fn copy_interruptible(reader: &mut impl io::Read, writer: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        crate::interrupt::check()?;
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Checks a local file against an optional expected checksum.
pub fn verify_local(path: &Path, expected: Option<Sha256Digest>) -> Result<(), FetchError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let read_err = |source| FetchError::Read { path: path.display().to_string(), source };
    let (actual, _) = Sha256Digest::of_reader(File::open(path).map_err(read_err)?).map_err(read_err)?;
    if actual != expected {
        return Err(FetchError::Mismatch { url: path.display().to_string(), expected, actual });
    }
    Ok(())
}
