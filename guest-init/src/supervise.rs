//! Running the workload as PID 1: start it in its own session on the console, reap every
//! child (orphans are re-parented to us), forward shutdown signals, and power off.

use std::ffi::CString;
use std::time::{Duration, Instant};

use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, execve, fork, setsid, sync};

/// Passed on to the workload, which decides how to stop.
const FORWARDED: [Signal; 4] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGPWR];
/// What BusyBox's `halt` and `poweroff` send to PID 1: stop everything and power off.
const POWER_OFF: [Signal; 2] = [Signal::SIGUSR1, Signal::SIGUSR2];

pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED.iter().chain(&POWER_OFF) {
        set.add(*s);
    }
    set
}

/// How supervision ended.
pub enum Outcome {
    /// The workload exited with this status (128+N if killed by signal N).
    Exited(i32),
    /// `poweroff`/`halt` was requested inside the guest.
    PowerOffRequested,
}

/// Blocks the signals PID 1 handles, so they wait for [`run`]'s `sigwait` (threads started
/// afterwards inherit the mask and never take them).
pub fn block_signals() {
    if let Err(e) = handled_signals().thread_block() {
        crate::warn(format_args!("cannot block signals: {e}"));
    }
}

/// Starts `argv` and supervises it until it exits or a power-off is requested.
pub fn run(argv: &[String]) -> Outcome {
    let signals = handled_signals();
    block_signals();
    // Ctrl-Alt-Del becomes SIGINT to us, which is forwarded, instead of an instant reboot.
    let _ = set_cad_enabled(false);
    // Everything the child needs is built now: other threads (the vsock listener) may hold
    // the allocator's lock at fork, so the child must not allocate before exec.
    let program = resolve(&argv[0]);
    let command = Command {
        path: CString::new(program.as_str()).ok(),
        args: argv.iter().map(|a| CString::new(a.as_str())).collect::<Result<Vec<_>, _>>().ok(),
        env: environment(),
        shown: program,
    };
    // SAFETY: the child only calls async-signal-safe functions until exec (see above).
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => exec_workload(&command, &signals),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            crate::warn(format_args!("fork: {e}"));
            return Outcome::Exited(127);
        }
    };
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(child) {
                    return Outcome::Exited(status);
                }
            }
            Ok(signal) if POWER_OFF.contains(&signal) => return Outcome::PowerOffRequested,
            Ok(signal) => {
                let _ = kill(child, signal);
            }
            Err(e) => crate::warn(format_args!("sigwait: {e}")),
        }
    }
}

/// `program` as a path: as given when it has a slash, else found on the default `PATH`.
fn resolve(program: &str) -> String {
    if program.contains('/') {
        return program.to_string();
    }
    DEFAULT_PATH
        .split(':')
        .map(|dir| format!("{dir}/{program}"))
        .find(|candidate| std::path::Path::new(candidate).is_file())
        .unwrap_or_else(|| program.to_string())
}

/// The workload's exec arguments, prepared before fork.
struct Command {
    path: Option<CString>,
    args: Option<Vec<CString>>,
    env: Vec<CString>,
    shown: String,
}

fn exec_workload(command: &Command, signals: &SigSet) -> ! {
    let _ = signals.thread_unblock();
    let _ = setsid();
    // SAFETY: async-signal-safe calls: the console (fd 0) becomes our controlling terminal,
    // and SIGPIPE gets its default action back (Rust ignores it in this process, and an
    // ignored signal would stay ignored across exec, breaking `yes | head` in the workload).
    unsafe {
        libc::ioctl(0, libc::TIOCSCTTY, 1);
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match (&command.path, &command.args) {
        (Some(path), Some(args)) => {
            let err = execve(path, args, &command.env).unwrap_err();
            crate::warn(format_args!("cannot start {}: {err}", command.shown));
        }
        _ => crate::warn(format_args!("the workload's command contains a NUL byte")),
    }
    // SAFETY: leaving the forked child without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The kernel-provided environment with a usable `PATH` and `HOME` added when missing.
fn environment() -> Vec<CString> {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    for (key, value) in [("PATH", DEFAULT_PATH), ("HOME", "/root"), ("TERM", "linux")] {
        if !vars.iter().any(|(k, _)| k == key) {
            vars.push((key.into(), value.into()));
        }
    }
    vars.into_iter().filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()).collect()
}

/// Reaps every exited child; returns the workload's status once it has exited.
fn reap(workload: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == workload => result = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == workload => result = Some(128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}

/// Stops what is left, flushes disks and powers off. Never returns.
pub fn shutdown() -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(_) => break,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {}
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    // Without ACPI (Fledge's minimal kernel on a microVM) there is no power-off device and the
    // kernel would only halt; a reset is how such VMs end (QEMU runs with -no-reboot, as
    // Firecracker does on reset).
    let mode = if std::path::Path::new("/sys/firmware/acpi").exists() {
        RebootMode::RB_POWER_OFF
    } else {
        RebootMode::RB_AUTOBOOT
    };
    let err = reboot(mode).unwrap_err();
    crate::warn(format_args!("power off failed: {err}"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
