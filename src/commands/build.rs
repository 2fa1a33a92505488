//! `fledge build`: config mode (fledge.toml) and Dockerfile mode.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cli::BuildArgs;
use crate::config::{BuildConfig, FsType, InitMode, Strategy};
use crate::digest::{HashingWriter, Sha256Digest};
use crate::fetch::Fetcher;
use crate::image::flatten::{ImageLayers, flatten};
use crate::image::source::ImageSource;
use crate::image::spec::{ImageConfig, Platform};
use crate::image::stored::StoredImage;
use crate::initramfs::{self, Parts};
use crate::manifest::{self, Artifact, BootMedia, ManifestTemplate};
use crate::output::{self, Pending};
use crate::paths::ImagePath;
use crate::progress::Progress;
use crate::rootfs::walk::{LayerSource, NoLayers};
use crate::rootfs::{FileData, Node, Tree, limits};
use crate::store::Store;
use crate::{agent, btrfs, busybox, compress, dirs, erofs, ext4, mappings, squashfs};

/// Timestamp for every archive entry when `SOURCE_DATE_EPOCH` is unset: 2024-01-01T00:00:00Z,
/// the original Fledge's fixed epoch.
pub const DEFAULT_EPOCH: u32 = 1_704_067_200;

pub fn run(args: &BuildArgs, progress: &Progress) -> Result<()> {
    if let Some(llb) = &args.llb {
        return llb_mode(args, llb, progress);
    }
    match dockerfile(args)? {
        Some(dockerfile) => dockerfile_mode(args, &dockerfile, progress),
        None => config_mode(args, progress),
    }
}

fn dockerfile(args: &BuildArgs) -> Result<Option<PathBuf>> {
    match (&args.dockerfile_arg, &args.dockerfile) {
        (Some(a), Some(b)) if a != b => {
            bail!("dockerfile specified multiple times with differing values ({} and {})", a.display(), b.display())
        }
        (a, b) => Ok(a.clone().or_else(|| b.clone())),
    }
}

fn dockerfile_mode(args: &BuildArgs, dockerfile: &Path, progress: &Progress) -> Result<()> {
    if args.config.is_some() {
        bail!(
            "--config cannot be used when building directly from a Dockerfile\n  = help: drop --config, or drop the Dockerfile argument and set [source] dockerfile in fledge.toml"
        );
    }
    if args.manifest.is_some() {
        tracing::warn!("--manifest is ignored when building directly from a Dockerfile");
    }
    let meta = std::fs::metadata(dockerfile)
        .with_context(|| format!("failed to access dockerfile {}", dockerfile.display()))?;
    if meta.is_dir() {
        bail!(
            "dockerfile path {} is a directory\n  = help: pass the Dockerfile itself, e.g. {}/Dockerfile",
            dockerfile.display(),
            dockerfile.display()
        );
    }
    let context = args.context.clone().unwrap_or_else(|| {
        dockerfile.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
    });
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let mut build_args = std::collections::BTreeMap::new();
    for arg in &args.build_args {
        match arg.split_once('=') {
            None => bail!("invalid --build-arg \"{arg}\": must be in KEY=VALUE form"),
            Some((key, _)) if key.trim().is_empty() => {
                bail!("invalid --build-arg \"{arg}\": key cannot be empty")
            }
            Some((key, value)) => build_args.insert(key.to_string(), value.to_string()),
        };
    }
    let request = crate::build::Request {
        dockerfile,
        context: &context,
        target: args.target.clone(),
        build_args,
        secrets: &args.secrets,
        cache: crate::build::CacheFlags { to: &args.cache_to, from: &args.cache_from },
        contexts: &args.build_contexts,
        progress: args.progress,
        entitlements: entitlements(args),
    };
    let built = crate::build::dockerfile(&request, progress)?;
    pack_direct(args, built, dockerfile, &context_name(&context), progress)
}

