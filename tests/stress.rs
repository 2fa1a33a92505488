//! Stress tests (issue 14): builds at once on one store, and builds killed at many points.
//!
//! - **Concurrency**: several builds (rootfs images in three formats and an initramfs from a
//!   registry image, a Dockerfile build whose RUN uses a cache mount) run at once on one
//!   state directory, pulling from a throttled registry, with a `fledge prune` started while
//!   they pull. Every artifact must equal, byte for byte, the one the same build makes alone
//!   on a fresh state directory, and a build after them must too (a store poisoned by a race
//!   makes every later build wrong).
//! - **Stop**: at some of those points the build gets SIGTERM or SIGINT instead; it must exit
//!   128 + the signal (within a generous deadline that only catches a hang; the time it took
//!   is printed), its temporary files already gone, and everything below holds too.
//! - **Kill**: a build is SIGKILLed at a point chosen by an event (a blob being downloaded,
//!   a layer's entry list stored, a `.partial` or staging directory beside the output, a
//!   packer or VM process started, a RUN step's output), sometimes after a fixed delay. Then
//!   every process it started must be gone within 10 s, none having finished its work after
//!   the kill (the test process is their subreaper and sees how they ended), the next
//!   identical build must succeed with an artifact equal to a clean build's, nothing may be
//!   left outside the state directory (nothing beside the output, nothing in `TMPDIR`), and
//!   the state directory's temporary areas (`tmp/`, `store/tmp/`) must be empty.
//!
//! `FLEDGE_STRESS=full` (`make stress`) runs 20 concurrency runs and every kill point; by
//! default (`make test`) a reduced, deterministic set runs. Needs docker-registry, skopeo,
//! mksquashfs, mkfs.erofs, and for the Dockerfile build QEMU, vhost-device-vsock and the
//! test kernel (`FLEDGE_TEST_KERNEL_STATE`, set by `make test`); without them the tests fail
//! saying what is missing. Failures are collected and reported together, one line each.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Replies from the registry reach Fledge this long after each request, at this rate per
/// connection.
const REGISTRY_LATENCY: Duration = Duration::from_millis(250);
const REGISTRY_BYTES_PER_SEC: usize = 2 << 20;
/// The builds of a concurrency run start this far apart: less than the registry's latency,
/// so a build that lags another by this much asks for a small layer before the other has
/// stored it and receives it after (the window of issue 14's lost-layer race).
const STAGGER: Duration = Duration::from_millis(100);
/// How long a trigger may take to fire before the kill point counts as missed.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the children of a killed build may take to die.
const CHILDREN_GRACE: Duration = Duration::from_secs(10);
/// The line the Dockerfile build's RUN step prints when it starts.
const RUN_MARKER: &str = "stress-run-started";

fn full_strength() -> bool {
    std::env::var("FLEDGE_STRESS").is_ok_and(|v| v == "full")
}

/// The tests take turns: each loads the machine enough on its own.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------
// The image: three layers, thousands of entries, a whiteout and an opaque directory in the
// top layer, so a build that loses a layer or a whiteout makes a visibly different artifact.

/// Incompressible but deterministic bytes.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// (path, content) of the files of the bottom layer: 30 directories of 100 files.
fn bottom_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for d in 0..30 {
        for f in 0..100 {
            files.push((format!("data/{d:02}/f{f:03}"), filler(d * 1000 + f, 1024)));
        }
    }
    files
}

fn stress_layers() -> Vec<Vec<u8>> {
    let busybox = fs::read(busybox()).unwrap();
    let files = bottom_files();
    let dirs: Vec<String> = (0..30).map(|d| format!("data/{d:02}")).collect();
    let mut bottom = vec![
        oci::Entry::Dir("bin", 0o755),
        oci::Entry::File("bin/busybox", 0o755, &busybox),
        oci::Entry::Symlink("bin/sh", "busybox"),
        oci::Entry::Dir("etc", 0o755),
        oci::Entry::File("etc/gone", 0o644, b"whited out by the top layer\n"),
        oci::Entry::File("etc/replaced", 0o644, b"bottom\n"),
        oci::Entry::Dir("data", 0o755),
    ];
    for (n, dir) in dirs.iter().enumerate() {
        bottom.push(oci::Entry::Dir(dir, 0o755));
        bottom.extend(files[n * 100..(n + 1) * 100].iter().map(|(p, c)| oci::Entry::File(p, 0o644, c)));
    }
    let extra: Vec<(String, Vec<u8>)> =
        (0..300).map(|f| (format!("extra/e{f:03}"), filler(100_000 + f, 2048))).collect();
    let mut middle = vec![oci::Entry::Dir("extra", 0o755), oci::Entry::File("etc/replaced", 0o644, b"middle\n")];
    middle.extend(extra.iter().map(|(p, c)| oci::Entry::File(p, 0o644, c)));
    let top = vec![
        oci::Entry::File("etc/.wh.gone", 0o644, b""),
        oci::Entry::File("data/07/.wh..wh..opq", 0o644, b""),
        oci::Entry::File("data/07/only", 0o644, b"the opaque directory's only file\n"),
        oci::Entry::File("etc/replaced", 0o644, b"top\n"),
    ];
    vec![oci::tar_layer(&bottom), oci::tar_layer(&middle), oci::tar_layer(&top)]
}

