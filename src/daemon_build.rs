//! A Dockerfile build on an external buildkitd (`FLEDGE_BUILDKIT_MODE=daemon`): the daemon's
//! own Dockerfile frontend builds it, reading the context and Dockerfile through the session,
//! asking for secrets and registry credentials there, and streaming the result back as an
//! OCI image tarball, which is imported into the store. From there it is packed exactly as
//! an embedded build is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use fledge_agent::chunks::ChannelReader;
use fledge_buildkit::pb::control;
use fledge_buildkit::tls::Tls;
use fledge_buildkit::{Daemon, Output, Session};

use crate::build::{Built, CacheFlags, Request};
use crate::build_progress::BuildDisplay;
use crate::cli::ProgressMode;
use crate::digest::Sha256Digest;
use crate::image::import::layout_tarball;
use crate::image::spec::Platform;
use crate::image::stored::StoredImage;
use crate::progress::Progress;
use crate::shared_cache::CacheSpec;
use crate::solver::{Outcome, Reporter, Stream};
use crate::store::{ImageRecord, Store};

/// The daemon's address: `FLEDGE_BUILDKIT_ADDR`, else buildctl's default.
fn address() -> String {
    std::env::var("FLEDGE_BUILDKIT_ADDR")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| fledge_buildkit::address::DEFAULT.to_string())
}

/// TLS for a `tcp://` daemon, from `FLEDGE_BUILDKIT_TLS_CA`, `_CERT`, `_KEY` and
/// `_SERVER_NAME` (buildctl's `--tlscacert`, `--tlscert`, `--tlskey`, `--tlsservername`), or
/// `FLEDGE_BUILDKIT_TLS_DIR` holding `ca.pem`, `cert.pem` and `key.pem` (buildctl's
/// `--tlsdir`; the single variables win). None of them set: no TLS.
fn tls() -> Result<Option<Tls>> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    let dir = var("FLEDGE_BUILDKIT_TLS_DIR");
    if let Some(dir) = dir.as_ref().filter(|d| !d.is_dir()) {
        bail!("FLEDGE_BUILDKIT_TLS_DIR={}: not a directory (it holds ca.pem, cert.pem and key.pem)", dir.display());
    }
    let in_dir = |file: &str| dir.as_ref().map(|d| d.join(file)).filter(|p| p.exists());
    let ca = var("FLEDGE_BUILDKIT_TLS_CA").or_else(|| in_dir("ca.pem"));
    let cert = var("FLEDGE_BUILDKIT_TLS_CERT").or_else(|| in_dir("cert.pem"));
    let key = var("FLEDGE_BUILDKIT_TLS_KEY").or_else(|| in_dir("key.pem"));
    let server_name = std::env::var("FLEDGE_BUILDKIT_TLS_SERVER_NAME").ok().filter(|v| !v.is_empty());
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(cert), None) => bail!(
            "the client certificate {} has no key: set FLEDGE_BUILDKIT_TLS_KEY (or put key.pem beside cert.pem in FLEDGE_BUILDKIT_TLS_DIR)",
            cert.display()
        ),
        (None, Some(key)) => bail!(
            "the client key {} has no certificate: set FLEDGE_BUILDKIT_TLS_CERT (or put cert.pem beside key.pem in FLEDGE_BUILDKIT_TLS_DIR)",
            key.display()
        ),
    };
    if dir.is_none() && ca.is_none() && identity.is_none() && server_name.is_none() {
        return Ok(None);
    }
    Ok(Some(Tls { ca, identity, server_name }))
}

