//! The embedded engine's build cache shared between hosts (`--cache-to`, `--cache-from`):
//! the cache records of a build (an op's cache key → the layers of its result) and the layers
//! they name, as one OCI artifact in a registry (`type=registry,ref=REF`) or in a local OCI
//! image layout (`type=local,dest=DIR` / `src=DIR`). `docs/build-cache.md` is the format.
//!
//! Cache keys hash what a step is and the keys and checksums of what went into it, never
//! host paths or times, so a record made on one host holds on another. Importing is lazy:
//! only the layers of records a build hits are fetched, each verified against its digest.
//! A cache that cannot be read is a warning (the build runs its steps); one that cannot be
//! written is an error unless `ignore-error=true`, as in BuildKit.

mod compressed;
mod layout;
mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::image::spec::{Descriptor, Manifest, OCI_MANIFEST};
use crate::progress::Progress;
use crate::solver::{CacheUse, ImportedCache};
use crate::store::Store;
use compressed::LayerCompression;

/// The artifact's type and its config's media type (the records).
pub const ARTIFACT_TYPE: &str = "application/vnd.fledge.build-cache.v1";
pub const RECORDS_MEDIA_TYPE: &str = "application/vnd.fledge.build-cache.records.v1+json";
/// A cache's manifest and records are read into memory; larger ones are refused.
const MANIFEST_LIMIT: u64 = 4 << 20;
const RECORDS_LIMIT: u64 = 16 << 20;

/// One `--cache-to`/`--cache-from` value, `type=KIND,KEY=VALUE,...` (buildctl's form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub kind: String,
    pub attrs: BTreeMap<String, String>,
}

impl CacheSpec {
    pub fn parse(flag: &str, spec: &str) -> Result<Self> {
        let mut kind = None;
        let mut attrs = BTreeMap::new();
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", value)) => kind = Some(value.to_string()),
                Some((key, value)) => {
                    attrs.insert(key.to_string(), value.to_string());
                }
                None => {
                    bail!("{flag} {spec}: expected KEY=VALUE fields, e.g. type=registry,ref=registry.example/app:cache")
                }
            }
        }
        match kind.filter(|k| !k.is_empty()) {
            Some(kind) => Ok(Self { kind, attrs }),
            None => bail!("{flag} {spec}: no type= given (e.g. type=registry,ref=registry.example/app:cache)"),
        }
    }
}

/// The records of the artifact's config blob.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Records {
    records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    key: String,
    layers: Vec<String>,
}

/// Where a cache artifact lives: a registry repository or a local layout.
trait Place: Send {
    /// The artifact's manifest, or `None` when there is no cache there yet.
    fn manifest(&mut self) -> Result<Option<Vec<u8>>>;
    /// A blob's bytes (for the small records blob; verified by the caller).
    fn read(&mut self, blob: &Descriptor) -> Result<Vec<u8>>;
    /// Brings blob `layer` into the store, verified against its digest and size.
    fn fetch(&mut self, store: &Store, layer: &Descriptor, progress: &Progress) -> Result<()>;
    /// Whether the place has blob `digest` (of `size` bytes) already.
    fn has(&mut self, digest: &Sha256Digest, size: u64) -> Result<bool>;
    /// Adds blob `digest` (`size` bytes from `content`).
    fn put(&mut self, digest: &Sha256Digest, size: u64, content: &mut dyn std::io::Read) -> Result<()>;
    /// Makes `manifest` the artifact of this place (the last write of an export).
    fn commit(&mut self, manifest: &[u8]) -> Result<()>;
}

