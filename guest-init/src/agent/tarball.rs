//! `PutTar` and `GetTar`: tar streams unpacked into, or packed from, a directory. The tar
//! work is blocking, so it runs on a blocking thread fed through a bounded channel.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fledge_agent::CHUNK;
use fledge_agent::pb::{self, put_tar_input::Input};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::files::{Chunks, io_error};

/// A `Read` over chunks arriving on a channel (used on a blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => (self.chunk, self.at) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Unpacks the tar that follows the header, keeping owners, modes, times and xattrs.
pub async fn put(mut inputs: Streaming<pb::PutTarInput>) -> Result<pb::PutTarResponse, Status> {
    let directory = match inputs.message().await?.and_then(|m| m.input) {
        Some(Input::Directory(directory)) if directory.starts_with('/') => PathBuf::from(directory),
        _ => return Err(Status::invalid_argument("the first message must be an absolute directory")),
    };
    let shown = directory.display().to_string();
    std::fs::create_dir_all(&directory).map_err(io_error("cannot create", &shown))?;
    let (tx, rx) = mpsc::channel(4);
    let unpack =
        tokio::task::spawn_blocking(move || unpack(ChannelReader { rx, chunk: Vec::new(), at: 0 }, &directory));
    while let Some(message) = inputs.message().await? {
        let Some(Input::Data(data)) = message.input else {
            return Err(Status::invalid_argument("only tar data may follow the directory"));
        };
        if tx.send(data).await.is_err() {
            break; // The unpacker stopped: its error is the answer.
        }
    }
    drop(tx);
    let entries =
        unpack.await.map_err(|e| Status::internal(e.to_string()))?.map_err(io_error("cannot unpack into", &shown))?;
    Ok(pb::PutTarResponse { entries })
}

fn unpack(reader: impl Read, directory: &Path) -> std::io::Result<u64> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut entries = 0;
    for entry in archive.entries()? {
        // `unpack_in` refuses entries that would land outside `directory`.
        entry?.unpack_in(directory)?;
        entries += 1;
    }
    Ok(entries)
}

/// A `Write` that sends full chunks down a channel (used on a blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<Result<pb::Chunk, Status>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(pb::Chunk { data })).map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() { Ok(()) } else { self.send() }
    }
}

/// Streams `directory` as a tar, entries in name order, symlinks kept as links.
pub async fn get(request: pb::GetTarRequest) -> Result<Chunks, Status> {
    let directory = PathBuf::from(&request.directory);
    if !directory.is_absolute() || !directory.is_dir() {
        return Err(Status::failed_precondition(format!(
            "{} is not an absolute path to a directory",
            request.directory
        )));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut tar = tar::Builder::new(ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) });
        let packed = pack(&mut tar, &directory, Path::new("")).and_then(|()| tar.into_inner()?.flush());
        if let Err(e) = packed {
            let _ = tx.blocking_send(Err(io_error("cannot pack", &request.directory)(e)));
        }
    });
    Ok(rx)
}

fn pack(tar: &mut tar::Builder<ChannelWriter>, directory: &Path, name: &Path) -> std::io::Result<()> {
    let mut children: Vec<_> = std::fs::read_dir(directory)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|entry| entry.file_name());
    for child in children {
        let (path, child_name) = (child.path(), name.join(child.file_name()));
        append(tar, &path, &child_name)?;
        if child.file_type()?.is_dir() {
            pack(tar, &path, &child_name)?;
        }
    }
    Ok(())
}

/// One entry with its owner, time and permission bits (the mode field holds only those, as
/// tar tools write it); devices keep their numbers.
fn append(tar: &mut tar::Builder<ChannelWriter>, path: &Path, name: &Path) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&metadata, tar::HeaderMode::Complete);
    header.set_mode(metadata.mode() & 0o7777);
    let kind = metadata.file_type();
    if kind.is_file() {
        tar.append_data(&mut header, name, std::fs::File::open(path)?)
    } else if kind.is_symlink() {
        tar.append_link(&mut header, name, std::fs::read_link(path)?)
    } else {
        header.set_size(0);
        tar.append_data(&mut header, name, std::io::empty())
    }
}
