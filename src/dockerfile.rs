//! Reading Dockerfiles for the frontend (`fledge_llb::dockerfile`), with errors that point at
//! the file, line and column.

use std::path::Path;

use anyhow::{Context, Result};
use fledge_llb::dockerfile::{Ast, ParseError, parse};

use crate::diagnostic::{Diagnostic, SourceFile};

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Ast> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the Dockerfile {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    parse(&text).map_err(|e| diagnostic(&SourceFile::new(path, text), &e).into())
}

/// A parse error as a diagnostic quoting the line.
fn diagnostic(file: &SourceFile, error: &ParseError) -> Diagnostic {
    let line_start: usize = file.text.split_inclusive('\n').take(error.line.saturating_sub(1)).map(str::len).sum();
    let line_len = file.text[line_start..].find('\n').unwrap_or(file.text.len() - line_start);
    let span = if error.column > 0 {
        let at = (line_start + error.column - 1).min(line_start + line_len);
        at..(at + 1).min(line_start + line_len).max(at)
    } else {
        line_start..line_start + line_len
    };
    let span = (!file.text.is_empty()).then_some(span);
    Diagnostic::new(file, span, format!("Dockerfile parse error: {}", error.message))
        .help("see https://docs.docker.com/reference/dockerfile/ for the instruction's syntax")
}
