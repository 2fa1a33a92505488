//! Importing images from local files into the store, with no registry and no network:
//! OCI image layouts (directories or tarballs, the format `skopeo`, `buildah` and BuildKit
//! write) and `docker save` archives. Every blob is verified against its digest on the way
//! in, exactly as pulled blobs are.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::pull::choose_platform;
use super::source::ImageSource;
use super::spec::{Descriptor, Document, Index, Platform, parse_document};
use crate::digest::Sha256Digest;
use crate::progress::Progress;
use crate::store::{Expected, ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the blobs of a layout are read from while importing.
enum Blobs<'a> {
    /// An unpacked layout: `<dir>/blobs/sha256/<hex>`, copied into the store when needed.
    Dir(&'a Path),
    /// A layout tarball, already streamed into the store.
    Stored,
}

struct Importer<'a> {
    store: &'a Store,
    origin: String,
    blobs: Blobs<'a>,
}

impl Importer<'_> {
    fn invalid(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Invalid { path: self.origin.clone(), reason: reason.into() }
    }

    fn digest(&self, d: &Descriptor) -> Result<Sha256Digest, ImportError> {
        d.digest.parse().map_err(|e: String| self.invalid(e))
    }

    /// Makes sure the blob is in the store (verified on the way in) and returns its digest.
    fn ensure(&self, d: &Descriptor) -> Result<Sha256Digest, ImportError> {
        let digest = self.digest(d)?;
        if let Blobs::Dir(dir) = self.blobs
            && !self.store.has_blob(&digest)
        {
            let path = dir.join("blobs/sha256").join(digest.hex());
            let mut file =
                File::open(&path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
            self.store.write_blob(
                &mut file,
                Some(Expected { digest, size: Some(d.size) }),
                &format!("{} blob {digest}", self.origin),
            )?;
        }
        if !self.store.has_blob(&digest) {
            return Err(self.invalid(format!("blob {digest} is missing from the layout")));
        }
        self.store.check_size(&digest, d.size, &format!("{} blob {digest}", self.origin))?;
        Ok(digest)
    }

    fn document(&self, d: &Descriptor) -> Result<(Document, Vec<u8>, Sha256Digest), ImportError> {
        let digest = self.ensure(d)?;
        let bytes = self.store.read_blob(&digest)?;
        let doc = parse_document(&bytes, &d.media_type).map_err(|e| self.invalid(e))?;
        Ok((doc, bytes, digest))
    }

    /// Resolves `index.json` to one image manifest and imports its config and layers.
    fn layout(
        &self,
        index_json: &[u8],
        reference: Option<&str>,
        platform: &Platform,
    ) -> Result<Sha256Digest, ImportError> {
        let index: Index = serde_json::from_slice(index_json).map_err(|e| self.invalid(format!("index.json: {e}")))?;
        let named = |d: &&Descriptor| match reference {
            Some(r) if r.starts_with("sha256:") => d.digest == r,
            Some(tag) => d.annotations.get("org.opencontainers.image.ref.name").is_some_and(|n| n == tag),
            None => true,
        };
        let candidates: Vec<&Descriptor> = index.manifests.iter().filter(named).collect();
        let top = match (candidates.as_slice(), reference) {
            ([one], _) => *one,
            ([], Some(r)) => return Err(self.invalid(format!("no image named '{r}' in the layout"))),
            ([], None) => return Err(self.invalid("the layout holds no image")),
            (_, None) => return Err(self.invalid("the layout holds several images: name one with oci-layout:PATH:TAG")),
            (many, Some(_)) => many[0],
        };
        let mut descriptor = top.clone();
        loop {
            let (doc, _, digest) = self.document(&descriptor)?;
            match doc {
                Document::Index(nested) => {
                    descriptor = choose_platform(&nested.manifests, platform)
                        .ok_or_else(|| self.invalid(format!("no manifest for {platform} in the layout")))?
                        .clone();
                }
                Document::Manifest(m) => {
                    self.ensure(&m.config)?;
                    for layer in &m.layers {
                        self.ensure(layer)?;
                    }
                    return Ok(digest);
                }
            }
        }
    }
}