/// Where a spec points and what it names, for messages.
fn open(flag: &str, spec: &CacheSpec, path_key: &str) -> Result<(Box<dyn Place>, String)> {
    let place: Box<dyn Place> = match spec.kind.as_str() {
        "registry" => {
            let reference = spec.attrs.get("ref").with_context(|| {
                format!("{flag} type=registry needs ref=REGISTRY/REPOSITORY:TAG, e.g. type=registry,ref=registry.example/app:cache")
            })?;
            Box::new(registry::RegistryPlace::new(flag, reference)?)
        }
        "local" => {
            let dir = spec
                .attrs
                .get(path_key)
                .with_context(|| format!("{flag} type=local needs {path_key}=DIR (an OCI image layout directory)"))?;
            match path_key {
                "dest" => Box::new(layout::LayoutPlace::for_export(dir.into())?),
                _ => Box::new(layout::LayoutPlace::new(dir.into())),
            }
        }
        other => bail!(
            "{flag} type={other}: the embedded engine shares its cache through type=registry,ref=REF or type=local,{path_key}=DIR\n  = help: BuildKit's other cache backends work with FLEDGE_BUILDKIT_MODE=daemon"
        ),
    };
    let known: &[&str] = match spec.kind.as_str() {
        "registry" => &["ref", "mode", "ignore-error", "compression"],
        _ => &["src", "dest", "mode", "ignore-error", "compression"],
    };
    for key in spec.attrs.keys().filter(|k| !known.contains(&k.as_str())) {
        tracing::warn!("{flag} type={}: {key}= is a BuildKit option the embedded engine ignores", spec.kind);
    }
    let name = spec.attrs.get(if spec.kind == "registry" { "ref" } else { path_key }).cloned().unwrap_or_default();
    Ok((place, name))
}

/// One readable cache: its records and the place to fetch their layers from.
struct Source {
    name: String,
    place: Mutex<Box<dyn Place>>,
    /// Cache key → its result layers, each with its descriptor when the artifact carries it.
    records: HashMap<Sha256Digest, Vec<(Sha256Digest, Option<Descriptor>)>>,
}

/// The caches `--cache-from` names, read before the build.
pub struct Imported<'a> {
    sources: Vec<Source>,
    store: &'a Store,
    progress: &'a Progress,
}

impl<'a> Imported<'a> {
    /// Reads every `--cache-from` cache; one that cannot be read is skipped with a warning
    /// (the build runs the steps it would have had), a malformed flag is an error.
    pub fn load(specs: &[String], store: &'a Store, progress: &'a Progress) -> Result<Self> {
        let mut sources = Vec::new();
        for spec in specs {
            let parsed = CacheSpec::parse("--cache-from", spec)?;
            let (mut place, name) = open("--cache-from", &parsed, "src")?;
            match read_records(place.as_mut()) {
                Ok(Some(records)) => {
                    progress.say(&format!("cache {name}: {} records", records.len()));
                    sources.push(Source { name, place: Mutex::new(place), records });
                }
                Ok(None) => progress.say(&format!("cache {name}: none there yet")),
                Err(e) => tracing::warn!("--cache-from {spec}: not used: {e:#}"),
            }
        }
        Ok(Self { sources, store, progress })
    }
}

/// The records of the artifact at `place`, each layer with its descriptor when the manifest
/// lists it (a layer it does not list is a source's, which the importing host has when it
/// computes the record's key).
fn read_records(place: &mut dyn Place) -> Result<Option<Imports>> {
    let Some(bytes) = place.manifest()? else { return Ok(None) };
    let manifest: Manifest = serde_json::from_slice(&bytes).context("its manifest is not an OCI manifest")?;
    if manifest.config.media_type != RECORDS_MEDIA_TYPE {
        bail!(
            "it is not a Fledge build cache (its config is {}, not {RECORDS_MEDIA_TYPE})",
            manifest.config.media_type
        );
    }
    if manifest.config.size > RECORDS_LIMIT {
        bail!("its records blob is {} bytes, more than a cache's records can be", manifest.config.size);
    }
    let config = place.read(&manifest.config)?;
    let digest: Sha256Digest = manifest.config.digest.parse().map_err(anyhow::Error::msg)?;
    if Sha256Digest::of_bytes(&config) != digest {
        bail!("its records blob does not match its digest {digest}");
    }
    let records: Records = serde_json::from_slice(&config).context("its records are not valid JSON")?;
    // A compressed blob is listed under the plain layer it carries.
    let listed: HashMap<Sha256Digest, &Descriptor> =
        manifest.layers.iter().filter_map(|d| Some((compressed::layer_of(d).ok()?, d))).collect();
    let mut out = HashMap::new();
    for record in records.records {
        let key = record.key.parse().map_err(|e| anyhow::anyhow!("record key {}: {e}", record.key))?;
        let layers = record
            .layers
            .iter()
            .map(|l| {
                let digest = l.parse().map_err(|e| anyhow::anyhow!("record {key}: layer {l}: {e}"))?;
                Ok((digest, listed.get(&digest).map(|d| (*d).clone())))
            })
            .collect::<Result<_>>()?;
        out.insert(key, layers);
    }
    Ok(Some(out))
}