pub fn dockerfile(
    request: &Request,
    secrets: HashMap<String, std::path::PathBuf>,
    progress: &Progress,
) -> Result<Built> {
    let dockerfile_dir =
        request.dockerfile.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let filename = request.dockerfile.file_name().context("the Dockerfile path names no file")?.to_string_lossy();
    // The artifact boots on this machine, so it is built for this machine's platform, as the
    // embedded engine builds, whatever the daemon's own is.
    let mut attrs = BTreeMap::from([
        ("filename".to_string(), filename.into_owned()),
        ("platform".to_string(), crate::image::spec::Platform::host().to_string()),
    ]);
    if let Some(target) = &request.target {
        attrs.insert("target".into(), target.clone());
    }
    for (key, value) in &request.build_args {
        attrs.insert(format!("build-arg:{key}"), value.clone());
    }
    // Named contexts are read from Fledge's store through the session's content service.
    let store = Store::open(crate::dirs::state_dir().as_deref())?;
    let contexts = crate::build::named_contexts(&store, request.contexts, progress)?;
    for context in &contexts.images {
        attrs.insert(format!("context:{}", context.name), format!("oci-layout://{CONTENT_STORE}@{}", context.digest));
    }
    // Local directories are served in the session under their own names.
    for (local, _) in &contexts.locals {
        attrs.insert(format!("context:{}", local.name), format!("local:{}", local.name));
    }
    let content = (!contexts.images.is_empty()).then(|| {
        let blobs = store.root().join("blobs/sha256");
        fledge_buildkit::ContentStore {
            id: CONTENT_STORE.into(),
            blob: Arc::new(move |digest: &str| {
                let hex = digest.strip_prefix("sha256:")?;
                let path = blobs.join(hex);
                (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) && path.is_file()).then_some(path)
            }),
        }
    });
    drop(store);
    let exporter = control::Exporter { r#type: "oci".into(), attrs: BTreeMap::new() };
    let solve_request = control::SolveRequest {
        frontend: "dockerfile.v0".into(),
        frontend_attrs: attrs,
        exporter_deprecated: exporter.r#type.clone(),
        exporters: vec![exporter],
        cache: Some(cache_options(request.cache)?),
        entitlements: request.entitlements.names(),
        ..Default::default()
    };
    let mut dirs = HashMap::from([
        ("context".to_string(), std::path::absolute(request.context)?),
        ("dockerfile".to_string(), std::path::absolute(dockerfile_dir)?),
    ]);
    dirs.extend(contexts.locals.into_iter().map(|(local, dir)| (local.name, dir)));
    solve(solve_request, dirs, secrets, content, request.progress, progress)
}

/// The store id Fledge's store has in the session's content service.
const CONTENT_STORE: &str = "fledge-store";

