//! A Dockerfile build: with the embedded engine, the frontend lowers the Dockerfile to LLB
//! (`fledge_llb::dockerfile`), the solver runs it (`solver`), and the result is the built
//! layers with the image configuration the frontend produced; with `FLEDGE_BUILDKIT_MODE=daemon`
//! an external buildkitd builds it (`daemon_build`). An LLB definition given as it is
//! (`fledge build --llb`) goes the same two ways.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fledge_llb::dockerfile::{LocalContext, Options, Platform};
use fledge_llb::pb;

use crate::build_progress::BuildDisplay;
use crate::cli::ProgressMode;
use crate::digest::Sha256Digest;
use crate::dockerfile::{self, StoreResolver};
use crate::image::spec::ImageConfig;
use crate::microvm::Machine;
use crate::progress::Progress;
use crate::shared_cache;
use crate::solver::Solver;
use crate::store::Store;

/// The session id the embedded engine gives the context source: fixed, so op digests (and
/// cache keys) stay the same from build to build.
const SESSION: &str = "fledge-embedded";

/// What to build: a Dockerfile, its context and the options of a build.
pub struct Request<'a> {
    pub dockerfile: &'a Path,
    pub context: &'a Path,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// `--secret` specifications (`id=ID,src=PATH`).
    pub secrets: &'a [String],
    pub cache: CacheFlags<'a>,
    /// `--build-context NAME=oci-layout:PATH[:TAG|@DIGEST]` or `NAME=docker-image://REF`.
    pub contexts: &'a [String],
    pub progress: ProgressMode,
    pub entitlements: Entitlements,
}

/// What `--allow` grants build steps, as BuildKit's entitlements; nothing by default.
#[derive(Clone, Copy, Default, Debug)]
pub struct Entitlements {
    /// `security.insecure`: `RUN --security=insecure` keeps every capability.
    pub insecure: bool,
}

impl Entitlements {
    /// As the Control API's `SolveRequest.Entitlements` names them.
    pub fn names(&self) -> Vec<String> {
        if self.insecure { vec!["security.insecure".into()] } else { Vec::new() }
    }
}

/// The named build contexts: images (imported into the store, verified, first) and local
/// directories.
#[derive(Default)]
pub struct NamedContexts {
    pub images: Vec<dockerfile::NamedContext>,
    /// Each with the directory it names.
    pub locals: Vec<(LocalContext, PathBuf)>,
}

/// Session and source names the build's own directories use.
const RESERVED: [&str; 2] = ["context", "dockerfile"];

pub fn named_contexts(store: &Store, specs: &[String], progress: &Progress) -> Result<NamedContexts> {
    let mut contexts = NamedContexts::default();
    for spec in specs {
        let help = "expected NAME=DIR, NAME=oci-layout:PATH[:TAG|@DIGEST] or NAME=docker-image://REF, e.g. --build-context base=oci-layout:./base-image:v1";
        let (name, source) = spec.split_once('=').with_context(|| format!("--build-context {spec}: {help}"))?;
        if name.is_empty() {
            bail!("--build-context {spec}: {help}");
        }
        if !source.contains("://") && !source.starts_with("oci-layout:") {
            if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                bail!("--build-context {spec}: {name:?} names the build's own directory; choose another name");
            }
            let dir = std::path::absolute(source)?;
            if !dir.is_dir() {
                bail!("--build-context {spec}: {source} is not a directory ({help})");
            }
            let excludes = dockerfile::local_dockerignore(&dir)?;
            contexts.locals.push((LocalContext { name: name.to_string(), excludes }, dir));
            continue;
        }
        contexts.images.push(image_context(store, spec, name, source, help, progress)?);
    }
    Ok(contexts)
}

