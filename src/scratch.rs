//! Temporary files live under the state directory, never in `/tmp`: each process claims its
//! own directory below a shared parent (`$FLEDGE_STATE_DIR/tmp`, the store's `tmp/`), named
//! `<pid>-<random>` and holding a `.lock` file the process keeps locked for its whole life.
//!
//! Guarantees:
//! - A claim sweeps the directories of processes that are gone: their lock can be taken, so
//!   nobody writes there any more (however the owner ended, SIGKILL included).
//! - A live process's directory is never removed by another: its lock is held.
//! - [`release_all`] removes this process's directories on a normal or failed exit.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const LOCK: &str = ".lock";

/// This process's claimed directories: (parent, directory, its held lock).
static CLAIMS: Mutex<Vec<(PathBuf, PathBuf, File)>> = Mutex::new(Vec::new());

/// This process's directory below `parent`, claimed (and the parent swept) on first use.
pub fn dir(parent: &Path) -> io::Result<PathBuf> {
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = claims.iter().position(|(p, _, _)| p == parent) {
        if claims[i].1.is_dir() {
            return Ok(claims[i].1.clone());
        }
        claims.remove(i); // the whole parent was removed (a state dir deleted): claim anew
    }
    fs::create_dir_all(parent)?;
    sweep(parent)?;
    let dir = tempfile::Builder::new().prefix(&format!("{}-", std::process::id())).tempdir_in(parent)?.keep();
    let lock = File::create(dir.join(LOCK))?;
    lock.lock()?;
    claims.push((parent.to_path_buf(), dir.clone(), lock));
    Ok(dir)
}

/// Removes the directories below `parent` whose owner is gone.
fn sweep(parent: &Path) -> io::Result<()> {
    for entry in fs::read_dir(parent)? {
        let path = entry?.path();
        // A directory without its lock yet is being claimed right now: leave it.
        let Ok(lock) = File::open(path.join(LOCK)) else { continue };
        if lock.try_lock().is_ok() {
            tracing::debug!("removing {}, left by a process that is gone", path.display());
            if let Err(e) = fs::remove_dir_all(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
    Ok(())
}

/// Removes every directory this process claimed (call once, as the process ends).
pub fn release_all() {
    release(|_| true);
}

/// Removes the directories this process claimed below the parents `matching` selects.
fn release(matching: impl Fn(&Path) -> bool) {
    let mut claims = CLAIMS.lock().unwrap_or_else(|e| e.into_inner());
    claims.retain(|(parent, dir, _lock)| {
        if !matching(parent) {
            return true;
        }
        let _ = fs::remove_dir_all(dir);
        false
    });
}

/// This process's directory for temporary files outside the store (build VMs, staging):
/// `$FLEDGE_STATE_DIR/tmp/<pid>-<random>`.
pub fn state_tmp() -> io::Result<PathBuf> {
    let state = crate::dirs::state_dir()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no state directory: set FLEDGE_STATE_DIR (or HOME)"))?;
    dir(&state.join("tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owners_are_swept_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A directory whose owner is gone: its lock is free.
        let dead = parent.path().join("1-dead");
        fs::create_dir(&dead).unwrap();
        File::create(dead.join(LOCK)).unwrap();
        fs::write(dead.join("blob-x"), "left").unwrap();
        // One being claimed (no lock yet) and one held by a live owner.
        let claiming = parent.path().join("2-claiming");
        fs::create_dir(&claiming).unwrap();
        let live = parent.path().join("3-live");
        fs::create_dir(&live).unwrap();
        let held = File::create(live.join(LOCK)).unwrap();
        // flock locks belong to the open file: another open of the same file cannot take it.
        held.lock().unwrap();
        let mine = dir(parent.path()).unwrap();
        assert!(!dead.exists() && claiming.exists() && live.exists());
        assert_eq!(dir(parent.path()).unwrap(), mine, "one directory per parent and process");
        release(|p| p == parent.path());
        assert!(!mine.exists());
    }
}
