//! The runtime manifest: `manifest.toml` (the template a user writes) and the
//! `<stem>.manifest.json` written beside each artifact, in Fledge's own shape or in Volant's
//! plugin-manifest-v1 shape.

mod emit;
mod template;

use std::fmt;
use std::str::FromStr;

pub use emit::{Artifact, BootMedia, render};
pub use template::{ManifestTemplate, TemplateError};

/// Which JSON shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// The original Fledge's shape (string entrypoint, `env`, `network.expose`, boot media with
    /// `format`), with an absolute `file://` URL.
    #[default]
    Fledge,
    /// Volant's `plugin-manifest-v1` JSON schema.
    VolantV1,
}

impl ManifestFormat {
    pub const NAMES: [&'static str; 2] = ["fledge", "volant-v1"];
}

impl FromStr for ManifestFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fledge" => Ok(Self::Fledge),
            "volant-v1" => Ok(Self::VolantV1),
            other => Err(format!("invalid manifest format '{other}', must be 'fledge' or 'volant-v1'")),
        }
    }
}

impl fmt::Display for ManifestFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fledge => "fledge",
            Self::VolantV1 => "volant-v1",
        })
    }
}
