//! PID 1 reaps every child, including orphans re-parented to it, so the agent cannot wait
//! for its own processes: it registers each one here and receives the status from the
//! reaper. Spawning and reaping hold the same lock, so a process that ends at once is still
//! found in the registry, and the standard library's own wait (after a failed exec) is
//! never raced.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::sync::oneshot;

/// How a process ended: `(exit code, signal)`, one of them zero.
pub type Ended = (i32, i32);

static WAITING: Mutex<BTreeMap<i32, oneshot::Sender<Ended>>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<i32, oneshot::Sender<Ended>>> {
    // A panic while holding the lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is still usable.
    WAITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Spawns with the registry locked and registers the new process's pid.
pub fn spawn(command: &mut std::process::Command) -> std::io::Result<(std::process::Child, oneshot::Receiver<Ended>)> {
    let mut waiting = registry();
    let child = command.spawn()?;
    let (tx, rx) = oneshot::channel();
    waiting.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Reaps every child that has ended, handing registered ones their status.
pub fn reap() {
    let mut waiting = registry();
    loop {
        let ended = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, (code, 0)),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, (0, signal as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        if let Some(tx) = waiting.remove(&ended.0.as_raw()) {
            let _ = tx.send(ended.1);
        }
    }
}