/// A named context that is an image.
fn image_context(
    store: &Store,
    spec: &str,
    name: &str,
    source: &str,
    help: &str,
    progress: &Progress,
) -> Result<dockerfile::NamedContext> {
    // An image from the store (pulled first when missing) or a layout; either way a
    // daemon gets it from here.
    let source = match source.strip_prefix("docker-image://") {
        Some(reference) => Some(reference),
        None => source.starts_with("oci-layout:").then_some(source),
    };
    let Some(source) = source else {
        bail!(
            "--build-context {spec}: {help} (other kinds of named context, such as git or https sources, are not supported yet)"
        );
    };
    let source = crate::image::source::ImageSource::parse(source, Path::new("."))
        .map_err(|e| anyhow::anyhow!("--build-context {spec}: {e}"))?;
    let image =
        crate::image::stored::StoredImage::resolve(store, &source, &crate::image::spec::Platform::host(), progress)?;
    let config_digest = image.manifest.config.digest.parse().map_err(anyhow::Error::msg)?;
    Ok(dockerfile::NamedContext {
        name: name.to_string(),
        digest: image.record.manifest_digest()?,
        config: serde_json::from_slice(&store.read_blob(&config_digest)?)?,
    })
}

/// `--cache-to` and `--cache-from` (buildctl's `type=registry,ref=...` forms): a daemon's
/// cache options in daemon mode, the embedded engine's shared cache (`shared_cache`) else.
#[derive(Clone, Copy, Default)]
pub struct CacheFlags<'a> {
    pub to: &'a [String],
    pub from: &'a [String],
}

pub struct Built {
    pub layers: Vec<Sha256Digest>,
    pub config: ImageConfig,
    /// The image configuration exactly as the frontend made it (for OCI export).
    pub image: serde_json::Value,
}

/// Which engine builds Dockerfiles: `FLEDGE_BUILDKIT_MODE` = `embedded` (the default) or
/// `daemon` (an external buildkitd at `FLEDGE_BUILDKIT_ADDR`).
fn daemon_mode() -> Result<bool> {
    match std::env::var("FLEDGE_BUILDKIT_MODE").as_deref() {
        Err(_) | Ok("" | "embedded") => Ok(false),
        Ok("daemon") => Ok(true),
        Ok(other) => bail!("FLEDGE_BUILDKIT_MODE={other}: expected embedded or daemon"),
    }
}

pub fn dockerfile(request: &Request, progress: &Progress) -> Result<Built> {
    if daemon_mode()? {
        // The daemon parses the Dockerfile itself; a local parse first gives the same errors
        // (file, line, what to do) as embedded mode, without a round trip.
        dockerfile::load(request.dockerfile)?;
        return crate::daemon_build::dockerfile(request, secrets(request.secrets)?, progress);
    }
    let path = request.dockerfile;
    let ast = dockerfile::load(path)?;
    let store = Store::open(crate::dirs::state_dir().as_deref())?;
    let contexts = named_contexts(&store, request.contexts, progress)?;
    let resolver = StoreResolver { store: &store, progress, contexts: &contexts.images };
    let host = crate::image::spec::Platform::host();
    let platform = Platform { os: host.os, architecture: host.architecture, variant: host.variant.unwrap_or_default() };
    let options = Options {
        target: request.target.clone(),
        build_args: request.build_args.clone(),
        platform: platform.clone(),
        build_platform: platform,
        session_id: Some(SESSION.into()),
        excludes: dockerfile::dockerignore(path, request.context)?,
        local_contexts: contexts.locals.iter().map(|(local, _)| local.clone()).collect(),
        resolver: &resolver,
    };
    let converted = fledge_llb::dockerfile::convert(&ast, &options).map_err(|e| dockerfile::convert_error(path, &e))?;
    for (line, warning) in &converted.warnings {
        tracing::warn!("{}:{line}: {warning}", path.display());
    }
    // An empty target (FROM scratch with only config) is an image without layers, as in
    // BuildKit: nothing to solve.
    let layers = match &converted.result {
        Some(result) => {
            // The Dockerfile goes into the definition's source map, so a failing step names
            // its line.
            let text = std::fs::read(path).with_context(|| format!("cannot read the Dockerfile {}", path.display()))?;
            let definition = fledge_llb::graph::definition(result, Some((&path.display().to_string(), &text)));
            let mut locals = HashMap::from([("context".to_string(), request.context.to_path_buf())]);
            locals.extend(contexts.locals.into_iter().map(|(local, dir)| (local.name, dir)));
            let how = (request.cache, request.entitlements);
            solve(&store, &definition, locals, request.secrets, how, request.progress, progress)?
        }
        None => Vec::new(),
    };
    let config = serde_json::from_value(converted.image.clone()).context("the frontend's image config")?;
    Ok(Built { layers, config, image: converted.image })
}