/// The entitlements `--allow` grants.
fn entitlements(args: &BuildArgs) -> crate::build::Entitlements {
    crate::build::Entitlements { insecure: args.allow.contains(&crate::cli::Entitlement::SecurityInsecure) }
}

/// `fledge build --llb FILE`: an LLB definition (a `pb.Definition` in protobuf form, as
/// `fledge debug llb --format pb` and BuildKit's clients write it), built as it is; its local
/// source `context` is `--context` (default: the current directory).
fn llb_mode(args: &BuildArgs, llb: &Path, progress: &Progress) -> Result<()> {
    if dockerfile(args)?.is_some() || args.config.is_some() || args.target.is_some() || !args.build_args.is_empty() {
        bail!(
            "--llb builds a definition as it is: it takes no Dockerfile, --config, --target or --build-arg\n  = help: those belong to `fledge debug llb`, which writes the definition"
        );
    }
    let bytes = std::fs::read(llb).with_context(|| format!("cannot read {}", llb.display()))?;
    let definition = <fledge_llb::pb::Definition as prost::Message>::decode(&bytes[..]).map_err(|e| {
        anyhow::anyhow!(
            "{} is not an LLB definition ({e})\n  = help: write one with `fledge debug llb --format pb Dockerfile > FILE`",
            llb.display()
        )
    })?;
    let context = args.context.clone().unwrap_or_else(|| PathBuf::from("."));
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let cache = crate::build::CacheFlags { to: &args.cache_to, from: &args.cache_from };
    let built = crate::build::definition(
        &definition,
        &context,
        &args.secrets,
        (cache, entitlements(args)),
        args.progress,
        progress,
    )?;
    let stem = llb.file_stem().map(|s| output::sanitize(&s.to_string_lossy())).filter(|s| !s.is_empty());
    pack_direct(args, built, llb, &stem.unwrap_or_else(|| "plugin".into()), progress)
}

/// Packs what a direct build (a Dockerfile or LLB) made, as the original's synthetic config
/// says, named `name`; a finished artifact with the same inputs is not packed again.
fn pack_direct(
    args: &BuildArgs,
    built: crate::build::Built,
    source: &Path,
    name: &str,
    progress: &Progress,
) -> Result<()> {
    export_oci(args, &built, name, progress)?;
    let work = tempfile::Builder::new().prefix("fledge-direct-").tempdir()?;
    let strategy = if args.output_initramfs { Strategy::Initramfs } else { Strategy::OciRootfs };
    let (config, template) = synthetic_config(work.path(), source, name, strategy)?;
    let format = args.manifest_format.unwrap_or_default();
    let artifact = match config.filesystem.kind {
        Some(kind) => rootfs_artifact_path(args, name, kind),
        None => initramfs_artifact_path(args, &config, name),
    };
    let store = Store::open(dirs::state_dir().as_deref())?;
    let key = artifact_key(&built, &config, format, &artifact)?;
    if finished_artifact(&store, &key, &artifact) {
        progress.say(&format!("Built {} (unchanged: its inputs are the same, nothing to repack)", artifact.display()));
        return Ok(());
    }
    drop(store);
    let base = Base::Built { layers: built.layers, config: built.config, name: name.to_string() };
    match strategy {
        Strategy::OciRootfs => build_rootfs(args, &config, template, format, &base, progress)?,
        Strategy::Initramfs => build_initramfs(args, &config, &template, format, Some(&base), progress)?,
    }
    let store = Store::open(dirs::state_dir().as_deref())?;
    remember_artifact(&store, &key, &artifact)
}

/// `--export-oci FILE`: the built image as an OCI image layout tarball.
/// The image is named `NAME:latest` in the tarball's index.
fn export_oci(args: &BuildArgs, built: &crate::build::Built, name: &str, progress: &Progress) -> Result<()> {
    let Some(path) = &args.export_oci else { return Ok(()) };
    let store = Store::open(dirs::state_dir().as_deref())?;
    let step = progress.step(format!("Exporting the image to {}", path.display()), None);
    let name = format!("{name}:latest");
    let digest = crate::image::built::write_archive(&store, &built.layers, &built.image, &name, path)?;
    step.finish(&digest.to_string());
    Ok(())
}

