//! The environment every build step runs in, as runc gives a BuildKit step (containerd's
//! default spec as BuildKit v0.32 applies it; the facts are in docs/compatibility.md):
//! mount, UTS and IPC namespaces of its own; `/proc`; a tmpfs `/dev` holding `null`, `zero`,
//! `full`, `random`, `urandom` and `tty`, the links `fd`, `stdin`, `stdout`, `stderr` and
//! `ptmx`, and the mounts `/dev/pts` (a new devpts instance), `/dev/shm` and `/dev/mqueue`;
//! a read-only `/sys`; the hostname `buildkitsandbox` and a hosts file naming it; the
//! masked paths (`/proc/kcore`, `/sys/firmware`, ...: `/dev/null` over a file, an empty
//! read-only tmpfs over a directory) and the read-only ones (`/proc/sys`, `/proc/bus`, ...).
//! A kernel without POSIX message queues leaves `/dev/mqueue` an empty directory (Fledge's
//! guest kernel has them, see docs/kernels.md). `--security=insecure` leaves out the masked and
//! read-only paths and mounts `/sys` writable, as BuildKit's insecure spec does.
//!
//! Guarantees: these mounts exist only in the step's mount namespace, so they vanish with its
//! last process and nothing written below them (`echo x > /dev/null`, a file in `/dev/shm`)
//! reaches the layer. The mount points `/proc`, `/dev` and `/sys` are created in the step's
//! root when it lacks them, and stay there, as runc leaves them: BuildKit's layers hold them
//! then too. A mount point that exists as something other than a directory is left alone
//! and not mounted. What the host mounted below `/dev` for the step (a RUN heredoc's script
//! at `/dev/pipes/NAME`) is moved aside and back on top of the tmpfs, so a heredoc step has
//! the devices too.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// The hostname BuildKit gives a step.
const HOSTNAME: &[u8] = b"buildkitsandbox";

