//! A cache artifact in a local OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/`), e.g. a directory CI keeps between runs or one carried to an air-gapped
//! host. The directory holds the cache and nothing else: an export refuses a layout that lists
//! other manifests. Writers take turns (a lock file, held from the first blob to the end);
//! an export replaces `index.json` atomically and then removes the blobs only the previous
//! cache used, so the directory does not grow without bound. A build reading the directory
//! while another writes it may find a layer gone: that record is then not used (a warning).

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::{ARTIFACT_TYPE, MANIFEST_LIMIT, Place, descriptor};
use crate::digest::{HashingWriter, Sha256Digest};
use crate::image::spec::{Descriptor, Index, Manifest, OCI_INDEX, OCI_MANIFEST};
use crate::progress::Progress;
use crate::store::{Expected, Store};

const LOCK: &str = ".fledge-cache.lock";

pub struct LayoutPlace {
    dir: PathBuf,
    /// Held while this export writes.
    lock: Option<fs::File>,
}

impl LayoutPlace {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, lock: None }
    }

    /// A place to export to, checked before the build: not a layout holding other images.
    pub fn for_export(dir: PathBuf) -> Result<Self> {
        let place = Self::new(dir);
        place.refuse_foreign()?;
        Ok(place)
    }

    fn refuse_foreign(&self) -> Result<()> {
        if let Some(index) = self.index()?
            && index.manifests.iter().any(|m| m.artifact_type.as_deref() != Some(ARTIFACT_TYPE))
        {
            bail!(
                "{} is an OCI layout holding other images: give type=local,dest= a directory of its own",
                self.dir.display()
            );
        }
        Ok(())
    }

    fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// The layout's index, if it has one.
    fn index(&self) -> Result<Option<Index>> {
        let path = self.dir.join("index.json");
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{} is not an OCI index", path.display()))?))
    }

    /// The cache's manifest descriptor in the index.
    fn entry(index: &Index) -> Option<&Descriptor> {
        index.manifests.iter().find(|m| m.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
    }

    /// Takes the writers' lock (once), after checking that the directory is a cache's.
    fn lock(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        fs::create_dir_all(self.dir.join("blobs/sha256"))
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let path = self.dir.join(LOCK);
        let file = fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
        self.refuse_foreign()?;
        self.lock = Some(file);
        Ok(())
    }

    /// The blobs the artifact `manifest` (whose digest is `digest`) uses.
    fn blobs_of(manifest: &Manifest, digest: &str) -> HashSet<String> {
        let mut used: HashSet<String> = manifest.layers.iter().map(|d| d.digest.clone()).collect();
        used.insert(manifest.config.digest.clone());
        used.insert(digest.to_string());
        used
    }

    /// The blobs the cache now in the index uses (none without one).
    fn current_blobs(&mut self) -> Result<HashSet<String>> {
        let Some(index) = self.index()? else { return Ok(HashSet::new()) };
        let Some(entry) = Self::entry(&index) else { return Ok(HashSet::new()) };
        let digest = entry.digest.clone();
        let bytes = self.read(&descriptor(OCI_MANIFEST, &digest.parse().map_err(anyhow::Error::msg)?, entry.size))?;
        Ok(serde_json::from_slice(&bytes).map(|m: Manifest| Self::blobs_of(&m, &digest)).unwrap_or_default())
    }
}

impl Place for LayoutPlace {
    fn manifest(&mut self) -> Result<Option<Vec<u8>>> {
        let Some(index) = self.index()? else { return Ok(None) };
        let entry = Self::entry(&index)
            .with_context(|| format!("{} lists no Fledge build cache ({ARTIFACT_TYPE})", self.dir.display()))?;
        if entry.size > MANIFEST_LIMIT {
            bail!("its manifest is {} bytes, more than a manifest can be", entry.size);
        }
        let manifest = self.read(entry)?;
        if Sha256Digest::of_bytes(&manifest).to_string() != entry.digest {
            bail!("its manifest does not match its digest {}", entry.digest);
        }
        Ok(Some(manifest))
    }

    fn read(&mut self, blob: &Descriptor) -> Result<Vec<u8>> {
        let path = self.blob_path(&blob.digest.parse().map_err(anyhow::Error::msg)?);
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .take(blob.size.saturating_add(1))
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn fetch(&mut self, store: &Store, layer: &Descriptor, _: &Progress) -> Result<()> {
        let digest: Sha256Digest = layer.digest.parse().map_err(anyhow::Error::msg)?;
        if store.has_blob(&digest) {
            return Ok(());
        }
        let path = self.blob_path(&digest);
        let file = fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        // One byte more than it should have is enough to tell it is too long.
        let mut content = file.take(layer.size.saturating_add(1));
        let expected = Expected { digest, size: Some(layer.size) };
        store.write_blob(&mut content, Some(expected), &path.display().to_string())?;
        Ok(())
    }

    fn has(&mut self, digest: &Sha256Digest, size: u64) -> Result<bool> {
        self.lock()?;
        // A blob of the wrong size (a copy cut short) is written again.
        Ok(fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.len() == size))
    }

    fn put(&mut self, digest: &Sha256Digest, _size: u64, content: &mut dyn Read) -> Result<()> {
        self.lock()?;
        let blobs = self.dir.join("blobs/sha256");
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&blobs)?;
        let mut writer = HashingWriter::new(std::io::BufWriter::new(tmp.as_file_mut()));
        std::io::copy(content, &mut writer)?;
        let (actual, _, buffered) = writer.finish();
        buffered.into_inner().map_err(|e| e.into_error())?;
        if actual != *digest {
            bail!("blob {digest} read back as {actual}");
        }
        tmp.persist(self.blob_path(digest))?;
        Ok(())
    }

    fn commit(&mut self, manifest: &[u8]) -> Result<()> {
        self.lock()?;
        let previous = self.current_blobs()?;
        let digest = Sha256Digest::of_bytes(manifest);
        self.put(&digest, manifest.len() as u64, &mut &manifest[..])?;
        fs::write(self.dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut entry = descriptor(OCI_MANIFEST, &digest, manifest.len() as u64);
        entry.artifact_type = Some(ARTIFACT_TYPE.into());
        let index = Index { schema_version: 2, media_type: OCI_INDEX.into(), manifests: vec![entry] };
        let mut tmp = tempfile::Builder::new().prefix(".index-").tempfile_in(&self.dir)?;
        tmp.write_all(&serde_json::to_vec(&index)?)?;
        tmp.persist(self.dir.join("index.json"))?;
        // Only what the previous cache used and this one does not, and temporary files that
        // a writer which stopped half-way left (this one holds the lock: nobody else writes).
        let now = Self::blobs_of(&serde_json::from_slice(manifest)?, &digest.to_string());
        for old in previous.difference(&now) {
            let path = self.blob_path(&old.parse().map_err(anyhow::Error::msg)?);
            let _ = fs::remove_file(path);
        }
        let blobs = self.dir.join("blobs/sha256");
        for entry in fs::read_dir(&blobs)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}
