//! What the client serves the daemon inside a session: the health check the daemon polls,
//! local directories (FileSync), the exported result (FileSend), secrets, and registry
//! credentials.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::filesync::{self, Filter};
use crate::pb::fsutil_types::{Packet, packet::PacketType};
use crate::pb::{content, filesync as fs, health, secrets};

/// Registry credentials for a host: (username, secret).
pub type Credentials = Arc<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

pub struct Health;

#[tonic::async_trait]
impl health::health_server::Health for Health {
    async fn check(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Result<Response<health::HealthCheckResponse>, Status> {
        Ok(Response::new(health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::Serving as i32,
        }))
    }
}

/// Local directories by the names the build knows them by (`context`, `dockerfile`).
pub struct FileSync {
    pub dirs: HashMap<String, PathBuf>,
}

/// A metadata value, undoing the URL query escaping the daemon applies (with `KEY-encoded: 1`)
/// to values that are not plain ASCII.
fn metadata_values(request: &Request<Streaming<Packet>>, key: &str) -> Vec<String> {
    let meta = request.metadata();
    let encoded = meta.get(format!("{key}-encoded")).is_some_and(|v| v == "1");
    meta.get_all(key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| if encoded { unescape(v) } else { v.to_string() })
        .collect()
}

/// Go's `url.QueryUnescape`.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tonic::async_trait]
impl fs::file_sync_server::FileSync for FileSync {
    type DiffCopyStream = ReceiverStream<Result<Packet, Status>>;

