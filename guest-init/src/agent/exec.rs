//! `Exec`: one process, confined to a root directory, as a user, with its streams carried
//! over the call. Output is forwarded as it is read, with backpressure (the pipes fill when
//! the host reads slowly); the exit status is sent last, after both output pipes closed. If
//! the host goes away, the process's whole session is killed.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use fledge_agent::CHUNK;
use fledge_agent::pb::{self, exec_input::Input, exec_output::Output};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::caps::Capabilities;
use super::children::{self, Ended};
use super::sandbox::{Sandbox, check};
use super::user;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub type Outputs = mpsc::Receiver<Result<pb::ExecOutput, Status>>;

/// A started process and its host-facing ends.
struct Running {
    pid: i32,
    stdin: Option<pipe::Sender>,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
    ended: oneshot::Receiver<Ended>,
}

/// Starts the process the first input describes and returns its output stream.
pub async fn exec(mut inputs: Streaming<pb::ExecInput>) -> Result<Outputs, Status> {
    let start = match inputs.message().await?.and_then(|m| m.input) {
        Some(Input::Start(start)) => start,
        _ => return Err(Status::invalid_argument("the first exec message must be `start`")),
    };
    let running = spawn(&start)?;
    let (tx, rx) = mpsc::channel(8);
    let _ = tx.send(Ok(output(Output::Started(pb::ExecStarted { pid: running.pid })))).await;
    tokio::spawn(drive(running, inputs, tx));
    Ok(rx)
}

fn output(output: Output) -> pb::ExecOutput {
    pb::ExecOutput { output: Some(output) }
}

/// Everything the child needs between fork and exec, prepared beforehand: the child may
/// not allocate (another thread may hold the allocator's lock at fork).
struct Confinement {
    root: Option<CString>,
    cwd: CString,
    /// The working directory and its parents, made inside the root if missing.
    cwd_dirs: Vec<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    no_network: bool,
    /// The environment of a build step: every process with a root of its own gets it.
    sandbox: Option<Sandbox>,
    /// A build step's capabilities, likewise.
    capabilities: Option<Capabilities>,
}

/// What the system said, in the words runc (and so BuildKit) reports it: `no such file or
/// directory`, not Rust's `No such file or directory (os error 2)`.
fn os_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

fn c_path(path: &Path) -> Result<CString, Status> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Status::invalid_argument("a path contains a NUL byte"))
}

