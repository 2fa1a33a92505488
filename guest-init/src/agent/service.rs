//! The gRPC service: each call handed to the module that does the work.

use std::time::Duration;

use fledge_agent::pb::{self, agent_server::Agent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{exec, files, mount, tarball};

#[derive(Clone, Copy)]
pub struct Service;

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Agent for Service {
    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let kernel_release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Response::new(pb::InfoResponse { agent_version: env!("CARGO_PKG_VERSION").into(), kernel_release }))
    }

    type ExecStream = Stream<pb::ExecOutput>;

    async fn exec(&self, request: Request<Streaming<pb::ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
        Ok(Response::new(ReceiverStream::new(exec::exec(request.into_inner()).await?)))
    }

    async fn write_file(
        &self,
        request: Request<Streaming<pb::WriteFileInput>>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        Ok(Response::new(files::write(request.into_inner()).await?))
    }

    type ReadFileStream = Stream<pb::Chunk>;

    async fn read_file(&self, request: Request<pb::ReadFileRequest>) -> Result<Response<Self::ReadFileStream>, Status> {
        Ok(Response::new(ReceiverStream::new(files::read(request.into_inner()).await?)))
    }

    async fn put_tar(
        &self,
        request: Request<Streaming<pb::PutTarInput>>,
    ) -> Result<Response<pb::PutTarResponse>, Status> {
        Ok(Response::new(tarball::put(request.into_inner()).await?))
    }

    type GetTarStream = Stream<pb::Chunk>;

    async fn get_tar(&self, request: Request<pb::GetTarRequest>) -> Result<Response<Self::GetTarStream>, Status> {
        Ok(Response::new(ReceiverStream::new(tarball::get(request.into_inner()).await?)))
    }

    async fn mount(&self, request: Request<pb::MountRequest>) -> Result<Response<pb::MountResponse>, Status> {
        Ok(Response::new(mount::mount_fs(request.get_ref())?))
    }

    async fn mount_overlay(
        &self,
        request: Request<pb::MountOverlayRequest>,
    ) -> Result<Response<pb::MountResponse>, Status> {
        mount::mount_overlay(request.get_ref())?;
        Ok(Response::new(pb::MountResponse::default()))
    }

    async fn unmount(&self, request: Request<pb::UnmountRequest>) -> Result<Response<pb::UnmountResponse>, Status> {
        mount::unmount(request.get_ref())?;
        Ok(Response::new(pb::UnmountResponse {}))
    }

    async fn power_off(&self, _: Request<pb::PowerOffRequest>) -> Result<Response<pb::PowerOffResponse>, Status> {
        tokio::spawn(async {
            // A moment for this reply to leave; a lost reply is fine (see the .proto).
            tokio::time::sleep(Duration::from_millis(20)).await;
            // PID 1's main thread takes the signal and shuts down (see `agent::run`).
            let _ = kill(Pid::from_raw(1), Signal::SIGUSR2);
        });
        Ok(Response::new(pb::PowerOffResponse {}))
    }
}
