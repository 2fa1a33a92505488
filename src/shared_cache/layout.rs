//! A cache artifact in a local OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/`), e.g. a directory CI keeps between runs or one carried to an air-gapped
//! host. An export replaces `index.json` atomically and then removes the blobs the new
//! artifact does not use, so the directory holds one cache and does not grow without bound.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE, Place};
use crate::digest::Sha256Digest;
use crate::image::spec::Descriptor;
use crate::progress::Progress;
use crate::store::{Expected, Store};

pub struct LayoutPlace {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    manifests: Vec<IndexEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    artifact_type: Option<String>,
}

impl LayoutPlace {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let digest: Sha256Digest = digest.parse().map_err(anyhow::Error::msg)?;
        Ok(self.dir.join("blobs/sha256").join(digest.hex()))
    }

    /// Writes `content` as blob `digest` (through a temporary file, checked, then renamed).
    fn write_blob(&self, digest: &Sha256Digest, content: &mut dyn Read) -> Result<()> {
        let blobs = self.dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(&blobs)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = content.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
        }
        let actual = Sha256Digest(hasher.finalize().into());
        if actual != *digest {
            bail!("blob {digest} read back as {actual}");
        }
        tmp.persist(blobs.join(digest.hex()))?;
        Ok(())
    }
}

impl Place for LayoutPlace {
    fn manifest(&mut self) -> Result<Option<Vec<u8>>> {
        let index_path = self.dir.join("index.json");
        let bytes = match fs::read(&index_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", index_path.display())),
        };
        let index: Index =
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not an OCI index", index_path.display()))?;
        let entry = index
            .manifests
            .iter()
            .find(|m| m.artifact_type.as_deref() == Some(ARTIFACT_TYPE))
            .with_context(|| format!("{} lists no Fledge build cache ({ARTIFACT_TYPE})", index_path.display()))?;
        let manifest = self.read(&Descriptor {
            media_type: entry.media_type.clone(),
            digest: entry.digest.clone(),
            size: entry.size,
            platform: None,
            annotations: Default::default(),
        })?;
        if Sha256Digest::of_bytes(&manifest).to_string() != entry.digest {
            bail!("its manifest does not match its digest {}", entry.digest);
        }
        Ok(Some(manifest))
    }

    fn read(&mut self, blob: &Descriptor) -> Result<Vec<u8>> {
        let path = self.blob_path(&blob.digest)?;
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .take(blob.size + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn fetch(&mut self, store: &Store, layer: &Descriptor, _: &Progress) -> Result<()> {
        let digest: Sha256Digest = layer.digest.parse().map_err(anyhow::Error::msg)?;
        if store.has_blob(&digest) {
            return Ok(());
        }
        let path = self.blob_path(&layer.digest)?;
        let mut file = fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let expected = Expected { digest, size: Some(layer.size) };
        store.write_blob(&mut file, Some(expected), &path.display().to_string())?;
        Ok(())
    }

    fn has(&mut self, digest: &Sha256Digest) -> Result<bool> {
        Ok(self.blob_path(&digest.to_string())?.exists())
    }

    fn put(&mut self, digest: &Sha256Digest, _size: u64, content: &mut dyn Read) -> Result<()> {
        self.write_blob(digest, content)
    }

    fn commit(&mut self, manifest: &[u8]) -> Result<()> {
        let digest = Sha256Digest::of_bytes(manifest);
        self.write_blob(&digest, &mut &manifest[..])?;
        fs::write(self.dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = Index {
            schema_version: 2,
            manifests: vec![IndexEntry {
                media_type: MANIFEST_MEDIA_TYPE.into(),
                digest: digest.to_string(),
                size: manifest.len() as u64,
                artifact_type: Some(ARTIFACT_TYPE.into()),
            }],
        };
        let mut tmp = tempfile::Builder::new().prefix(".index-").tempfile_in(&self.dir)?;
        tmp.write_all(&serde_json::to_vec(&index)?)?;
        tmp.persist(self.dir.join("index.json"))?;
        self.remove_unused(manifest, &digest)
    }
}

impl LayoutPlace {
    /// Removes the blobs (and leftover temporary files) that the artifact `manifest` does
    /// not use.
    fn remove_unused(&self, manifest: &[u8], digest: &Sha256Digest) -> Result<()> {
        let parsed: super::CacheManifest = serde_json::from_slice(manifest)?;
        let mut used: HashSet<String> = parsed.layers.iter().map(|d| d.digest.clone()).collect();
        used.insert(parsed.config.digest);
        used.insert(digest.to_string());
        let blobs = self.dir.join("blobs/sha256");
        for entry in fs::read_dir(&blobs)? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !used.contains(&format!("sha256:{name}")) {
                fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }
}
