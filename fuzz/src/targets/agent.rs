//! The host's decoding of what a (hostile) guest agent sends: gRPC frames (a compression
//! flag, a big-endian length, a message) as an exec's output stream and as a chunk stream,
//! checked by the client's own stream readers, and as each unary reply.

use fledge_agent::client::{copy_chunks, read_exec_outputs};
use fledge_agent::{MAX_MESSAGE, pb};
use prost::Message;
use tonic::Status;

use crate::{Rng, Target, mutate};

/// What a read may deliver in total (a file or tar read's limit).
const LIMIT: u64 = 1 << 20;

pub struct Agent {
    runtime: tokio::runtime::Runtime,
}

impl Agent {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        Agent { runtime }
    }
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

/// The frames of a gRPC body, as tonic reads them: a compressed or oversized message, or a
/// cut-off frame, is an error in the stream.
fn frames(mut data: &[u8]) -> Vec<Result<&[u8], Status>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let Some((head, rest)) = data.split_first_chunk::<5>() else {
            out.push(Err(Status::internal("a cut-off frame header")));
            break;
        };
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if head[0] != 0 {
            out.push(Err(Status::internal("a compressed message")));
            break;
        }
        if len > MAX_MESSAGE || len > rest.len() {
            out.push(Err(Status::out_of_range("a message past the limit or the end")));
            break;
        }
        out.push(Ok(&rest[..len]));
        data = &rest[len..];
    }
    out
}

fn decoded<M: Message + Default>(frames: &[Result<&[u8], Status>]) -> Vec<Result<M, Status>> {
    frames
        .iter()
        .map(|frame| match frame {
            Ok(bytes) => M::decode(*bytes).map_err(|e| Status::internal(e.to_string())),
            Err(status) => Err(status.clone()),
        })
        .collect()
}

impl Target for Agent {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn run(&mut self, input: &[u8]) {
        let frames = frames(input);
        let outputs = decoded::<pb::ExecOutput>(&frames);
        let chunks = decoded::<pb::Chunk>(&frames);
        self.runtime.block_on(async {
            let (mut stdout, mut stderr) = (tokio::io::sink(), tokio::io::sink());
            let mut stream = tokio_stream::iter(outputs);
            let _ = read_exec_outputs(&mut stream, &mut stdout, &mut stderr).await;
            let _ = copy_chunks(tokio_stream::iter(chunks), &mut stdout, LIMIT, "a read").await;
        });
        let _ = decoded::<pb::InfoResponse>(&frames);
        let _ = decoded::<pb::MountResponse>(&frames);
        let _ = decoded::<pb::PutTarResponse>(&frames);
        let _ = decoded::<pb::WriteFileResponse>(&frames);
    }

    fn mutate(&self, base: &[u8], _: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        match rng.below(3) {
            0 => exec_stream(rng),
            _ => mutate::bytes(base, rng),
        }
    }
}

/// A framed exec output stream: mostly well-formed, with values at and past their ranges.
pub fn exec_stream(rng: &mut Rng) -> Vec<u8> {
    use pb::exec_output::Output;
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let output = match rng.below(5) {
            0 => Output::Started(pb::ExecStarted { pid: *rng.pick(&[1, 0, -1, i32::MAX]) }),
            1 => Output::Stdout(b"out".repeat(rng.below(100))),
            2 => Output::Stderr(Vec::new()),
            _ => Output::Exit(pb::ExecExit {
                code: *rng.pick(&[0, 1, 255, 256, -1, i32::MIN]),
                signal: *rng.pick(&[0, 0, 9, 64, 65, -1]),
            }),
        };
        frame(&mut out, &pb::ExecOutput { output: Some(output) }.encode_to_vec());
    }
    out
}

pub fn frame(out: &mut Vec<u8>, message: &[u8]) {
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
}
