//! Reading TOML files into strict serde types, turning every parse problem (syntax, type,
//! unknown key) into a located [`Diagnostic`] with a "did you mean" hint for misspelt keys.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::diagnostic::{Diagnostic, SourceFile, did_you_mean};

/// Why a TOML file could not be turned into `T`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: file not found")]
    NotFound { path: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

/// Reads `path` and deserializes it; the [`SourceFile`] is returned for later validation errors.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<(T, SourceFile), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::NotFound { path: path.display().to_string() },
        _ => LoadError::Io { path: path.display().to_string(), source },
    })?;
    let file = SourceFile::new(path, text);
    match toml::from_str::<T>(&file.text) {
        Ok(value) => Ok((value, file)),
        Err(err) => Err(LoadError::Invalid(Box::new(to_diagnostic(&file, &err)))),
    }
}

fn to_diagnostic(file: &SourceFile, err: &toml::de::Error) -> Diagnostic {
    let message = err.message().trim().to_string();
    let span = err.span();
    if let Some((key, expected)) = parse_unknown_field(&message) {
        let mut diag = Diagnostic::new(file, span, format!("unknown key `{key}`"));
        let help = match did_you_mean(&key, expected.iter().map(String::as_str)) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None if expected.is_empty() => "this table takes no keys".to_string(),
            None => format!("valid keys here: {}", expected.join(", ")),
        };
        diag = diag.help(help);
        return diag;
    }
    Diagnostic::new(file, span, message)
}

/// Picks apart serde's stable `unknown field` message:
/// "unknown field `x`, expected one of `a`, `b`", "... expected `a`" or "... there are no fields".
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, tail) = rest.split_once('`')?;
    let expected = tail.split('`').skip(1).step_by(2).map(str::to_string).collect();
    Some((key.to_string(), expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serde_unknown_field_messages() {
        let (k, e) = parse_unknown_field("unknown field `sourc`, expected one of `source`, `init`").unwrap();
        assert_eq!(k, "sourc");
        assert_eq!(e, vec!["source", "init"]);
        let (k, e) = parse_unknown_field("unknown field `x`, expected `y`").unwrap();
        assert_eq!((k.as_str(), e), ("x", vec!["y".to_string()]));
        let (_, e) = parse_unknown_field("unknown field `x`, there are no fields").unwrap();
        assert!(e.is_empty());
        assert!(parse_unknown_field("invalid type: integer").is_none());
    }
}
