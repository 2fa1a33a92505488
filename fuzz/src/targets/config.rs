//! Loading fledge.toml (`BuildConfig::load`, with its validation) and manifest.toml
//! (`ManifestTemplate::load`, in both output formats) from the same input.

use std::path::PathBuf;

use fledge::config::BuildConfig;
use fledge::manifest::ManifestFormat;
use fledge::manifest::ManifestTemplate;

use crate::{Rng, Target, mutate};

pub struct Config {
    _dir: tempfile::TempDir,
    config: PathBuf,
    manifest: PathBuf,
}

impl Config {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (config, manifest) = (dir.path().join("fledge.toml"), dir.path().join("manifest.toml"));
        Config { _dir: dir, config, manifest }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for Config {
    fn name(&self) -> &'static str {
        "config"
    }

    fn run(&mut self, input: &[u8]) {
        std::fs::write(&self.config, input).expect("a writable temporary directory");
        std::fs::write(&self.manifest, input).expect("a writable temporary directory");
        if let Err(e) = BuildConfig::load(&self.config) {
            drop(e.to_string());
        }
        for format in [ManifestFormat::Fledge, ManifestFormat::VolantV1] {
            if let Err(e) = ManifestTemplate::load(&self.manifest, format) {
                drop(e.to_string());
            }
        }
    }

    fn mutate(&self, base: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(3) { mutate::lines_of(base, corpus, rng) } else { mutate::bytes(base, rng) }
    }
}
