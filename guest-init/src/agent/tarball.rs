//! `PutTar` and `GetTar`: tar streams unpacked into, or packed from, a directory. The tar
//! work is blocking, so it runs on a blocking thread fed through a bounded channel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use fledge_agent::CHUNK;
use fledge_agent::chunks::ChannelReader;
use fledge_agent::pb::{self, put_tar_input::Input};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::files::{Chunks, io_error};

/// Unpacks the tar that follows the header, keeping owners, modes, times and xattrs.
pub async fn put(mut inputs: Streaming<pb::PutTarInput>) -> Result<pb::PutTarResponse, Status> {
    let (directory, oci_layer) = match inputs.message().await?.and_then(|m| m.input) {
        Some(Input::Header(h)) if h.directory.starts_with('/') => (PathBuf::from(h.directory), h.oci_layer),
        _ => return Err(Status::invalid_argument("the first message must be the header with an absolute directory")),
    };
    let shown = directory.display().to_string();
    std::fs::create_dir_all(&directory).map_err(io_error("cannot create", &shown))?;
    let (tx, rx) = mpsc::channel(4);
    let unpack = tokio::task::spawn_blocking(move || unpack(ChannelReader::new(rx), &directory, oci_layer));
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

fn unpack(reader: impl Read, directory: &Path, oci_layer: bool) -> std::io::Result<u64> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut entries = 0;
    let mut warned = false;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        if oci_layer && whiteout(&name, directory)? {
            entries += 1;
            continue;
        }
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
            Some(extensions) => extensions
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    Some((e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string(), e.value_bytes().to_vec()))
                })
                .collect(),
            None => Vec::new(),
        };
        // `unpack_in` refuses entries that would land outside `directory`.
        if entry.unpack_in(directory)? {
            for (key, value) in xattrs {
                match set_xattr(&directory.join(&name), &key, &value) {
                    // tmpfs before Linux 6.6 has no user.* attributes: the file is still
                    // usable, the attribute only lives in the layer.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {
                        if !warned {
                            crate::warn(format_args!(
                                "{key} on {}: {e}; such attributes are not kept here",
                                name.display()
                            ));
                            warned = true;
                        }
                    }
                    other => other?,
                }
            }
        }
        entries += 1;
    }
    Ok(entries)
}

fn set_xattr(path: &Path, key: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let key = std::ffi::CString::new(key).map_err(std::io::Error::other)?;
    // SAFETY: NUL-terminated strings and a value buffer that outlive the call.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Applies an OCI whiteout entry in overlay form (a 0:0 character device for a removed
/// name, the opaque attribute for `.wh..wh..opq`); `false` when `name` is not one.
fn whiteout(name: &Path, directory: &Path) -> std::io::Result<bool> {
    use std::path::Component;
    let Some(file) = name.file_name().and_then(|f| f.to_str()) else { return Ok(false) };
    let Some(hidden) = file.strip_prefix(".wh.") else { return Ok(false) };
    if name.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(std::io::Error::other(format!("whiteout {} leaves the layer", name.display())));
    }
    let parent = directory.join(name.parent().unwrap_or(Path::new("")));
    std::fs::create_dir_all(&parent)?;
    if hidden == ".wh..opq" {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(parent.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: NUL-terminated strings and a one-byte value that outlive the call.
        let rc =
            unsafe { libc::lsetxattr(path.as_ptr(), c"trusted.overlay.opaque".as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    } else {
        let target = parent.join(hidden);
        nix::sys::stat::mknod(&target, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)?;
    }
    Ok(true)
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

/// Streams `directory` as a tar (see `GetTarRequest` in the .proto for what is kept): the
/// directory itself, or the layer diff of an overlay upper over `lower` ([`super::diff`]).
pub async fn get(request: pb::GetTarRequest) -> Result<Chunks, Status> {
    let directory = PathBuf::from(&request.directory);
    if !directory.is_absolute() || !directory.is_dir() {
        return Err(Status::failed_precondition(format!(
            "{} is not an absolute path to a directory",
            request.directory
        )));
    }
    let lower = request.overlay_diff.then(|| PathBuf::from(&request.lower));
    if lower.as_ref().is_some_and(|l| !l.is_absolute() || !l.is_dir()) {
        return Err(Status::failed_precondition(format!(
            "the lower of a layer diff, {:?}, is not an absolute path to a directory",
            request.lower
        )));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut tar = tar::Builder::new(ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) });
        let packed = match &lower {
            Some(lower) => super::diff::write(&mut tar, &directory, lower),
            None => Packer { tar: &mut tar, links: HashMap::new() }.pack(&directory, Path::new("")),
        };
        if let Err(e) = packed.and_then(|()| tar.into_inner()?.flush()) {
            let _ = tx.blocking_send(Err(io_error("cannot pack", &request.directory)(e)));
        }
    });
    Ok(rx)
}

/// Packs a directory as it is.
struct Packer<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    /// Files with several links already written, by (device, inode): later names link to it.
    links: HashMap<(u64, u64), PathBuf>,
}