/// Records of finished artifacts: the key of everything an artifact is made from → the file
/// written, so a rebuild with the same inputs does not repack.
const ARTIFACT_RECORD: &str = "artifact-v1";

/// The key of a direct build's artifact: the built layers and config, how it is packed and
/// where, the timestamp used, the agent put in, and this Fledge.
fn artifact_key(
    built: &crate::build::Built,
    config: &BuildConfig,
    format: manifest::ManifestFormat,
    artifact: &Path,
) -> Result<Sha256Digest> {
    let mut parts = vec![crate::VERSION.to_string(), std::path::absolute(artifact)?.display().to_string()];
    parts.extend(built.layers.iter().map(ToString::to_string));
    parts.push(serde_json::to_string(&built.config)?);
    parts.push(format!(
        "{:?} {:?} {:?} {:?} {:?} {:?}",
        config.strategy, config.filesystem, config.compression, config.init, config.source.busybox, format
    ));
    parts.push(std::env::var("SOURCE_DATE_EPOCH").unwrap_or_default());
    // The agent: an override file by its identity; a release by its version string.
    match std::env::var_os("FLEDGE_AGENT") {
        Some(path) => {
            let meta = std::fs::metadata(&path).ok();
            parts.push(format!(
                "{:?} {:?} {:?}",
                path,
                meta.as_ref().map(|m| m.len()),
                meta.and_then(|m| m.modified().ok())
            ));
        }
        None => parts.push(format!("{:?}", config.agent)),
    }
    Ok(Sha256Digest::of_bytes(parts.join("\0").as_bytes()))
}

/// The file as it was when written (size and modification time), so a changed or removed
/// artifact is rebuilt.
fn fingerprint(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    Some(format!("{} {:?}", meta.len(), meta.modified().ok()?))
}

fn finished_artifact(store: &Store, key: &Sha256Digest, artifact: &Path) -> bool {
    let recorded = store.read_derived(ARTIFACT_RECORD, key);
    let manifest_present = output::manifest_path(artifact).is_file();
    manifest_present && recorded.is_some_and(|r| fingerprint(artifact).is_some_and(|f| f.as_bytes() == r))
}

fn remember_artifact(store: &Store, key: &Sha256Digest, artifact: &Path) -> Result<()> {
    let fingerprint = fingerprint(artifact).context("the artifact just written is missing")?;
    Ok(store.write_derived(ARTIFACT_RECORD, key, fingerprint.as_bytes())?)
}

/// The output name of a direct build: the context directory's name, `plugin` without one.
fn context_name(context: &Path) -> String {
    let absolute = std::path::absolute(context).unwrap_or_else(|_| context.to_path_buf());
    let base = absolute.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if base.is_empty() || base == "." || base == "/" { "plugin".into() } else { output::sanitize(&base) }
}

/// The configuration a direct build uses, as the original Fledge synthesises it: a squashfs
/// rootfs with the defaults and the released agent, and a manifest named after the context.
/// `source` (the Dockerfile or LLB file) is named as its `[source] dockerfile`.
/// It is written as files and loaded, so it gets exactly the validation and defaults of a
/// user's own fledge.toml and manifest.toml.
fn synthetic_config(
    dir: &Path,
    dockerfile: &Path,
    name: &str,
    strategy: Strategy,
) -> Result<(BuildConfig, ManifestTemplate)> {
    let dockerfile = std::path::absolute(dockerfile)?;
    let toml_string = |s: &str| serde_json::to_string(s).expect("strings serialise");
    let strategy = match strategy {
        Strategy::OciRootfs => "oci_rootfs",
        Strategy::Initramfs => "initramfs",
    };
    std::fs::write(
        dir.join("fledge.toml"),
        format!(
            "version = \"1\"\nstrategy = \"{strategy}\"\n[agent]\nsource_strategy = \"release\"\nversion = \"latest\"\n[source]\ndockerfile = {}\n",
            toml_string(&dockerfile.to_string_lossy())
        ),
    )?;
    std::fs::write(
        dir.join("manifest.toml"),
        format!("name = \"{name}\"\nversion = \"1.0.0\"\nruntime = \"{name}\"\n"),
    )?;
    let config = BuildConfig::load(&dir.join("fledge.toml"))?;
    let template = ManifestTemplate::load(&dir.join("manifest.toml"), manifest::ManifestFormat::default())?;
    Ok((config, template))
}

