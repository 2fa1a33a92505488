//! Errors that point into a user's file, rendered like rustc/cargo:
//! `error: ...`, then `--> file:line:col`, the offending line and a caret.
//!
//! Every configuration problem becomes a [`Diagnostic`] so the user sees the file, the line,
//! the column and what to do, never a bare serde message.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A loaded text file, kept so diagnostics can quote the offending line.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: Arc<str>,
}

impl SourceFile {
    pub fn new(path: &Path, text: String) -> Self {
        Self { path: path.to_path_buf(), text: text.into() }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// The bytes of 1-based `line`, without its newline; `None` past the end.
    pub fn line_span(&self, line: usize) -> Option<Range<usize>> {
        let start: usize = self.text.split_inclusive('\n').take(line.checked_sub(1)?).map(str::len).sum();
        if start >= self.text.len() && line > 1 {
            return None;
        }
        let len = self.text[start..].find('\n').unwrap_or(self.text.len() - start);
        Some(start..start + len)
    }

    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }
}

/// One problem in one file, with an optional location and an optional hint.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: SourceFile,
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &SourceFile, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self { file: file.clone(), span, message: message.into(), help: None }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// `path:line:col` of the start of the span (line 1, column 1 without one).
    pub fn location(&self) -> String {
        let (line, col) = self.file.line_col(self.span.as_ref().map_or(0, |s| s.start));
        format!("{}:{line}:{col}", self.file.path.display())
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        write!(f, "  --> {}", self.location())?;
        if let Some(span) = &self.span {
            let (line, col) = self.file.line_col(span.start);
            let text = self.file.line_text(line);
            let gutter = line.to_string().len();
            let width = self.file.text[span.clone()].lines().next().map_or(1, |first| first.chars().count().max(1));
            let pad = " ".repeat(gutter);
            write!(f, "\n{pad} |\n{line} | {text}\n{pad} | {}{}", " ".repeat(col - 1), "^".repeat(width))?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// The closest candidate to a misspelt name, if it is close enough to be a plausible typo.
/// A candidate that extends the name (`busybox_sha` → `busybox_sha256`) wins over an equally
/// distant one that does not.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.into_iter().collect();
    if let Some(extension) =
        candidates.iter().filter(|c| name.len() >= 3 && c.starts_with(name)).min_by_key(|c| c.len())
    {
        return Some(extension);
    }
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(distance, c)| *distance <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let file = SourceFile::new(Path::new("f.toml"), "a = 1\nbé = \"x\"\n".into());
        assert_eq!(file.line_col(0), (1, 1));
        assert_eq!(file.line_col(6), (2, 1));
        let quote = file.text.find('"').unwrap();
        assert_eq!(file.line_col(quote), (2, 6));
    }

    #[test]
    fn renders_location_line_and_caret() {
        let file = SourceFile::new(Path::new("fledge.toml"), "version = \"1\"\nstrategy = \"nope\"\n".into());
        let start = file.text.find("\"nope\"").unwrap();
        let d = Diagnostic::new(&file, Some(start..start + 6), "invalid strategy").help("use initramfs");
        let text = d.to_string();
        assert!(text.contains("--> fledge.toml:2:12"), "{text}");
        assert!(text.contains("2 | strategy = \"nope\""), "{text}");
        assert!(text.contains("  |            ^^^^^^"), "{text}");
        assert!(text.ends_with("= help: use initramfs"), "{text}");
    }

    #[test]
    fn suggests_only_close_names() {
        let keys = ["strategy", "version", "source"];
        assert_eq!(did_you_mean("stratgy", keys), Some("strategy"));
        assert_eq!(did_you_mean("sourec", keys), Some("source"));
        assert_eq!(did_you_mean("completely_else", keys), None);
        assert_eq!(did_you_mean("busybox_sha", ["busybox_url", "busybox_sha256"]), Some("busybox_sha256"));
    }
}
