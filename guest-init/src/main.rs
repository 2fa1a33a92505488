//! `fledge-init`: PID 1 of Fledge initramfs artifacts and of build VMs.
//!
//! In a build VM (`fledge.agent_port=PORT`) it serves the host's agent calls over vsock (see
//! [`agent`]). Otherwise
//! it mounts the runtime filesystems, attaches the console, starts the workload (the agent at
//! `/bin/kestrel`, or the program named by `/.volant_init` or `fledge.init=` on the kernel
//! command line, or a command passed after ` -- ` on it), reaps every orphan, forwards SIGTERM/SIGINT/SIGHUP/SIGPWR to it, and when
//! the workload exits reports its status on the console and powers the machine off. `halt`
//! and `poweroff` inside the guest (SIGUSR1/SIGUSR2 to PID 1) stop everything and power off. PID 1 never exits, so the
//! kernel never panics with "attempted to kill init".

#[cfg(feature = "agent")]
mod agent;
mod modules;
mod mounts;
mod rootfs;
mod supervise;
mod target;

use std::io::Write;

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "fledge-init: this is the init of Fledge images and must run as PID 1 (the kernel starts it as /init)"
        );
        std::process::exit(2);
    }
    mounts::mount_runtime();
    modules::load_shipped();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(root) = rootfs::requested(&cmdline) {
        if let Err(e) = rootfs::switch(&root) {
            println!("fledge-init: cannot boot the root filesystem: {e}");
            println!("{}{}", target::EXIT_STATUS_PREFIX, target::INIT_FAILED);
            supervise::shutdown();
        }
        // The new root needs its own /dev, /proc, /sys, /tmp and /run.
        mounts::mount_runtime();
    }
    supervise::block_signals();
    #[cfg(feature = "agent")]
    if let Some(port) = agent::requested(&cmdline) {
        agent::run(port, &cmdline);
    }
    let handoff = std::fs::read_to_string(target::HANDOFF_FILE).ok();
    let init_args: Vec<String> = std::env::args().skip(1).collect();
    let argv = target::choose(&init_args, &cmdline, handoff.as_deref());
    let program = &argv[0];
    match supervise::run(&argv) {
        supervise::Outcome::Exited(status) => {
            println!("fledge-init: {program} exited with status {status}");
            println!("{}{status}", target::EXIT_STATUS_PREFIX);
        }
        supervise::Outcome::PowerOffRequested => {
            // A power-off from inside the guest is a clean end: report success.
            println!("fledge-init: power-off requested; stopping {program}");
            println!("{}0", target::EXIT_STATUS_PREFIX);
        }
    }
    supervise::shutdown();
}

/// Reports a non-fatal problem on the console.
fn warn(what: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "fledge-init: {what}");
}
