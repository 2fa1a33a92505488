//! Pulling an image from a registry into the store: the manifest (resolved for a platform
//! when the reference names an index), the config and every layer, each verified against its
//! digest and size before it enters the store. Blobs already stored are not downloaded again.

use fledge_llb::ImageRef;

use super::registry::{RegistryError, Session};
use super::spec::{Descriptor, Document, ImageConfig, Platform, parse_document};
use crate::digest::Sha256Digest;
use crate::progress::Progress;
use crate::store::{Expected, ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{image}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("{image} has no manifest for {wanted}; it offers {available}\n  = help: choose one with --platform")]
    NoPlatform { image: String, wanted: Platform, available: String },
}

fn invalid(image: &ImageRef, reason: impl Into<String>) -> PullError {
    PullError::Invalid { image: image.to_string(), reason: reason.into() }
}

fn digest_of(image: &ImageRef, d: &Descriptor) -> Result<Sha256Digest, PullError> {
    d.digest.parse().map_err(|e| invalid(image, format!("descriptor digest {}: {e}", d.digest)))
}

/// Pulls `image` for `platform` into `store` and records it in the image index.
pub fn pull(
    image: &ImageRef,
    platform: &Platform,
    store: &Store,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    let mut session = Session::new(image)?;
    let reference = image.digest.clone().or_else(|| image.tag.clone()).unwrap_or_else(|| "latest".into());
    let step = progress.step(format!("Resolving {image}"), None);
    let (bytes, media_type) = session.manifest(&reference)?;
    let digest = Sha256Digest::of_bytes(&bytes);
    if let Some(pinned) = &image.digest
        && pinned != &digest.to_string()
    {
        return Err(invalid(
            image,
            format!("the registry sent a manifest with digest {digest}, not the pinned {pinned}; nothing was stored"),
        ));
    }
    let (manifest, bytes, digest) = match parse_document(&bytes, &media_type).map_err(|e| invalid(image, e))? {
        Document::Manifest(m) => (m, bytes, digest),
        Document::Index(index) => {
            let chosen = choose_platform(&index.manifests, platform).ok_or_else(|| PullError::NoPlatform {
                image: image.to_string(),
                wanted: platform.clone(),
                available: index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            let expected = digest_of(image, chosen)?;
            let (bytes, media_type) = session.manifest(&chosen.digest)?;
            let actual = Sha256Digest::of_bytes(&bytes);
            if actual != expected || bytes.len() as u64 != chosen.size {
                return Err(invalid(
                    image,
                    format!(
                        "manifest {expected} arrived with digest {actual} ({} bytes, expected {}); nothing was stored",
                        bytes.len(),
                        chosen.size
                    ),
                ));
            }
            match parse_document(&bytes, &media_type).map_err(|e| invalid(image, e))? {
                Document::Manifest(m) => (m, bytes, actual),
                Document::Index(_) => {
                    return Err(invalid(image, "an index points at another index; nested indexes are not supported"));
                }
            }
        }
    };
    step.finish(&digest.to_string());

    fetch_blob(&mut session, store, image, &manifest.config, "config", progress)?;
    let config: ImageConfig = serde_json::from_slice(&store.read_blob(&digest_of(image, &manifest.config)?)?)
        .map_err(|e| invalid(image, format!("image config is not valid: {e}")))?;
    let image_platform =
        Platform { os: config.os.clone(), architecture: config.architecture.clone(), variant: config.variant.clone() };
    if !config.os.is_empty() && !image_platform.satisfies(platform) {
        return Err(invalid(
            image,
            format!(
                "the image is for {image_platform}, not {platform}\n  = help: pass --platform {image_platform} if that is what you want"
            ),
        ));
    }
    for (i, layer) in manifest.layers.iter().enumerate() {
        fetch_blob(&mut session, store, image, layer, &format!("layer {}/{}", i + 1, manifest.layers.len()), progress)?;
    }
    super::diff_ids::check(store, &manifest, &config).map_err(|e| invalid(image, e.to_string()))?;
    store.write_bytes(&bytes, Some(Expected { digest, size: Some(bytes.len() as u64) }), "manifest")?;
    let record = ImageRecord {
        name: image.to_string(),
        digest: digest.to_string(),
        source: "registry".into(),
        platform: platform.to_string(),
    };
    store.tag(&record)?;
    Ok(record)
}

/// The manifest for `wanted`, preferring an exact variant match.
pub(crate) fn choose_platform<'a>(manifests: &'a [Descriptor], wanted: &Platform) -> Option<&'a Descriptor> {
    let candidates = || manifests.iter().filter(|d| d.platform.as_ref().is_some_and(|p| p.satisfies(wanted)));
    candidates()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.variant == wanted.variant))
        .or_else(|| candidates().next())
}

/// Brings blob `d` of `image` into the store (verified), unless it is there already.
pub fn fetch_blob(
    session: &mut Session,
    store: &Store,
    image: &ImageRef,
    d: &Descriptor,
    what: &str,
    progress: &Progress,
) -> Result<(), PullError> {
    let digest = digest_of(image, d)?;
    if store.has_blob(&digest) {
        return Ok(store.check_size(&digest, d.size, &format!("{image} {what} {digest}"))?);
    }
    let step = progress.step(format!("Pulling {what} {}", &digest.hex()[..12]), Some(d.size));
    // One byte more than the descriptor says is enough to tell a blob is too long; a
    // registry cannot fill the disk by sending more.
    let mut reader = std::io::Read::take(session.blob(&digest)?, d.size.saturating_add(1));
    let mut counting = CountingReader { inner: &mut reader, step: &step };
    super::prescan::store_and_scan(store, &digest, &mut counting, |reader| {
        store.write_blob(reader, Some(Expected { digest, size: Some(d.size) }), &format!("{image} {what} {digest}"))
    })?;
    step.finish(&indicatif::HumanBytes(d.size).to_string());
    Ok(())
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    step: &'a crate::progress::Step,
}

impl<R: std::io::Read> std::io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.step.advance(n as u64);
        Ok(n)
    }
}
