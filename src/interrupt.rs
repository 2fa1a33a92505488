//! Ctrl-C and SIGTERM handling: the first signal sets a flag that long-running loops poll, so
//! they stop, their temporary files are removed by the normal error path, and the process
//! exits 130 (SIGINT) or 143 (SIGTERM) with nothing half-written left behind. A second signal exits at once, after
//! removing the temporary files registered here.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// The signal that asked us to stop (SIGINT or SIGTERM), 0 while none came.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static TEMP_FILES: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Installs the handler (once per process): a thread that receives SIGINT and SIGTERM.
pub fn install() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else { return };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
                if let Ok(files) = TEMP_FILES.lock() {
                    for f in files.iter() {
                        let _ = std::fs::remove_file(f);
                    }
                }
                std::process::exit(128 + signal);
            }
        }
    });
}

/// The exit status after a signal stopped the work, as a shell reports it: 128 + the
/// signal's number (130 for Ctrl-C, 143 for SIGTERM).
pub fn exit_status() -> u8 {
    let signal = SIGNAL.load(Ordering::SeqCst);
    u8::try_from(128 + if signal == 0 { SIGINT } else { signal }).unwrap_or(130)
}

/// The error that stops work after a signal. It is deliberately not
/// `io::ErrorKind::Interrupted`, which `io::copy` and friends silently retry.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// An [`Interrupted`] error if the user asked us to stop.
pub fn check() -> io::Result<()> {
    if requested() {
        return Err(io::Error::other(Interrupted));
    }
    Ok(())
}

/// True if `err` is the error [`check`] returns.
pub fn is_interrupt(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Interrupted>())
}

/// Prefixes `err` with `what` (e.g. the file it concerns), keeping interruptions recognisable.
pub fn annotate(err: io::Error, what: impl std::fmt::Display) -> io::Error {
    if is_interrupt(&err) { err } else { io::Error::new(err.kind(), format!("{what}: {err}")) }
}

/// True once a signal asked us to stop. Work that fails after it failed because of it (its
/// loop saw the flag, a child lost its input, a stream was cut), whatever error that
/// surfaced as through the layers above, so the failure is reported as the interruption.
pub fn requested() -> bool {
    SIGNAL.load(Ordering::SeqCst) != 0
}

/// Remembers a temporary file to delete if a second signal forces an immediate exit.
pub fn track(path: &Path) {
    if let Ok(mut files) = TEMP_FILES.lock() {
        files.insert(path.to_path_buf());
    }
}

/// Forgets a temporary file (it was renamed into place or removed).
pub fn untrack(path: &Path) {
    if let Ok(mut files) = TEMP_FILES.lock() {
        files.remove(path);
    }
}

/// A reader that stops with [`Interrupted`] once the user asked to stop.
pub struct Checked<R>(pub R);

impl<R: io::Read> io::Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        check()?;
        self.0.read(buf)
    }
}

/// Makes the child `cmd` starts die with the thread that starts it (`PR_SET_PDEATHSIG`), so a
/// packer does not go on writing after Fledge was killed, even by SIGKILL. For children that
/// the starting thread waits for, as every packer's is.
pub fn dies_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Waits for `child` while honouring a stop request: on SIGINT or SIGTERM the child is
/// killed and reaped, and the wait fails with [`Interrupted`]. For packers, which can run
/// for minutes on their own after their input ended.
pub fn wait(child: &mut std::process::Child) -> io::Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if requested() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(Interrupted));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// [`std::process::Command::output`] that honours a stop request as [`wait`] does (stdin
/// is null; stdout and stderr are collected).
pub fn output(cmd: &mut std::process::Command) -> io::Result<std::process::Output> {
    use std::io::Read;
    use std::process::Stdio;
    fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    }
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout = drain(child.stdout.take().expect("piped"));
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = wait(&mut child)?;
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Completes once a signal asked us to stop: for racing an await that has no natural point
/// to check the flag (a VM booting, a connection being made) with `tokio::select!`.
pub async fn stopped() {
    while !requested() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
