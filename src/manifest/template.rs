//! `manifest.toml`: the runtime defaults a user writes, validated with located errors.
//! Fixes over the original: unknown keys are errors, `name`/`version`/`runtime` are always
//! checked, a partly written `[resources]` table keeps the defaults for what it leaves out.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned as S;

use super::ManifestFormat;
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::tomlfile::{self, LoadError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    schema_version: Option<S<String>>,
    name: Option<S<String>>,
    version: Option<S<String>>,
    runtime: Option<S<String>>,
    resources: Option<RawResources>,
    workload: Option<S<RawWorkload>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    network: Option<RawNetwork>,
    #[serde(default)]
    actions: BTreeMap<String, S<Action>>,
    cloud_init: Option<CloudInit>,
    devices: Option<Devices>,
    health_check: Option<S<RawHealthCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu_cores: Option<S<i64>>,
    memory_mb: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    entrypoint: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    workdir: Option<String>,
    #[serde(rename = "type")]
    kind: Option<S<String>>,
    base_url: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    mode: Option<S<String>>,
    #[serde(default)]
    expose: Vec<S<RawExpose>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpose {
    port: S<i64>,
    protocol: Option<S<String>>,
    host_port: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    endpoint: Option<String>,
    timeout_ms: Option<S<i64>>,
}

/// `[actions.<name>]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub path: String,
    pub method: String,
    pub description: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// `[cloud_init]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloudInit {
    pub datasource: Option<String>,
    pub user_data: Option<UserData>,
    pub meta_data: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    #[serde(default)]
    pub inline: bool,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    #[serde(default)]
    pub pci_passthrough: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub entrypoint: Option<String>,
    pub args: Vec<String>,
    pub workdir: Option<String>,
    pub kind: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub port: u16,
    pub protocol: String,
    pub host_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mode: String,
    pub expose: Vec<Expose>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub endpoint: String,
    pub timeout_ms: u64,
}

/// A validated `manifest.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestTemplate {
    pub schema_version: String,
    pub name: String,
    pub version: String,
    pub runtime: String,
    pub cpu_cores: u32,
    pub memory_mb: u32,
    pub workload: Option<Workload>,
    pub env: BTreeMap<String, String>,
    pub network: Option<Network>,
    pub actions: BTreeMap<String, Action>,
    pub cloud_init: Option<CloudInit>,
    pub devices: Option<Devices>,
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("manifest file not found: {0}\n  = help: create it, or leave out -m to use defaults")]
    NotFound(String),
    #[error(transparent)]
    Load(LoadError),
    #[error("{}", crate::config::render(.0))]
    Invalid(Vec<Diagnostic>),
}

const NETWORK_MODES: [&str; 3] = ["bridged", "vsock", "dhcp"];

impl ManifestTemplate {
    /// Defaults used when no `manifest.toml` exists: 1 CPU, 256 MB, named after the build.
    pub fn synthetic(name: &str) -> Self {
        Self {
            schema_version: "v1".into(),
            name: name.into(),
            version: "1.0.0".into(),
            runtime: name.into(),
            cpu_cores: 1,
            memory_mb: 256,
            workload: None,
            env: BTreeMap::new(),
            network: Some(Network { mode: "bridged".into(), expose: Vec::new() }),
            actions: BTreeMap::new(),
            cloud_init: None,
            devices: None,
            health_check: None,
        }
    }

    /// Fills what the template leaves empty from an image's config: the workload's
    /// entrypoint and args (`Entrypoint` + `Cmd`, or `Cmd` alone), its working directory, and
    /// the environment.
    pub fn with_image_defaults(
        mut self,
        entrypoint: &[String],
        cmd: &[String],
        env: &[String],
        workdir: Option<&str>,
    ) -> Self {
        let command: Vec<&String> = entrypoint.iter().chain(cmd).collect();
        let workload = self.workload.get_or_insert_with(|| Workload {
            entrypoint: None,
            args: Vec::new(),
            workdir: None,
            kind: None,
            base_url: None,
        });
        if workload.entrypoint.is_none()
            && let Some((first, rest)) = command.split_first()
        {
            workload.entrypoint = Some((*first).clone());
            if workload.args.is_empty() {
                workload.args = rest.iter().map(|s| (*s).clone()).collect();
            }
        }
        if workload.workdir.is_none() {
            workload.workdir = workdir.filter(|w| !w.is_empty()).map(str::to_string);
        }
        if self
            .workload
            .as_ref()
            .is_some_and(|w| w.entrypoint.is_none() && w.workdir.is_none() && w.args.is_empty() && w.kind.is_none())
        {
            self.workload = None;
        }
        if self.env.is_empty() {
            self.env =
                env.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        }
        self
    }

    pub fn load(path: &Path, format: ManifestFormat) -> Result<Self, TemplateError> {
        let (raw, file) = tomlfile::load::<Raw>(path).map_err(|e| match e {
            LoadError::NotFound { path } => TemplateError::NotFound(path),
            other => TemplateError::Load(other),
        })?;
        let mut v = Checker { file: &file, errors: Vec::new() };
        let template = v.template(raw, format);
        if v.errors.is_empty() { Ok(template) } else { Err(TemplateError::Invalid(v.errors)) }
    }
}

