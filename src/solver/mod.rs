//! The embedded build engine: solves an LLB definition into a stack of layers in the store.
//!
//! Each op's result is a [`Value`]: the build context, or a filesystem as layer blobs (bottom
//! first). SourceOps resolve images through the store; FileOps run on the host and add one
//! layer ([`fileop`]); ExecOps run in a build VM ([`guest`]) and add the diff of their
//! overlay upper; MergeOps stack layers. Results are cached by a key made of the op's bytes,
//! its inputs' keys and the content of the context files it copies ([`context`]), so an
//! unchanged step is never run again and an untouched file never busts the cache.
//!
//! Steps whose inputs are ready run at once on worker threads, so independent stages build
//! in parallel; RUN steps share a pool of build VMs ([`vms`]). The first failure cancels the
//! steps still running, as Ctrl-C does.

mod chmod;
mod context;
mod fileop;
mod guest;
mod located;
mod sources;
mod vms;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use anyhow::{Context as _, Result, bail};
use fledge_llb::{graph, pb};
use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::microvm::Machine;
use crate::progress::Progress;
use crate::store::Store;

/// An op's result.
#[derive(Debug, Clone)]
pub enum Value {
    /// A local directory (`local://NAME`: the build context, or a named context), with its
    /// `.dockerignore` patterns.
    Context { dir: PathBuf, excludes: Vec<String> },
    /// A filesystem: layer blobs in the store, bottom first (empty = scratch).
    Layers(Vec<Sha256Digest>),
}

