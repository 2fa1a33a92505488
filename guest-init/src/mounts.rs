//! The runtime filesystems every workload expects. Failures are reported, not fatal: a
//! kernel without devpts still runs the workload.

use std::io::ErrorKind;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

struct Mount {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

const MOUNTS: [Mount; 7] = [
    Mount { fstype: "devtmpfs", target: "/dev", flags: MsFlags::MS_NOSUID, data: "mode=0755" },
    Mount { fstype: "proc", target: "/proc", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Mount { fstype: "sysfs", target: "/sys", flags: NOSUID_NODEV_NOEXEC, data: "" },
    Mount { fstype: "tmpfs", target: "/tmp", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=1777" },
    Mount { fstype: "tmpfs", target: "/run", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), data: "mode=0755" },
    Mount {
        fstype: "devpts",
        target: "/dev/pts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "mode=0620,gid=5,ptmxmode=0666",
    },
    Mount {
        fstype: "tmpfs",
        target: "/dev/shm",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

pub fn mount_runtime() {
    for m in &MOUNTS {
        if let Err(e) = std::fs::create_dir_all(m.target)
            && e.kind() != ErrorKind::AlreadyExists
        {
            crate::warn(format_args!("mkdir {}: {e}", m.target));
        }
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, Some(m.data)) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => crate::warn(format_args!("mount {} on {}: {e}", m.fstype, m.target)),
        }
        if m.target == "/dev" {
            attach_console();
        }
    }
}

/// Points stdin, stdout and stderr at `/dev/console`, in case the kernel could not.
fn attach_console() {
    use std::os::fd::AsRawFd;
    let Ok(console) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/console") else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `console` stays open for the call.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}