fn config_mode(args: &BuildArgs, progress: &Progress) -> Result<()> {
    if args.output_initramfs || args.context.is_some() || args.target.is_some() || !args.build_args.is_empty() {
        bail!(
            "--dockerfile is required when using --output-initramfs, --context, --target, or --build-arg\n  = help: pass the Dockerfile path as the argument of `fledge build`"
        );
    }
    let config_path = args.config.clone().unwrap_or_else(|| PathBuf::from("fledge.toml"));
    let config = BuildConfig::load(&config_path)?;
    let build_only = !args.secrets.is_empty()
        || args.export_oci.is_some()
        || !args.cache_to.is_empty()
        || !args.cache_from.is_empty();
    if config.source.dockerfile.is_none() && build_only {
        bail!(
            "--secret, --export-oci and --cache-to/--cache-from need a Dockerfile build\n  = help: pass the Dockerfile path as the argument of `fledge build`, or set [source] dockerfile in {}",
            config.file.display()
        );
    }
    let format = args.manifest_format.or(config.manifest_format).unwrap_or_default();
    let template = load_template(args, &config, format)?;

    let base = match (&config.source.dockerfile, &config.source.image) {
        (Some(dockerfile), _) => Some(config_dockerfile(args, &config, dockerfile, progress)?),
        (None, Some(image)) => Some(Base::Image(image.clone())),
        (None, None) => None,
    };
    match (config.strategy, base) {
        (Strategy::OciRootfs, Some(base)) => build_rootfs(args, &config, template, format, &base, progress),
        (Strategy::OciRootfs, None) => unreachable!("configuration validation requires an image or a Dockerfile"),
        (Strategy::Initramfs, base) => build_initramfs(args, &config, &template, format, base.as_ref(), progress),
    }
}

/// Builds `[source] dockerfile` (context, target and build args from the same table).
fn config_dockerfile(args: &BuildArgs, config: &BuildConfig, dockerfile: &Path, progress: &Progress) -> Result<Base> {
    let context = config
        .source
        .context
        .clone()
        .unwrap_or_else(|| dockerfile.parent().map_or_else(|| config.dir.clone(), Path::to_path_buf));
    if !context.is_dir() {
        bail!("{}: build context {} is not a directory", config.file.display(), context.display());
    }
    let request = crate::build::Request {
        dockerfile,
        context: &context,
        target: config.source.target.clone(),
        build_args: config.source.build_args.clone(),
        secrets: &args.secrets,
        cache: crate::build::CacheFlags { to: &args.cache_to, from: &args.cache_from },
        contexts: &args.build_contexts,
        progress: args.progress,
        entitlements: entitlements(args),
    };
    let built = crate::build::dockerfile(&request, progress)?;
    export_oci(args, &built, "plugin", progress)?;
    // The original Fledge names a Dockerfile-built rootfs `plugin`.
    Ok(Base::Built { layers: built.layers, config: built.config, name: "plugin".into() })
}

