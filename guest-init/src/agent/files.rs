//! `WriteFile` and `ReadFile`: single files, streamed in chunks.

use std::os::unix::fs::PermissionsExt;

use fledge_agent::CHUNK;
use fledge_agent::pb::{self, write_file_input::Input};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

/// An I/O failure as the host sees it: what was being done, to what, and every cause (the
/// tar crate puts the system's reason in the source).
pub fn io_error(what: &str, path: &str) -> impl FnOnce(std::io::Error) -> Status {
    move |e| {
        let mut text = format!("{what} {path}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text += &format!(": {cause}");
            source = cause.source();
        }
        Status::failed_precondition(text)
    }
}

fn absolute(path: &str) -> Result<&str, Status> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(Status::invalid_argument(format!("{path} is not an absolute path")))
    }
}

/// Creates (or truncates) the file, writes the data, then sets its owner and mode (in that
/// order: a change of owner clears set-id bits).
pub async fn write(mut inputs: Streaming<pb::WriteFileInput>) -> Result<pb::WriteFileResponse, Status> {
    let header = match inputs.message().await?.and_then(|m| m.input) {
        Some(Input::Header(header)) => header,
        _ => return Err(Status::invalid_argument("the first message must be the file header")),
    };
    let path = absolute(&header.path)?;
    if let Some(parent) = std::path::Path::new(path).parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io_error("cannot create the directory of", path))?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
        .map_err(io_error("cannot create", path))?;
    let mut size = 0u64;
    while let Some(message) = inputs.message().await? {
        match message.input {
            Some(Input::Data(data)) => {
                file.write_all(&data).await.map_err(io_error("cannot write", path))?;
                size += data.len() as u64;
            }
            _ => return Err(Status::invalid_argument("only data may follow the file header")),
        }
    }
    file.flush().await.map_err(io_error("cannot write", path))?;
    let file = file.into_std().await;
    std::os::unix::fs::fchown(&file, Some(header.uid), Some(header.gid)).map_err(io_error("cannot chown", path))?;
    file.set_permissions(std::fs::Permissions::from_mode(header.mode & 0o7777))
        .map_err(io_error("cannot chmod", path))?;
    Ok(pb::WriteFileResponse { size })
}

pub type Chunks = mpsc::Receiver<Result<pb::Chunk, Status>>;

/// Streams a regular file's bytes.
pub async fn read(request: pb::ReadFileRequest) -> Result<Chunks, Status> {
    let path = absolute(&request.path)?.to_string();
    let mut file = tokio::fs::File::open(&path).await.map_err(io_error("cannot open", &path))?;
    let metadata = file.metadata().await.map_err(io_error("cannot stat", &path))?;
    if !metadata.is_file() {
        return Err(Status::failed_precondition(format!("{path} is not a regular file")));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0; CHUNK];
        loop {
            let message = match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => Ok(pb::Chunk { data: buf[..n].to_vec() }),
                Err(e) => Err(io_error("cannot read", &path)(e)),
            };
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(rx)
}
