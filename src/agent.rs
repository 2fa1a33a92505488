//! Sourcing the kestrel agent placed at `/bin/kestrel`.
//!
//! `FLEDGE_AGENT=/path` overrides every strategy (the build machines cannot reach the public
//! release host). `release` resolves to `<FLEDGE_AGENT_BASE_URL>/download/<tag>/kestrel`
//! (`.../latest/download/kestrel` for `latest`), with the base defaulting to Volant's GitHub
//! releases. Every download is cached by checksum and reused offline.

use std::path::PathBuf;

use crate::config::AgentSource;
use crate::fetch::{FetchError, Fetcher, Policy};

pub const DEFAULT_BASE_URL: &str = "https://github.com/volantvm/volant/releases";

const HOW_TO_SUPPLY: &str = "supply the agent without a download: set FLEDGE_AGENT=/path/to/kestrel, \
or use [agent] source_strategy = \"local\" with path = \"...\" in fledge.toml; \
FLEDGE_AGENT_BASE_URL points release downloads at a mirror";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("FLEDGE_AGENT={0} is not a readable file\n  = help: point FLEDGE_AGENT at the kestrel binary")]
    Override(String),
    #[error("the kestrel agent could not be obtained: {source}\n  = help: {HOW_TO_SUPPLY}")]
    Fetch { source: FetchError },
}

/// The release download URL for `version` under `base`.
pub fn release_url(base: &str, version: &str) -> String {
    let base = base.trim_end_matches('/');
    if version == "latest" {
        format!("{base}/latest/download/kestrel")
    } else {
        format!("{base}/download/{version}/kestrel")
    }
}

/// A local file holding the agent.
pub fn resolve(source: &AgentSource, fetcher: &Fetcher) -> Result<PathBuf, AgentError> {
    if let Some(path) = std::env::var_os("FLEDGE_AGENT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            _ => Err(AgentError::Override(path.display().to_string())),
        };
    }
    let fetched = match source {
        AgentSource::Local { path } => return Ok(path.clone()),
        AgentSource::Http { url, checksum } => {
            let policy = if checksum.is_some() { Policy::CacheFirst } else { Policy::NetworkFirst };
            fetcher.fetch(url, *checksum, policy)
        }
        AgentSource::Release { version, checksum } => {
            let base = std::env::var("FLEDGE_AGENT_BASE_URL").ok().filter(|b| !b.is_empty());
            let url = release_url(base.as_deref().unwrap_or(DEFAULT_BASE_URL), version);
            let policy = if version == "latest" { Policy::NetworkFirst } else { Policy::CacheFirst };
            fetcher.fetch(&url, *checksum, policy)
        }
    };
    let (path, _) = fetched.map_err(|source| AgentError::Fetch { source })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_urls() {
        assert_eq!(release_url("http://m/r/", "latest"), "http://m/r/latest/download/kestrel");
        assert_eq!(release_url("http://m/r", "v0.7.1"), "http://m/r/download/v0.7.1/kestrel");
    }
}