fn load_template(args: &BuildArgs, config: &BuildConfig, format: manifest::ManifestFormat) -> Result<ManifestTemplate> {
    let path = args.manifest.clone().unwrap_or_else(|| config.dir.join("manifest.toml"));
    match ManifestTemplate::load(&path, format) {
        Ok(t) => Ok(t),
        Err(manifest::TemplateError::NotFound(_))
            if args.manifest.is_none() && format == manifest::ManifestFormat::VolantV1 =>
        {
            anyhow::bail!(
                "{} not found, and the volant-v1 manifest format needs one\n  = help: create it with name, version and a [workload] table with type = \"http\", base_url and entrypoint",
                path.display()
            )
        }
        Err(manifest::TemplateError::NotFound(_)) if args.manifest.is_none() => {
            let name = config
                .dir
                .file_name()
                .map(|n| output::sanitize(&n.to_string_lossy()))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "plugin".into());
            tracing::warn!(
                "{} not found; using default runtime settings (name \"{name}\", 1 CPU, 256 MB)",
                path.display()
            );
            Ok(ManifestTemplate::synthetic(&name))
        }
        Err(e) => Err(e.into()),
    }
}

fn source_date_epoch() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(DEFAULT_EPOCH),
        Ok(v) if v.is_empty() => Ok(DEFAULT_EPOCH),
        Ok(v) => v.trim().parse::<u32>().with_context(|| {
            format!("SOURCE_DATE_EPOCH={v} is not a Unix timestamp (whole seconds, at most 4294967295)")
        }),
    }
}

fn build_initramfs(
    args: &BuildArgs,
    config: &BuildConfig,
    template: &ManifestTemplate,
    format: manifest::ManifestFormat,
    base: Option<&Base>,
    progress: &Progress,
) -> Result<()> {
    let mtime = source_date_epoch()?;
    let compression = config.compression.expect("initramfs builds always have a compressor");
    let fetcher = Fetcher::new(dirs::cache_dir());

    let step = progress.step("Fetching BusyBox", None);
    let busybox = busybox::resolve(&config.source.busybox, &fetcher)?;
    step.finish(&busybox.display().to_string());

    let agent = match (&config.init, &config.agent) {
        (InitMode::Default, Some(source)) => {
            let step = progress.step("Fetching the kestrel agent", None);
            let path = agent::resolve(source, &fetcher)?;
            step.finish(&path.display().to_string());
            Some(path)
        }
        _ => None,
    };

    let store = base.map(|_| Store::open(dirs::state_dir().as_deref())).transpose()?;
    let (image, base) = match (base, &store) {
        (Some(base), Some(store)) => {
            let (config, layers, tree, _) = base_tree(store, base, progress)?;
            (Some((config, layers)), tree)
        }
        _ => (None, Tree::default()),
    };
    let layers: &dyn LayerSource = match &image {
        Some((_, layers)) => layers,
        None => &NoLayers,
    };
    let template = match &image {
        Some((config, _)) => with_image_defaults(template.clone(), config),
        None => template.clone(),
    };
    let template = &template;
    let tree =
        initramfs::assemble(&Parts { busybox: &busybox, init: &config.init, agent, mappings: &config.mappings }, base)?;
    limits::check(&tree)?;

    let suffix = compress::initramfs_format(compression.compressor);
    let artifact_path = initramfs_artifact_path(args, config, &template.name);
    let manifest_path = output::manifest_path(&artifact_path);

    let total: u64 = tree.iter().filter_map(|e| file_len(e.node)).sum();
    let step = progress.step(format!("Packing {}", artifact_path.display()), Some(total));
    let mut pending = Pending::new(&artifact_path)?;
    let writer = HashingWriter::new(BufWriter::with_capacity(1 << 20, pending.file()));
    let (stats, writer) = initramfs::pack(&tree, layers, compression, writer, mtime, &mut |n| step.advance(n))
        .with_context(|| format!("cannot write {}", artifact_path.display()))?;
    let (checksum, size, mut buffered) = writer.finish();
    buffered.flush()?;
    drop(buffered);
    step.finish(&format!("{} entries, {} → {}", stats.entries, human(stats.data_bytes), human(size)));

    let absolute = std::path::absolute(&artifact_path)?;
    let artifact = Artifact { path: absolute, media: BootMedia::Initramfs { format: suffix.to_string() }, checksum };
    commit(pending, &manifest_path, &manifest::render(template, &artifact, format))?;
    progress.say(&format!("Built {} ({checksum}) and {}", artifact_path.display(), manifest_path.display()));
    Ok(())
}

