//! The host's client of the guest agent.
//!
//! It reaches the guest through the VMM's hybrid vsock socket ([`fledge_vmm::vsock`]) and
//! speaks gRPC over that stream. The guest is untrusted: no message may exceed
//! [`MAX_MESSAGE`](crate::MAX_MESSAGE), reads take a byte limit, exec streams must follow
//! their order (started, output, one exit) with values in range, and any breach is an
//! [`AgentError::Protocol`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};

use crate::pb::{self, agent_client};
use crate::{CHUNK, MAX_MESSAGE};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the guest agent: {0}")]
    Connect(String),
    /// The agent refused or failed the request (its own words).
    #[error("the guest agent {action}: {message}")]
    Remote { action: String, message: String },
    /// The guest broke the protocol; nothing it sent in this call is to be used.
    #[error("the guest agent broke the protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, AgentError>;

/// How a process in the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(u8),
    Signaled(u8),
}

impl ExitStatus {
    /// The status as a shell reports it: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => i32::from(code),
            ExitStatus::Signaled(signal) => 128 + i32::from(signal),
        }
    }

    fn from_wire(exit: &pb::ExecExit) -> Result<Self> {
        match (exit.code, exit.signal) {
            (code @ 0..=255, 0) => Ok(ExitStatus::Exited(code as u8)),
            (0, signal @ 1..=64) => Ok(ExitStatus::Signaled(signal as u8)),
            (code, signal) => {
                Err(AgentError::Protocol(format!("impossible exit status: code {code}, signal {signal}")))
            }
        }
    }
}

/// A process to run in the guest (see `ExecStart` in the .proto for each field).
#[derive(Debug, Clone, Default)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub root: String,
    /// Run without a network (a namespace of its own).
    pub no_network: bool,
    /// A build step run with `--security=insecure`.
    pub insecure: bool,
}

/// Where a process's streams go. Output is written as it arrives.
pub struct ExecIo<'a> {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: &'a mut (dyn AsyncWrite + Send + Unpin),
    pub stderr: &'a mut (dyn AsyncWrite + Send + Unpin),
    /// Signal numbers to deliver while the process runs.
    pub signals: Option<mpsc::Receiver<i32>>,
}

/// A connection to one guest's agent.
#[derive(Clone)]
pub struct AgentClient {
    rpc: agent_client::AgentClient<Channel>,
}

impl AgentClient {
    /// Connects to the agent on vsock `port` through the VMM's hybrid socket `uds`, waiting
    /// up to `timeout` for the guest to listen, and checks that it answers.
    pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<Self> {
        let uds = uds.to_path_buf();
        let channel = Endpoint::from_static("http://guest.agent")
            .connect_with_connector(tower::service_fn(move |_| hybrid_vsock(uds.clone(), port, timeout)))
            .await
            .map_err(|e| AgentError::Connect(error_chain(&e)))?;
        let rpc = agent_client::AgentClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut client = AgentClient { rpc };
        client.info().await?;
        Ok(client)
    }

    /// The agent's version and the guest kernel's release.
    pub async fn info(&mut self) -> Result<pb::InfoResponse> {
        let info = self.rpc.info(pb::InfoRequest {}).await.map_err(remote("answered info"))?.into_inner();
        if info.agent_version.len() > 256 || info.kernel_release.len() > 256 {
            return Err(AgentError::Protocol("info strings longer than 256 bytes".into()));
        }
        Ok(info)
    }

