//! Ctrl-C handling: the first SIGINT/SIGTERM sets a flag that long-running loops poll, so
//! they stop, their temporary files are removed by the normal error path, and the process
//! exits non-zero with nothing half-written left behind. A second Ctrl-C exits at once (130).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// An `Interrupted` error if the user asked us to stop.
pub fn check() -> io::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    Ok(())
}

/// True if `err` is (or was caused by) an interruption.
pub fn caused(err: &anyhow::Error) -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
        && err.chain().any(|c| {
            c.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::Interrupted)
        })
}