/// What a rootfs is built from: an image, or the layers a Dockerfile build produced.
enum Base {
    Image(ImageSource),
    Built { layers: Vec<Sha256Digest>, config: ImageConfig, name: String },
}

fn build_rootfs(
    args: &BuildArgs,
    config: &BuildConfig,
    template: ManifestTemplate,
    format: manifest::ManifestFormat,
    base: &Base,
    progress: &Progress,
) -> Result<()> {
    let kind = config.filesystem.kind.expect("oci_rootfs configs have a filesystem type");
    if kind == FsType::Xfs {
        bail!(
            "{}: [filesystem] type = \"xfs\" is not available: Debian's mkfs.xfs 6.1 fills a filesystem only from a protofile, which cannot hold sticky bits, hard links, xattrs or names with spaces, and Fledge never mounts an image to copy files in\n  = help: use type = \"ext4\" for a writable rootfs (or \"squashfs\", the default, or \"erofs\")",
            config.file.display()
        );
    }

    let mtime = source_date_epoch()?;
    let store = Store::open(dirs::state_dir().as_deref())?;
    let (image_config, layers, mut tree, stem) = base_tree(&store, base, progress)?;

    if let Some(source) = &config.agent {
        let step = progress.step("Fetching the kestrel agent", None);
        let agent_path = agent::resolve(source, &Fetcher::new(dirs::cache_dir()))?;
        step.finish(&agent_path.display().to_string());
        let kestrel = ImagePath::parse(initramfs::AGENT_PATH).expect("constant path");
        tree.replace(&kestrel, Node::File { mode: 0o755, data: FileData::Host(agent_path) })?;
    }
    mappings::apply(&mut tree, &config.mappings)?;
    limits::check(&tree)?;

    let artifact_path = rootfs_artifact_path(args, &stem, kind);
    let manifest_path = output::manifest_path(&artifact_path);
    let total: u64 = tree.iter().filter_map(|e| file_len(e.node)).sum();
    let step = progress.step(format!("Writing {}", artifact_path.display()), Some(total));
    let pending = Pending::new(&artifact_path)?;
    let mut advance = |n| step.advance(n);
    let packed = match kind {
        FsType::Squashfs => {
            let compression = config.compression.expect("squashfs always has a compressor");
            squashfs::write(&tree, &layers, pending.path(), compression, mtime, &mut advance)?
        }
        FsType::Erofs => erofs::write(&tree, &layers, pending.path(), config.compression, mtime, &mut advance)?,
        FsType::Btrfs => btrfs::write(&tree, &layers, pending.path(), &config.filesystem, &mut advance)?,
        _ => ext4::write(&tree, &layers, pending.path(), &config.filesystem, mtime, &mut advance)?,
    };
    let (checksum, size) = Sha256Digest::of_sparse_file(&mut std::fs::File::open(pending.path())?)?;
    step.finish(&format!("{} entries, {} → {}", tree.len(), human(packed), human(size)));

    let template = with_image_defaults(template, &image_config);
    let artifact = Artifact {
        path: std::path::absolute(&artifact_path)?,
        media: BootMedia::Rootfs { format: kind.name().to_string() },
        checksum,
    };
    commit(pending, &manifest_path, &manifest::render(&template, &artifact, format))?;
    progress.say(&format!("Built {} ({checksum}) and {}", artifact_path.display(), manifest_path.display()));
    Ok(())
}