/// Writes the hosts file every step gets bound over its `/etc/hosts` (by the host, as a
/// mount of the step), with BuildKit's text.
pub fn write_hosts() -> io::Result<()> {
    let hosts = Path::new(fledge_agent::STEP_HOSTS);
    std::fs::create_dir_all(hosts.parent().expect("an absolute path"))?;
    std::fs::write(hosts, "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// Character devices of `/dev`: name, major, minor (mode 0666, as runc makes them).
const DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Links of `/dev`: name, target.
const LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// containerd's default masked paths, as BuildKit's spec keeps them.
const MASKED: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "sys/firmware",
    "sys/devices/virtual/powercap",
    "proc/scsi",
];

/// containerd's default read-only paths.
const READ_ONLY: [&str; 5] = ["proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"];

/// One system call of the setup, its strings prepared (the child may not allocate).
enum Step {
    /// `optional`: a kernel without the filesystem (ENODEV) skips it.
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
        optional: bool,
    },
    Mkdir {
        path: CString,
    },
    Mknod {
        path: CString,
        major: u32,
        minor: u32,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    /// runc's maskPath: `/dev/null` bound over a file, a read-only tmpfs over a directory;
    /// nothing where the path does not exist.
    Mask {
        path: CString,
    },
    /// runc's readonlyPath: bound onto itself and remounted read-only; nothing where the
    /// path does not exist.
    ReadOnly {
        path: CString,
    },
    /// An empty file (a mount point for a file).
    MkFile {
        path: CString,
    },
    /// A mount moved from `from` to `to` (`MS_MOVE`).
    Move {
        from: CString,
        to: CString,
    },
    /// An emptied mount point removed (`rmdir` or `unlink`).
    Remove {
        path: CString,
        dir: bool,
    },
}

/// The setup of one step's environment, ready to run between fork and exec.
pub struct Sandbox {
    steps: Vec<Step>,
}

fn c(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

fn c_path(path: &Path) -> io::Result<CString> {
    c(path.as_os_str().as_bytes())
}

/// Makes `root/name` a directory if nothing is there; false if something else is, or if
/// the root is read-only and lacks it (a process run in a read-only image, not a step).
fn mount_point(root: &Path, name: &str) -> io::Result<bool> {
    let path = root.join(name);
    match path.symlink_metadata() {
        Ok(meta) => Ok(meta.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o755).create(&path) {
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => return Ok(false),
                created => created?,
            }
            // The mode is exact whatever the umask, as runc's is.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// What is mounted below `dir` (per /proc/self/mountinfo; a mount inside another of them
/// moves with it, so only the outermost), with whether each is a directory, parents first.
fn mounts_below(dir: &Path) -> Vec<(std::path::PathBuf, bool)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<std::path::PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect();
    points.sort();
    points.dedup();
    let mut outermost: Vec<std::path::PathBuf> = Vec::new();
    for point in points {
        if !outermost.iter().any(|outer| point.starts_with(outer)) {
            outermost.push(point);
        }
    }
    outermost
        .into_iter()
        .map(|point| {
            let dir = point.is_dir();
            (point, dir)
        })
        .collect()
}

/// Where a step's mounts below its `/dev` wait while the tmpfs goes on (in the guest's own
/// root, which only the agent uses).
const STASH: &str = "/run/fledge-step/stash";

/// A name no other step's stash uses.
fn stash_path(n: usize) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Path::new(STASH).join(format!("{id}-{n}"))
}

impl Sandbox {
    /// Creates the missing mount points in `root` and prepares the rest; `insecure` for a
    /// step run with `--security=insecure`.
    pub fn prepare(root: &Path, insecure: bool) -> io::Result<Sandbox> {
        let mut steps = Vec::new();
        let mount = |source: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str| {
            Ok::<_, io::Error>(Step::Mount {
                source: c(source.as_bytes())?,
                target: c_path(target)?,
                fstype: c(fstype.as_bytes())?,
                flags,
                data: c(data.as_bytes())?,
                optional: fstype == "mqueue",
            })
        };
        let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
        let proc = mount_point(root, "proc")?;
        if proc {
            steps.push(mount("proc", &root.join("proc"), "proc", nosuid | noexec | nodev, "")?);
        }
        if mount_point(root, "dev")? {
            let dev = root.join("dev");
            // What the host mounted below /dev for this step (a RUN heredoc's
            // /dev/pipes/NAME) is moved aside and back on top of the tmpfs, as runc mounts
            // a step's own mounts after its /dev.
            let carried = mounts_below(&dev);
            let mut stashed = Vec::new();
            for (n, (point, is_dir)) in carried.iter().enumerate() {
                let stash = stash_path(n);
                std::fs::create_dir_all(STASH)?;
                if *is_dir {
                    std::fs::create_dir(&stash)?;
                } else {
                    std::fs::File::create(&stash)?;
                }
                steps.push(Step::Move { from: c_path(point)?, to: c_path(&stash)? });
                stashed.push(stash);
            }
            steps.push(mount("tmpfs", &dev, "tmpfs", nosuid | libc::MS_STRICTATIME, "mode=755,size=65536k")?);
            for (name, major, minor) in DEVICES {
                steps.push(Step::Mknod { path: c_path(&dev.join(name))?, major, minor });
            }
            for (name, target) in LINKS {
                steps.push(Step::Symlink { target: c(target.as_bytes())?, path: c_path(&dev.join(name))? });
            }
            for name in ["pts", "shm", "mqueue"] {
                steps.push(Step::Mkdir { path: c_path(&dev.join(name))? });
            }
            let pts = "newinstance,ptmxmode=0666,mode=0620,gid=5";
            steps.push(mount("devpts", &dev.join("pts"), "devpts", nosuid | noexec, pts)?);
            steps.push(mount("shm", &dev.join("shm"), "tmpfs", nosuid | noexec | nodev, "mode=1777,size=65536k")?);
            steps.push(mount("mqueue", &dev.join("mqueue"), "mqueue", nosuid | noexec | nodev, "")?);
            let mut made: Vec<std::path::PathBuf> = ["pts", "shm", "mqueue"].iter().map(|n| dev.join(n)).collect();
            for ((point, is_dir), stash) in carried.iter().zip(&stashed) {
                let parents: Vec<&Path> = point.ancestors().skip(1).take_while(|p| *p != dev).collect();
                for parent in parents.into_iter().rev() {
                    if !made.iter().any(|m| m == parent) {
                        steps.push(Step::Mkdir { path: c_path(parent)? });
                        made.push(parent.to_path_buf());
                    }
                }
                let target = c_path(point)?;
                // A step's own tmpfs on /dev/shm lands on the directory already made.
                if !made.iter().any(|m| m == point) {
                    let path = target.clone();
                    steps.push(if *is_dir { Step::Mkdir { path } } else { Step::MkFile { path } });
                }
                steps.push(Step::Move { from: c_path(stash)?, to: target });
                steps.push(Step::Remove { path: c_path(stash)?, dir: *is_dir });
            }
        }
        let sys = mount_point(root, "sys")?;
        if sys {
            let read_only = if insecure { 0 } else { libc::MS_RDONLY };
            steps.push(mount("sysfs", &root.join("sys"), "sysfs", nosuid | noexec | nodev | read_only, "")?);
        }
        if !insecure {
            // Only below the /proc and /sys mounted here: runc applies them to its own.
            let ours = |path: &&str| if path.starts_with("proc/") { proc } else { sys };
            for path in READ_ONLY.into_iter().filter(ours) {
                steps.push(Step::ReadOnly { path: c_path(&root.join(path))? });
            }
            for path in MASKED.into_iter().filter(ours) {
                steps.push(Step::Mask { path: c_path(&root.join(path))? });
            }
        }
        Ok(Sandbox { steps })
    }

    /// Enters the namespaces and makes the mounts. Runs in the child between fork and exec,
    /// before it changes its root.
    ///
    /// # Safety
    /// Only system calls on the strings prepared by [`Sandbox::prepare`]; call it in a forked
    /// child only, where the mounts cannot leak into the agent's namespace.
    pub unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY: plain system calls on NUL-terminated strings that outlive them.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC))?;
            // Nothing mounted from here on propagates back to the agent's namespace.
            let root = c"/";
            let none = std::ptr::null();
            check(libc::mount(none, root.as_ptr(), none, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::sethostname(HOSTNAME.as_ptr().cast(), HOSTNAME.len()))?;
            let umask = libc::umask(0);
            for step in &self.steps {
                match step {
                    Step::Mount { source, target, fstype, flags, data, optional } => {
                        let mounted = check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            fstype.as_ptr(),
                            *flags,
                            data.as_ptr().cast(),
                        ));
                        match mounted {
                            Err(e) if *optional && e.raw_os_error() == Some(libc::ENODEV) => {}
                            other => other?,
                        }
                    }
                    Step::Mkdir { path } => check(libc::mkdir(path.as_ptr(), 0o755))?,
                    Step::Mknod { path, major, minor } => {
                        check(libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(*major, *minor)))?
                    }
                    Step::Symlink { target, path } => check(libc::symlink(target.as_ptr(), path.as_ptr()))?,
                    Step::Mask { path } => mask(path)?,
                    Step::ReadOnly { path } => read_only(path)?,
                    Step::MkFile { path } => {
                        let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                        if fd < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        libc::close(fd);
                    }
                    Step::Move { from, to } => {
                        check(libc::mount(from.as_ptr(), to.as_ptr(), none, libc::MS_MOVE, std::ptr::null()))?
                    }
                    Step::Remove { path, dir } => {
                        // The stash is the guest's, shared with the agent: tidy, not vital.
                        if *dir {
                            libc::rmdir(path.as_ptr());
                        } else {
                            libc::unlink(path.as_ptr());
                        }
                    }
                }
            }
            libc::umask(umask);
        }
        Ok(())
    }
}

