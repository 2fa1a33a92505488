//! What the frontend needs to know about base images, and the platform it builds for.

/// An OS/architecture pair (`linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: String,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Platform { os: "linux".into(), architecture: "amd64".into(), variant: String::new() }
    }

    /// `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).map(|v| v.to_string()).unwrap_or_default(),
            }),
            _ => Err(format!("invalid platform {text:?}: expected os/arch[/variant], e.g. linux/amd64")),
        }
    }

    pub fn format(&self) -> String {
        let mut text = format!("{}/{}", self.os, self.architecture);
        if !self.variant.is_empty() {
            text += &format!("/{}", self.variant);
        }
        text
    }
}

/// A base image, resolved for a platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The normalised reference (`docker.io/library/busybox:1.36`).
    pub reference: String,
    /// The manifest digest the build pins.
    pub digest: String,
    /// The image configuration (OCI image config JSON).
    pub config: serde_json::Value,
}

/// Looks up base images (from the local store, a registry, or test fixtures).
pub trait ImageResolver {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String>;
}
