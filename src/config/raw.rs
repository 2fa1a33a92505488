//! `fledge.toml` exactly as written: strict serde types with spans, before defaults and
//! validation. Unknown keys are rejected here (with a suggestion, see `tomlfile`).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub manifest_format: Option<S<String>>,
    pub agent: Option<S<RawAgent>>,
    pub init: Option<S<RawInit>>,
    #[serde(default)]
    pub source: RawSource,
    pub filesystem: Option<S<RawFilesystem>>,
    #[serde(default)]
    pub mappings: BTreeMap<S<String>, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub source_strategy: Option<S<String>>,
    pub version: Option<S<String>>,
    pub path: Option<S<String>>,
    pub url: Option<S<String>>,
    pub checksum: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInit {
    pub path: Option<S<String>>,
    pub none: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub image: Option<S<String>>,
    pub dockerfile: Option<S<String>>,
    pub context: Option<S<String>>,
    pub target: Option<S<String>>,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    pub busybox_url: Option<S<String>>,
    pub busybox_sha256: Option<S<String>>,
    pub busybox_path: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilesystem {
    #[serde(rename = "type")]
    pub kind: Option<S<String>>,
    pub compression: Option<S<String>>,
    pub compression_level: Option<S<i64>>,
    pub overlay_size: Option<S<String>>,
    pub size_buffer_mb: Option<S<i64>>,
    pub preallocate: Option<bool>,
}
