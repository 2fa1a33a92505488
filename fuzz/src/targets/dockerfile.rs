//! The Dockerfile frontend as `fledge build` and `fledge debug llb` use it: reading and
//! parsing with located diagnostics, lowering to LLB (base images from a fixed, offline
//! resolver; a named local context `ctx`), errors formatted against the file, and the
//! definition serialised.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fledge_llb::dockerfile::{self, ImageResolver, LocalContext, Options, Platform, ResolvedImage};
use serde_json::json;

use crate::{Rng, Target, mutate};

pub struct Dockerfile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Dockerfile {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("Dockerfile");
        Dockerfile { _dir: dir, path }
    }
}

impl Default for Dockerfile {
    fn default() -> Self {
        Self::new()
    }
}

/// Every image resolves, offline, to the same configuration; one whose name says `onbuild`
/// carries ONBUILD triggers.
struct FixedImages;

impl ImageResolver for FixedImages {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, String> {
        let image = fledge_llb::ImageRef::parse(reference).map_err(|e| e.to_string())?;
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Env": ["PATH=/usr/bin:/bin", "A=image"], "WorkingDir": "/work", "User": "1000"},
        });
        if reference.contains("onbuild") {
            config["config"]["OnBuild"] = json!(["RUN echo triggered", "COPY --from=0 /a /b", "ONBUILD RUN x", "ENV"]);
        }
        Ok(ResolvedImage {
            reference: image.to_string(),
            digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            config,
        })
    }
}

impl Target for Dockerfile {
    fn name(&self) -> &'static str {
        "dockerfile"
    }

    fn run(&mut self, input: &[u8]) {
        std::fs::write(&self.path, input).expect("a writable temporary directory");
        let ast = match fledge::dockerfile::load(&self.path) {
            Ok(ast) => ast,
            Err(e) => return drop(format!("{e:#}")),
        };
        let _ = ast.dump();
        let options = Options {
            target: None,
            build_args: BTreeMap::from([("A".to_string(), "arg".to_string())]),
            platform: Platform::linux_amd64(),
            build_platform: Platform::linux_amd64(),
            session_id: Some("fuzz".into()),
            excludes: vec!["*.log".into()],
            local_contexts: vec![LocalContext { name: "ctx".into(), excludes: Vec::new() }],
            resolver: &FixedImages,
        };
        match dockerfile::convert(&ast, &options) {
            Ok(converted) => {
                if let Some(result) = converted.result {
                    let _ = fledge_llb::graph::definition(&result, Some(("Dockerfile", input)));
                }
            }
            Err(e) => drop(format!("{:#}", fledge::dockerfile::convert_error(&self.path, &e))),
        }
    }

    fn mutate(&self, base: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        mutate::dockerfile(base, corpus, rng)
    }
}
