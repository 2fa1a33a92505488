//! An image in the store: its index record, manifest and config.

use anyhow::{Context, Result};

use super::import::import;
use super::pull::pull;
use super::source::ImageSource;
use super::spec::{ImageConfig, Manifest, Platform};
use crate::digest::Sha256Digest;
use crate::progress::Progress;
use crate::store::{ImageRecord, Store};

pub struct StoredImage {
    pub record: ImageRecord,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl StoredImage {
    pub fn load(store: &Store, record: ImageRecord) -> Result<Self> {
        let manifest: Manifest = serde_json::from_slice(&store.read_blob(&record.manifest_digest()?)?)
            .with_context(|| format!("stored manifest of {} is corrupt", record.name))?;
        let config_digest: Sha256Digest = manifest.config.digest.parse().map_err(anyhow::Error::msg)?;
        let config: ImageConfig = serde_json::from_slice(&store.read_blob(&config_digest)?)
            .with_context(|| format!("stored config of {} is corrupt", record.name))?;
        Ok(Self { record, manifest, config })
    }

    /// The image for `source`: a registry image from the store (no network needed) or pulled
    /// into it first; a local layout or archive imported (verified) into the store.
    pub fn resolve(store: &Store, source: &ImageSource, platform: &Platform, progress: &Progress) -> Result<Self> {
        let record = match source {
            ImageSource::Registry(image) => match store.lookup(&image.to_string())? {
                Some(record) => record,
                // Pinned by digest and in the store already (a named build context, or an
                // image stored under another name): content addressing makes it that image.
                None => match image
                    .digest
                    .as_ref()
                    .and_then(|d| d.parse::<Sha256Digest>().ok())
                    .filter(|d| store.has_blob(d))
                {
                    Some(digest) => ImageRecord {
                        name: image.to_string(),
                        digest: digest.to_string(),
                        source: "store".into(),
                        platform: platform.to_string(),
                    },
                    None => pull(image, platform, store, progress)?,
                },
            },
            local => import(local, store, platform, progress)?,
        };
        Self::load(store, record)
    }
}