/// A system call's 0 as Ok, else errno's error.
pub(super) fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// runc's maskPath on `path`. The `/dev/null` bound is the guest's: this runs before the
/// child changes its root, and a step keeping the image's /dev may have none.
///
/// # Safety
/// Plain system calls; for a forked child between fork and exec.
unsafe fn mask(path: &CString) -> io::Result<()> {
    let none = std::ptr::null();
    // SAFETY: mount on NUL-terminated strings that outlive it.
    unsafe {
        match check(libc::mount(c"/dev/null".as_ptr(), path.as_ptr(), none, libc::MS_BIND, none.cast())) {
            // A directory cannot take a file's bind.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                check(libc::mount(c"tmpfs".as_ptr(), path.as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY, none.cast()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// runc's readonlyPath on `path`, a path below the step's /proc, whose nosuid, nodev and
/// noexec the read-only bind keeps.
///
/// # Safety
/// Plain system calls; for a forked child between fork and exec.
unsafe fn read_only(path: &CString) -> io::Result<()> {
    let none = std::ptr::null();
    let remount =
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    // SAFETY: mount on NUL-terminated strings that outlive it.
    unsafe {
        match check(libc::mount(path.as_ptr(), path.as_ptr(), none, libc::MS_BIND | libc::MS_REC, none.cast())) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            bound => bound.and_then(|()| check(libc::mount(path.as_ptr(), path.as_ptr(), none, remount, none.cast()))),
        }
    }
}
