//! Container image references (`nginx`, `localhost:5000/team/app:1.2`, `alpine@sha256:…`),
//! parsed by the distribution reference grammar and normalised as Docker and BuildKit do:
//! no registry means `docker.io`, a single Docker Hub component gets `library/`, no tag and
//! no digest means `:latest`.

use std::fmt;

pub const DEFAULT_REGISTRY: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid image reference '{reference}': {reason}")]
    Invalid { reference: String, reason: &'static str },
}

fn invalid(reference: &str, reason: &'static str) -> ReferenceError {
    ReferenceError::Invalid { reference: reference.to_string(), reason }
}

/// A path component: lowercase alphanumerics separated by `.`, `_`, `__` or runs of `-`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        let sep_len = match b {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|&&c| c == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        if !bytes.get(i).is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        Some(("sha512", hex)) => hex.len() == 128 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        _ => false,
    }
}

fn looks_like_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase())
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        let s = reference.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) if valid_digest(d) => (n, Some(d.to_string())),
            Some(_) => return Err(invalid(s, "the digest must be sha256:<64 hex digits>")),
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(name_tag[i + 1..].to_string())),
            _ => (name_tag, None),
        };
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(invalid(s, "a tag is up to 128 letters, digits, '_', '.' and '-'"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => (first.to_string(), rest.to_string()),
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if !path.split('/').all(valid_component) {
            return Err(invalid(
                s,
                "repository names use lowercase letters, digits and the separators '.', '_', '__' and '-'",
            ));
        }
        let repository =
            if registry == DEFAULT_REGISTRY && !path.contains('/') { format!("library/{path}") } else { path };
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }

    /// The last repository component: a good default file name (`localhost:5000/app` → `app`).
    pub fn short_name(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or(&self.repository)
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form, e.g. `docker.io/library/nginx:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:alpine"), "docker.io/library/nginx:alpine");
        assert_eq!(norm("team/app"), "docker.io/team/app:latest");
        assert_eq!(norm("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(norm("127.0.0.1:5000/a/b:v1.2"), "127.0.0.1:5000/a/b:v1.2");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("alpine@{d}")), format!("docker.io/library/alpine@{d}"));
        assert_eq!(norm(&format!("alpine:3@{d}")), format!("docker.io/library/alpine:3@{d}"));
    }

    #[test]
    fn short_names_skip_the_registry_port() {
        assert_eq!(ImageRef::parse("localhost:5000/app").unwrap().short_name(), "app");
        assert_eq!(ImageRef::parse("ghcr.io/org/tool:1").unwrap().short_name(), "tool");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in ["", "Nginx", "nginx:", "nginx:-x", "a//b", "app@sha256:123", "foo_", "-foo", "a/b:c:d"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(ImageRef::parse("my-app__x.y").is_ok());
    }
}
