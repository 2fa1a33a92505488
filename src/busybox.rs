//! Sourcing the BusyBox binary: a local file (`busybox_path`) or a verified, cached download
//! (`busybox_url` + `busybox_sha256`, pinned by default). Either way it must be an ELF
//! executable, since it becomes the image's shell. `FLEDGE_BUSYBOX=/path` overrides both (for
//! direct Dockerfile builds, which have no fledge.toml to say it in).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::BusyboxSource;
use crate::fetch::{FetchError, Fetcher, Policy, verify_local};

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("BusyBox could not be obtained: {source}\n  = help: {help}")]
    Fetch { source: FetchError, help: &'static str },
    #[error(
        "{0} is not an ELF executable, so it cannot be the image's BusyBox\n  = help: use a static busybox build (Debian: apt install busybox-static, then busybox_path = \"/bin/busybox\")"
    )]
    NotElf(String),
}

const OFFLINE_HELP: &str = "on a machine without network access set [source] busybox_path to a static busybox \
(Debian: apt install busybox-static, then busybox_path = \"/bin/busybox\"; or FLEDGE_BUSYBOX=/bin/busybox), or run once online to fill the cache";

pub fn resolve(source: &BusyboxSource, fetcher: &Fetcher) -> Result<PathBuf, BusyboxError> {
    let overridden = std::env::var_os("FLEDGE_BUSYBOX").filter(|p| !p.is_empty()).map(PathBuf::from);
    let path = match (overridden, source) {
        (Some(path), _) => path,
        (None, source) => fetch(source, fetcher)?,
    };
    check_elf(&path)?;
    Ok(path)
}

fn fetch(source: &BusyboxSource, fetcher: &Fetcher) -> Result<PathBuf, BusyboxError> {
    Ok(match source {
        BusyboxSource::Local { path, sha256 } => {
            verify_local(path, *sha256).map_err(|source| BusyboxError::Fetch {
                source,
                help: "update busybox_sha256 or point busybox_path at the right file",
            })?;
            path.clone()
        }
        BusyboxSource::Download { url, sha256 } => {
            let policy = if sha256.is_some() { Policy::CacheFirst } else { Policy::NetworkFirst };
            let (path, _) =
                fetcher
                    .fetch(url, *sha256, policy)
                    .map_err(|source| {
                        let help = match source {
                            FetchError::Mismatch { .. } => "the file at busybox_url is not the one busybox_sha256 pins: fix the URL, or update the checksum if the new file is intended",
                            _ => OFFLINE_HELP,
                        };
                        BusyboxError::Fetch { source, help }
                    })?;
            path
        }
    })
}

fn check_elf(path: &Path) -> Result<(), BusyboxError> {
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF";
    if ok { Ok(()) } else { Err(BusyboxError::NotElf(path.display().to_string())) }
}
