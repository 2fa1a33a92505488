//! Build-VM mode (`fledge.agent_port=PORT` on the kernel command line): instead of a
//! workload, guest-init serves the host's gRPC calls (`fledge-agent`'s .proto) on that vsock
//! port until the host asks it to power off.
//!
//! The service runs on a Tokio runtime in its own threads; PID 1's main thread keeps the
//! signals: it reaps every child (handing the agent's processes their status, see
//! [`children`]) and powers off on request.

mod caps;
mod children;
mod diff;
mod exec;
mod files;
mod mount;
mod net;
mod sandbox;
mod server;
mod service;
mod tarball;
mod user;

use nix::sys::signal::Signal;

pub fn requested(cmdline: &str) -> Option<u32> {
    cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("fledge.agent_port=")?.parse().ok())
}

/// Serves the agent on vsock `port` until a power-off. Signals must already be blocked, so
/// the runtime's threads never take them.
pub fn run(port: u32, cmdline: &str) -> ! {
    if let Err(e) = sandbox::write_hosts() {
        crate::warn(format_args!("cannot write the build steps' hosts file: {e}"));
    }
    if let Err(e) = net::no_fallback_tunnels() {
        crate::warn(format_args!("cannot keep fallback tunnels out of the steps' networks: {e}"));
    }
    if net::requested(cmdline) {
        net::configure();
    }
    std::thread::spawn(move || server::serve(port));
    let signals = crate::supervise::handled_signals();
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => children::reap(),
            Ok(_) => break,
            Err(e) => crate::warn(format_args!("sigwait: {e}")),
        }
    }
    println!("fledge-init: power-off requested");
    crate::supervise::shutdown()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_command_line() {
        assert_eq!(requested("quiet fledge.agent_port=1024"), Some(1024));
        assert_eq!(requested("fledge.agent_port=x"), None);
        assert_eq!(requested("quiet"), None);
    }
}
