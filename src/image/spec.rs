//! The OCI image format (and Docker's schema 2, which has the same shape): descriptors,
//! manifests, indexes and the image config, with only the fields Fledge uses.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: every manifest and index type Fledge reads.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What an artifact's manifest holds (OCI 1.1), e.g. Fledge's build cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine Fledge runs on (`linux/amd64`, `linux/arm64/v8`, …).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Self { architecture: architecture.into(), os: "linux".into(), variant: variant.map(Into::into) }
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: None })
            }
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: Some((*variant).into()) })
            }
            _ => Err(format!("invalid platform '{s}': expected os/arch or os/arch/variant, e.g. linux/amd64")),
        }
    }

    /// True if an image built for `self` runs on `wanted` (a missing variant matches any).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && match (&wanted.variant, &self.variant) {
                (Some(w), Some(v)) => w == v,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest: one config and the layers, bottom first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    /// BuildKit writes `null` for an image without layers.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub layers: Vec<Descriptor>,
}

/// A JSON `null` as an empty list.
fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// An index (manifest list): one manifest per platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// The parts of the image config Fledge carries into artifacts and manifests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: String,
    /// BuildKit writes `null` for an image without layers.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub diff_ids: Vec<String>,
}

/// A manifest document as fetched: either an image manifest or an index.
#[derive(Debug)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

/// Reads a manifest document; `media_type` is the Content-Type (or descriptor media type),
/// falling back to the document's own `mediaType` and shape.
pub fn parse_document(bytes: &[u8], media_type: &str) -> Result<Document, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let declared = value.get("mediaType").and_then(|m| m.as_str()).unwrap_or("");
    let kind = if media_type.is_empty() || media_type == "application/json" { declared } else { media_type };
    let is_index = match kind {
        OCI_INDEX | DOCKER_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        DOCKER_SCHEMA1 => {
            return Err("Docker schema 1 manifests are not supported; push the image again with a current tool".into());
        }
        _ => value.get("manifests").is_some(),
    };
    if is_index {
        serde_json::from_value(value).map(Document::Index).map_err(|e| format!("invalid image index: {e}"))
    } else {
        serde_json::from_value(value).map(Document::Manifest).map_err(|e| format!("invalid image manifest: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What BuildKit exports for an empty `FROM scratch` target.
    #[test]
    fn an_image_without_layers_may_say_null() {
        let manifest: Manifest = serde_json::from_str(
            r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":null}"#,
        )
        .unwrap();
        assert!(manifest.layers.is_empty());
        let config: ImageConfig = serde_json::from_str(r#"{"rootfs":{"type":"layers","diff_ids":null}}"#).unwrap();
        assert!(config.rootfs.diff_ids.is_empty());
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_err());
        let plain = Platform::parse("linux/arm64").unwrap();
        assert!(p.satisfies(&plain) && plain.satisfies(&p));
        assert!(!Platform::parse("linux/amd64").unwrap().satisfies(&plain));
    }

    #[test]
    fn documents_by_media_type_or_shape() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_document(index, ""), Ok(Document::Index(_))));
        let manifest = br#"{"schemaVersion":2,"config":{"digest":"sha256:x","size":1},"layers":[]}"#;
        assert!(matches!(parse_document(manifest, DOCKER_MANIFEST), Ok(Document::Manifest(_))));
        assert!(parse_document(b"{}", DOCKER_SCHEMA1).unwrap_err().contains("schema 1"));
    }
}