/// An LLB definition, solved by the daemon as it is; its local source `context` is `context`.
pub fn definition(
    definition: &fledge_llb::pb::Definition,
    context: &std::path::Path,
    secrets: HashMap<String, std::path::PathBuf>,
    (cache, entitlements): (CacheFlags, crate::build::Entitlements),
    mode: ProgressMode,
    progress: &Progress,
) -> Result<Built> {
    let exporter = control::Exporter { r#type: "oci".into(), attrs: BTreeMap::new() };
    let solve_request = control::SolveRequest {
        definition: Some(definition.clone()),
        exporter_deprecated: exporter.r#type.clone(),
        exporters: vec![exporter],
        cache: Some(cache_options(cache)?),
        entitlements: entitlements.names(),
        ..Default::default()
    };
    let dirs = HashMap::from([("context".to_string(), std::path::absolute(context)?)]);
    solve(solve_request, dirs, secrets, None, mode, progress)
}

/// Runs `solve_request` on the daemon with `dirs` and `secrets` served, and imports the OCI
/// image it exports into the store as it arrives (a thread reads the export while the daemon
/// sends it: one pass, no temporary copy).
fn solve(
    solve_request: control::SolveRequest,
    dirs: HashMap<String, std::path::PathBuf>,
    secrets: HashMap<String, std::path::PathBuf>,
    content: Option<fledge_buildkit::ContentStore>,
    mode: ProgressMode,
    progress: &Progress,
) -> Result<Built> {
    let store = Store::open(crate::dirs::state_dir().as_deref())?;
    let (tarball, arriving) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let session = Session {
        dirs,
        secrets,
        outputs: HashMap::from([("0".to_string(), Output::stream(tarball))]),
        credentials: Some(Arc::new(|host: &str| {
            crate::image::auth::lookup(host).ok().flatten().map(|c| (c.username, c.password))
        })),
        content,
    };
    let display = Arc::new(BuildDisplay::new(mode, progress.is_quiet()));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let address = address();
    let tls = tls()?;
    let manifest = std::thread::scope(|scope| -> Result<Sha256Digest> {
        let import = scope.spawn(|| {
            let mut export = ChannelReader::new(arriving);
            let imported = layout_tarball(&store, &mut export, "the daemon's export", None, &Platform::host())
                .map_err(anyhow::Error::from)
                .and_then(|digest| Ok(crate::image::diff_ids::check_stored(&store, &digest).map(|()| digest)?));
            // What the importer did not read (after an error, or the tar's end padding)
            // is still taken, so the daemon's send finishes.
            export.drain();
            imported
        });
        let solved = runtime.block_on(async {
            let mut daemon = Daemon::connect(&address, tls.as_ref()).await?;
            let version = daemon.info().await?;
            tracing::info!("building on buildkitd {} at {address}", version.version);
            let (events, mut updates) = tokio::sync::mpsc::unbounded_channel();
            let shown = display.clone();
            let forward = tokio::spawn(async move {
                let mut steps = Steps::default();
                while let Some(update) = updates.recv().await {
                    steps.show(&update, shown.as_ref());
                }
            });
            let solved = daemon.solve(solve_request, session, events).await;
            let _ = forward.await;
            solved.map(|_| ()).map_err(anyhow::Error::from)
        });
        // Ends the session's tasks, so the export stream is closed even when no export came.
        drop(runtime);
        let imported = import.join().map_err(|_| anyhow::anyhow!("importing the daemon's export failed (panic)"))?;
        solved?;
        imported.context("the daemon's result is not a usable OCI image")
    })?;
    display.summary();
    // Recorded, not tagged: the build's image stays out of `fledge image ls`.
    let host = Platform::host();
    let record = ImageRecord {
        name: "daemon build".into(),
        digest: manifest.to_string(),
        source: "build".into(),
        platform: host.to_string(),
    };
    let image = StoredImage::load(&store, record)?;
    let layers =
        image.manifest.layers.iter().map(|l| l.digest.parse().map_err(anyhow::Error::msg)).collect::<Result<_>>()?;
    let config_digest = image.manifest.config.digest.parse().map_err(anyhow::Error::msg)?;
    let config_json = serde_json::from_slice(&store.read_blob(&config_digest)?)?;
    Ok(Built { layers, config: image.config, image: config_json })
}

/// `--cache-to`/`--cache-from` as the daemon's cache options: `type=registry,ref=REF,...`
/// becomes an entry of that type with the other keys as its attributes.
fn cache_options(cache: CacheFlags) -> Result<control::CacheOptions> {
    let entries = |specs: &[String], flag: &str| -> Result<Vec<control::CacheOptionsEntry>> {
        specs
            .iter()
            .map(|spec| {
                let CacheSpec { kind, attrs } = CacheSpec::parse(flag, spec)?;
                Ok(control::CacheOptionsEntry { r#type: kind, attrs: attrs.into_iter().collect() })
            })
            .collect()
    };
    Ok(control::CacheOptions {
        exports: entries(cache.to, "--cache-to")?,
        imports: entries(cache.from, "--cache-from")?,
    })
}

/// The daemon's status updates as steps: a vertex is reported when it starts and when it
/// completes (BuildKit sends the same vertex again as it changes).
#[derive(Default)]
struct Steps {
    started: HashMap<String, Option<prost_types::Timestamp>>,
    finished: std::collections::HashSet<String>,
}

fn seconds(from: &Option<prost_types::Timestamp>, to: &prost_types::Timestamp) -> f64 {
    from.as_ref().map_or(0.0, |from| (to.seconds - from.seconds) as f64 + f64::from(to.nanos - from.nanos) / 1e9)
}

impl Steps {
    fn show(&mut self, update: &control::StatusResponse, reporter: &dyn Reporter) {
        for vertex in &update.vertexes {
            if vertex.started.is_some() && !self.started.contains_key(&vertex.digest) {
                self.started.insert(vertex.digest.clone(), vertex.started);
                reporter.started(&vertex.digest, &vertex.name);
            }
            if let Some(completed) = &vertex.completed
                && self.finished.insert(vertex.digest.clone())
            {
                if !self.started.contains_key(&vertex.digest) {
                    reporter.started(&vertex.digest, &vertex.name);
                }
                let outcome = match (vertex.cached, vertex.error.is_empty()) {
                    (_, false) => Outcome::Failed(vertex.error.clone()),
                    (true, true) => Outcome::Cached,
                    (false, true) => Outcome::Done,
                };
                let began = self.started.get(&vertex.digest).copied().flatten();
                reporter.finished(&vertex.digest, &vertex.name, &outcome, seconds(&began, completed));
            }
        }
        for log in &update.logs {
            let stream = if log.stream == 2 { Stream::Stderr } else { Stream::Stdout };
            reporter.output(&log.vertex, stream, &log.msg);
        }
    }
}
