//! The capabilities of a build step's process, set as runc sets an OCI spec's. BuildKit's
//! spec (containerd's default) gives a step 14 capabilities as its bounding, permitted and
//! effective sets, none inheritable or ambient: a root step runs with `CapEff`
//! 00000000a80425fb, a step of another user with none (execve clears them for a non-root
//! program without file capabilities), both with that bounding set. `--security=insecure`
//! gives every capability in all five sets, ambient included, so other users keep them too.

use std::io;

use super::sandbox::check;

/// CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP
/// NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE: containerd's `defaultUnixCaps`.
const DEFAULT: u64 = 0xa804_25fb;

/// capset's `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[derive(Clone, Copy)]
pub struct Capabilities {
    /// The bounding, permitted and effective sets.
    set: u64,
    /// The inheritable and ambient sets also hold `set`.
    ambient: bool,
    /// The kernel's highest capability number.
    last: u32,
}

impl Capabilities {
    /// A step's capabilities: BuildKit's default set, or all for `--security=insecure`.
    pub fn for_step(insecure: bool) -> io::Result<Capabilities> {
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "cap_last_cap is not a number"))?;
        let all = u64::MAX >> (63 - last.min(63));
        Ok(if insecure {
            Capabilities { set: all, ambient: true, last }
        } else {
            Capabilities { set: DEFAULT & all, ambient: false, last }
        })
    }

    fn has(&self, cap: u32) -> bool {
        self.set & (1 << cap) != 0
    }

    /// Before the identity changes, as runc does: the bounding set narrowed, and the
    /// permitted set kept across setuid so that [`Capabilities::apply`] can set it.
    ///
    /// # Safety
    /// Plain system calls; for a forked child between fork and exec.
    pub unsafe fn narrow(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        unsafe {
            for cap in (0..=self.last).filter(|&cap| !self.has(cap)) {
                check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0))?;
            }
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))
        }
    }

    /// After the identity changed: the permitted, effective and inheritable sets, then the
    /// ambient one (which needs a capability permitted and inheritable).
    ///
    /// # Safety
    /// Plain system calls on local data; for a forked child between fork and exec.
    pub unsafe fn apply(&self) -> io::Result<()> {
        let inheritable = if self.ambient { self.set } else { 0 };
        let word = |bits: u64, half: u32| (bits >> (32 * half)) as u32;
        let data = [0, 1].map(|half| Data {
            effective: word(self.set, half),
            permitted: word(self.set, half),
            inheritable: word(inheritable, half),
        });
        let mut header = Header { version: VERSION_3, pid: 0 };
        // SAFETY: capset reads the header and two data words that outlive the call; prctl
        // takes integers.
        unsafe {
            check(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0))?;
            if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for cap in (0..=self.last).filter(|&cap| self.ambient && self.has(cap)) {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                check(libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0))?;
            }
        }
        Ok(())
    }
}