    /// Runs `process`, streaming its output into `io`, and returns how it ended.
    pub async fn exec(&mut self, process: &Process, io: ExecIo<'_>) -> Result<ExitStatus> {
        let ExecIo { stdin, stdout, stderr, signals } = io;
        let (tx, rx) = mpsc::channel(4);
        let start = pb::ExecStart {
            args: process.args.clone(),
            env: process.env.clone(),
            cwd: process.cwd.clone(),
            user: process.user.clone(),
            root: process.root.clone(),
            stdin: stdin.is_some(),
            no_network: process.no_network,
            insecure: process.insecure,
        };
        tx.send(exec_input(pb::exec_input::Input::Start(start))).await.expect("the receiver is alive here");
        let feeder = tokio::spawn(feed_exec(tx, stdin, signals));
        let outcome = async {
            let mut outputs =
                self.rpc.exec(ReceiverStream::new(rx)).await.map_err(remote("refused exec"))?.into_inner();
            read_exec_outputs(&mut outputs, stdout, stderr).await
        }
        .await;
        feeder.abort();
        outcome
    }

    /// Writes `body` to `path` in the guest with the given permission bits and owner.
    pub async fn write_file(
        &mut self,
        path: &str,
        (mode, uid, gid): (u32, u32, u32),
        body: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<u64> {
        use pb::write_file_input::Input;
        let header = Input::Header(pb::FileHeader { path: path.into(), mode, uid, gid });
        let (inputs, reader) =
            with_header(header, body, Input::Data, |input| pb::WriteFileInput { input: Some(input) });
        let reply = self.rpc.write_file(inputs).await;
        Ok(finish_upload(reply, reader, format!("could not write {path}")).await?.size)
    }

    /// Copies the guest file `path` into `out`, refusing more than `limit` bytes.
    pub async fn read_file(
        &mut self,
        path: &str,
        out: &mut (dyn AsyncWrite + Send + Unpin),
        limit: u64,
    ) -> Result<u64> {
        let request = pb::ReadFileRequest { path: path.into() };
        let chunks = self.rpc.read_file(request).await.map_err(remote(format!("could not read {path}")))?;
        copy_chunks(chunks.into_inner(), out, limit, &format!("read {path}")).await
    }

    /// Unpacks the tar stream `tar` into `directory` in the guest; returns the entry count.
    pub async fn put_tar(&mut self, directory: &str, tar: impl AsyncRead + Send + Unpin + 'static) -> Result<u64> {
        self.unpack(pb::PutTarHeader { directory: directory.into(), oci_layer: false }, tar).await
    }

    /// Unpacks the OCI layer `layer` (an uncompressed tar) into `directory` as an overlay lower
    /// layer: its whiteouts become overlay whiteouts.
    pub async fn put_layer(&mut self, directory: &str, layer: impl AsyncRead + Send + Unpin + 'static) -> Result<u64> {
        self.unpack(pb::PutTarHeader { directory: directory.into(), oci_layer: true }, layer).await
    }

    async fn unpack(&mut self, header: pb::PutTarHeader, tar: impl AsyncRead + Send + Unpin + 'static) -> Result<u64> {
        use pb::put_tar_input::Input;
        let action = format!("could not unpack into {}", header.directory);
        let (inputs, reader) =
            with_header(Input::Header(header), tar, Input::Data, |input| pb::PutTarInput { input: Some(input) });
        let reply = self.rpc.put_tar(inputs).await;
        Ok(finish_upload(reply, reader, action).await?.entries)
    }

    /// Packs `directory` in the guest as a tar stream into `out`, refusing more than `limit`
    /// bytes. The tar comes from the guest: whoever unpacks it must validate its entries.
    pub async fn get_tar(
        &mut self,
        directory: &str,
        out: &mut (dyn AsyncWrite + Send + Unpin),
        limit: u64,
    ) -> Result<u64> {
        self.pack(
            pb::GetTarRequest { directory: directory.into(), overlay_diff: false, lower: String::new() },
            out,
            limit,
        )
        .await
    }

    /// Packs what the overlay upper directory `upper` changed against `lower` (the layers
    /// below it, merged) as an OCI layer, as BuildKit's differ would, into `out`, refusing
    /// more than `limit` bytes. The layer comes from the guest: whoever applies it must
    /// validate its entries.
    pub async fn get_layer_diff(
        &mut self,
        upper: &str,
        lower: &str,
        out: &mut (dyn AsyncWrite + Send + Unpin),
        limit: u64,
    ) -> Result<u64> {
        self.pack(pb::GetTarRequest { directory: upper.into(), overlay_diff: true, lower: lower.into() }, out, limit)
            .await
    }

    async fn pack(
        &mut self,
        request: pb::GetTarRequest,
        out: &mut (dyn AsyncWrite + Send + Unpin),
        limit: u64,
    ) -> Result<u64> {
        let what = format!("tar of {}", request.directory);
        let chunks = self.rpc.get_tar(request).await.map_err(remote(format!("could not pack: {what}")))?;
        copy_chunks(chunks.into_inner(), out, limit, &what).await
    }

    /// Mounts; returns what the mount point needed created (to remove when unmounting), or
    /// `None` when the guest skipped a bind onto a symbolic link.
    pub async fn mount(&mut self, request: pb::MountRequest) -> Result<Option<Vec<String>>> {
        let action = format!("could not mount {} on {}", request.source, request.target);
        let target = request.target.clone();
        let reply = self.rpc.mount(request).await.map_err(remote(action))?.into_inner();
        // The guest may only report paths on the way to the mount point.
        if let Some(bad) = reply.created.iter().find(|c| !target.starts_with(c.as_str())) {
            return Err(AgentError::Protocol(format!("mount of {target} reported creating {bad}")));
        }
        Ok(reply.mounted.then_some(reply.created))
    }

    pub async fn mount_overlay(&mut self, request: pb::MountOverlayRequest) -> Result<()> {
        let action = format!("could not mount an overlay on {}", request.target);
        self.rpc.mount_overlay(request).await.map_err(remote(action))?;
        Ok(())
    }

    /// Unmounts `target`, then removes `created` (what [`mount`](Self::mount) reported) if
    /// still empty.
    pub async fn unmount(&mut self, target: &str, created: Vec<String>) -> Result<()> {
        let request = pb::UnmountRequest { target: target.into(), remove: created };
        self.rpc.unmount(request).await.map_err(remote(format!("could not unmount {target}")))?;
        Ok(())
    }

    /// Asks the guest to power off. A reply lost because the VM went down first is success:
    /// the caller waits for the VM to exit either way.
    pub async fn power_off(&mut self) -> Result<()> {
        match self.rpc.power_off(pb::PowerOffRequest {}).await {
            Ok(_) => Ok(()),
            Err(status) if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => Ok(()),
            Err(status) => Err(remote("could not power off")(status)),
        }
    }
}

/// Sets its flag when dropped: the future that owns it was dropped (or finished).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The connector: a hybrid-vsock handshake (blocking, with retries) off the async threads.
/// Dropping the future stops the retries, so a caller that gave up (Ctrl-C while a VM
/// boots) does not leave a blocking task that holds the runtime open until the timeout.
async fn hybrid_vsock(uds: PathBuf, port: u32, timeout: Duration) -> std::io::Result<TokioIo<tokio::net::UnixStream>> {
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    let stream = tokio::task::spawn_blocking(move || fledge_vmm::vsock::connect(&uds, port, timeout, &cancelled))
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    stream.set_nonblocking(true)?;
    Ok(TokioIo::new(tokio::net::UnixStream::from_std(stream)?))
}

fn remote(action: impl Into<String>) -> impl FnOnce(tonic::Status) -> AgentError {
    let action = action.into();
    move |status| AgentError::Remote { action, message: status.message().to_string() }
}

/// The error and its sources on one line (tonic's transport errors nest the useful part).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn exec_input(input: pb::exec_input::Input) -> pb::ExecInput {
    pb::ExecInput { input: Some(input) }
}

