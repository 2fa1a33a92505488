//! Where Fledge keeps state and caches (see docs/configuration.md):
//! `FLEDGE_STATE_DIR` (default `$XDG_DATA_HOME/fledge`) and `FLEDGE_CACHE_DIR`
//! (default `$XDG_CACHE_HOME/fledge`). Directories are created only when first written.

use std::path::PathBuf;

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn home() -> Option<PathBuf> {
    from_env("HOME")
}

/// The download cache directory, or `None` when neither it nor a home directory is known.
pub fn cache_dir() -> Option<PathBuf> {
    from_env("FLEDGE_CACHE_DIR")
        .or_else(|| from_env("XDG_CACHE_HOME").map(|d| d.join("fledge")))
        .or_else(|| home().map(|h| h.join(".cache/fledge")))
}

/// The state directory (store, kernels, cache volumes).
pub fn state_dir() -> Option<PathBuf> {
    from_env("FLEDGE_STATE_DIR")
        .or_else(|| from_env("XDG_DATA_HOME").map(|d| d.join("fledge")))
        .or_else(|| home().map(|h| h.join(".local/share/fledge")))
}
