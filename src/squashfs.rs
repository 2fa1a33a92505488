//! Squashfs rootfs images, written by Debian's `mksquashfs -tar` from the tar stream of a
//! [`Tree`]: owners, modes, xattrs, hard links and device nodes come through without root,
//! without a staging directory and without the image ever touching the host filesystem.
//! `-reproducible` (mksquashfs's default), fixed filesystem and file times and a fixed root
//! make the image depend only on its contents.

use std::io::{self, BufWriter, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::{Compression, Compressor};
use crate::paths::ImagePath;
use crate::rootfs::walk::LayerSource;
use crate::rootfs::{Node, Tree};

#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    #[error("mksquashfs is not installed\n  = help: install squashfs-tools (Debian: apt install squashfs-tools)")]
    Missing,
    #[error("mksquashfs failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// mksquashfs options for `compression`. The xz level keeps the original Fledge's meaning:
/// it picks the dictionary size (1–7: 25%, 8–15: 50%, 16–22: 100% of the block).
pub fn compressor_args(compression: Compression) -> Vec<String> {
    let level = compression.level;
    let mut args = vec!["-comp".to_string(), compression.compressor.name().to_string()];
    match (compression.compressor, level) {
        (Compressor::Xz, Some(level)) => {
            let dict = match level {
                0..=7 => "25%",
                8..=15 => "50%",
                _ => "100%",
            };
            args.extend(["-Xdict-size".into(), dict.into()]);
        }
        (Compressor::Zstd | Compressor::Gzip, Some(level)) => {
            args.extend(["-Xcompression-level".into(), level.to_string()])
        }
        _ => {}
    }
    args
}

/// Writes `tree` as a squashfs image at `dest` (overwritten); returns the file bytes packed.
pub fn write(
    tree: &Tree,
    layers: &dyn LayerSource,
    dest: &Path,
    compression: Compression,
    mtime: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, SquashfsError> {
    let root = ImagePath::root();
    let root_mode = match tree.get(&root) {
        Some(Node::Dir { mode }) => *mode,
        _ => 0o755,
    };
    let root_attrs = tree.attrs(&root);
    let mut child = crate::interrupt::dies_with_parent(&mut Command::new("mksquashfs"))
        .arg("-")
        .arg(dest)
        .args(["-tar", "-noappend", "-no-progress", "-quiet"])
        .args(compressor_args(compression))
        .args(["-mkfs-time", &mtime.to_string(), "-all-time", &mtime.to_string()])
        .args([
            "-root-mode",
            &format!("{root_mode:o}"),
            "-root-uid",
            &root_attrs.uid.to_string(),
            "-root-gid",
            &root_attrs.gid.to_string(),
        ])
        // mksquashfs refuses SOURCE_DATE_EPOCH next to the explicit times passed above.
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| if e.kind() == io::ErrorKind::NotFound { SquashfsError::Missing } else { e.into() })?;
    let mut stderr = child.stderr.take().expect("piped");
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdin = child.stdin.take().expect("piped");
    // A 1 MiB pipe (the default is 64 KiB) lets both sides move big chunks with fewer switches.
    // SAFETY: fcntl on a pipe descriptor we own; failure only leaves the default size.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&stdin), libc::F_SETPIPE_SZ, 1 << 20) };
    let written =
        crate::rootfs::tar::write_tree(tree, layers, BufWriter::with_capacity(1 << 20, stdin), mtime.into(), progress);
    let status = crate::interrupt::wait(&mut child)?;
    let stderr = collector.join().unwrap_or_default();
    match written {
        Ok(bytes) if status.success() => Ok(bytes),
        // A write error while mksquashfs failed is its fault: report what it said.
        Err(e) if status.success() || crate::interrupt::is_interrupt(&e) => Err(e.into()),
        _ => Err(SquashfsError::Failed { status: status.to_string(), stderr: stderr.trim().to_string() }),
    }
}