/// Sends stdin (then its end) and signals to the guest until both run out.
async fn feed_exec(
    tx: mpsc::Sender<pb::ExecInput>,
    stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    signals: Option<mpsc::Receiver<i32>>,
) {
    use pb::exec_input::Input;
    let signal_tx = tx.clone();
    let forward_signals = async move {
        if let Some(mut signals) = signals {
            while let Some(signal) = signals.recv().await {
                if signal_tx.send(exec_input(Input::Signal(signal))).await.is_err() {
                    break;
                }
            }
        }
    };
    let forward_stdin = async move {
        let Some(mut stdin) = stdin else { return };
        let mut buf = vec![0; CHUNK];
        while let Ok(n @ 1..) = stdin.read(&mut buf).await {
            if tx.send(exec_input(Input::Stdin(buf[..n].to_vec()))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(exec_input(Input::CloseStdin(true))).await;
    };
    tokio::join!(forward_signals, forward_stdin);
}

/// Checks and delivers an exec's outputs: `started`, then output, then exactly one `exit`.
/// (Public for the fuzzing harness, which feeds it hostile streams.)
pub async fn read_exec_outputs(
    outputs: &mut (impl Stream<Item = std::result::Result<pb::ExecOutput, tonic::Status>> + Unpin),
    stdout: &mut (dyn AsyncWrite + Send + Unpin),
    stderr: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<ExitStatus> {
    use pb::exec_output::Output;
    let mut started = false;
    while let Some(message) = outputs.next().await {
        let output = message.map_err(remote("failed the process"))?.output;
        match output {
            Some(Output::Started(pb::ExecStarted { pid })) if !started && pid > 0 => started = true,
            Some(Output::Stdout(data)) if started => stdout.write_all(&data).await?,
            Some(Output::Stderr(data)) if started => stderr.write_all(&data).await?,
            Some(Output::Exit(exit)) if started => {
                let status = ExitStatus::from_wire(&exit)?;
                if outputs.next().await.is_some() {
                    return Err(AgentError::Protocol("messages after the exit status".into()));
                }
                stdout.flush().await?;
                stderr.flush().await?;
                return Ok(status);
            }
            other => return Err(AgentError::Protocol(format!("unexpected exec message {other:?}"))),
        }
    }
    Err(AgentError::Protocol("the exec stream ended without an exit status".into()))
}

/// A request stream: `header` first, then `body` in chunks. The task's result says whether
/// `body` was read to its end: a failed read ends the stream early, and the caller must
/// report that error even though the guest saw a (short) complete request.
fn with_header<I, M>(
    header: I,
    mut body: impl AsyncRead + Send + Unpin + 'static,
    data: fn(Vec<u8>) -> I,
    message: fn(I) -> M,
) -> (ReceiverStream<M>, tokio::task::JoinHandle<std::io::Result<()>>)
where
    I: Send + 'static,
    M: Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        if tx.send(message(header)).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0; CHUNK];
        loop {
            let n = body.read(&mut buf).await?;
            if n == 0 || tx.send(message(data(buf[..n].to_vec()))).await.is_err() {
                return Ok(());
            }
        }
    });
    (ReceiverStream::new(rx), reader)
}

/// The outcome of a streamed upload: the body's read error comes first (the guest's answer
/// was about a short body), then the guest's.
async fn finish_upload<T>(
    reply: std::result::Result<tonic::Response<T>, tonic::Status>,
    reader: tokio::task::JoinHandle<std::io::Result<()>>,
    action: String,
) -> Result<T> {
    reader.await.map_err(std::io::Error::other)??;
    Ok(reply.map_err(remote(action))?.into_inner())
}

/// Copies a stream of chunks into `out`, refusing more than `limit` bytes in total.
/// (Public for the fuzzing harness, which feeds it hostile streams.)
pub async fn copy_chunks(
    mut chunks: impl Stream<Item = std::result::Result<pb::Chunk, tonic::Status>> + Unpin,
    out: &mut (dyn AsyncWrite + Send + Unpin),
    limit: u64,
    what: &str,
) -> Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(remote(format!("failed during {what}")))?;
        total += chunk.data.len() as u64;
        if total > limit {
            return Err(AgentError::Protocol(format!("{what} is larger than the {limit} bytes allowed")));
        }
        out.write_all(&chunk.data).await?;
    }
    out.flush().await?;
    Ok(total)
}
