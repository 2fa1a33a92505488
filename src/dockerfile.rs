//! Reading Dockerfiles for the frontend (`fledge_llb::dockerfile`), with errors that point at
//! the file, line and column.

use std::path::Path;

use anyhow::{Context, Result};
use fledge_llb::dockerfile::{Ast, ParseError, Platform, ResolvedImage, parse};

use crate::diagnostic::{Diagnostic, SourceFile};

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Ast> {
    let bytes = read_in_dir(path).with_context(|| format!("cannot read the Dockerfile {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    parse(&text).map_err(|e| diagnostic(&SourceFile::new(path, text), &e).into())
}

/// A lowering error (an instruction that cannot be built) as a diagnostic quoting its line.
pub fn convert_error(path: &Path, error: &fledge_llb::dockerfile::ConvertError) -> anyhow::Error {
    if error.line == 0 {
        // Not about one line (e.g. an unknown --target).
        return anyhow::anyhow!("{}: {}", path.display(), error.message);
    }
    let text = read_in_dir(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let help = error.help.clone();
    let error = ParseError { line: error.line, column: 0, message: error.message.clone() };
    let diagnostic = diagnostic(&SourceFile::new(path, text), &error);
    match help {
        Some(help) => diagnostic.help(help).into(),
        None => diagnostic.into(),
    }
}

/// A parse error as a diagnostic quoting the line.
fn diagnostic(file: &SourceFile, error: &ParseError) -> Diagnostic {
    let span = file.line_span(error.line.max(1)).filter(|_| !file.text.is_empty()).map(|line| {
        if error.column > 0 {
            let at = (line.start + error.column - 1).min(line.end);
            at..(at + 1).min(line.end).max(at)
        } else {
            line
        }
    });
    Diagnostic::new(file, span, format!("Dockerfile: {}", error.message))
        .help("see https://docs.docker.com/reference/dockerfile/ for the instruction's syntax")
}

/// Base images for the frontend, from the store (pulled into it when missing, so a second
/// build works offline).
pub struct StoreResolver<'a> {
    pub store: &'a crate::store::Store,
    pub progress: &'a crate::progress::Progress,
    /// Named build contexts (`--build-context NAME=oci-layout:...`): a FROM naming one gets
    /// that image, pinned by digest (the solver finds it in the store that way).
    pub contexts: &'a [NamedContext],
}

/// An image given as a named build context, already in the store.
#[derive(Debug, Clone)]
pub struct NamedContext {
    pub name: String,
    pub digest: crate::digest::Sha256Digest,
    pub config: serde_json::Value,
}

impl fledge_llb::dockerfile::ImageResolver for StoreResolver<'_> {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, String> {
        if let Some(context) = self.contexts.iter().find(|c| c.name.eq_ignore_ascii_case(reference)) {
            return Ok(ResolvedImage {
                reference: format!("fledge.context/{}", context.name.to_ascii_lowercase()),
                digest: context.digest.to_string(),
                config: context.config.clone(),
            });
        }
        let image = fledge_llb::ImageRef::parse(reference).map_err(|e| e.to_string())?;
        let wanted = crate::image::spec::Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: (!platform.variant.is_empty()).then(|| platform.variant.clone()),
        };
        let source = crate::image::source::ImageSource::Registry(image.clone());
        let stored = crate::image::stored::StoredImage::resolve(self.store, &source, &wanted, self.progress)
            .map_err(|e| format!("{e:#}"))?;
        let config_digest: crate::digest::Sha256Digest =
            stored.manifest.config.digest.parse().map_err(|e: String| e)?;
        let config = self.store.read_blob(&config_digest).map_err(|e| e.to_string())?;
        Ok(ResolvedImage {
            reference: image.to_string(),
            digest: stored.record.manifest_digest().map_err(|e| e.to_string())?.to_string(),
            config: serde_json::from_slice(&config).map_err(|e| format!("the config of {image} is not JSON: {e}"))?,
        })
    }
}

/// The context's exclude patterns: `<Dockerfile>.dockerignore` beside the Dockerfile, else
/// `.dockerignore` in the context. Comments, blank lines and a BOM are skipped; each pattern
/// is cleaned and loses a leading `/`, as BuildKit reads them.
pub fn dockerignore(dockerfile: &Path, context: &Path) -> Result<Vec<String>> {
    let beside =
        dockerfile.file_name().map(|n| dir_of(dockerfile).join(format!("{}.dockerignore", n.to_string_lossy())));
    match beside.filter(|path| is_file_in_dir(path)) {
        Some(path) => ignore_patterns(&path),
        None => local_dockerignore(context),
    }
}

/// A named local context's exclude patterns: its own `.dockerignore`.
pub fn local_dockerignore(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join(".dockerignore");
    if !is_file_in_dir(&path) {
        return Ok(Vec::new());
    }
    ignore_patterns(&path)
}

/// The directory a file name is relative to (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Reads `path` with a symlink at its name resolved inside its own directory, as BuildKit
/// reads a Dockerfile or ignore file from the directory it transfers: a link out of that
/// directory is not followed out of it.
pub fn read_in_dir(path: &Path) -> std::io::Result<Vec<u8>> {
    let name = path.file_name().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    crate::confined::read(dir_of(path), Path::new(name))
}

/// Whether `path` is a regular file, a symlink at its name resolved inside its directory.
fn is_file_in_dir(path: &Path) -> bool {
    let Some(name) = path.file_name() else { return false };
    let dir = dir_of(path);
    crate::confined::resolve(dir, Path::new(name), true).is_ok_and(|real| dir.join(real).is_file())
}

/// The patterns of a `.dockerignore` file.
fn ignore_patterns(path: &Path) -> Result<Vec<String>> {
    let bytes = read_in_dir(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negate, pattern) = match l.strip_prefix('!') {
                Some(rest) => ("!", rest.trim()),
                None => ("", l),
            };
            let cleaned = fledge_llb::dockerfile::convert::clean(&format!("/{pattern}"));
            let cleaned = cleaned.trim_start_matches('/');
            format!("{negate}{}", if cleaned.is_empty() { "." } else { cleaned })
        })
        .collect())
}