/// Where an initramfs named after the manifest's `name` goes (`plugin` when it has none).
fn initramfs_artifact_path(args: &BuildArgs, config: &BuildConfig, name: &str) -> PathBuf {
    let compression = config.compression.expect("initramfs builds always have a compressor");
    let stem = Some(output::sanitize(name)).filter(|n| !n.is_empty()).unwrap_or_else(|| "plugin".into());
    output::artifact_path(args.output.as_deref(), &stem, compress::initramfs_format(compression.compressor))
}

/// Where a rootfs artifact named `stem` goes.
fn rootfs_artifact_path(args: &BuildArgs, stem: &str, kind: FsType) -> PathBuf {
    match kind {
        FsType::Squashfs | FsType::Erofs => output::rootfs_path(args.output.as_deref(), stem, kind.name()),
        // Legacy filesystem images are `<name>.img`, as the original Fledge names them.
        _ => output::artifact_path(args.output.as_deref(), stem, "img"),
    }
}

/// What a base holds: its image config, its layers, its flattened filesystem, and the name
/// its artifact gets by default.
fn base_tree<'s>(
    store: &'s Store,
    base: &Base,
    progress: &Progress,
) -> Result<(ImageConfig, ImageLayers<'s>, Tree, String)> {
    Ok(match base {
        Base::Image(image) => {
            let (stored, layers, tree) = flattened(store, image, progress)?;
            (stored.config, layers, tree, output::sanitize(&image.short_name()))
        }
        Base::Built { layers, config, name } => {
            let layers = ImageLayers::from_digests(store, layers.clone());
            let step = progress.step(format!("Flattening {} built layer(s)", layers.len()), None);
            let mut tree = Tree::default();
            flatten(&layers, &mut tree)?;
            step.finish(&format!("{} entries", tree.len()));
            (config.clone(), layers, tree, name.clone())
        }
    })
}

/// The image (from the store, pulled or imported as needed), its layers, and its flattened filesystem.
fn flattened<'s>(
    store: &'s Store,
    image: &ImageSource,
    progress: &Progress,
) -> Result<(StoredImage, ImageLayers<'s>, Tree)> {
    let stored = StoredImage::resolve(store, image, &Platform::host(), progress)?;
    let layers = ImageLayers::new(store, &stored.manifest)?;
    let step = progress.step(format!("Flattening {} layer(s) of {image}", layers.len()), None);
    let mut tree = Tree::default();
    flatten(&layers, &mut tree)?;
    step.finish(&format!("{} entries", tree.len()));
    Ok((stored, layers, tree))
}

/// The template, completed from the image config where it is silent.
fn with_image_defaults(template: ManifestTemplate, image: &ImageConfig) -> ManifestTemplate {
    let run = &image.config;
    template.with_image_defaults(
        run.entrypoint.as_deref().unwrap_or_default(),
        run.cmd.as_deref().unwrap_or_default(),
        run.env.as_deref().unwrap_or_default(),
        run.working_dir.as_deref(),
    )
}

/// Renames the artifact into place, then writes its manifest; if the manifest cannot be
/// written, the artifact is removed again so the pair never disagrees.
fn commit(artifact: Pending, manifest_path: &Path, manifest_json: &str) -> Result<()> {
    let mut manifest_file = Pending::new(manifest_path)?;
    manifest_file.file().write_all(manifest_json.as_bytes())?;
    let artifact_path = artifact.commit()?;
    if let Err(e) = manifest_file.commit() {
        let _ = std::fs::remove_file(&artifact_path);
        return Err(e.into());
    }
    Ok(())
}

/// Bytes of a file entry, when known without reading it.
fn file_len(node: &Node) -> Option<u64> {
    match node {
        Node::File { data: FileData::Layer { size, .. }, .. } => Some(*size),
        Node::File { data: FileData::Host(p), .. } => std::fs::metadata(p).ok().map(|m| m.len()),
        _ => None,
    }
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}