/// A registry holding the stress image, behind a throttle; kept for the whole test binary
/// (the registry dies with the thread that started it, which lives as long as the process).
struct Fixture {
    _registry: registry::Registry,
    _throttle: throttle::Throttle,
    image: String,
    /// The guest kernel for build VMs.
    kernel: PathBuf,
    /// The clean build of each kind, made on demand.
    references: Mutex<HashMap<Kind, std::sync::Arc<Reference>>>,
    /// A project whose store has the image pulled and nothing else.
    pulled: OnceLock<Project>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let state = std::env::var_os("FLEDGE_TEST_KERNEL_STATE").map(PathBuf::from).unwrap_or_else(|| {
            panic!("FLEDGE_TEST_KERNEL_STATE is not set: the stress tests need the test kernel (run them through `make test` or `make stress`)")
        });
        let kernel = state.join("kernel/vmlinux");
        assert!(kernel.exists(), "{} is missing: `make test` builds it", kernel.display());
        assert!(
            Command::new("vhost-device-vsock").arg("--help").output().is_ok(),
            "vhost-device-vsock is not installed (cargo install vhost-device-vsock)"
        );
        // Orphans of a killed build come to this process, which can then tell whether they
        // were killed with it or went on to finish their work.
        // SAFETY: prctl with these arguments only sets a flag of this process.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0, "cannot become a subreaper");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let registry = registry::start().expect("docker-registry is needed (apt install docker-registry)");
            tx.send(registry).unwrap();
            loop {
                std::thread::park();
            }
        });
        let registry = rx.recv().unwrap();
        let builder = Project::new();
        let layout = builder.path("layout");
        let manifest = oci::add_image(&layout, "amd64", &stress_layers(), serde_json::json!({"Cmd": ["/bin/sh"]}));
        oci::finish_layout(&layout, "v1", vec![manifest]);
        registry.push(&layout, "v1", "fledge/stress", false);
        let throttle = throttle::Throttle::start(&registry.host, REGISTRY_BYTES_PER_SEC, REGISTRY_LATENCY);
        let image = format!("{}/fledge/stress:v1", throttle.host);
        Fixture {
            _registry: registry,
            _throttle: throttle,
            image,
            kernel,
            references: Default::default(),
            pulled: OnceLock::new(),
        }
    })
}

