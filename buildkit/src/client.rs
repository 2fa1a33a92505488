//! The connection to buildkitd and a build on it: `Solve` with its session and its status
//! stream.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::address::{Address, BadAddress};
use crate::pb::control::{self, control_client::ControlClient};
use crate::pb::{filesync as fs, health, secrets};
use crate::services::{self, Credentials};
use crate::tls::{Tls, TlsError};
use crate::tunnel::Tunnel;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Address(#[from] BadAddress),
    #[error("cannot reach buildkitd at {address}: {reason}\n  = help: {help}")]
    Unreachable { address: String, reason: String, help: &'static str },
    #[error("buildkitd at {address} cannot {what}: {reason}\n  = help: Fledge needs BuildKit v0.13 or newer")]
    TooOld { address: String, what: &'static str, reason: String },
    #[error("the build failed on buildkitd: {0}")]
    Solve(String),
    #[error("the session with buildkitd closed before the build finished: {0}")]
    SessionClosed(String),
    #[error(
        "{0}\n  = help: FLEDGE_BUILDKIT_TLS_CA, FLEDGE_BUILDKIT_TLS_CERT and FLEDGE_BUILDKIT_TLS_KEY (or FLEDGE_BUILDKIT_TLS_DIR) name PEM files"
    )]
    Tls(#[from] TlsError),
    #[error(
        "TLS settings are for tcp:// addresses; buildkitd at {0} is reached through its socket\n  = help: unset FLEDGE_BUILDKIT_TLS_*, or point FLEDGE_BUILDKIT_ADDR at the daemon's tcp:// address"
    )]
    TlsOverUnix(String),
}

const UNREACHABLE_HELP: &str = "start buildkitd, or point FLEDGE_BUILDKIT_ADDR at it (unix:///path/to/buildkitd.sock or tcp://host:port); unset FLEDGE_BUILDKIT_MODE to build with the embedded engine";
const TLS_HELP: &str = "if buildkitd is listening there, check TLS: FLEDGE_BUILDKIT_TLS_CA must be the CA that signed the daemon's certificate, FLEDGE_BUILDKIT_TLS_SERVER_NAME a name it carries, and a daemon started with --tlscacert wants FLEDGE_BUILDKIT_TLS_CERT and FLEDGE_BUILDKIT_TLS_KEY";

/// A connected daemon.
pub struct Daemon {
    address: Address,
    /// What an unreachable daemon's error suggests (TLS settings when they are in use).
    help: &'static str,
    control: ControlClient<Channel>,
}

/// What a build needs from this side during the session.
#[derive(Default)]
pub struct Session {
    /// Local directories by name (`context`, `dockerfile`).
    pub dirs: HashMap<String, PathBuf>,
    /// Secret id → file.
    pub secrets: HashMap<String, PathBuf>,
    /// Exporter index → where its tarball goes.
    pub outputs: HashMap<String, services::Output>,
    pub credentials: Option<Credentials>,
    /// An OCI content store for `oci-layout://` named contexts.
    pub content: Option<services::ContentStore>,
}

/// Where a build's status goes while it runs.
pub type SolveEvents = mpsc::UnboundedSender<control::StatusResponse>;

/// The largest message either side sends (the daemon's default limit).
const MAX_MESSAGE: usize = 16 << 20;

