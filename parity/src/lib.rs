//! The BuildKit parity suite: Dockerfile cases ([`case`]) built by a real BuildKit and by
//! Fledge's embedded engine, and the description of a built image ([`image`]) the two
//! results are compared by, line by line.
//!
//! BuildKit's results are captured once by `src/bin/capture.rs` into
//! `tests/parity/fixtures/NAME.txt`, with the BuildKit commit they came from; the test
//! `tests/parity.rs` builds every case with Fledge and compares. Nothing of BuildKit is
//! committed but what it built.
//!
//! Guarantees:
//! - a case's context is the same bytes, modes and links for both engines ([`case`]);
//! - the comparison sees every entry of every layer and of the final tree, the image config
//!   and the history, never times ([`image`]);
//! - a case that must fail is compared by its outcome and a fragment of BuildKit's error,
//!   which the capture checks BuildKit's message holds.

pub mod case;
pub mod image;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use case::{BuildOption, Case, Materialised};

/// The directory of the suite's cases, features, fixtures and known differences.
pub fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/parity")
}

/// The fixture of the case `name`.
pub fn fixture_path(name: &str) -> PathBuf {
    suite_dir().join("fixtures").join(format!("{name}.txt"))
}

/// The feature IDs `features.toml` lists, with what each means.
pub fn features() -> Result<Vec<(String, String)>> {
    let path = suite_dir().join("features.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("{}", path.display()))?;
    let table = doc.get("features").and_then(|f| f.as_table()).context("features.toml has no [features] table")?;
    Ok(table.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
}

/// What a build of `case` came to, in the form fixtures hold: `outcome ok` and the image's
/// description, or `outcome fails: FRAGMENT` when the case must fail and the error holds
/// the fragment. Anything else states what happened instead.
pub fn outcome(case: &Case, built: std::result::Result<String, String>) -> String {
    match (built, &case.fails) {
        (Ok(description), None) => format!("outcome ok\n{description}"),
        (Ok(_), Some(fragment)) => format!("outcome built, but must fail with {fragment:?}\n"),
        (Err(message), Some(fragment)) if message.contains(fragment.as_str()) => format!("outcome fails: {fragment}\n"),
        (Err(message), Some(fragment)) => format!("outcome fails without {fragment:?}:\n{}\n", indent(&message)),
        (Err(message), None) => format!("outcome fails:\n{}\n", indent(&message)),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// The sha256 of `path`, hex.
pub fn sha256_of(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(sha256_read(file)?.1)
}

/// The size and the sha256 (hex) of what `reader` yields.
pub fn sha256_read(mut reader: impl std::io::Read) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    let (mut hash, mut size, mut buf) = (sha2::Sha256::new(), 0u64, vec![0u8; 64 * 1024]);
    loop {
        match reader.read(&mut buf)? {
            0 => return Ok((size, hex::encode(hash.finalize()))),
            n => {
                hash.update(&buf[..n]);
                size += n as u64;
            }
        }
    }
}
