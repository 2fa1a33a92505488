//! Ctrl-C handling: the first SIGINT/SIGTERM sets a flag that long-running loops poll, so
//! they stop, their temporary files are removed by the normal error path, and the process
//! exits non-zero with nothing half-written left behind.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process).
pub fn install() {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
}

/// An `Interrupted` error if the user asked us to stop.
pub fn check() -> io::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    Ok(())
}