    async fn diff_copy(&self, request: Request<Streaming<Packet>>) -> Result<Response<Self::DiffCopyStream>, Status> {
        let name = metadata_values(&request, "dir-name").into_iter().next().unwrap_or_default();
        let root = self
            .dirs
            .get(&name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no local directory named {name:?} in this session")))?;
        // fsutil includes the follow paths, their links resolved, as include patterns (the
        // daemon names the files a build reads that way).
        let mut includes = metadata_values(&request, "include-patterns");
        includes.extend(filesync::follow_links(&root, &metadata_values(&request, "followpaths")));
        let filter = Filter::new(includes, &metadata_values(&request, "exclude-patterns"));
        let entries = tokio::task::spawn_blocking(move || filesync::walk(&root, &filter))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot read {name}: {e}")))?;
        let (tx, rx) = mpsc::channel(16);
        let mut incoming = request.into_inner();
        tokio::spawn(async move {
            let send = |packet| tx.send(Ok(packet));
            for entry in &entries {
                let stat = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(entry.stat.clone()),
                    id: 0,
                    data: Vec::new(),
                };
                if send(stat).await.is_err() {
                    return;
                }
            }
            if send(filesync::end_of_stats()).await.is_err() {
                return;
            }
            while let Ok(Some(packet)) = incoming.message().await {
                match PacketType::try_from(packet.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let Some(file) = entries.get(packet.id as usize).and_then(|e| e.file.clone()) else {
                            let _ = tx.send(Err(Status::invalid_argument(format!("no file {}", packet.id)))).await;
                            return;
                        };
                        if send_file(&tx, packet.id, &file).await.is_err() {
                            return;
                        }
                    }
                    Ok(PacketType::PacketFin) => {
                        let _ = send(filesync::fin()).await;
                        return;
                    }
                    _ => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A file's bytes as DATA packets, then an empty one. The walk listed `path` as a regular
/// file; it is opened without following a link at its name, so a file swapped for a link
/// since is refused rather than read from outside the directory.
async fn send_file(tx: &mpsc::Sender<Result<Packet, Status>>, id: u32, path: &std::path::Path) -> Result<(), ()> {
    let mut file = match tokio::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).await {
        Ok(file) => file,
        Err(e) => {
            let _ = tx.send(Err(Status::internal(format!("cannot read {}: {e}", path.display())))).await;
            return Err(());
        }
    };
    loop {
        let mut chunk = vec![0u8; 32 << 10];
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut chunk).await.map_err(|_| ())?;
        chunk.truncate(n);
        let done = n == 0;
        tx.send(Ok(filesync::data(id, chunk))).await.map_err(|_| ())?;
        if done {
            return Ok(());
        }
    }
}

/// Where exports arrive: the tarball an `oci`/`docker`/`tar` exporter streams back, for its
/// exporter index.
pub struct FileSend {
    pub outputs: HashMap<String, Output>,
}

/// Where one exporter's tarball goes.
pub enum Output {
    /// A file, created (or truncated) when the export starts.
    File(PathBuf),
    /// A channel the tarball is sent down as it arrives, closed at its end (one export), for
    /// a reader that consumes it meanwhile. A reader that stops early fails the export.
    Stream(std::sync::Mutex<Option<mpsc::Sender<Vec<u8>>>>),
}

impl Output {
    pub fn stream(sender: mpsc::Sender<Vec<u8>>) -> Self {
        Output::Stream(std::sync::Mutex::new(Some(sender)))
    }
}

#[tonic::async_trait]
impl fs::file_send_server::FileSend for FileSend {
    type DiffCopyStream = ReceiverStream<Result<fs::BytesMessage, Status>>;

    async fn diff_copy(
        &self,
        request: Request<Streaming<fs::BytesMessage>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let id = request
            .metadata()
            .get("buildkit-attachable-exporter-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_string();
        let output = self.outputs.get(&id).ok_or_else(|| Status::not_found(format!("no output for exporter {id}")))?;
        let mut incoming = request.into_inner();
        match output {
            Output::File(path) => {
                let cannot = |e: std::io::Error| Status::internal(format!("cannot write {}: {e}", path.display()));
                let mut file = tokio::fs::File::create(path).await.map_err(cannot)?;
                while let Some(message) = incoming.message().await? {
                    file.write_all(&message.data).await.map_err(cannot)?;
                }
                file.flush().await.map_err(cannot)?;
            }
            Output::Stream(sender) => {
                let taken = sender.lock().unwrap_or_else(|p| p.into_inner()).take();
                let sender = taken.ok_or_else(|| Status::already_exists(format!("exporter {id} already sent")))?;
                while let Some(message) = incoming.message().await? {
                    sender.send(message.data).await.map_err(|_| Status::aborted("the export's reader stopped"))?;
                }
            }
        }
        let (_, rx) = mpsc::channel(1);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Secrets by id, read from their files when a step asks.
pub struct Secrets {
    pub files: HashMap<String, PathBuf>,
}

#[tonic::async_trait]
impl secrets::secrets_server::Secrets for Secrets {
    async fn get_secret(
        &self,
        request: Request<secrets::GetSecretRequest>,
    ) -> Result<Response<secrets::GetSecretResponse>, Status> {
        let id = &request.get_ref().id;
        let path = self.files.get(id).ok_or_else(|| Status::not_found(format!("secret {id} not found")))?;
        let data =
            tokio::fs::read(path).await.map_err(|e| Status::internal(format!("cannot read secret {id}: {e}")))?;
        Ok(Response::new(secrets::GetSecretResponse { data }))
    }
}

/// Finds a blob's file by its digest (`sha256:...`).
pub type BlobFinder = Arc<dyn Fn(&str) -> Option<PathBuf> + Send + Sync>;

/// An OCI content store the daemon reads by digest (`oci-layout://` named contexts): the
/// blobs `blob` finds, under the store id the client named them by.
pub struct ContentStore {
    pub id: String,
    pub blob: BlobFinder,
}

impl ContentStore {
    fn find(&self, meta: &tonic::metadata::MetadataMap, digest: &str) -> Result<PathBuf, Status> {
        let id = meta.get("buildkit-attachable-store-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        // buildkitd names the store `oci:ID`.
        if id.strip_prefix("oci:").unwrap_or(id) != self.id {
            return Err(Status::not_found(format!("unknown store {id:?}")));
        }
        (self.blob)(digest).ok_or_else(|| Status::not_found(format!("content {digest} not found")))
    }
}

#[tonic::async_trait]
impl content::content_server::Content for ContentStore {
    async fn info(&self, request: Request<content::InfoRequest>) -> Result<Response<content::InfoResponse>, Status> {
        let digest = request.get_ref().digest.clone();
        let path = self.find(request.metadata(), &digest)?;
        let size = tokio::fs::metadata(&path).await.map_err(|e| Status::internal(e.to_string()))?.len() as i64;
        Ok(Response::new(content::InfoResponse { info: Some(content::Info { digest, size, ..Default::default() }) }))
    }

    type ReadStream = ReceiverStream<Result<content::ReadContentResponse, Status>>;

    async fn read(&self, request: Request<content::ReadContentRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let path = self.find(request.metadata(), &request.get_ref().digest)?;
        let (offset, size) = (request.get_ref().offset.max(0) as u64, request.get_ref().size);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let Ok(mut file) = tokio::fs::File::open(&path).await else { return };
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return;
            }
            let mut left = if size > 0 { size as u64 } else { u64::MAX };
            let mut at = offset;
            while left > 0 {
                let mut chunk = vec![0u8; (1 << 20).min(left) as usize];
                let Ok(n) = file.read(&mut chunk).await else { return };
                if n == 0 {
                    return;
                }
                chunk.truncate(n);
                let message = content::ReadContentResponse { offset: at as i64, data: chunk };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
                at += n as u64;
                left -= n as u64;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub struct Auth {
    pub credentials: Credentials,
}

#[tonic::async_trait]
impl fs::auth_server::Auth for Auth {
    async fn credentials(
        &self,
        request: Request<fs::CredentialsRequest>,
    ) -> Result<Response<fs::CredentialsResponse>, Status> {
        let (username, secret) = (self.credentials)(&request.get_ref().host).unwrap_or_default();
        Ok(Response::new(fs::CredentialsResponse { username, secret }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_escapes_are_undone() {
        assert_eq!(super::unescape("a%2Fb+c%C3%A9"), "a/b cé");
        assert_eq!(super::unescape("50%"), "50%");
    }
}