impl<W: Write> Packer<'_, W> {
    fn pack(&mut self, directory: &Path, name: &Path) -> std::io::Result<()> {
        let mut children: Vec<_> = std::fs::read_dir(directory)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|entry| entry.file_name());
        for child in children {
            let (path, child_name) = (child.path(), name.join(child.file_name()));
            let metadata = std::fs::symlink_metadata(&path)?;
            if metadata.is_file() && metadata.nlink() > 1 {
                let inode = (metadata.dev(), metadata.ino());
                if let Some(first) = self.links.get(&inode) {
                    hard_link(self.tar, &metadata, &child_name, first)?;
                    continue;
                }
                self.links.insert(inode, child_name.clone());
            }
            entry(self.tar, &path, &metadata, &child_name, &xattrs(&path)?)?;
            if metadata.is_dir() {
                self.pack(&path, &child_name)?;
            }
        }
        Ok(())
    }
}

/// The header of an entry for `metadata`: type, owner, time, permission bits (the mode
/// field holds only those, as tar tools write it) and device numbers.
fn header(metadata: &std::fs::Metadata) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(metadata, tar::HeaderMode::Complete);
    // A symbolic link has no permissions of its own: Linux shows 0777, and so does every
    // image BuildKit writes. An overlay on the build VM's ext4 (no POSIX ACLs) gives a new
    // link the umask's 0755 instead.
    let kind = metadata.file_type();
    header.set_mode(if kind.is_symlink() { 0o777 } else { metadata.mode() & 0o7777 });
    if kind.is_char_device() || kind.is_block_device() {
        let rdev = metadata.rdev();
        header.set_device_major(libc::major(rdev))?;
        header.set_device_minor(libc::minor(rdev))?;
    }
    Ok(header)
}

/// Writes the entry `name` for the file at `path`: its header, `attributes` as PAX
/// extended attributes, its content, link target or device numbers.
pub fn entry<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    metadata: &std::fs::Metadata,
    name: &Path,
    attributes: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    let mut header = header(metadata)?;
    if !attributes.is_empty() {
        let records: Vec<(String, &[u8])> =
            attributes.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice())).collect();
        pax(tar, &records)?;
    }
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

/// Writes `name` as a hard link to the entry `target` written before, with `metadata`.
pub fn hard_link<W: Write>(
    tar: &mut tar::Builder<W>,
    metadata: &std::fs::Metadata,
    name: &Path,
    target: &Path,
) -> std::io::Result<()> {
    let mut header = header(metadata)?;
    header.set_entry_type(tar::EntryType::Link);
    header.set_size(0);
    tar.append_link(&mut header, name, target)
}

/// An empty regular file owned by 0:0 and dated 0, with `mode` (OCI whiteouts).
pub fn marker<W: Write>(tar: &mut tar::Builder<W>, name: &Path, mode: u32) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, name, std::io::empty())
}

/// A PAX extended header for the next entry.
fn pax<W: Write>(tar: &mut tar::Builder<W>, records: &[(String, &[u8])]) -> std::io::Result<()> {
    let mut data = Vec::new();
    for (key, value) in records {
        // "LEN key=value\n", where LEN counts itself too.
        let body = key.len() + value.len() + 3;
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, "PaxHeader", &data[..])
}

/// The extended attribute `key` of `path` (not following a link); `None` if it has none or
/// the filesystem keeps none.
pub fn xattr(path: &Path, key: &str) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let c_key = std::ffi::CString::new(key).map_err(std::io::Error::other)?;
    // SAFETY: the buffers passed are at least as long as the sizes given with them.
    let get = |buf: &mut [u8]| unsafe {
        libc::lgetxattr(c_path.as_ptr(), c_key.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    let absent = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ENOTSUP));
    let size = get(&mut []);
    if size < 0 {
        let e = std::io::Error::last_os_error();
        return if absent(&e) { Ok(None) } else { Err(e) };
    }
    let mut value = vec![0u8; size as usize];
    let size = get(&mut value);
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    value.truncate(size as usize);
    Ok(Some(value))
}

/// A file's extended attributes (none where the filesystem has no support).
fn xattrs(path: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let unsupported = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTSUP);
    // SAFETY: the buffers passed are at least as long as the sizes given with them.
    let list = |buf: &mut [u8]| unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let size = list(&mut []);
    if size < 0 {
        let e = std::io::Error::last_os_error();
        return if unsupported(&e) { Ok(Vec::new()) } else { Err(e) };
    }
    let mut names = vec![0u8; size as usize];
    let size = list(&mut names);
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    names.truncate(size as usize);
    let mut attributes = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(value) = xattr(path, &name)? {
            attributes.push((name, value));
        }
    }
    attributes.sort();
    Ok(attributes)
}