// ---------------------------------------------------------------------------------------
// The builds.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Squashfs,
    Ext4,
    Erofs,
    Initramfs,
    Dockerfile,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Squashfs, Kind::Ext4, Kind::Erofs, Kind::Initramfs, Kind::Dockerfile];

    fn name(self) -> &'static str {
        match self {
            Kind::Squashfs => "squashfs",
            Kind::Ext4 => "ext4",
            Kind::Erofs => "erofs",
            Kind::Initramfs => "initramfs",
            Kind::Dockerfile => "dockerfile",
        }
    }

    /// The artifact, relative to the project.
    fn artifact(self) -> String {
        let file = match self {
            Kind::Squashfs | Kind::Dockerfile => "rootfs.squashfs",
            Kind::Ext4 => "rootfs.ext4",
            Kind::Erofs => "rootfs.erofs",
            Kind::Initramfs => "initramfs.cpio.gz",
        };
        format!("out/{}/{file}", self.name())
    }

    /// Writes this build's inputs into `<name>/` of `p`.
    fn set_up(self, p: &Project, image: &str) {
        let dir = self.name();
        if self == Kind::Dockerfile {
            p.write(
                &format!("{dir}/Dockerfile"),
                &format!(
                    "FROM {image}\n\
                     RUN --mount=type=cache,target=/var/cache/stress /bin/busybox sh -c 'echo {RUN_MARKER}; \
                     echo run >> /var/cache/stress/log; /bin/busybox mkdir -p /out; \
                     /bin/busybox cat /etc/replaced > /out/replaced; /bin/busybox ls /data/07 /extra > /out/listing; \
                     /bin/busybox sleep 3'\n"
                ),
            );
            return;
        }
        let (strategy, filesystem, source_extra) = match self {
            Kind::Squashfs => ("oci_rootfs", "type = \"squashfs\"\ncompression = \"xz\"\n", ""),
            Kind::Ext4 => ("oci_rootfs", "type = \"ext4\"\n", ""),
            Kind::Erofs => ("oci_rootfs", "type = \"erofs\"\n", ""),
            Kind::Initramfs => ("initramfs", "", "busybox_path = \"/bin/busybox\"\n"),
            Kind::Dockerfile => unreachable!(),
        };
        // One agent file for every project: ext4 and erofs UUIDs hash the tree, host paths of
        // its files included, so a copy per project would make every artifact different.
        let agent = agent_binary().display().to_string();
        let filesystem = if filesystem.is_empty() { String::new() } else { format!("[filesystem]\n{filesystem}") };
        p.write(
            &format!("{dir}/fledge.toml"),
            &format!(
                "version = \"1\"\nstrategy = \"{strategy}\"\n[agent]\nsource_strategy = \"local\"\npath = \"{agent}\"\n\
                 [source]\nimage = \"{image}\"\n{source_extra}{filesystem}"
            ),
        );
        p.write(&format!("{dir}/manifest.toml"), "name = \"stress\"\nversion = \"1\"\nruntime = \"stress\"\n");
    }

    /// The build, in `p`, with its temporary directory in the project (to see what is left).
    fn command(self, p: &Project, fx: &Fixture) -> Command {
        fs::create_dir_all(p.path("tmp")).unwrap();
        let mut cmd = p.fledge();
        cmd.env("TMPDIR", p.path("tmp")).env("FLEDGE_BUILD_VMS", "1");
        let artifact = self.artifact();
        if self == Kind::Dockerfile {
            cmd.env("FLEDGE_KERNEL_VMLINUX", &fx.kernel)
                .env("FLEDGE_ACCEL", "tcg")
                .env("FLEDGE_AGENT", agent_binary())
                .args(["build", "dockerfile/Dockerfile", "-o", &artifact, "--progress", "plain"]);
        } else {
            let config = format!("{}/fledge.toml", self.name());
            cmd.args(["build", "-c", &config, "-o", &artifact]);
        }
        cmd
    }
}

/// A build started in the background, its output going to files outside the project.
struct Running {
    kind: Kind,
    child: Child,
    stderr: PathBuf,
}

fn start(kind: Kind, p: &Project, fx: &Fixture, logs: &Path, tag: &str) -> Running {
    let stderr = logs.join(format!("{}-{tag}.stderr", kind.name()));
    let child = kind
        .command(p, fx)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("cannot start fledge");
    Running { kind, child, stderr }
}

/// The end of a log, for failure messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// What a clean build of one kind makes, alone on a fresh state directory.
struct Reference {
    artifact: Vec<u8>,
    /// Every path in the project outside `state/` after the build.
    listing: BTreeSet<String>,
}

fn reference(fx: &Fixture, kind: Kind) -> std::sync::Arc<Reference> {
    let mut refs = fx.references.lock().unwrap();
    refs.entry(kind)
        .or_insert_with(|| {
            let p = Project::new();
            kind.set_up(&p, &fx.image);
            let out = run(&mut kind.command(&p, fx));
            assert_success(&out);
            let artifact = fs::read(p.path(&kind.artifact())).unwrap();
            std::sync::Arc::new(Reference { artifact, listing: outside_state(&p) })
        })
        .clone()
}

/// Every path under the project but `state/`, relative to it.
fn outside_state(p: &Project) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, into: &mut BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "state" {
                continue;
            }
            into.insert(rel);
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, root, into);
            }
        }
    }
    let mut set = BTreeSet::new();
    walk(p.dir.path(), p.dir.path(), &mut set);
    set
}

