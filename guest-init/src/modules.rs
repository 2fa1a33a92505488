//! Kernel modules shipped in the initramfs by `fledge kernel import` (for distro kernels whose
//! virtio, vsock and filesystem drivers are modules): `/lib/fledge/modules/order` lists the
//! files in dependency order. Each is loaded with `finit_module`; one that fails is retried
//! after the others (an order the host could not see), and what still fails is reported.

use std::fs::File;
use std::os::fd::AsRawFd;

const DIR: &str = "/lib/fledge/modules";

fn load(path: &str) -> Result<(), nix::errno::Errno> {
    let file = File::open(path).map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    // SAFETY: finit_module on an open descriptor with an empty, NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    match rc {
        0 => Ok(()),
        _ => match nix::errno::Errno::last() {
            nix::errno::Errno::EEXIST => Ok(()), // built in, or loaded already
            e => Err(e),
        },
    }
}

pub fn load_shipped() {
    let Ok(order) = std::fs::read_to_string(format!("{DIR}/order")) else { return };
    let mut pending: Vec<&str> = order.lines().filter(|l| !l.is_empty()).collect();
    let mut last_errors = Vec::new();
    while !pending.is_empty() {
        let before = pending.len();
        last_errors.clear();
        pending.retain(|name| match load(&format!("{DIR}/{name}")) {
            Ok(()) => false,
            Err(e) => {
                last_errors.push(format!("{name}: {e}"));
                true
            }
        });
        if pending.len() == before {
            break;
        }
    }
    for e in last_errors {
        crate::warn(format_args!("cannot load module {e}"));
    }
}
