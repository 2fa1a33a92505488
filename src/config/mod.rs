//! `fledge.toml`: the build configuration. Loaded strictly (unknown keys are errors), defaults
//! applied as the original Fledge does, validated with every problem reported at its line and
//! column, and relative paths resolved against the config file's directory.

pub mod compression;
mod raw;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::digest::Sha256Digest;
use crate::image::source::ImageSource;
use crate::manifest::ManifestFormat;
use crate::paths::{self, ImagePath};
use crate::tomlfile;
pub use compression::{Compression, Compressor, Packing};
use raw::{RawAgent, RawConfig, RawFilesystem, RawInit, RawSource, S};

/// The pinned default BusyBox: 1.35.0, x86_64, static musl, from busybox.net.
pub const DEFAULT_BUSYBOX_URL: &str = "https://busybox.net/downloads/binaries/1.35.0-x86_64-linux-musl/busybox";
pub const DEFAULT_BUSYBOX_SHA256: &str = "6e123e7f3202a8c1e9b1f94d8941580a25135382b99e8d3e34fb858bba311348";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    OciRootfs,
    Initramfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMode {
    /// Fledge's init as `/init`, supervising `/bin/kestrel`.
    Default,
    /// Fledge's init as `/init`, supervising this host file (installed into the image).
    Custom(PathBuf),
    /// Nothing installed: the user provides `/init` through mappings.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    Release { version: String, checksum: Option<Sha256Digest> },
    Local { path: PathBuf },
    Http { url: String, checksum: Option<Sha256Digest> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusyboxSource {
    Download { url: String, sha256: Option<Sha256Digest> },
    Local { path: PathBuf, sha256: Option<Sha256Digest> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Squashfs,
    Ext4,
    Erofs,
    Xfs,
    Btrfs,
}

impl FsType {
    const ALL: [(&'static str, FsType); 5] = [
        ("squashfs", Self::Squashfs),
        ("ext4", Self::Ext4),
        ("erofs", Self::Erofs),
        ("xfs", Self::Xfs),
        ("btrfs", Self::Btrfs),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, t)| *t == self).map(|(n, _)| *n).unwrap_or("?")
    }

    fn packing(self) -> Packing {
        match self {
            Self::Squashfs => Packing::Squashfs,
            Self::Erofs => Packing::Erofs,
            Self::Ext4 | Self::Xfs | Self::Btrfs => Packing::Uncompressed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub image: Option<ImageSource>,
    pub dockerfile: Option<PathBuf>,
    pub context: Option<PathBuf>,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub busybox: BusyboxSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// `None` for initramfs builds.
    pub kind: Option<FsType>,
    pub overlay_size: String,
    pub size_buffer_mb: u64,
    pub preallocate: bool,
}

/// One `[mappings]` entry: a host path (absolute) copied to a destination in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub source: PathBuf,
    pub dest: ImagePath,
    /// Where the entry is written (`fledge.toml:LINE:COL`), for errors found while packing.
    pub location: String,
}

/// A validated `fledge.toml`.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub file: PathBuf,
    /// The directory relative paths resolve against.
    pub dir: PathBuf,
    pub strategy: Strategy,
    pub manifest_format: Option<ManifestFormat>,
    pub agent: Option<AgentSource>,
    pub init: InitMode,
    pub source: Source,
    pub filesystem: Filesystem,
    pub compression: Option<Compression>,
    /// Sorted by destination, so a mapping inside a mapped directory is applied after it.
    pub mappings: Vec<Mapping>,
}

/// Every problem found in a config file (validation does not stop at the first).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file not found: {0}\n  = help: create it (see docs/configuration.md) or pass --config PATH")]
    NotFound(String),
    #[error(transparent)]
    Load(#[from] tomlfile::LoadError),
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

pub(crate) fn render(diags: &[Diagnostic]) -> String {
    let mut out = diags.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\nerror: ");
    if diags.len() > 1 {
        out.push_str(&format!("\n\n{} problems in {}", diags.len(), diags[0].file.path.display()));
    }
    out
}

impl BuildConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (raw, file) = tomlfile::load::<RawConfig>(path).map_err(|e| match e {
            tomlfile::LoadError::NotFound { path } => ConfigError::NotFound(path),
            other => ConfigError::Load(other),
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        let mut v = Validator { file: &file, dir: &dir, errors: Vec::new() };
        let config = v.config(raw, abs.clone());
        match config {
            Some(config) if v.errors.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(v.errors)),
        }
    }
}

struct Validator<'a> {
    file: &'a SourceFile,
    dir: &'a Path,
    errors: Vec<Diagnostic>,
}

fn span<T>(s: &S<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl Validator<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>, help: Option<&str>) {
        let mut d = Diagnostic::new(self.file, span, message);
        if let Some(help) = help {
            d = d.help(help);
        }
        self.errors.push(d);
    }

    /// A non-empty string value, or `None` (empty strings count as unset, as in the original).
    fn text(value: &Option<S<String>>) -> Option<&S<String>> {
        value.as_ref().filter(|v| !v.get_ref().trim().is_empty())
    }

    /// A setting whose absence means its default: written but empty (or blank) it is an error
    /// at its line, not silently the default.
    fn setting<'v>(&mut self, value: &'v Option<S<String>>, key: &str, default: &str) -> Option<&'v S<String>> {
        let value = value.as_ref()?;
        if value.get_ref().trim().is_empty() {
            let help = format!("remove the line to use the default ({default}), or give a value");
            self.error(span(value), format!("'{key}' is empty"), Some(&help));
            return None;
        }
        Some(value)
    }

    /// Resolves a host path against the config directory and checks that it exists.
    fn host_path(&mut self, value: &S<String>, what: &str, want_file: bool) -> Option<PathBuf> {
        let path = self.dir.join(value.get_ref());
        match std::fs::metadata(&path) {
            Ok(meta) if want_file && meta.is_dir() => {
                self.error(span(value), format!("{what} is a directory, expected a file: {}", path.display()), None);
                None
            }
            Ok(_) => Some(path),
            Err(err) => {
                self.error(
                    span(value),
                    format!("{what} not found: {} ({err})", path.display()),
                    Some("relative paths are resolved against the directory that holds fledge.toml"),
                );
                None
            }
        }
    }

    fn checksum(&mut self, value: &Option<S<String>>) -> Option<Sha256Digest> {
        let value = Self::text(value)?;
        match value.get_ref().parse() {
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(span(value), msg, None);
                None
            }
        }
    }

    fn config(&mut self, raw: RawConfig, file_path: PathBuf) -> Option<BuildConfig> {
        match Self::text(&raw.version) {
            None => {
                self.error(None, "'version' field is required", Some("add `version = \"1\"` at the top of the file"))
            }
            Some(v) if v.get_ref() != "1" => {
                self.error(span(v), format!("unsupported config version '{}', expected '1'", v.get_ref()), None)
            }
            Some(_) => {}
        }
        let strategy = match Self::text(&raw.strategy).map(|s| (s, s.get_ref().as_str())) {
            None => {
                self.error(
                    None,
                    "'strategy' field is required",
                    Some("add `strategy = \"initramfs\"` or `strategy = \"oci_rootfs\"`"),
                );
                None
            }
            Some((_, "oci_rootfs")) => Some(Strategy::OciRootfs),
            Some((_, "initramfs")) => Some(Strategy::Initramfs),
            Some((s, other)) => {
                self.error(span(s), format!("invalid strategy '{other}', must be 'oci_rootfs' or 'initramfs'"), None);
                None
            }
        };
        let manifest_format = self.setting(&raw.manifest_format, "manifest_format", "\"fledge\"").and_then(|f| match f
            .get_ref()
            .parse()
        {
            Ok(format) => Some(format),
            Err(msg) => {
                self.error(span(f), msg, None);
                None
            }
        });
        let init = self.init(raw.init.as_ref());
        let mappings = self.mappings(&raw.mappings);
        let strategy = strategy?;
        let agent = self.agent(strategy, init.as_ref(), raw.agent.as_ref());
        let source = self.source(strategy, &raw.source);
        let (filesystem, compression) = self.filesystem(strategy, raw.filesystem.as_ref());
        Some(BuildConfig {
            file: file_path,
            dir: self.dir.to_path_buf(),
            strategy,
            manifest_format,
            agent,
            init: init.unwrap_or(InitMode::Default),
            source: source?,
            filesystem,
            compression,
            mappings: mappings?,
        })
    }

    fn init(&mut self, init: Option<&S<RawInit>>) -> Option<InitMode> {
        let Some(init) = init else {
            return Some(InitMode::Default);
        };
        let none = init.get_ref().none.as_ref().is_some_and(|n| *n.get_ref());
        match (none, self.setting(&init.get_ref().path, "init.path", "Fledge's own init")) {
            (true, Some(_)) => {
                self.error(span(init), "[init] cannot specify both none=true and path", Some("pick one init mode"));
                None
            }
            (true, None) => Some(InitMode::None),
            (false, Some(path)) => Some(InitMode::Custom(self.host_path(path, "custom init file", true)?)),
            (false, None) => Some(InitMode::Default),
        }
    }

    fn agent(
        &mut self,
        strategy: Strategy,
        init: Option<&InitMode>,
        agent: Option<&S<RawAgent>>,
    ) -> Option<AgentSource> {
        match (strategy, init, agent) {
            (Strategy::Initramfs, Some(InitMode::Custom(_)), Some(a)) => {
                self.error(
                    span(a),
                    "'agent' section cannot be specified with custom init mode ([init] path set)",
                    None,
                );
                None
            }
            (Strategy::Initramfs, Some(InitMode::None), Some(a)) => {
                self.error(span(a), "'agent' section cannot be specified with no-init mode ([init] none=true)", None);
                None
            }
            (Strategy::Initramfs, Some(InitMode::Custom(_) | InitMode::None) | None, None) => None,
            (_, _, None) => Some(AgentSource::Release { version: "latest".into(), checksum: None }),
            (_, _, Some(agent)) => self.agent_source(agent),
        }
    }

    fn agent_source(&mut self, agent: &S<RawAgent>) -> Option<AgentSource> {
        let a = agent.get_ref();
        let Some(strategy) = Self::text(&a.source_strategy) else {
            self.error(
                span(agent),
                "'agent.source_strategy' is required",
                Some("set it to \"release\", \"local\" or \"http\""),
            );
            return None;
        };
        let checksum = self.checksum(&a.checksum);
        match strategy.get_ref().as_str() {
            "release" => match Self::text(&a.version) {
                Some(v) => Some(AgentSource::Release { version: v.get_ref().clone(), checksum }),
                None => {
                    self.error(
                        span(agent),
                        "'agent.version' is required when using 'release' source strategy",
                        Some("use `version = \"latest\"` or a release tag"),
                    );
                    None
                }
            },
            "local" => match Self::text(&a.path) {
                Some(p) => Some(AgentSource::Local { path: self.host_path(p, "agent path", true)? }),
                None => {
                    self.error(span(agent), "'agent.path' is required when using 'local' source strategy", None);
                    None
                }
            },
            "http" => match Self::text(&a.url) {
                Some(u) if paths::is_http_url(u.get_ref()) => {
                    Some(AgentSource::Http { url: u.get_ref().clone(), checksum })
                }
                Some(u) => {
                    self.error(
                        span(u),
                        format!("'agent.url' must be an http:// or https:// URL, got '{}'", u.get_ref()),
                        None,
                    );
                    None
                }
                None => {
                    self.error(span(agent), "'agent.url' is required when using 'http' source strategy", None);
                    None
                }
            },
            other => {
                self.error(
                    span(strategy),
                    format!("invalid agent.source_strategy '{other}', must be one of: release, local, http"),
                    None,
                );
                None
            }
        }
    }

    fn source(&mut self, strategy: Strategy, source: &RawSource) -> Option<Source> {
        let image = Self::text(&source.image);
        let dockerfile = Self::text(&source.dockerfile);
        if strategy == Strategy::OciRootfs {
            match (image, dockerfile) {
                (None, None) => self.error(
                    None,
                    "either 'source.image' or 'source.dockerfile' is required for oci_rootfs strategy",
                    Some("add a [source] table with `image = \"...\"` or `dockerfile = \"...\"`"),
                ),
                (Some(_), Some(d)) => self.error(
                    span(d),
                    "only one of 'source.image' or 'source.dockerfile' may be specified for oci_rootfs strategy",
                    None,
                ),
                _ => {}
            }
        } else if let (Some(_), Some(d)) = (image, dockerfile) {
            self.error(
                span(d),
                "only one of 'source.image' or 'source.dockerfile' may be specified",
                Some("the original Fledge silently ignored the image here; remove one of them"),
            );
        }
        let image_ref = image.and_then(|i| match ImageSource::parse(i.get_ref(), self.dir) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(
                    span(i),
                    e,
                    Some("e.g. \"nginx:alpine\", \"localhost:5000/app@sha256:...\", \"oci-layout:./image:v1\" or \"docker-archive:./app.tar\""),
                );
                None
            }
        });
        let dockerfile_path = dockerfile.and_then(|d| self.host_path(d, "dockerfile", true));
        let context = self
            .setting(&source.context, "source.context", "the Dockerfile's directory")
            .and_then(|c| self.host_path(c, "build context", false));
        let busybox = self.busybox(strategy, source)?;
        Some(Source {
            image: image_ref,
            dockerfile: dockerfile_path,
            context,
            target: Self::text(&source.target).map(|t| t.get_ref().clone()),
            build_args: source.build_args.clone(),
            busybox,
        })
    }

    fn busybox(&mut self, strategy: Strategy, source: &RawSource) -> Option<BusyboxSource> {
        let sha256 = self.checksum(&source.busybox_sha256);
        let url = self.setting(&source.busybox_url, "source.busybox_url", "the pinned BusyBox download");
        match self.setting(&source.busybox_path, "source.busybox_path", "the pinned BusyBox download") {
            Some(path) if strategy == Strategy::Initramfs => {
                if let Some(url) = url {
                    self.error(
                        span(url),
                        "only one of 'source.busybox_url' or 'source.busybox_path' may be specified",
                        None,
                    );
                }
                Some(BusyboxSource::Local { path: self.host_path(path, "busybox_path", true)?, sha256 })
            }
            _ => {
                let url = url.map_or(DEFAULT_BUSYBOX_URL.to_string(), |u| u.get_ref().clone());
                if !paths::is_http_url(&url) {
                    let s = source.busybox_url.as_ref().and_then(span);
                    self.error(
                        s,
                        format!("'source.busybox_url' must be an http:// or https:// URL, got '{url}'"),
                        Some("use busybox_path for a local file"),
                    );
                }
                // The pinned checksum always guards the pinned URL (an empty busybox_sha256 does
                // not switch verification off); another URL is verified when a checksum is given.
                let sha256 = sha256
                    .or_else(|| (url == DEFAULT_BUSYBOX_URL).then(|| DEFAULT_BUSYBOX_SHA256.parse().ok()).flatten());
                if sha256.is_none() {
                    tracing::warn!(
                        "{}: busybox_url {url} has no busybox_sha256; the download will not be verified",
                        self.file.path.display()
                    );
                }
                Some(BusyboxSource::Download { url, sha256 })
            }
        }
    }

    fn filesystem(&mut self, strategy: Strategy, fs: Option<&S<RawFilesystem>>) -> (Filesystem, Option<Compression>) {
        let raw = fs.map(|f| f.get_ref());
        let kind_value = raw.and_then(|f| self.setting(&f.kind, "filesystem.type", "\"squashfs\""));
        let kind = match (strategy, kind_value) {
            (Strategy::Initramfs, Some(k)) => {
                self.error(
                    span(k),
                    "[filesystem] type applies to the oci_rootfs strategy only",
                    Some("initramfs builds use only `compression` and `compression_level` from [filesystem]"),
                );
                None
            }
            (Strategy::Initramfs, None) => None,
            (Strategy::OciRootfs, None) => Some(FsType::Squashfs),
            (Strategy::OciRootfs, Some(k)) => match FsType::ALL.iter().find(|(n, _)| n == k.get_ref()) {
                Some((_, t)) => Some(*t),
                None => {
                    self.error(span(k), format!("invalid filesystem type '{}', must be one of: squashfs (recommended), ext4, erofs, xfs, btrfs", k.get_ref()), None);
                    None
                }
            },
        };
        let packing = match (strategy, kind) {
            (Strategy::Initramfs, _) => Some(Packing::Initramfs),
            (Strategy::OciRootfs, Some(kind)) => Some(kind.packing()),
            (Strategy::OciRootfs, None) => None,
        };
        let compression = packing.and_then(|packing| {
            let name = raw
                .and_then(|f| self.setting(&f.compression, "filesystem.compression", "the format's first compressor"));
            let level = raw.and_then(|f| f.compression_level.as_ref());
            match compression::resolve(packing, name.map(|n| n.get_ref().as_str()), level.map(|l| *l.get_ref())) {
                Ok(c) => c,
                Err((field, msg)) => {
                    let s = match field {
                        compression::Field::Compressor => name.and_then(span),
                        compression::Field::Level => level.and_then(span),
                    };
                    self.error(s, msg, None);
                    None
                }
            }
        });
        let overlay_size = match raw.and_then(|f| self.setting(&f.overlay_size, "filesystem.overlay_size", "\"1G\"")) {
            Some(size) if paths::parse_size(size.get_ref()).is_none() => {
                self.error(
                    span(size),
                    format!("invalid overlay_size '{}'", size.get_ref()),
                    Some("use a size such as \"512M\", \"1G\" or \"2048K\""),
                );
                String::new()
            }
            Some(size) => size.get_ref().clone(),
            None => "1G".to_string(),
        };
        let size_buffer_mb = match raw.and_then(|f| f.size_buffer_mb.as_ref()) {
            Some(v) if *v.get_ref() < 0 => {
                self.error(
                    span(v),
                    format!("filesystem.size_buffer_mb must be non-negative, got {}", v.get_ref()),
                    None,
                );
                0
            }
            Some(v) => *v.get_ref() as u64,
            None => 0,
        };
        let preallocate = raw.and_then(|f| f.preallocate).unwrap_or(false);
        (Filesystem { kind, overlay_size, size_buffer_mb, preallocate }, compression)
    }

    fn mappings(&mut self, raw: &BTreeMap<S<String>, S<String>>) -> Option<Vec<Mapping>> {
        let mut mappings: Vec<Mapping> = Vec::new();
        let before = self.errors.len();
        for (src, dst) in raw {
            if src.get_ref().is_empty() {
                self.error(span(src), "mapping source path cannot be empty", None);
                continue;
            }
            if dst.get_ref().is_empty() {
                self.error(
                    span(dst),
                    format!("mapping destination path cannot be empty for source '{}'", src.get_ref()),
                    None,
                );
                continue;
            }
            let mut dest = match ImagePath::parse(dst.get_ref()) {
                Ok(dest) => dest,
                Err(msg) => {
                    self.error(span(dst), format!("mapping destination '{}' {msg}", dst.get_ref()), None);
                    continue;
                }
            };
            let Some(source) = self.host_path(src, "mapping source", false) else {
                continue;
            };
            // As with `COPY file dir/`: a trailing slash puts a file inside that directory.
            if dst.get_ref().ends_with('/')
                && !source.is_dir()
                && let Some(name) = source.file_name()
            {
                dest = dest.join(&name.to_string_lossy());
            }
            if let Some(prev) = mappings.iter().find(|m| m.dest == dest) {
                let msg =
                    format!("two mappings write '{}': '{}' and '{}'", dest, prev.source.display(), source.display());
                self.error(span(dst), msg, Some("keep one of them"));
                continue;
            }
            let (line, col) = self.file.line_col(src.span().start);
            let location = format!("{}:{line}:{col}", self.file.path.display());
            mappings.push(Mapping { source, dest, location });
        }
        if self.errors.len() > before {
            return None;
        }
        mappings.sort_by(|a, b| a.dest.cmp(&b.dest));
        Some(mappings)
    }
}

#[cfg(test)]
mod tests;