/// Imports `source` (a layout or archive) into `store` under its name.
pub fn import(
    source: &ImageSource,
    store: &Store,
    platform: &Platform,
    progress: &Progress,
) -> Result<ImageRecord, ImportError> {
    let step = progress.step(format!("Importing {source}"), None);
    let (digest, origin) = match source {
        ImageSource::OciLayout { path, reference } if path.is_dir() => {
            let importer = Importer { store, origin: path.display().to_string(), blobs: Blobs::Dir(path) };
            let index = std::fs::read(path.join("index.json"))
                .map_err(|source| ImportError::Io { path: path.join("index.json").display().to_string(), source })?;
            (importer.layout(&index, reference.as_deref(), platform)?, "oci-layout")
        }
        ImageSource::OciLayout { path, reference } => {
            let file =
                File::open(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
            let origin = path.display().to_string();
            (
                layout_tarball(
                    store,
                    BufReader::with_capacity(1 << 20, file),
                    &origin,
                    reference.as_deref(),
                    platform,
                )?,
                "oci-layout",
            )
        }
        ImageSource::DockerArchive { path } => (docker_archive(store, path)?, "docker-archive"),
        ImageSource::Registry(_) => unreachable!("registry images are pulled, not imported"),
    };
    super::diff_ids::check_stored(store, &digest)
        .map_err(|e| ImportError::Invalid { path: source.to_string(), reason: e.to_string() })?;
    let record = ImageRecord {
        name: source.to_string(),
        digest: digest.to_string(),
        source: origin.into(),
        platform: platform.to_string(),
    };
    store.tag(&record)?;
    step.finish(&digest.to_string());
    Ok(record)
}

/// An OCI layout tarball read from `reader` (a file, or a daemon's export as it arrives):
/// its blobs go into the store, verified on the way in, and `index.json` is resolved to the
/// manifest for `platform` (named `reference`, if given). Returns the manifest's digest;
/// nothing is recorded in the image index.
pub fn layout_tarball(
    store: &Store,
    reader: impl Read,
    origin: &str,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<Sha256Digest, ImportError> {
    let files = stream_tar_into_store(
        store,
        reader,
        origin,
        |name| name.strip_prefix("blobs/sha256/").map(str::to_string),
        false,
        &["index.json"],
    )?;
    let importer = Importer { store, origin: origin.to_string(), blobs: Blobs::Stored };
    let index =
        files.kept.into_iter().next().ok_or_else(|| importer.invalid("no index.json: not an OCI layout tarball"))?.1;
    importer.layout(&index, reference, platform)
}

/// What streaming a tarball into the store found: stored files by name, and the small
/// files asked to be kept in memory.
struct TarContents {
    stored: Vec<(String, Sha256Digest, u64)>,
    kept: Vec<(String, Vec<u8>)>,
}

/// Streams regular files of the tarball `reader` (from `origin`, for messages) into the
/// store. `expected` maps a member name to the hex digest its name promises (verified);
/// other members are stored only if `store_others`. `keep` lists small members to return
/// instead.
fn stream_tar_into_store(
    store: &Store,
    reader: impl Read,
    origin: &str,
    expected: impl Fn(&str) -> Option<String>,
    store_others: bool,
    keep: &[&str],
) -> Result<TarContents, ImportError> {
    let io_err = |source| ImportError::Io { path: origin.to_string(), source };
    let mut archive = tar::Archive::new(reader);
    let mut contents = TarContents { stored: Vec::new(), kept: Vec::new() };
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(io_err)?.to_string_lossy().trim_start_matches("./").to_string();
        if keep.contains(&name.as_str()) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(io_err)?;
            contents.kept.push((name, data));
            continue;
        }
        let size = entry.size();
        let want = match expected(&name) {
            Some(hex) => Some(Expected {
                digest: format!("sha256:{hex}").parse().map_err(|e: String| ImportError::Invalid {
                    path: origin.to_string(),
                    reason: format!("{name}: {e}"),
                })?,
                size: Some(size),
            }),
            None if store_others => None,
            None => continue,
        };
        let (digest, size) = store.write_blob(&mut entry, want, &format!("{origin} member {name}"))?;
        contents.stored.push((name, digest, size));
    }
    Ok(contents)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    layers: Vec<String>,
}

/// A `docker save` tarball: its members go into the store, and an OCI manifest is made for
/// the first image in its `manifest.json`.
fn docker_archive(store: &Store, path: &Path) -> Result<Sha256Digest, ImportError> {
    let invalid = |reason: String| ImportError::Invalid { path: path.display().to_string(), reason };
    let file = File::open(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })?;
    let contents = stream_tar_into_store(
        store,
        BufReader::with_capacity(1 << 20, file),
        &path.display().to_string(),
        |name| name.strip_prefix("blobs/sha256/").map(str::to_string),
        true,
        &["manifest.json"],
    )?;
    let (_, manifest_json) =
        contents.kept.first().ok_or_else(|| invalid("no manifest.json: not a docker save archive".into()))?;
    let images: Vec<DockerManifest> =
        serde_json::from_slice(manifest_json).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    let image = images.first().ok_or_else(|| invalid("manifest.json lists no image".into()))?;
    let find = |name: &str| -> Result<(Sha256Digest, u64), ImportError> {
        contents
            .stored
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, d, s)| (*d, *s))
            .ok_or_else(|| invalid(format!("{name} is listed in manifest.json but not in the archive")))
    };
    let (config_digest, config_size) = find(&image.config)?;
    let mut layers = Vec::new();
    for layer in &image.layers {
        let (digest, size) = find(layer)?;
        let mut magic = [0u8; 4];
        let _ = store.open_blob(&digest)?.read(&mut magic);
        let media_type = match magic {
            [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        layers.push(json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": super::spec::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).expect("JSON values serialize");
    Ok(store.write_bytes(&bytes, None, "manifest")?)
}