struct Checker<'a> {
    file: &'a SourceFile,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(self.file, span, message));
    }

    fn required(&mut self, value: Option<S<String>>, field: &str) -> String {
        match value.filter(|v| !v.get_ref().trim().is_empty()) {
            Some(v) => v.into_inner(),
            None => {
                let d = Diagnostic::new(self.file, None, format!("{field} is required"))
                    .help(format!("add `{field} = \"...\"` at the top level of the file"));
                self.errors.push(d);
                String::new()
            }
        }
    }

    fn ranged(&mut self, value: Option<S<i64>>, field: &str, min: i64, max: i64, default: i64) -> i64 {
        let Some(v) = value else { return default };
        let n = *v.get_ref();
        if !(min..=max).contains(&n) {
            self.error(Some(v.span()), format!("{field} must be between {min} and {max}, got {n}"));
        }
        n
    }

    fn template(&mut self, raw: Raw, format: ManifestFormat) -> ManifestTemplate {
        let schema_version = match raw.schema_version {
            Some(v) if v.get_ref() != "v1" && !v.get_ref().is_empty() => {
                self.error(Some(v.span()), format!("unsupported schema_version \"{}\" (expected \"v1\")", v.get_ref()));
                String::new()
            }
            _ => "v1".into(),
        };
        let name = self.required(raw.name, "name");
        let version = self.required(raw.version, "version");
        let runtime = match (format, raw.runtime) {
            (ManifestFormat::VolantV1, None) => name.clone(),
            (_, runtime) => self.required(runtime, "runtime"),
        };
        let (cpu, mem) = raw.resources.map_or((None, None), |r| (r.cpu_cores, r.memory_mb));
        let cpu_cores = self.ranged(cpu, "resources.cpu_cores", 1, 1024, 1) as u32;
        let memory_mb = self.ranged(mem, "resources.memory_mb", 128, 16 << 20, 256) as u32;
        let workload = raw.workload.map(|w| self.workload(w, format));
        if format == ManifestFormat::VolantV1 && workload.is_none() {
            let d = Diagnostic::new(self.file, None, "the volant-v1 manifest format needs a [workload] table")
                .help("add [workload] with type = \"http\", base_url and entrypoint");
            self.errors.push(d);
        }
        let network = raw.network.map(|n| self.network(n));
        let health_check = raw.health_check.map(|h| self.health_check(h));
        let actions = raw.actions.into_iter().map(|(k, v)| (k, v.into_inner())).collect();
        ManifestTemplate {
            schema_version,
            name,
            version,
            runtime,
            cpu_cores,
            memory_mb,
            workload,
            env: raw.env,
            network,
            actions,
            cloud_init: raw.cloud_init,
            devices: raw.devices,
            health_check,
        }
    }

    fn workload(&mut self, w: S<RawWorkload>, format: ManifestFormat) -> Workload {
        let span = w.span();
        let w = w.into_inner();
        if let Some(kind) = &w.kind
            && kind.get_ref() != "http"
        {
            self.error(Some(kind.span()), format!("invalid workload type '{}', must be 'http'", kind.get_ref()));
        }
        if format == ManifestFormat::VolantV1 {
            let missing: Vec<&str> = [
                ("type", w.kind.is_none()),
                ("base_url", w.base_url.is_none()),
                ("entrypoint", w.entrypoint.as_deref().is_none_or(str::is_empty)),
            ]
            .into_iter()
            .filter_map(|(k, missing)| missing.then_some(k))
            .collect();
            if !missing.is_empty() {
                let d = Diagnostic::new(
                    self.file,
                    Some(span),
                    format!("the volant-v1 manifest format needs workload.{}", missing.join(", workload.")),
                )
                .help("e.g. type = \"http\", base_url = \"http://127.0.0.1:8080\", entrypoint = \"/usr/bin/app\"");
                self.errors.push(d);
            }
        }
        Workload {
            entrypoint: w.entrypoint,
            args: w.args,
            workdir: w.workdir,
            kind: w.kind.map(S::into_inner),
            base_url: w.base_url.map(S::into_inner),
        }
    }

    fn network(&mut self, n: RawNetwork) -> Network {
        let mode = match n.mode {
            Some(m) if !NETWORK_MODES.contains(&m.get_ref().as_str()) => {
                self.error(
                    Some(m.span()),
                    format!("invalid network.mode '{}', must be one of: bridged, vsock, dhcp", m.get_ref()),
                );
                String::new()
            }
            Some(m) => m.into_inner(),
            None => "bridged".into(),
        };
        let expose = n
            .expose
            .into_iter()
            .map(|e| {
                let e = e.into_inner();
                let port = self.ranged(Some(e.port), "network.expose.port", 1, 65535, 0) as u16;
                let host_port =
                    e.host_port.map(|h| self.ranged(Some(h), "network.expose.host_port", 1, 65535, 0) as u16);
                let protocol = match e.protocol {
                    Some(p) if p.get_ref() != "tcp" && p.get_ref() != "udp" => {
                        self.error(
                            Some(p.span()),
                            format!("invalid network.expose.protocol '{}', must be 'tcp' or 'udp'", p.get_ref()),
                        );
                        String::new()
                    }
                    Some(p) => p.into_inner(),
                    None => "tcp".into(),
                };
                Expose { port, protocol, host_port }
            })
            .collect();
        Network { mode, expose }
    }

    fn health_check(&mut self, h: S<RawHealthCheck>) -> HealthCheck {
        let span = h.span();
        let h = h.into_inner();
        let timeout_ms = self.ranged(h.timeout_ms.clone(), "health_check.timeout_ms", 0, i64::MAX, 0) as u64;
        if h.endpoint.is_none() || h.timeout_ms.is_none() {
            self.error(Some(span), "[health_check] needs both endpoint and timeout_ms");
        }
        HealthCheck { endpoint: h.endpoint.unwrap_or_default(), timeout_ms }
    }
}