impl Daemon {
    /// Connects to the daemon at `address` (over TLS with `tls`) and checks that it answers.
    pub async fn connect(address: &str, tls: Option<&Tls>) -> Result<Daemon, DaemonError> {
        let address = Address::parse(address)?;
        let help = if tls.is_some() { TLS_HELP } else { UNREACHABLE_HELP };
        let unreachable = |reason: String| DaemonError::Unreachable { address: address.to_string(), reason, help };
        let channel = match &address {
            Address::Unix(_) if tls.is_some() => return Err(DaemonError::TlsOverUnix(address.to_string())),
            Address::Unix(path) => {
                let path = path.clone();
                Endpoint::from_static("http://buildkitd")
                        .connect_timeout(Duration::from_secs(10))
                        .connect_with_connector(tower::service_fn(move |_| {
                            let path = path.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                            }
                        }))
                        .await
            }
            Address::Tcp { host, port } => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let url = if host.contains(':') {
                    format!("{scheme}://[{host}]:{port}")
                } else {
                    format!("{scheme}://{host}:{port}")
                };
                let mut endpoint = Endpoint::from_shared(url).map_err(|e| unreachable(e.to_string()))?;
                if let Some(tls) = tls {
                    endpoint =
                        endpoint.tls_config(tls.client_config(host)?).map_err(|e| unreachable(error_chain(&e)))?;
                }
                let target = (host.clone(), *port);
                endpoint
                        .connect_timeout(Duration::from_secs(10))
                        .connect_with_connector(tower::service_fn(move |_| {
                            let target = target.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::TcpStream::connect(target).await?))
                            }
                        }))
                        .await
            }
        }
        .map_err(|e| unreachable(error_chain(&e)))?;
        let control =
            ControlClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
        Ok(Daemon { address, help, control })
    }

    /// The daemon's BuildKit version (`Info`, BuildKit v0.11+).
    pub async fn info(&mut self) -> Result<control::BuildkitVersion, DaemonError> {
        let response = self
            .control
            .info(control::InfoRequest {})
            .await
            .map_err(|status| self.rpc_error("report its version", status))?;
        Ok(response.into_inner().buildkit_version.unwrap_or_default())
    }

    /// The daemon's workers and the platforms they build for.
    pub async fn workers(&mut self) -> Result<Vec<control::WorkerRecord>, DaemonError> {
        let response = self
            .control
            .list_workers(control::ListWorkersRequest { filter: Vec::new() })
            .await
            .map_err(|status| self.rpc_error("list its workers", status))?;
        Ok(response.into_inner().record)
    }

    fn rpc_error(&self, what: &'static str, status: tonic::Status) -> DaemonError {
        let address = self.address.to_string();
        match status.code() {
            tonic::Code::Unimplemented => DaemonError::TooOld { address, what, reason: status.message().to_string() },
            _ => DaemonError::Unreachable {
                address,
                reason: format!("{what}: {}", status_text(&status)),
                help: self.help,
            },
        }
    }

    /// Runs `request` (its `Ref` and `Session` are filled here) with `session` served for
    /// the daemon, sending status updates to `events` as they come. Returns the exporter's
    /// response once the build and the export are done.
    pub async fn solve(
        &mut self,
        mut request: control::SolveRequest,
        session: Session,
        events: SolveEvents,
    ) -> Result<control::SolveResponse, DaemonError> {
        let id = random_id();
        request.r#ref = format!("fledge-{id}");
        request.session = id.clone();
        let mut served = self.open_session(&id, session).await?;
        let mut status_client = self.control.clone();
        let status_ref = request.r#ref.clone();
        let status = tokio::spawn(async move {
            let Ok(stream) = status_client.status(control::StatusRequest { r#ref: status_ref }).await else { return };
            let mut stream = stream.into_inner();
            while let Ok(Some(update)) = stream.message().await {
                if events.send(update).is_err() {
                    return;
                }
            }
        });
        let solved = tokio::select! {
            solved = self.control.solve(request) => solved,
            ended = &mut served => {
                let reason = match ended {
                    Ok(Ok(())) => "the daemon ended it".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                status.abort();
                return Err(DaemonError::SessionClosed(reason));
            }
        };
        // The status stream ends with the build; a little grace for its last updates.
        let _ = tokio::time::timeout(Duration::from_secs(5), status).await;
        served.abort();
        solved.map(|r| r.into_inner()).map_err(|status| DaemonError::Solve(status.message().to_string()))
    }

    /// Opens `Control.Session`, advertising the methods served, and serves them inside it.
    /// The returned task ends when the session does.
    async fn open_session(
        &mut self,
        id: &str,
        session: Session,
    ) -> Result<tokio::task::JoinHandle<Result<(), String>>, DaemonError> {
        let (to_daemon, outgoing) = mpsc::channel(16);
        let mut call = tonic::Request::new(ReceiverStream::new(outgoing));
        let meta = call.metadata_mut();
        let value = |v: &str| v.parse::<tonic::metadata::MetadataValue<_>>().expect("ASCII values");
        meta.insert("x-docker-expose-session-uuid", value(id));
        meta.insert("x-docker-expose-session-name", value("fledge"));
        meta.insert("x-docker-expose-session-sharedkey", value(&format!("fledge-{id}")));
        let mut methods = vec![
            "/grpc.health.v1.Health/Check",
            "/moby.filesync.v1.FileSync/DiffCopy",
            "/moby.filesync.v1.FileSend/DiffCopy",
            "/moby.buildkit.secrets.v1.Secrets/GetSecret",
        ];
        if session.credentials.is_some() {
            methods.push("/moby.filesync.v1.Auth/Credentials");
        }
        if session.content.is_some() {
            methods.extend([
                "/containerd.services.content.v1.Content/Info",
                "/containerd.services.content.v1.Content/Read",
            ]);
        }
        for method in methods {
            meta.append("x-docker-expose-session-grpc-method", value(method));
        }
        let incoming =
            self.control.session(call).await.map_err(|status| self.rpc_error("open a session", status))?.into_inner();
        let mut tunnel = Tunnel::new(incoming, to_daemon);
        let ended = tunnel.watch_end();
        let router = tonic::transport::Server::builder()
            .add_service(health::health_server::HealthServer::new(services::Health))
            .add_service(
                fs::file_sync_server::FileSyncServer::new(services::FileSync { dirs: session.dirs })
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                fs::file_send_server::FileSendServer::new(services::FileSend { outputs: session.outputs })
                    .max_decoding_message_size(MAX_MESSAGE),
            )
            .add_service(secrets::secrets_server::SecretsServer::new(services::Secrets { files: session.secrets }));
        let router = match session.credentials {
            Some(credentials) => router.add_service(fs::auth_server::AuthServer::new(services::Auth { credentials })),
            None => router,
        };
        let router = match session.content {
            Some(store) => router.add_service(
                crate::pb::content::content_server::ContentServer::new(store).max_encoding_message_size(MAX_MESSAGE),
            ),
            None => router,
        };
        // The server stops when its stream of connections ends, so after the tunnel it waits
        // forever; the session is over when the daemon ends the tunnel (or the build returns
        // and drops the task).
        let incoming = tokio_stream::StreamExt::chain(
            tokio_stream::once(Ok::<_, std::io::Error>(tunnel)),
            tokio_stream::pending(),
        );
        Ok(tokio::spawn(async move {
            tokio::select! {
                served = router.serve_with_incoming(incoming) => served.map_err(|e| error_chain(&e)),
                reason = ended => match reason {
                    Ok(Some(reason)) => Err(reason),
                    _ => Ok(()),
                },
            }
        }))
    }
}

/// 32 random hex digits (session ids and build refs must not collide).
fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A status's message and what caused it (a TLS alert, a reset connection).
fn status_text(status: &tonic::Status) -> String {
    let message = status.message().to_string();
    match std::error::Error::source(status).map(error_chain) {
        Some(cause) if cause.starts_with(&message) => cause,
        Some(cause) if !message.contains(&cause) => format!("{message}: {cause}"),
        _ => message,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
