//! A cache artifact in a registry repository, under a tag.

use std::io::Read;

use anyhow::{Context, Result, bail};
use fledge_llb::ImageRef;

use super::Place;
use crate::digest::Sha256Digest;
use crate::image::registry::{RegistryError, Session};
use crate::image::spec::Descriptor;
use crate::progress::Progress;
use crate::store::Store;

pub struct RegistryPlace {
    image: ImageRef,
    tag: String,
    session: Session,
}

impl RegistryPlace {
    pub fn new(flag: &str, reference: &str) -> Result<Self> {
        let image = ImageRef::parse(reference).map_err(|e| anyhow::anyhow!("{flag} ref={reference}: {e}"))?;
        if image.digest.is_some() {
            bail!(
                "{flag} ref={reference}: a cache is written and read by tag, e.g. ref={}/{}:cache",
                image.registry,
                image.repository
            );
        }
        let tag = image.tag.clone().unwrap_or_else(|| "latest".into());
        let session = Session::new(&image)?;
        Ok(Self { image, tag, session })
    }
}

impl Place for RegistryPlace {
    fn manifest(&mut self) -> Result<Option<Vec<u8>>> {
        match self.session.manifest(&self.tag) {
            Ok((bytes, _)) => Ok(Some(bytes)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn read(&mut self, blob: &Descriptor) -> Result<Vec<u8>> {
        let digest = blob.digest.parse().map_err(anyhow::Error::msg)?;
        let mut bytes = Vec::new();
        self.session.blob(&digest)?.take(blob.size.saturating_add(1)).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn fetch(&mut self, store: &Store, layer: &Descriptor, progress: &Progress) -> Result<()> {
        crate::image::pull::fetch_blob(&mut self.session, store, &self.image, layer, "cache layer", progress)?;
        Ok(())
    }

    fn has(&mut self, digest: &Sha256Digest, _size: u64) -> Result<bool> {
        Ok(self.session.has_blob(digest)?)
    }

    fn put(&mut self, digest: &Sha256Digest, size: u64, content: &mut dyn std::io::Read) -> Result<()> {
        self.session.push_blob(digest, size, content).with_context(|| format!("pushing {digest}"))
    }

    fn commit(&mut self, manifest: &[u8]) -> Result<()> {
        Ok(self.session.push_manifest(&self.tag, crate::image::spec::OCI_MANIFEST, manifest)?)
    }
}
