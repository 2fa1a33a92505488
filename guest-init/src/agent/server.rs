//! The vsock listener and the HTTP/2 connections the gRPC service runs on.

use fledge_agent::MAX_MESSAGE;
use fledge_agent::pb::agent_server::AgentServer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};

use super::service::Service;

/// Runs the service on vsock `port` forever; a kernel without vsock is reported, not fatal
/// (the host then times out waiting for the agent and says so).
pub fn serve(port: u32) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return crate::warn(format_args!("cannot start the agent's runtime: {e}")),
    };
    runtime.block_on(async {
        let listener = match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)) {
            Ok(listener) => listener,
            Err(e) => return crate::warn(format_args!("cannot listen on vsock port {port}: {e}")),
        };
        let service =
            AgentServer::new(Service).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    crate::warn(format_args!("agent connection: {e}"));
                }
            });
        }
    });
}