/// What is in the state directory's temporary areas (`tmp/`, `store/tmp/`).
fn state_temporaries(p: &Project) -> Vec<String> {
    let mut left = Vec::new();
    for dir in ["state/tmp", "state/store/tmp"] {
        if let Ok(entries) = fs::read_dir(p.path(dir)) {
            left.extend(entries.flatten().map(|e| format!("{dir}/{}", e.file_name().to_string_lossy())));
        }
    }
    left
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A process, identified across pid reuse by its start time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    comm: String,
    state: char,
    start: u64,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(Proc {
                pid,
                comm,
                state: fields.first()?.chars().next()?,
                ppid: fields.get(1)?.parse().ok()?,
                start: fields.get(19)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every live descendant of `pid`.
fn descendants(pid: i32) -> Vec<Proc> {
    let all = processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent && p.state != 'Z') {
            parents.push(p.pid);
            found.push(p.clone());
        }
    }
    found
}

/// Live processes whose command line or working directory is inside `dir`.
fn processes_in(dir: &Path) -> Vec<String> {
    let marker = dir.display().to_string();
    processes()
        .into_iter()
        .filter(|p| p.state != 'Z' && p.pid != std::process::id() as i32)
        .filter_map(|p| {
            let cmdline = fs::read(format!("/proc/{}/cmdline", p.pid)).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let cwd = fs::read_link(format!("/proc/{}/cwd", p.pid)).unwrap_or_default();
            (cmdline.contains(&marker) || cwd.starts_with(dir)).then(|| format!("{} ({}): {cmdline}", p.pid, p.comm))
        })
        .collect()
}

fn still_alive(procs: &[Proc]) -> Vec<Proc> {
    let now = processes();
    procs
        .iter()
        .filter(|p| now.iter().any(|q| q.pid == p.pid && q.start == p.start && q.state != 'Z'))
        .cloned()
        .collect()
}

/// What became of the processes of a killed build after the grace period.
struct Aftermath {
    /// Still running.
    alive: Vec<Proc>,
    /// Ended with status 0 after the build was killed: they kept working without it.
    finished: Vec<Proc>,
    /// Anything else still running in the project.
    inside: Vec<String>,
}

/// Waits (up to the grace period) for `procs` and anything running in `dir` to end, reaping
/// those reparented to this process (a subreaper) to learn how they ended.
fn wait_gone(procs: &[Proc], dir: &Path) -> Aftermath {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + CHILDREN_GRACE;
    let mut finished = Vec::new();
    loop {
        for p in procs {
            if let Ok(WaitStatus::Exited(_, 0)) = waitpid(nix::unistd::Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG))
            {
                finished.push(p.clone());
            }
        }
        let (alive, inside) = (still_alive(procs), processes_in(dir));
        if (alive.is_empty() && inside.is_empty()) || Instant::now() > deadline {
            return Aftermath { alive, finished, inside };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// Kill points.

/// The event after which a build is killed.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// A temporary blob (`store/tmp/<process>/blob-*`) exists: a download is under way.
    BlobDownloading,
    /// At least this many blobs are stored.
    BlobsStored(usize),
    /// At least this many layer entry lists are stored (flattening).
    EntryListsStored(usize),
    /// A `.NAME.*.partial` file is beside the output (packing).
    Partial,
    /// A staging directory (`state/tmp/<process>/stage-*`) exists (staging for a packer).
    Staging,
    /// A process of this name (its `comm`) runs under the build.
    Child(&'static str),
    /// The build's stderr has this text.
    Stderr(&'static str),
}

impl Trigger {
    fn fired(self, p: &Project, running: &Running) -> bool {
        let names = |dir: &str| -> Vec<String> {
            fs::read_dir(p.path(dir))
                .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        // Names one level below `dir`: each process has its own directory there.
        let nested =
            |dir: &str| -> Vec<String> { names(dir).iter().flat_map(|d| names(&format!("{dir}/{d}"))).collect() };
        let out = format!("out/{}", running.kind.name());
        match self {
            Trigger::BlobDownloading => nested("state/store/tmp").iter().any(|n| n.starts_with("blob-")),
            Trigger::BlobsStored(n) => names("state/store/blobs/sha256").len() >= n,
            Trigger::EntryListsStored(n) => {
                names("state/store/derived")
                    .iter()
                    .map(|kind| names(&format!("state/store/derived/{kind}")).len())
                    .sum::<usize>()
                    >= n
            }
            Trigger::Partial => names(&out).iter().any(|n| n.starts_with('.') && n.ends_with(".partial")),
            Trigger::Staging => nested("state/tmp").iter().any(|n| n.starts_with("stage-")),
            Trigger::Child(comm) => descendants(running.child.id() as i32).iter().any(|c| c.comm == comm),
            Trigger::Stderr(text) => fs::read_to_string(&running.stderr).is_ok_and(|s| s.contains(text)),
        }
    }
}

/// One kill point: which build, on a fresh or an already filled store, killed when and
/// how (SIGKILL, or SIGTERM/SIGINT, which the build must honour by stopping cleanly).
#[derive(Clone, Copy, Debug)]
struct KillPoint {
    kind: Kind,
    /// Start from a state directory with the image pulled (and nothing built).
    warm: bool,
    trigger: Trigger,
    delay_ms: u64,
    signal: Signal,
}

const fn point(kind: Kind, warm: bool, trigger: Trigger, delay_ms: u64) -> KillPoint {
    KillPoint { kind, warm, trigger, delay_ms, signal: Signal::SIGKILL }
}

/// A kill point where the build is asked to stop by `signal`.
const fn stop(kind: Kind, warm: bool, trigger: Trigger, delay_ms: u64, signal: Signal) -> KillPoint {
    KillPoint { kind, warm, trigger, delay_ms, signal }
}

/// How long a build may take to stop after SIGTERM or SIGINT before it counts as hung. Not a
/// speed target (Fledge stops within half a second; the times are printed): only a hang, or
/// a wait that runs to its own timeout (a VM's boot: 60 s), fails the test.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// The reduced set (`make test`): every phase once: pull, flatten, each packer, staging, RUN;
/// and SIGTERM or SIGINT in pull, pack, a VM's boot and RUN.
const REDUCED_POINTS: [KillPoint; 15] = [
    stop(Kind::Squashfs, false, Trigger::BlobDownloading, 300, Signal::SIGTERM),
    stop(Kind::Squashfs, true, Trigger::Child("mksquashfs"), 100, Signal::SIGINT),
    stop(Kind::Ext4, true, Trigger::Partial, 100, Signal::SIGTERM),
    stop(Kind::Dockerfile, true, Trigger::Stderr(RUN_MARKER), 500, Signal::SIGTERM),
    stop(Kind::Dockerfile, true, Trigger::Child("qemu-system-x86"), 1000, Signal::SIGTERM),
    point(Kind::Squashfs, false, Trigger::BlobDownloading, 300),
    point(Kind::Squashfs, false, Trigger::EntryListsStored(1), 0),
    point(Kind::Squashfs, true, Trigger::Partial, 200),
    point(Kind::Squashfs, true, Trigger::Child("mksquashfs"), 0),
    point(Kind::Ext4, true, Trigger::Partial, 100),
    point(Kind::Erofs, true, Trigger::Staging, 0),
    point(Kind::Erofs, true, Trigger::Child("mkfs.erofs"), 0),
    point(Kind::Initramfs, true, Trigger::Partial, 0),
    point(Kind::Dockerfile, true, Trigger::Child("qemu-system-x86"), 1000),
    point(Kind::Dockerfile, true, Trigger::Stderr(RUN_MARKER), 500),
];

/// The full set (`make stress`) adds these to the reduced one.
const MORE_POINTS: [KillPoint; 31] = [
    stop(Kind::Squashfs, false, Trigger::EntryListsStored(1), 0, Signal::SIGTERM),
    stop(Kind::Squashfs, true, Trigger::Partial, 200, Signal::SIGTERM),
    stop(Kind::Erofs, true, Trigger::Staging, 0, Signal::SIGTERM),
    stop(Kind::Erofs, true, Trigger::Child("mkfs.erofs"), 0, Signal::SIGINT),
    stop(Kind::Initramfs, true, Trigger::Partial, 0, Signal::SIGTERM),
    stop(Kind::Dockerfile, false, Trigger::BlobDownloading, 300, Signal::SIGINT),
    stop(Kind::Dockerfile, true, Trigger::Stderr(RUN_MARKER), 2000, Signal::SIGINT),
    point(Kind::Squashfs, false, Trigger::BlobDownloading, 0),
    point(Kind::Squashfs, false, Trigger::BlobDownloading, 1000),
    point(Kind::Squashfs, false, Trigger::BlobsStored(1), 0),
    point(Kind::Squashfs, false, Trigger::BlobsStored(2), 0),
    point(Kind::Squashfs, false, Trigger::BlobsStored(3), 100),
    point(Kind::Squashfs, false, Trigger::EntryListsStored(2), 0),
    point(Kind::Squashfs, false, Trigger::EntryListsStored(3), 0),
    point(Kind::Squashfs, true, Trigger::Partial, 0),
    point(Kind::Squashfs, true, Trigger::Child("mksquashfs"), 500),
    point(Kind::Ext4, false, Trigger::BlobDownloading, 500),
    point(Kind::Ext4, false, Trigger::EntryListsStored(2), 0),
    point(Kind::Ext4, true, Trigger::Partial, 0),
    point(Kind::Ext4, true, Trigger::Partial, 200),
    point(Kind::Erofs, false, Trigger::BlobsStored(2), 0),
    point(Kind::Erofs, true, Trigger::Staging, 300),
    point(Kind::Erofs, true, Trigger::Child("mkfs.erofs"), 50),
    point(Kind::Erofs, true, Trigger::Partial, 0),
    point(Kind::Initramfs, false, Trigger::BlobDownloading, 200),
    point(Kind::Initramfs, true, Trigger::Partial, 300),
    point(Kind::Dockerfile, false, Trigger::BlobDownloading, 300),
    point(Kind::Dockerfile, true, Trigger::Child("qemu-system-x86"), 0),
    point(Kind::Dockerfile, true, Trigger::Child("vhost-device-vs"), 3000),
    point(Kind::Dockerfile, true, Trigger::Stderr(RUN_MARKER), 0),
    point(Kind::Dockerfile, true, Trigger::Stderr(RUN_MARKER), 2000),
];

/// A project whose store has the stress image pulled, and nothing built.
fn pulled(fx: &Fixture) -> &Project {
    fx.pulled.get_or_init(|| {
        let p = Project::new();
        assert_success(&run(p.fledge().args(["image", "pull", &fx.image])));
        p
    })
}

/// Copies `from` to `to` as it is (`cp -a`).
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(status.success(), "cp -a {} {} failed", from.display(), to.display());
}

/// Runs one kill point; returns what went wrong.
fn kill_at(fx: &Fixture, kp: KillPoint, logs: &Path, n: usize) -> Vec<String> {
    let p = Project::new();
    kp.kind.set_up(&p, &fx.image);
    if kp.warm {
        copy_tree(&pulled(fx).path("state"), &p.path("state"));
    }
    let running = start(kp.kind, &p, fx, logs, &format!("kill{n}"));
    let children = match kill_when(kp, &p, running) {
        Ok(children) => children,
        Err(missed) => return vec![format!("missed: {missed}")],
    };
    let mut failures = children_gone(&children, p.dir.path());
    let next = start(kp.kind, &p, fx, logs, &format!("kill{n}-next"));
    let out = next.child.wait_with_output().unwrap();
    if !out.status.success() {
        failures.push(format!("the next build failed ({}):\n{}", out.status, tail(&next.stderr)));
        return failures;
    }
    failures.extend(compare(fx, &p, kp.kind, "next"));
    failures.extend(left_behind(&p, &reference(fx, kp.kind)));
    failures
}

/// Waits for the kill point's trigger and delay, then signals the build; returns the
/// processes it had started, or why the point was missed or the build did not stop as it
/// must (SIGKILL: killed; SIGTERM/SIGINT: exit 128 + the signal, having removed its
/// temporary files).
fn kill_when(kp: KillPoint, p: &Project, mut running: Running) -> Result<Vec<Proc>, String> {
    let deadline = Instant::now() + TRIGGER_TIMEOUT;
    while !kp.trigger.fired(p, &running) {
        if running.child.try_wait().unwrap().is_some() {
            return Err(format!("the build ended before the trigger fired\n{}", tail(&running.stderr)));
        }
        if Instant::now() > deadline {
            let _ = running.child.kill();
            let _ = running.child.wait();
            return Err(format!("the trigger did not fire within {TRIGGER_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(kp.delay_ms));
    let pid = running.child.id() as i32;
    let children = descendants(pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), kp.signal).unwrap();
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = running.child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > STOP_DEADLINE {
            let _ = running.child.kill();
            let _ = running.child.wait();
            return Err(format!("the build did not stop within {STOP_DEADLINE:?} of {}", kp.signal));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if kp.signal == Signal::SIGKILL {
        if status.signal() != Some(9) {
            return Err(format!("the build ended ({status}) before the kill\n{}", tail(&running.stderr)));
        }
        return Ok(children);
    }
    eprintln!("  stopped {:.2} s after {}", signalled.elapsed().as_secs_f64(), kp.signal);
    if status.code() != Some(128 + kp.signal as i32) {
        return Err(format!(
            "after {} the build ended with {status}, not exit {}\n{}",
            kp.signal,
            128 + kp.signal as i32,
            tail(&running.stderr)
        ));
    }
    let temporaries = state_temporaries(p);
    if !temporaries.is_empty() || Trigger::Partial.fired(p, &running) {
        return Err(format!("the build stopped by {} left temporary files: {temporaries:?} or a .partial", kp.signal));
    }
    Ok(children)
}

/// Checks that `children` of a killed build, and anything else running in `dir`, end
/// within the grace period; kills what is left so that the next point starts clean.
fn children_gone(children: &[Proc], dir: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let Aftermath { alive, finished, inside } = wait_gone(children, dir);
    let names = |procs: &[Proc]| -> String {
        procs.iter().map(|c| format!("{} ({})", c.comm, c.pid)).collect::<Vec<_>>().join(", ")
    };
    if !alive.is_empty() {
        failures.push(format!("children alive {CHILDREN_GRACE:?} after the kill: {}", names(&alive)));
    }
    if !finished.is_empty() {
        failures
            .push(format!("children outlived the killed build and finished their work (exit 0): {}", names(&finished)));
    }
    if !inside.is_empty() {
        failures.push(format!("processes still running in the project: {inside:?}"));
    }
    for c in still_alive(children) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid), nix::sys::signal::Signal::SIGKILL);
    }
    failures
}

/// What a build after a killed one left that a clean build does not: paths outside the
/// state directory (beside the output, in `TMPDIR`), and the state's temporaries.
fn left_behind(p: &Project, reference: &Reference) -> Vec<String> {
    let mut failures = Vec::new();
    let listing = outside_state(p);
    // New paths, without those inside a new directory (the directory says it).
    let new = |path: &str| listing.contains(path) && !reference.listing.contains(path);
    let extra: Vec<&String> = listing
        .difference(&reference.listing)
        .filter(|path| !Path::new(path.as_str()).ancestors().skip(1).any(|a| new(&a.to_string_lossy())))
        .collect();
    if !extra.is_empty() {
        failures.push(format!("left outside the state directory after the next build: {extra:?}"));
    }
    let temporaries = state_temporaries(p);
    if !temporaries.is_empty() {
        failures.push(format!("left in the state directory's temporary areas after the next build: {temporaries:?}"));
    }
    failures
}

#[test]
fn builds_killed_at_any_point_leave_nothing_behind_and_the_next_build_is_clean() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture();
    let mut points = REDUCED_POINTS.to_vec();
    if full_strength() {
        points.extend(MORE_POINTS);
    }
    let logs = tempfile::Builder::new().prefix("fledge-stress-logs-").tempdir().unwrap();
    let mut report = Vec::new();
    for (n, kp) in points.iter().enumerate() {
        let failures = kill_at(fx, *kp, logs.path(), n);
        eprintln!("kill point {n} {kp:?}: {}", if failures.is_empty() { "clean" } else { "FAILED" });
        report.extend(failures.into_iter().map(|f| format!("kill point {n} {kp:?}: {f}")));
    }
    assert!(report.is_empty(), "{} of {} kill points failed:\n{}", report.len(), points.len(), report.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Concurrency.

/// The builds of run `i`: 3 to 5 of them, a different mix each run.
fn run_kinds(i: usize) -> Vec<Kind> {
    (0..3 + i % 3).map(|j| Kind::ALL[(i + j) % Kind::ALL.len()]).collect()
}

/// Runs builds of `kinds` at once (started `STAGGER` apart) on one fresh store, with a prune
/// while they pull; returns what went wrong.
fn concurrent_run(fx: &Fixture, kinds: &[Kind], logs: &Path, i: usize) -> Vec<String> {
    let p = Project::new();
    for kind in kinds {
        kind.set_up(&p, &fx.image);
    }
    let mut builds: Vec<Running> = Vec::new();
    for kind in kinds {
        if !builds.is_empty() {
            std::thread::sleep(STAGGER);
        }
        builds.push(start(*kind, &p, fx, logs, &format!("run{i}")));
    }
    let mut failures: Vec<String> = prune_while_pulling(&p, &mut builds, logs, i).into_iter().collect();
    for b in &mut builds {
        let status = b.child.wait().unwrap();
        if !status.success() {
            failures.push(format!("the {} build failed ({status}):\n{}", b.kind.name(), tail(&b.stderr)));
            continue;
        }
        failures.extend(compare(fx, &p, b.kind, "concurrent"));
    }
    let temporaries = state_temporaries(&p);
    if !temporaries.is_empty() {
        failures.push(format!("left in the state directory's temporary areas: {temporaries:?}"));
    }
    failures.extend(later_build(fx, &p, kinds));
    failures
}

/// Runs `fledge prune` once a download is under way (or at once, if every build is already
/// done); says how it failed, if it did.
fn prune_while_pulling(p: &Project, builds: &mut [Running], logs: &Path, i: usize) -> Option<String> {
    let deadline = Instant::now() + TRIGGER_TIMEOUT;
    while !Trigger::BlobDownloading.fired(p, &builds[0])
        && builds.iter_mut().any(|b| b.child.try_wait().unwrap().is_none())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = logs.join(format!("prune-run{i}.stderr"));
    let status = p
        .fledge()
        .env("TMPDIR", p.path("tmp"))
        .arg("prune")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    (!status.success()).then(|| format!("fledge prune failed ({status}):\n{}", tail(&log)))
}

/// A squashfs build after the concurrent ones, on the store they filled, must be right too
/// (a store that recorded a layer wrongly makes every later build wrong).
fn later_build(fx: &Fixture, p: &Project, kinds: &[Kind]) -> Vec<String> {
    let after = Kind::Squashfs;
    fs::remove_dir_all(p.path(&format!("out/{}", after.name()))).ok();
    if !kinds.contains(&after) {
        after.set_up(p, &fx.image);
    }
    let out = run(&mut after.command(p, fx));
    if !out.status.success() {
        return vec![format!("the later {} build failed: {}", after.name(), stderr(&out))];
    }
    compare(fx, p, after, "later")
}

/// Compares the artifact of `kind` in `p` with the clean build's; `what` names the build.
fn compare(fx: &Fixture, p: &Project, kind: Kind, what: &str) -> Vec<String> {
    let reference = reference(fx, kind);
    let path = p.path(&kind.artifact());
    match fs::read(&path) {
        Ok(bytes) if bytes == reference.artifact => Vec::new(),
        Ok(bytes) => vec![format!(
            "the {what} {} artifact differs from a clean build's ({} and {} bytes){}",
            kind.name(),
            bytes.len(),
            reference.artifact.len(),
            squashfs_difference(kind, &path, &reference.artifact)
        )],
        Err(e) => vec![format!("the {what} {} build left no artifact: {e}", kind.name())],
    }
}

/// For a squashfs artifact, the first entries that only one of the two images has.
fn squashfs_difference(kind: Kind, artifact: &Path, reference: &[u8]) -> String {
    if !artifact.to_string_lossy().ends_with(".squashfs") {
        return String::new();
    }
    let clean = tempfile::NamedTempFile::new().unwrap();
    fs::write(clean.path(), reference).unwrap();
    let list = |image: &Path| -> BTreeSet<String> {
        let out = run(Command::new("unsquashfs").arg("-lln").arg(image));
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("squashfs-root")).map(String::from).collect()
    };
    let (got, want) = (list(artifact), list(clean.path()));
    let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> String {
        let lines: Vec<&String> = a.difference(b).collect();
        let shown: Vec<&str> = lines.iter().take(5).map(|l| l.as_str()).collect();
        format!("{} entries, e.g. {shown:#?}", lines.len())
    };
    format!(
        "; {} has {} entries, the clean one {}; only in it: {}; only in the clean one: {}",
        kind.name(),
        got.len(),
        want.len(),
        only(&got, &want),
        only(&want, &got)
    )
}

#[test]
fn concurrent_builds_and_a_prune_on_one_store_make_the_sequential_artifacts() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = fixture();
    let runs = if full_strength() { 20 } else { 3 };
    let logs = tempfile::Builder::new().prefix("fledge-stress-logs-").tempdir().unwrap();
    let mut report = Vec::new();
    for i in 0..runs {
        let kinds = run_kinds(i);
        // The references first, each alone, so the run itself is all concurrent.
        for kind in &kinds {
            reference(fx, *kind);
        }
        let failures = concurrent_run(fx, &kinds, logs.path(), i);
        eprintln!("run {i} {kinds:?}: {}", if failures.is_empty() { "identical" } else { "FAILED" });
        report.extend(failures.into_iter().map(|f| format!("run {i} {kinds:?}: {f}")));
    }
    assert!(report.is_empty(), "{} problems in {runs} runs:\n{}", report.len(), report.join("\n"));
}
