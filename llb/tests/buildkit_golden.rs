//! Byte compatibility with BuildKit's own Dockerfile frontend. Each directory under
//! `tests/buildkit-golden/` holds a Dockerfile (with its build context, and optionally
//! `build-args` and `target`) and `buildkit.pb`: the `pb.Definition` BuildKit's
//! `dockerfile2llb` produced for it, captured once (see the README there for the BuildKit
//! version and the capture command). Fledge must produce every op byte for byte, in the same
//! order, so every op digest equals BuildKit's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fledge_llb::ImageRef;
use fledge_llb::dockerfile::{self, ImageResolver, Options, Platform, ResolvedImage};
use fledge_llb::graph;
use fledge_llb::pb;
use prost::Message;

/// The session id the capture used (BuildKit's is random per build).
const SESSION: &str = "llbcapture000000000000000";

struct Fixtures(BTreeMap<String, ResolvedImage>);

impl Fixtures {
    fn load(path: &Path) -> Self {
        let all: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let images = all
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, image)| {
                let reference = ImageRef::parse(name).unwrap().to_string();
                let resolved = ResolvedImage {
                    reference: reference.clone(),
                    digest: image["digest"].as_str().unwrap().to_string(),
                    config: image["config"].clone(),
                };
                (reference, resolved)
            })
            .collect();
        Fixtures(images)
    }
}

impl ImageResolver for Fixtures {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, String> {
        let normal = ImageRef::parse(reference).map_err(|e| e.to_string())?.to_string();
        self.0.get(&normal).cloned().ok_or_else(|| format!("{reference}: not in images.json"))
    }
}

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/buildkit-golden")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(String::from).collect()).unwrap_or_default()
}

/// Fledge's lowering of one case.
fn fledge_convert(case: &Path, resolver: &Fixtures) -> dockerfile::Converted {
    let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
    let ast = dockerfile::parse(&text).unwrap();
    let build_args = lines(&case.join("build-args"))
        .into_iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let options = Options {
        target: lines(&case.join("target")).into_iter().next(),
        build_args,
        platform: Platform::linux_amd64(),
        build_platform: Platform::linux_amd64(),
        session_id: Some(SESSION.into()),
        excludes: Vec::new(),
        local_contexts: Vec::new(),
        resolver,
    };
    dockerfile::convert(&ast, &options).unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

fn fledge_definition(case: &Path, resolver: &Fixtures) -> pb::Definition {
    graph::definition(&fledge_convert(case, resolver).result.expect("a result"), None)
}

fn fledge_image(case: &Path, resolver: &Fixtures) -> serde_json::Value {
    fledge_convert(case, resolver).image
}

fn describe(bytes: &[u8]) -> String {
    format!("{} {:?}", graph::sha256_digest(bytes), pb::Op::decode(bytes).unwrap())
}

#[test]
fn every_op_is_byte_identical_to_buildkits() {
    let resolver = Fixtures::load(&golden().join("images.json"));
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(golden()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(cases.len() >= 20, "golden cases: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let expected = pb::Definition::decode(&*std::fs::read(case.join("buildkit.pb")).unwrap()).unwrap();
        let got = fledge_definition(case, &resolver);
        if got.def != expected.def {
            let mut report = format!("{}:", case.display());
            for i in 0..got.def.len().max(expected.def.len()) {
                let (g, e) = (got.def.get(i), expected.def.get(i));
                if g != e {
                    report += &format!(
                        "\n  op {i}\n    buildkit: {}\n    fledge:   {}",
                        e.map_or("-".into(), |b| describe(b)),
                        g.map_or("-".into(), |b| describe(b))
                    );
                }
            }
            failures.push(report);
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn reencoding_buildkits_ops_gives_its_bytes() {
    for entry in std::fs::read_dir(golden()).unwrap() {
        let case = entry.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        let expected = pb::Definition::decode(&*std::fs::read(case.join("buildkit.pb")).unwrap()).unwrap();
        for (i, bytes) in expected.def.iter().enumerate() {
            let op = pb::Op::decode(&bytes[..]).unwrap();
            let again = graph::encode_op(&op);
            assert!(again == *bytes, "{} op {i}:\n  go   {}\n  ours {}", case.display(), hex(bytes), hex(&again));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The image configuration BuildKit's frontend returned for each case
/// (`buildkit-image.json`): the runtime config and the history must be the same.
#[test]
fn every_image_config_matches_buildkits() {
    let resolver = Fixtures::load(&golden().join("images.json"));
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(golden()).unwrap() {
        let case = entry.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(case.join("buildkit-image.json")).unwrap()).unwrap();
        let got = fledge_image(&case, &resolver);
        for key in ["config", "history", "architecture", "os", "author"] {
            if got.get(key) != expected.get(key) {
                failures.push(format!(
                    "{} {key}:\n  buildkit: {}\n  fledge:   {}",
                    case.display(),
                    expected.get(key).map_or("-".into(), |v| v.to_string()),
                    got.get(key).map_or("-".into(), |v| v.to_string())
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
