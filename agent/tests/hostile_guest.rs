//! The host's client against a guest that breaks the protocol. The peer is a stand-in for a
//! compromised or buggy guest (the real agent is exercised in the workspace's boot tests):
//! it answers through the same hybrid-vsock handshake a VMM gives, then sends what a real
//! agent never would. Every case must end in an error, never a panic, a hang or unbounded
//! memory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fledge_agent::client::{AgentClient, AgentError, ExecIo, Process};
use fledge_agent::pb::{
    self,
    agent_server::{Agent, AgentServer},
    exec_output::Output,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What the hostile guest sends for an exec or a file read.
#[derive(Clone)]
struct Hostile(Vec<Result<pb::ExecOutput, Status>>, Vec<Vec<u8>>);

type Stream<T> = ReceiverStream<Result<T, Status>>;

fn stream<T: Send + 'static>(items: Vec<Result<T, Status>>) -> Stream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(items.len().max(1));
    for item in items {
        tx.try_send(item).unwrap();
    }
    ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl Agent for Hostile {
    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(pb::InfoResponse { agent_version: "0".into(), kernel_release: "6.1".into() }))
    }
    type ExecStream = Stream<pb::ExecOutput>;
    async fn exec(&self, _: Request<Streaming<pb::ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        Ok(Response::new(stream(self.0.clone())))
    }
    async fn write_file(
        &self,
        _: Request<Streaming<pb::WriteFileInput>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }
    type ReadFileStream = Stream<pb::Chunk>;
    async fn read_file(&self, _: Request<pb::ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        Ok(Response::new(stream(self.1.iter().map(|d| Ok(pb::Chunk { data: d.clone() })).collect())))
    }
    async fn put_tar(&self, _: Request<Streaming<pb::PutTarInput>>) -> Result<Response<pb::PutTarResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }
    type GetTarStream = Stream<pb::Chunk>;
    async fn get_tar(&self, _: Request<pb::GetTarRequest>) -> Result<Response<Self::GetTarStream>, Status> {
        Err(Status::unimplemented("hostile"))
    }
    async fn mount(&self, _: Request<pb::MountRequest>) -> Result<Response<pb::MountResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }
    async fn mount_overlay(&self, _: Request<pb::MountOverlayRequest>) -> Result<Response<pb::MountResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }
    async fn unmount(&self, _: Request<pb::UnmountRequest>) -> Result<Response<pb::UnmountResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }
    async fn power_off(&self, _: Request<pb::PowerOffRequest>) -> Result<Response<pb::PowerOffResponse>, Status> {
        Err(Status::unimplemented("hostile"))
    }
}

/// A VMM's hybrid vsock socket in `dir` whose guest is `agent`.
fn guest(dir: &Path, agent: Hostile) -> PathBuf {
    let path = dir.join("vsock.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let agent = agent.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::with_capacity(1, stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                stream.get_mut().write_all(b"OK 7\n").await.unwrap();
                let service = hyper_util::service::TowerToHyperService::new(AgentServer::new(agent));
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream.into_inner()), service)
                    .await;
            });
        }
    });
    path
}

fn output(output: Output) -> Result<pb::ExecOutput, Status> {
    Ok(pb::ExecOutput { output: Some(output) })
}

fn started() -> Result<pb::ExecOutput, Status> {
    output(Output::Started(pb::ExecStarted { pid: 42 }))
}

fn exit(code: i32, signal: i32) -> Result<pb::ExecOutput, Status> {
    output(Output::Exit(pb::ExecExit { code, signal }))
}

async fn exec_against(outputs: Vec<Result<pb::ExecOutput, Status>>) -> Result<i32, AgentError> {
    let dir = tempfile::tempdir().unwrap();
    let socket = guest(dir.path(), Hostile(outputs, Vec::new()));
    let mut client = AgentClient::connect(&socket, 1024, Duration::from_secs(5)).await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let io = ExecIo { stdin: None, stdout: &mut out, stderr: &mut err, signals: None };
    let process = Process { args: vec!["true".into()], ..Process::default() };
    client.exec(&process, io).await.map(|status| status.code())
}

#[tokio::test]
async fn a_well_behaved_exchange_is_accepted() {
    let status = exec_against(vec![started(), output(Output::Stdout(b"hi".to_vec())), exit(3, 0)]).await;
    assert_eq!(status.unwrap(), 3);
    assert_eq!(exec_against(vec![started(), exit(0, 9)]).await.unwrap(), 137);
}

#[tokio::test]
async fn exec_streams_that_break_the_order_or_the_ranges_are_refused() {
    let cases = [
        ("output before started", vec![output(Output::Stdout(b"x".to_vec())), started(), exit(0, 0)]),
        ("no started", vec![exit(0, 0)]),
        ("two starts", vec![started(), started(), exit(0, 0)]),
        ("exit code out of range", vec![started(), exit(300, 0)]),
        ("negative exit code", vec![started(), exit(-1, 0)]),
        ("both code and signal", vec![started(), exit(1, 9)]),
        ("signal out of range", vec![started(), exit(0, 99)]),
        ("no exit", vec![started(), output(Output::Stdout(b"x".to_vec()))]),
        ("output after exit", vec![started(), exit(0, 0), output(Output::Stdout(b"x".to_vec()))]),
        ("empty message", vec![started(), Ok(pb::ExecOutput { output: None }), exit(0, 0)]),
    ];
    for (case, outputs) in cases {
        let result = exec_against(outputs).await;
        assert!(matches!(result, Err(AgentError::Protocol(_))), "{case}: {result:?}");
    }
}

#[tokio::test]
async fn oversized_messages_and_reads_past_the_limit_are_cut_off() {
    let huge = vec![0u8; fledge_agent::MAX_MESSAGE + 1];
    let result = exec_against(vec![started(), output(Output::Stdout(huge.clone())), exit(0, 0)]).await;
    assert!(result.is_err(), "a message over the limit is not decoded: {result:?}");

    let dir = tempfile::tempdir().unwrap();
    let socket = guest(dir.path(), Hostile(Vec::new(), vec![vec![1; 1000]; 5]));
    let mut client = AgentClient::connect(&socket, 1024, Duration::from_secs(5)).await.unwrap();
    let mut out = Vec::new();
    assert_eq!(client.read_file("/f", &mut out, 5000).await.unwrap(), 5000);
    let result = client.read_file("/f", &mut Vec::new(), 4999).await;
    assert!(matches!(result, Err(AgentError::Protocol(_))), "{result:?}");
}