type Imports = HashMap<Sha256Digest, Vec<(Sha256Digest, Option<Descriptor>)>>;

impl ImportedCache for Imported<'_> {
    fn has(&self, key: &Sha256Digest) -> bool {
        self.sources.iter().any(|s| s.records.contains_key(key))
    }

    fn layers(&self, key: &Sha256Digest) -> Option<Vec<Sha256Digest>> {
        for source in &self.sources {
            let Some(layers) = source.records.get(key) else { continue };
            // One layer at a time per source (its connection), so steps importing at once
            // take turns by layer rather than by step.
            let fetch = |d: &Descriptor| {
                let mut place = source.place.lock().unwrap_or_else(|e| e.into_inner());
                place.fetch(self.store, d, self.progress)?;
                drop(place);
                compressed::arrived(self.store, d).map(drop)
            };
            let fetched: Result<()> = layers.iter().try_for_each(|(digest, descriptor)| match descriptor {
                _ if self.store.has_blob(digest) => Ok(()),
                Some(d) => fetch(d),
                None => bail!("its layer {digest} is neither in the cache nor here"),
            });
            match fetched {
                Ok(()) => return Some(layers.iter().map(|(digest, _)| *digest).collect()),
                Err(e) => tracing::warn!("cache {}: record {key} not used: {e:#}", source.name),
            }
        }
        None
    }
}

/// The caches `--cache-to` names, checked before the build so a bad flag costs no build.
pub struct Exports {
    targets: Vec<Target>,
}

struct Target {
    spec: String,
    place: Box<dyn Place>,
    name: String,
    /// `mode=max`: every step's records; `mode=min` (the default, as in BuildKit): those
    /// whose layers are all in the result, so intermediate stages stay out.
    max: bool,
    ignore_error: bool,
    /// How plain layers travel (`compression=`).
    compression: LayerCompression,
}

impl Exports {
    pub fn open(specs: &[String]) -> Result<Self> {
        let targets = specs
            .iter()
            .map(|spec| {
                let parsed = CacheSpec::parse("--cache-to", spec)?;
                let max = match parsed.attrs.get("mode").map(String::as_str) {
                    None | Some("min") => false,
                    Some("max") => true,
                    Some(other) => bail!("--cache-to {spec}: mode={other}: expected min or max"),
                };
                let ignore_error = parsed.attrs.get("ignore-error").is_some_and(|v| v == "true");
                let (place, name) = open("--cache-to", &parsed, "dest")?;
                let compression = LayerCompression::parse(parsed.attrs.get("compression").map(String::as_str))
                    .map_err(|e| anyhow::anyhow!("--cache-to {spec}: {e}"))?;
                Ok(Target { spec: spec.clone(), place, name, max, ignore_error, compression })
            })
            .collect::<Result<_>>()?;
        Ok(Self { targets })
    }