impl Value {
    fn layers(&self, what: &str) -> Result<&[Sha256Digest]> {
        match self {
            Value::Layers(layers) => Ok(layers),
            Value::Context { .. } => bail!("{what}: a local directory cannot be used as a filesystem here"),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Done,
    Failed(String),
}

/// Which output of a step's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// Where the solver reports its steps (identified by op digest) as they start, print and end.
pub trait Reporter: Send + Sync {
    fn started(&self, id: &str, name: &str);
    fn output(&self, id: &str, stream: Stream, data: &[u8]);
    fn finished(&self, id: &str, name: &str, outcome: &Outcome, seconds: f64);
}

/// A step's process output, forwarded to the reporter as it arrives.
struct StepOutput {
    reporter: Arc<dyn Reporter>,
    id: String,
    stream: Stream,
}

impl tokio::io::AsyncWrite for StepOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.reporter.output(&self.id, self.stream, data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

pub struct Solver<'a> {
    store: &'a Store,
    /// The local directories a definition may read (`local://NAME`): the build context
    /// (`context`) and named contexts.
    locals: HashMap<String, PathBuf>,
    progress: &'a Progress,
    find_machine: Option<Box<dyn Fn() -> Result<Machine> + Sync + 'a>>,
    /// Secret id → the host file holding it (`--secret`); never part of a cache key.
    secrets: HashMap<String, PathBuf>,
    runtime: tokio::runtime::Runtime,
    reporter: Arc<dyn Reporter>,
    /// Set by the first failure: the steps still running stop.
    cancelled: AtomicBool,
    /// Records from other hosts' builds (`--cache-from`), for keys the store has none of.
    imported: Option<&'a dyn ImportedCache>,
    /// What the steps made or found, for `--cache-to`.
    used: Mutex<CacheUse>,
    /// What `--allow` granted.
    entitlements: crate::build::Entitlements,
}

/// What a solve's steps produced, for sharing its cache (`--cache-to`).
#[derive(Default, Clone)]
pub struct CacheUse {
    /// Every step's cache key and result layers, made or found, in the order they finished
    /// (sources excepted: every host resolves its own).
    pub records: Vec<(Sha256Digest, Vec<Sha256Digest>)>,
    /// The layers sources resolved to (base images, downloads). A record's key covers what
    /// its sources resolved to, so a host that computes the key has these layers already.
    pub sourced: HashSet<Sha256Digest>,
}

/// Cache records from elsewhere: consulted when the store has no record of a key. `has`
/// says whether there is one (cheaply: no download); `layers` brings the record's layers
/// into the store (verified) and returns them, or `None`.
pub trait ImportedCache: Sync {
    fn has(&self, key: &Sha256Digest) -> bool;
    fn layers(&self, key: &Sha256Digest) -> Option<Vec<Sha256Digest>>;
}

/// Where a step's result was found before it runs.
enum Found {
    Cached(Vec<Sha256Digest>),
    Importable,
    Missing,
}

/// The kind of cache record: an op's cache key → its result layers.
const CACHE_RECORD: &str = "build-cache-v1";

/// The ops of a definition, in its order (inputs before the ops that use them).
struct Graph {
    ops: HashMap<String, (pb::Op, Vec<u8>)>,
    order: Vec<String>,
    metadata: HashMap<String, pb::OpMetadata>,
    /// Where each op is written, to show a failure at its line.
    sources: located::SourceMap,
}

impl Graph {
    fn new(definition: &pb::Definition) -> Result<Self> {
        let mut ops = HashMap::new();
        let mut order = Vec::new();
        for bytes in &definition.def {
            let op = pb::Op::decode(&bytes[..]).context("the definition holds an op that does not decode")?;
            let digest = graph::sha256_digest(bytes);
            order.push(digest.clone());
            ops.insert(digest, (op, bytes.clone()));
        }
        let metadata = definition.metadata.clone().into_iter().collect();
        Ok(Graph { ops, order, metadata, sources: located::SourceMap::new(definition) })
    }

    fn inputs(&self, digest: &str) -> impl Iterator<Item = &str> {
        self.ops.get(digest).into_iter().flat_map(|(op, _)| op.inputs.iter().map(|i| i.digest.as_str()))
    }

    /// The ops `target` needs, itself included.
    fn needed(&self, target: &str) -> Result<HashSet<String>> {
        let mut needed = HashSet::new();
        let mut pending = vec![target.to_string()];
        while let Some(digest) = pending.pop() {
            if !self.ops.contains_key(&digest) {
                bail!("the definition lacks op {digest}");
            }
            if needed.insert(digest.clone()) {
                pending.extend(self.inputs(&digest).map(String::from));
            }
        }
        Ok(needed)
    }

    fn name_of(&self, digest: &str) -> String {
        self.metadata
            .get(digest)
            .and_then(|m| m.description.get("llb.customname"))
            .cloned()
            .unwrap_or_else(|| digest.to_string())
    }
}

/// What the workers share: results so far, what has started, and the first failure.
#[derive(Default)]
struct Schedule {
    results: HashMap<String, (Value, Sha256Digest)>,
    started: HashSet<String>,
    running: usize,
    failure: Option<anyhow::Error>,
}

impl<'a> Solver<'a> {
    pub fn new(
        store: &'a Store,
        locals: HashMap<String, PathBuf>,
        machine: Box<dyn Fn() -> Result<Machine> + Sync + 'a>,
        progress: &'a Progress,
        secrets: HashMap<String, PathBuf>,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        Ok(Solver {
            store,
            locals,
            progress,
            find_machine: Some(machine),
            secrets,
            runtime,
            reporter,
            cancelled: AtomicBool::new(false),
            imported: None,
            used: Mutex::new(CacheUse::default()),
            entitlements: Default::default(),
        })
    }

    /// Consults `imported` for the steps the store has no cache record of.
    /// Grants the steps what `--allow` names.
    pub fn grant(&mut self, entitlements: crate::build::Entitlements) {
        self.entitlements = entitlements;
    }

    pub fn import_cache(&mut self, imported: &'a dyn ImportedCache) {
        self.imported = Some(imported);
    }

    /// What the last solve's steps made or found.
    pub fn used(&self) -> CacheUse {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Solves `definition`; returns the result's layers, bottom first.
    pub fn solve(&mut self, definition: &pb::Definition) -> Result<Vec<Sha256Digest>> {
        let graph = Graph::new(definition)?;
        let terminal = definition.def.last().context("the definition is empty")?;
        let terminal = pb::Op::decode(&terminal[..])?;
        let [result] = terminal.inputs.as_slice() else { bail!("the definition's last op must name one result") };
        let needed = graph.needed(&result.digest)?;
        let caches = cache_volumes(&graph, &needed);
        let find_machine = self.find_machine.take().context("a solver solves once")?;
        let vms = vms::Pool::new(self.store, find_machine, caches)?;
        let schedule = Mutex::new(Schedule::default());
        let changed = Condvar::new();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(2, 8);
        let this = &*self;
        // VMs die with the thread that started them (PR_SET_PDEATHSIG), so the workers live
        // until the VMs are powered off: they wait at the gate, which opens after.
        let gate = RwLock::new(());
        let shutdown = std::thread::scope(|scope| {
            let closed = gate.write().unwrap_or_else(|p| p.into_inner());
            for _ in 0..workers {
                scope.spawn(|| {
                    this.work(&graph, &needed, &result.digest, &vms, &schedule, &changed);
                    drop(gate.read());
                });
            }
            let mut state = schedule.lock().unwrap_or_else(|p| p.into_inner());
            while state.running > 0 || (state.failure.is_none() && !state.results.contains_key(&result.digest)) {
                state = changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            drop(state);
            let shutdown = self.runtime.block_on(vms.shutdown());
            drop(closed);
            shutdown
        });
        let mut schedule = schedule.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(failure) = schedule.failure.take() {
            return Err(failure);
        }
        shutdown?;
        let (value, _) = schedule.results.remove(&result.digest).context("the build stopped before its result")?;
        Ok(value.layers("the build result")?.to_vec())
    }

    /// A worker: takes the first step (in definition order) whose inputs are done, runs it,
    /// records its result; until the target is done or a step failed.
    fn work(
        &self,
        graph: &Graph,
        needed: &HashSet<String>,
        target: &str,
        vms: &vms::Pool<'_>,
        schedule: &Mutex<Schedule>,
        changed: &Condvar,
    ) {
        let lock = || schedule.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let mut state = lock();
            let (digest, inputs) = loop {
                if state.failure.is_some() || state.results.contains_key(target) {
                    return;
                }
                let ready = graph.order.iter().find(|d| {
                    needed.contains(*d)
                        && !state.started.contains(*d)
                        && graph.inputs(d).all(|i| state.results.contains_key(i))
                });
                if let Some(digest) = ready {
                    let inputs: Vec<_> = graph.inputs(digest).map(|i| state.results[i].clone()).collect();
                    state.started.insert(digest.clone());
                    state.running += 1;
                    break (digest.clone(), inputs);
                }
                if state.running == 0 {
                    state.failure = Some(anyhow::anyhow!("the build graph cannot reach its result (a cycle?)"));
                    changed.notify_all();
                    return;
                }
                state = changed.wait(state).unwrap_or_else(|p| p.into_inner());
            };
            drop(state);
            // A panic is the step's failure: the other workers and the waiting caller must
            // still see the step end, or the build would wait for it forever.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.evaluate(graph, &digest, inputs, vms)))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or(panic.downcast_ref::<&str>().copied());
                        let message = format!("internal error: {}", what.unwrap_or("panic"));
                        self.reporter.finished(
                            &digest,
                            &graph.name_of(&digest),
                            &Outcome::Failed(message.clone()),
                            0.0,
                        );
                        Err(anyhow::anyhow!("{message} in step {}", graph.name_of(&digest)))
                    });
            let mut state = lock();
            state.running -= 1;
            match outcome {
                Ok(result) => {
                    state.results.insert(digest, result);
                }
                Err(e) => {
                    self.cancelled.store(true, Ordering::SeqCst);
                    // The first failure is the build's; the cancellations it causes are not.
                    if state.failure.is_none() {
                        state.failure = Some(graph.sources.locate(&digest, e));
                    }
                }
            }
            changed.notify_all();
        }
    }

    /// An op's result and cache key, from its inputs' results.
    fn evaluate(
        &self,
        graph: &Graph,
        digest: &str,
        inputs: Vec<(Value, Sha256Digest)>,
        vms: &vms::Pool<'_>,
    ) -> Result<(Value, Sha256Digest)> {
        let (op, bytes) = &graph.ops[digest];
        let mut hasher = Sha256::new();
        hasher.update(b"fledge-cache-v1\0");
        hasher.update(bytes);
        for (_, key) in &inputs {
            hasher.update(key.hex().as_bytes());
        }
        let inputs: Vec<Value> = inputs.into_iter().map(|(value, _)| value).collect();
        let payload = op.op.clone().with_context(|| format!("op {digest} has no payload"))?;
        let checksums = match &payload {
            pb::op::Op::File(file) => context::copied_checksums(file, &inputs)?,
            pb::op::Op::Exec(exec) => context::bound_checksums(exec, &inputs)?,
            _ => Vec::new(),
        };
        for checksum in checksums {
            hasher.update(checksum.as_bytes());
        }
        let key = Sha256Digest(hasher.finalize().into());
        let name = graph.name_of(digest);
        let found = self.find(&key, &payload);
        // A RUN that runs gets its VM first (booting one is a step of its own), so the
        // step's time is its own.
        let mut lease = match (&found, &payload) {
            (Found::Missing, pb::op::Op::Exec(exec)) => Some(self.lease(vms, exec, &inputs)?),
            _ => None,
        };
        let started = std::time::Instant::now();
        self.reporter.started(digest, &name);
        // An import is the step's work (its time is the download's); one that fails leaves
        // the step to run.
        let found = match found {
            Found::Importable => self.import(&key).map_or(Found::Missing, Found::Cached),
            other => other,
        };
        let outcome = match (found, &payload) {
            (Found::Cached(layers), _) => Ok((Value::Layers(layers), true)),
            (_, pb::op::Op::Source(_)) => self.source(&payload, op),
            (_, pb::op::Op::Exec(exec)) => {
                let leased = match lease {
                    Some(_) => Ok(()),
                    None => self.lease(vms, exec, &inputs).map(|l| lease = Some(l)),
                };
                leased
                    .and_then(|()| self.exec(digest, exec, &inputs, lease.as_mut().expect("leased above").guest()))
                    .map(|v| (v, false))
            }
            (_, _) => self.run(&payload, &inputs, &name).map(|value| (value, false)),
        };
        let seconds = started.elapsed().as_secs_f64();
        let (value, hit) = match outcome {
            Ok(done) => done,
            Err(e) => {
                self.reporter.finished(digest, &name, &Outcome::Failed(format!("{e:#}")), seconds);
                return Err(e.context(format!("{name} failed")));
            }
        };
        if let Some(lease) = lease {
            vms.give_back(lease);
        }
        if let Value::Layers(layers) = &value {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(payload, pb::op::Op::Source(_)) {
                used.sourced.extend(layers.iter().copied());
            } else {
                if !hit {
                    self.remember(&key, layers)?;
                }
                used.records.push((key, layers.clone()));
            }
        }
        let outcome = if hit { Outcome::Cached } else { Outcome::Done };
        self.reporter.finished(digest, &name, &outcome, seconds);
        // A source's key is what it resolved to, so a tag that moved or a URL whose content
        // changed busts the steps built on it.
        let key = match (&payload, &value) {
            (pb::op::Op::Source(_), Value::Layers(layers)) => {
                let resolved: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
                Sha256Digest::of_bytes(format!("{}\0{}", key.hex(), resolved.join(",")).as_bytes())
            }
            _ => key,
        };
        Ok((value, key))
    }

    /// Where the step's result is: cached here (its layers all still in the store), in an
    /// imported cache, or nowhere.
    fn find(&self, key: &Sha256Digest, payload: &pb::op::Op) -> Found {
        if matches!(payload, pb::op::Op::Source(_)) {
            return Found::Missing; // sources are cheap to resolve and their own cache (the store)
        }
        let local = || {
            let record = self.store.read_derived(CACHE_RECORD, key)?;
            let names: Vec<String> = serde_json::from_slice(&record).ok()?;
            let layers: Vec<Sha256Digest> = names.iter().map(|n| n.parse().ok()).collect::<Option<_>>()?;
            layers.iter().all(|l| self.store.has_blob(l)).then_some(layers)
        };
        match local() {
            Some(layers) => Found::Cached(layers),
            None if self.imported.is_some_and(|i| i.has(key)) => Found::Importable,
            None => Found::Missing,
        }
    }

    /// The imported cache's result for `key`, its layers brought into the store and
    /// recorded here.
    fn import(&self, key: &Sha256Digest) -> Option<Vec<Sha256Digest>> {
        let layers = self.imported?.layers(key)?;
        // Not recording it only costs a second import next time.
        if let Err(e) = self.remember(key, &layers) {
            tracing::warn!("cannot record imported cache {key}: {e:#}");
        }
        Some(layers)
    }

    /// A build VM for `exec`, from the pool (booting one if none is free).
    fn lease<'p, 'v>(&self, vms: &'p vms::Pool<'v>, exec: &pb::ExecOp, inputs: &[Value]) -> Result<vms::Lease<'p, 'v>> {
        let needs_caches = exec.mounts.iter().any(|m| m.cache_opt.is_some());
        vms.take(&root_layers(exec, inputs)?, needs_caches, &|machine, volumes, number| {
            self.boot(machine, volumes, number)
        })
    }

    /// Records `layers` as the result of the step whose cache key is `key`.
    fn remember(&self, key: &Sha256Digest, layers: &[Sha256Digest]) -> Result<()> {
        let record = serde_json::to_vec(&layers.iter().map(|l| l.to_string()).collect::<Vec<_>>())?;
        Ok(self.store.write_derived(CACHE_RECORD, key, &record)?)
    }

    /// Runs a host op (file, merge, diff).
    fn run(&self, payload: &pb::op::Op, inputs: &[Value], name: &str) -> Result<Value> {
        match payload {
            pb::op::Op::Source(_) | pb::op::Op::Exec(_) => unreachable!("evaluate runs sources and execs"),
            pb::op::Op::File(file) => fileop::run(self.store, file, inputs),
            pb::op::Op::Merge(merge) => {
                let mut layers = Vec::new();
                for input in &merge.inputs {
                    let value = inputs.get(input.input as usize).context("a merge input is out of range")?;
                    layers.extend_from_slice(value.layers("a merge input")?);
                }
                Ok(Value::Layers(layers))
            }
            pb::op::Op::Diff(diff) => {
                // -1 stands for scratch on either side.
                let side = |index: Option<i64>| -> Result<Vec<Sha256Digest>> {
                    match index.unwrap_or(-1) {
                        -1 => Ok(Vec::new()),
                        i => Ok(inputs
                            .get(i as usize)
                            .context("a diff input is out of range")?
                            .layers("a diff input")?
                            .to_vec()),
                    }
                };
                let lower = side(diff.lower.as_ref().map(|l| l.input))?;
                let upper = side(diff.upper.as_ref().map(|u| u.input))?;
                match upper.strip_prefix(lower.as_slice()) {
                    Some(added) => Ok(Value::Layers(added.to_vec())),
                    None => bail!(
                        "{name}: the embedded engine diffs only a filesystem against one it was built on (the lower's layers must start the upper's)"
                    ),
                }
            }
            other => bail!("{name}: {} ops are not supported by the embedded engine", kind(other)),
        }
    }

    /// A source's value, and whether it was at hand (the context, or an image already in the
    /// store) rather than fetched.
    fn source(&self, payload: &pb::op::Op, op: &pb::Op) -> Result<(Value, bool)> {
        let pb::op::Op::Source(source) = payload else { unreachable!("called for sources") };
        if let Some(name) = source.identifier.strip_prefix("local://") {
            let dir = self.locals.get(name).with_context(|| {
                format!(
                    "the build reads the local directory {name:?}, which it was not given (--build-context {name}=DIR)"
                )
            })?;
            let mut excludes: Vec<String> = match source.attrs.get("local.excludepatterns") {
                Some(json) => serde_json::from_str(json).context("local.excludepatterns is not a JSON list")?,
                None => Vec::new(),
            };
            // Fledge's own state (the store, running builds' temporary files and VM sockets)
            // is never part of an image, even when the state directory lies in the context.
            let state = self.store.root().parent().and_then(|s| std::path::absolute(s).ok());
            let inside = state.zip(std::path::absolute(dir).ok()).and_then(|(s, d)| {
                s.strip_prefix(&d).ok().filter(|r| !r.as_os_str().is_empty()).map(|r| r.to_string_lossy().into_owned())
            });
            excludes.extend(inside);
            return Ok((Value::Context { dir: dir.clone(), excludes }, true));
        }
        if source.identifier.starts_with("http://") || source.identifier.starts_with("https://") {
            return Ok((Value::Layers(vec![sources::http(self.store, source)?]), false));
        }
        let platform = op.platform.clone().unwrap_or_default();
        let platform = crate::image::spec::Platform {
            architecture: platform.architecture,
            os: platform.os,
            variant: (!platform.variant.is_empty()).then_some(platform.variant),
        };
        let image = if let Some(layout) = source.identifier.strip_prefix("oci-layout://") {
            crate::image::source::ImageSource::parse(
                &format!("oci-layout:{layout}"),
                self.locals.get("context").map_or(Path::new("."), PathBuf::as_path),
            )
            .map_err(anyhow::Error::msg)?
        } else if let Some(reference) = source.identifier.strip_prefix("docker-image://") {
            crate::image::source::ImageSource::Registry(
                fledge_llb::ImageRef::parse(reference).map_err(anyhow::Error::msg)?,
            )
        } else {
            bail!(
                "{}: this kind of source is not supported by the embedded engine (git sources need a daemon: FLEDGE_BUILDKIT_MODE=daemon)",
                source.identifier
            );
        };
        // At hand: stored under its name, or pinned by a digest the store has.
        let at_hand = match &image {
            crate::image::source::ImageSource::Registry(r) => {
                let pinned = r.digest.as_ref().and_then(|d| d.parse::<Sha256Digest>().ok());
                self.store.lookup(&r.to_string())?.is_some() || pinned.is_some_and(|d| self.store.has_blob(&d))
            }
            _ => true,
        };
        Ok((Value::Layers(sources::image(self.store, &image, &platform, self.progress)?), at_hand))
    }

    fn exec(&self, digest: &str, exec: &pb::ExecOp, inputs: &[Value], guest: &mut guest::Guest) -> Result<Value> {
        // BuildKit's entitlements: network.host cannot be granted (the step runs in a
        // microVM with no host network to share); security.insecure only with --allow.
        if exec.network == pb::NetMode::Host as i32 {
            bail!("network.host is not allowed: build steps run in a microVM, which has no host network to share");
        }
        if exec.security == pb::SecurityMode::Insecure as i32 && !self.entitlements.insecure {
            bail!("security.insecure is not allowed: grant it with --allow security.insecure, as buildctl's --allow");
        }
        let base = root_layers(exec, inputs)?;
        // What each bind mount shows, and what a cache mount starts from if new (its
        // `from`): a stage's or image's layers, or the context as a layer.
        let mut shown = HashMap::new();
        let seeds = |m: &pb::Mount| m.mount_type == pb::MountType::Cache as i32 && m.input >= 0;
        for mount in
            exec.mounts.iter().filter(|m| (m.mount_type == pb::MountType::Bind as i32 || seeds(m)) && m.dest != "/")
        {
            let layers = match mount.input {
                -1 => Vec::new(),
                i => match inputs.get(i as usize).context("a bind mount's input is out of range")? {
                    Value::Layers(layers) => layers.clone(),
                    Value::Context { dir, excludes } => vec![fileop::context_layer(self.store, dir, excludes)?],
                },
            };
            shown.insert(mount.dest.clone(), layers);
        }
        let output = |stream| StepOutput { reporter: self.reporter.clone(), id: digest.to_string(), stream };
        let (mut stdout, mut stderr) = (output(Stream::Stdout), output(Stream::Stderr));
        let run = guest.run(self.store, &base, exec, &self.secrets, &shown, (&mut stdout, &mut stderr));
        let diff = self.interruptible(run)?;
        let mut layers = base;
        layers.push(diff);
        Ok(Value::Layers(layers))
    }
}

impl Solver<'_> {
    /// Boots build VM `number`; shown as a step of its own.
    fn boot(&self, machine: &Machine, volumes: guest::Volumes, number: usize) -> Result<guest::Guest> {
        let (id, name) = match number {
            0 => ("boot".to_string(), "[internal] boot the build VM".to_string()),
            n => (format!("boot-{n}"), format!("[internal] boot build VM {}", n + 1)),
        };
        if self.cancelled.load(Ordering::SeqCst) {
            bail!("cancelled: another step failed");
        }
        crate::interrupt::check()?;
        let started = std::time::Instant::now();
        self.reporter.started(&id, &name);
        let booted = self.interruptible(guest::Guest::boot(machine, volumes));
        let outcome = match &booted {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        self.reporter.finished(&id, &name, &outcome, started.elapsed().as_secs_f64());
        booted
    }

    /// Runs `work`, giving up when Ctrl-C is pressed or another step failed (what `work`
    /// holds, such as the build VM, is dropped, which stops it).
    fn interruptible<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        self.runtime.block_on(async {
            let interrupted = async {
                loop {
                    if let Err(e) = crate::interrupt::check() {
                        return anyhow::Error::from(e);
                    }
                    if self.cancelled.load(Ordering::SeqCst) {
                        return anyhow::anyhow!("cancelled: another step failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                done = work => done,
                e = interrupted => Err(e),
            }
        })
    }
}

/// The cache volumes the `needed` exec ops mount, each with the mode and owner its root
/// starts with: an owned cache's input is a `mkdir` on scratch saying them (the frontend's
/// `uid=`, `gid=`, `mode=`).
fn cache_volumes(graph: &Graph, needed: &HashSet<String>) -> Vec<guest::CacheVolume> {
    let mut volumes: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for digest in graph.order.iter().filter(|d| needed.contains(*d)) {
        let (op, _) = &graph.ops[digest];
        let Some(pb::op::Op::Exec(exec)) = &op.op else { continue };
        for mount in &exec.mounts {
            let Some(cache) = &mount.cache_opt else { continue };
            let seed = usize::try_from(mount.input).ok().and_then(|i| op.inputs.get(i)).and_then(|input| {
                let Some(pb::op::Op::File(file)) = &graph.ops.get(&input.digest)?.0.op else { return None };
                file.actions.iter().find_map(|action| match &action.action {
                    Some(pb::file_action::Action::Mkdir(mkdir)) if mkdir.path == mount.selector => {
                        let id = |opt: &Option<pb::UserOpt>| match opt.as_ref().and_then(|o| o.user.as_ref()) {
                            Some(pb::user_opt::User::ById(id)) => *id,
                            _ => 0,
                        };
                        let owner = mkdir.owner.clone().unwrap_or_default();
                        Some((mkdir.mode as u32, id(&owner.user), id(&owner.group)))
                    }
                    _ => None,
                })
            });
            // BuildKit's mkdir keeps the permission bits only (mode=1777 gives 0777).
            let seed = seed.map(|(mode, uid, gid)| (mode & 0o777, uid, gid));
            volumes.entry(cache.id.clone()).or_insert(seed.unwrap_or((0o755, 0, 0)));
        }
    }
    volumes.into_iter().map(|(id, root)| guest::CacheVolume { id, root }).collect()
}

/// The layers an exec op's root mount starts from.
fn root_layers(exec: &pb::ExecOp, inputs: &[Value]) -> Result<Vec<Sha256Digest>> {
    let root = exec.mounts.iter().find(|m| m.dest == "/").context("the exec op has no root mount")?;
    Ok(match root.input {
        -1 => Vec::new(),
        i => {
            inputs.get(i as usize).context("the root mount's input is out of range")?.layers("the root mount")?.to_vec()
        }
    })
}

fn kind(op: &pb::op::Op) -> &'static str {
    match op {
        pb::op::Op::Exec(_) => "exec",
        pb::op::Op::Source(_) => "source",
        pb::op::Op::File(_) => "file",
        pb::op::Op::Build(_) => "build",
        pb::op::Op::Merge(_) => "merge",
        pb::op::Op::Diff(_) => "diff",
    }
}