/// An LLB definition (`fledge build --llb`), solved as it is, with `context` as its local
/// source named `context`. It says nothing of an image config, so the result has an empty one.
pub fn definition(
    definition: &pb::Definition,
    context: &Path,
    secret_specs: &[String],
    (cache, entitlements): (CacheFlags, Entitlements),
    mode: ProgressMode,
    progress: &Progress,
) -> Result<Built> {
    if daemon_mode()? {
        let how = (cache, entitlements);
        return crate::daemon_build::definition(definition, context, secrets(secret_specs)?, how, mode, progress);
    }
    let store = Store::open(crate::dirs::state_dir().as_deref())?;
    let locals = HashMap::from([("context".to_string(), context.to_path_buf())]);
    let layers = solve(&store, definition, locals, secret_specs, (cache, entitlements), mode, progress)?;
    let host = crate::image::spec::Platform::host();
    let image = serde_json::json!({"architecture": host.architecture, "os": host.os, "config": {}});
    Ok(Built { layers, config: serde_json::from_value(image.clone())?, image })
}

/// Runs `definition` on the embedded engine, with the shared caches `cache` names; returns
/// the result's layers.
fn solve(
    store: &Store,
    definition: &pb::Definition,
    locals: HashMap<String, PathBuf>,
    secret_specs: &[String],
    (cache, entitlements): (CacheFlags, Entitlements),
    mode: ProgressMode,
    progress: &Progress,
) -> Result<Vec<Sha256Digest>> {
    let machine = Box::new(|| Machine::choose(vmm_from_env()?, accel_from_env()?));
    let display = std::sync::Arc::new(BuildDisplay::new(mode, progress.is_quiet()));
    let reporter = display.clone();
    let exports = shared_cache::Exports::open(cache.to)?;
    let imported = shared_cache::Imported::load(cache.from, store, progress)?;
    let mut solver = Solver::new(store, locals, machine, progress, secrets(secret_specs)?, reporter)?;
    solver.import_cache(&imported);
    solver.grant(entitlements);
    let layers = solver.solve(definition)?;
    display.summary();
    exports.write(store, &solver.used(), &layers, progress)?;
    Ok(layers)
}

/// `FLEDGE_VMM` (qemu, cloud-hypervisor; default qemu), as `fledge run --vmm` reads it.
fn vmm_from_env() -> Result<crate::cli::VmmChoice> {
    use crate::cli::VmmChoice;
    match std::env::var("FLEDGE_VMM").as_deref() {
        Err(_) | Ok("" | "qemu") => Ok(VmmChoice::Qemu),
        Ok("cloud-hypervisor") => Ok(VmmChoice::CloudHypervisor),
        Ok(other) => bail!("FLEDGE_VMM={other}: expected qemu or cloud-hypervisor"),
    }
}

/// `FLEDGE_ACCEL` (auto, kvm, tcg; default auto), as `fledge run --accel` reads it.
fn accel_from_env() -> Result<crate::cli::AccelChoice> {
    use crate::cli::AccelChoice;
    match std::env::var("FLEDGE_ACCEL").as_deref() {
        Err(_) | Ok("" | "auto") => Ok(AccelChoice::Auto),
        Ok("kvm") => Ok(AccelChoice::Kvm),
        Ok("tcg") => Ok(AccelChoice::Tcg),
        Ok(other) => bail!("FLEDGE_ACCEL={other}: expected auto, kvm or tcg"),
    }
}

/// `--secret id=ID,src=PATH` (also `source=`; a bare `id=ID` reads the file named ID).
fn secrets(specs: &[String]) -> Result<std::collections::HashMap<String, std::path::PathBuf>> {
    let mut secrets = std::collections::HashMap::new();
    for spec in specs {
        let (mut id, mut src) = (None, None);
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("src" | "source", v)) => src = Some(std::path::PathBuf::from(v)),
                _ => bail!("--secret {spec}: expected id=ID,src=PATH"),
            }
        }
        let id = id.with_context(|| format!("--secret {spec}: no id= given"))?;
        let src = src.unwrap_or_else(|| std::path::PathBuf::from(&id));
        if !src.is_file() {
            bail!("--secret {spec}: {} is not a readable file", src.display());
        }
        secrets.insert(id, src);
    }
    Ok(secrets)
}
