//! `fledge.ready_port=PORT` on the kernel command line: a vsock listener that greets every
//! host connection with `FLEDGE_READY\n` and closes it, so the host can tell from outside
//! when the guest is up (and measure it). The agent's service will answer on this port.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

pub const GREETING: &[u8] = b"FLEDGE_READY\n";

pub fn requested(cmdline: &str) -> Option<u32> {
    cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("fledge.ready_port=")?.parse().ok())
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor this function owns; the address is a fully
    // initialised sockaddr_vm of the length passed.
    unsafe {
        let fd = OwnedFd::from_raw_fd(check(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0))?);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        check(libc::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), (&raw const addr).cast(), len))?;
        check(libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 16))?;
        Ok(fd)
    }
}

fn serve(listener: OwnedFd) {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: accepting on a listening socket we own; the new descriptor is owned below.
        let conn = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if conn < 0 {
            continue;
        }
        // SAFETY: `conn` is a new descriptor nobody else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        let mut stream = std::fs::File::from(conn);
        let _ = io::Write::write_all(&mut stream, GREETING);
    }
}

/// Starts the listener on a thread (signals must already be blocked, so they stay with the
/// supervising thread); a kernel without vsock is reported, not fatal.
pub fn start(port: u32) {
    match listen(port) {
        Ok(listener) => {
            std::thread::spawn(move || serve(listener));
        }
        Err(e) => crate::warn(format_args!("cannot listen on vsock port {port}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_command_line() {
        assert_eq!(requested("quiet fledge.ready_port=1024"), Some(1024));
        assert_eq!(requested("fledge.ready_port=x"), None);
        assert_eq!(requested("quiet"), None);
    }
}