    /// Writes the build's cache (`used`, the build's result `result`) to every target.
    pub fn write(self, store: &Store, used: &CacheUse, result: &[Sha256Digest], progress: &Progress) -> Result<()> {
        for mut target in self.targets {
            let records: Vec<_> = used
                .records
                .iter()
                .filter(|(_, layers)| target.max || layers.iter().all(|l| result.contains(l)))
                .collect();
            let step = progress.step(format!("Exporting build cache to {}", target.name), None);
            match write(store, target.place.as_mut(), &records, &used.sourced, target.compression) {
                Ok(sent) => step.finish(&format!("{} records, {sent} layers sent", records.len())),
                Err(e) if target.ignore_error => tracing::warn!("--cache-to {}: not written: {e:#}", target.spec),
                Err(e) => return Err(e.context(format!("--cache-to {}", target.spec))),
            }
        }
        Ok(())
    }
}

/// Writes the artifact of `records` to `place`: the layers it lacks (those of `sourced`
/// aside), the records, the manifest last (so a reader never sees one whose blobs are
/// missing). Returns how many layers were sent.
fn write(
    store: &Store,
    place: &mut dyn Place,
    records: &[&(Sha256Digest, Vec<Sha256Digest>)],
    sourced: &HashSet<Sha256Digest>,
    compression: LayerCompression,
) -> Result<usize> {
    let mut sorted: Vec<Record> = records
        .iter()
        .map(|(key, layers)| Record { key: key.to_string(), layers: layers.iter().map(|l| l.to_string()).collect() })
        .collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    sorted.dedup_by(|a, b| a.key == b.key);
    // Layers in the order the sorted records first name them: the same build gives the
    // same manifest whichever order its steps finished in.
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut seen = HashSet::new();
    let mut sent = 0;
    for name in sorted.iter().flat_map(|r| &r.layers) {
        let digest: Sha256Digest = name.parse().map_err(anyhow::Error::msg)?;
        if sourced.contains(&digest) || !seen.insert(digest) {
            continue;
        }
        let carried = compressed::carried(store, &digest, compression)?;
        let blob: Sha256Digest = carried.digest.parse().map_err(anyhow::Error::msg)?;
        if !place.has(&blob, carried.size)? {
            place.put(&blob, carried.size, &mut store.open_blob(&blob)?)?;
            sent += 1;
        }
        layers.push(carried);
    }
    let config = serde_json::to_vec(&Records { records: sorted })?;
    let config_digest = Sha256Digest::of_bytes(&config);
    if !place.has(&config_digest, config.len() as u64)? {
        place.put(&config_digest, config.len() as u64, &mut config.as_slice())?;
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: descriptor(RECORDS_MEDIA_TYPE, &config_digest, config.len() as u64),
        layers,
    };
    place.commit(&serde_json::to_vec(&manifest)?)?;
    Ok(sent)
}

fn descriptor(media_type: &str, digest: &Sha256Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.to_string(),
        size,
        platform: None,
        annotations: BTreeMap::new(),
        artifact_type: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_buildctl_writes_them() {
        let spec = CacheSpec::parse("--cache-to", "type=registry,ref=127.0.0.1:5000/app:cache,mode=max").unwrap();
        assert_eq!(spec.kind, "registry");
        assert_eq!(spec.attrs["ref"], "127.0.0.1:5000/app:cache");
        assert_eq!(spec.attrs["mode"], "max");
        let no_type = CacheSpec::parse("--cache-from", "ref=x").unwrap_err().to_string();
        assert!(no_type.contains("no type= given"), "{no_type}");
        let bare = CacheSpec::parse("--cache-from", "registry").unwrap_err().to_string();
        assert!(bare.contains("expected KEY=VALUE"), "{bare}");
    }

    #[test]
    fn other_backends_point_to_daemon_mode() {
        let spec = CacheSpec::parse("--cache-to", "type=gha").unwrap();
        let Err(e) = open("--cache-to", &spec, "dest") else { panic!("type=gha was accepted") };
        assert!(e.to_string().contains("FLEDGE_BUILDKIT_MODE=daemon"), "{e}");
    }
}