fn spawn(start: &pb::ExecStart) -> Result<Running, Status> {
    let Some(program) = start.args.first() else {
        return Err(Status::invalid_argument("exec needs at least one argument"));
    };
    let root = PathBuf::from(if start.root.is_empty() { "/" } else { &start.root });
    let cwd = if start.cwd.is_empty() { "/" } else { &start.cwd };
    if !cwd.starts_with('/') {
        return Err(Status::invalid_argument(format!("the working directory {cwd} is not absolute")));
    }
    let identity = user::resolve(&root, &start.user).map_err(Status::failed_precondition)?;
    // Like container runtimes, a missing working directory is created, inside the root: a
    // symlink on the way (WORKDIR /link) resolves there, not on the guest's own root.
    let cwd_dirs =
        Path::new(cwd).ancestors().filter(|p| *p != Path::new("/")).map(c_path).collect::<Result<Vec<_>, _>>()?;
    let own_root = root != Path::new("/");
    let sandbox = own_root
        .then(|| Sandbox::prepare(&root, start.insecure))
        .transpose()
        .map_err(|e| Status::failed_precondition(format!("cannot prepare the step's /proc, /dev and /sys: {e}")))?;
    let capabilities = own_root
        .then(|| Capabilities::for_step(start.insecure))
        .transpose()
        .map_err(|e| Status::failed_precondition(format!("cannot read the kernel's capabilities: {e}")))?;
    let confinement = Confinement {
        sandbox,
        capabilities,
        root: own_root.then(|| c_path(&root)).transpose()?,
        cwd: c_path(Path::new(cwd))?,
        cwd_dirs: cwd_dirs.into_iter().rev().collect(),
        uid: identity.uid,
        gid: identity.gid,
        groups: identity.groups,
        no_network: start.no_network,
    };

    let mut env = start.env.clone();
    if !env.iter().any(|v| v.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    if !env.iter().any(|v| v.starts_with("HOME=")) {
        env.push(format!("HOME={}", identity.home));
    }
    let mut command = std::process::Command::new(program);
    command
        .args(&start.args[1..])
        .env_clear()
        .envs(env.iter().map(|v| v.split_once('=').unwrap_or((v, ""))))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe system calls on data prepared above,
    // and builds errors from errno without allocating.
    unsafe {
        command.pre_exec(move || confine(&confinement));
    }
    let (mut child, ended) = children::spawn(&mut command)
        .map_err(|e| Status::failed_precondition(format!("cannot run {program}: {}", os_reason(&e))))?;
    let pipe_of = |fd: Option<OwnedFd>| fd.map(pipe::Receiver::from_owned_fd).transpose();
    let stdout = pipe_of(child.stdout.take().map(OwnedFd::from));
    let stderr = pipe_of(child.stderr.take().map(OwnedFd::from));
    // Without the host's stdin the pipe's end is closed here: the process reads end of file
    // from a pipe, as a BuildKit step does (not /dev/null, which `readlink /proc/self/fd/0`
    // tells apart).
    let stdin = child.stdin.take().filter(|_| start.stdin);
    let stdin = stdin.map(|fd| pipe::Sender::from_owned_fd(OwnedFd::from(fd))).transpose();
    match (stdout, stderr, stdin) {
        (Ok(Some(stdout)), Ok(Some(stderr)), Ok(stdin)) => {
            Ok(Running { pid: child.id() as i32, stdin, stdout, stderr, ended })
        }
        _ => {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            Err(Status::internal("cannot attach to the process's pipes"))
        }
    }
}

/// Runs in the child between fork and exec: no blocked signals (PID 1 blocks the ones it
/// waits for, and a mask survives exec), a network namespace of its own when asked, a build
/// step's environment (namespaces, /proc, /dev, /sys), the new root, the working directory
/// (made if missing), a session of its own (so the whole tree can be killed), then the
/// identity (groups before the uid, which drops the right to change them), a build step's
/// capabilities narrowed before it and set after it, as runc does.
fn confine(c: &Confinement) -> std::io::Result<()> {
    // SAFETY: plain system calls on NUL-terminated strings, a slice and a signal set that
    // outlive them.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        check(libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()))?;
        if c.no_network {
            check(libc::unshare(libc::CLONE_NEWNET))?;
        }
        if let Some(sandbox) = &c.sandbox {
            sandbox.enter()?;
        }
        if let Some(root) = &c.root {
            check(libc::chroot(root.as_ptr()))?;
        }
        for dir in &c.cwd_dirs {
            libc::mkdir(dir.as_ptr(), 0o755); // an existing one is fine; chdir says the rest
        }
        check(libc::chdir(c.cwd.as_ptr()))?;
        libc::setsid();
        if let Some(capabilities) = &c.capabilities {
            capabilities.narrow()?;
        }
        check(libc::setgroups(c.groups.len(), c.groups.as_ptr()))?;
        check(libc::setgid(c.gid))?;
        check(libc::setuid(c.uid))?;
        if let Some(capabilities) = &c.capabilities {
            capabilities.apply()?;
        }
    }
    Ok(())
}

/// Carries the process's streams until it has ended and reported.
async fn drive(running: Running, inputs: Streaming<pb::ExecInput>, tx: mpsc::Sender<Result<pb::ExecOutput, Status>>) {
    let Running { pid, stdin, stdout, stderr, ended } = running;
    let control = tokio::spawn(control(pid, stdin, inputs));
    let pumps =
        async { tokio::join!(pump(stdout, tx.clone(), Output::Stdout), pump(stderr, tx.clone(), Output::Stderr)) };
    let host_left = tokio::select! {
        (out, err) = pumps => out.is_err() || err.is_err(),
        () = tx.closed() => true,
    };
    if host_left {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let (code, signal) = ended.await.unwrap_or((0, libc::SIGKILL));
    control.abort();
    let _ = tx.send(Ok(output(Output::Exit(pb::ExecExit { code, signal })))).await;
}

/// Forwards the host's stdin and signals; the end of the host's input closes stdin.
async fn control(pid: i32, mut stdin: Option<pipe::Sender>, mut inputs: Streaming<pb::ExecInput>) {
    while let Ok(Some(message)) = inputs.message().await {
        match message.input {
            Some(Input::Stdin(data)) => {
                if let Some(pipe) = &mut stdin
                    && pipe.write_all(&data).await.is_err()
                {
                    // The process closed its stdin: the rest of the input has no reader.
                    stdin = None;
                }
            }
            Some(Input::CloseStdin(_)) => stdin = None,
            Some(Input::Signal(number)) => {
                if let Ok(signal) = Signal::try_from(number) {
                    let _ = kill(Pid::from_raw(pid), signal);
                }
            }
            Some(Input::Start(_)) | None => {}
        }
    }
}

/// Reads one output pipe to its end, forwarding chunks; an error means the host is gone.
async fn pump(
    mut pipe: pipe::Receiver,
    tx: mpsc::Sender<Result<pb::ExecOutput, Status>>,
    wrap: fn(Vec<u8>) -> Output,
) -> Result<(), ()> {
    let mut buf = vec![0; CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => tx.send(Ok(output(wrap(buf[..n].to_vec())))).await.map_err(|_| ())?,
        }
    }
}
