//! ext4 rootfs images without root, loop devices or mounts. Debian's `mke2fs` 1.47.0 fills a
//! filesystem only from a directory (`-d`), so the tree is staged with plain permissions next
//! to the output, `mke2fs -d` copies it, and one `debugfs -w` script then gives every inode
//! its real mode, owner, times and xattrs and creates the device nodes and fifos the staging
//! directory could not hold. The UUID and directory hash seed come from the tree's contents
//! and `E2FSPROGS_FAKE_TIME` pins the superblock times, so equal trees give equal images.

use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::config::Filesystem;
use crate::rootfs::walk::LayerSource;
use crate::rootfs::{SpecialKind, Tree};
use crate::stage::{StagedEntry, stage, tree_uuid};

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{tool} is not installed\n  = help: install e2fsprogs (Debian: apt install e2fsprogs)")]
    Missing { tool: &'static str },
    #[error("{tool} failed: {message}")]
    Failed { tool: &'static str, message: String },
    #[error("{0}: ext4 images cannot hold a path with a double quote or a newline (debugfs cannot name it)")]
    Unnameable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Image size: the content in 4 KiB blocks, inode tables, journal and metadata headroom, plus
/// the free space the original Fledge left (`size_buffer_mb`, or 25% clamped to 64–1024 MiB).
fn image_size(content: u64, inodes: u64, fs_config: &Filesystem) -> u64 {
    const MIB: u64 = 1 << 20;
    let buffer = match fs_config.size_buffer_mb {
        0 => (content / 4).clamp(64 * MIB, 1024 * MIB),
        mb => mb * MIB,
    };
    let metadata = content / 20 + inodes * 256 + 32 * MIB;
    (content + metadata + buffer).div_ceil(MIB) * MIB
}

fn quoted(path: &str) -> Result<String, Ext4Error> {
    if path.contains('"') || path.contains('\n') {
        return Err(Ext4Error::Unnameable(path.to_string()));
    }
    Ok(format!("\"{path}\""))
}

/// Sets a staged entry's atime and mtime (without following a symlink), so `mke2fs -d`
/// copies the right ones.
fn set_times(host: &Path, mtime: u32) -> io::Result<()> {
    let path = CString::new(host.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ts = libc::timespec { tv_sec: mtime.into(), tv_nsec: 0 };
    // SAFETY: a valid NUL-terminated path and a two-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), [ts, ts].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Writes the debugfs script that makes every inode exactly what the tree says, given what
/// `mke2fs -d` copied from the stage (`staged` holds each entry's mode and owner there). The
/// ctime of every inode is the staging time and must be set; the rest only where it differs.
fn fixup_script(
    entries: &[StagedEntry],
    staged: &[Option<(u32, u32, u32)>],
    mtime: u32,
    values_dir: &Path,
) -> Result<String, Ext4Error> {
    let mut script = String::new();
    for (i, (f, on_disk)) in entries.iter().zip(staged).enumerate() {
        let path = f.path.to_string();
        let p = quoted(&path)?;
        if let Some((kind, major, minor)) = f.special {
            // debugfs's mknod links the new inode into the current directory by name.
            let (dir, name) = path.rsplit_once('/').expect("special files are never the root");
            let dir = if dir.is_empty() { "/" } else { dir };
            let spec = match kind {
                SpecialKind::Fifo => "p".to_string(),
                SpecialKind::Char => format!("c {major} {minor}"),
                SpecialKind::Block => format!("b {major} {minor}"),
            };
            writeln!(script, "cd {}\nmknod {} {spec}\ncd /", quoted(dir)?, quoted(name)?).expect("string write");
            writeln!(script, "sif {p} atime @{mtime}\nsif {p} mtime @{mtime}\nsif {p} crtime @{mtime}")
                .expect("string write");
        }
        let (mode, uid, gid) = on_disk.unwrap_or((u32::MAX, u32::MAX, u32::MAX));
        if f.type_bits != 0o120_000 && mode != f.mode {
            writeln!(script, "sif {p} mode 0{:o}", f.type_bits | f.mode).expect("string write");
        }
        if uid != f.attrs.uid {
            writeln!(script, "sif {p} uid {}", f.attrs.uid).expect("string write");
        }
        if gid != f.attrs.gid {
            writeln!(script, "sif {p} gid {}", f.attrs.gid).expect("string write");
        }
        writeln!(script, "sif {p} ctime @{mtime}").expect("string write");
        for (j, (name, value)) in f.attrs.xattrs.iter().enumerate() {
            let file = values_dir.join(format!("{i}-{j}"));
            fs::write(&file, value)?;
            writeln!(script, "ea_set -f {} {p} {name}", quoted(&file.display().to_string())?).expect("string write");
        }
    }
    Ok(script)
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<String, Ext4Error> {
    let out = cmd
        .output()
        .map_err(|e| if e.kind() == io::ErrorKind::NotFound { Ext4Error::Missing { tool } } else { e.into() })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(Ext4Error::Failed { tool, message: stderr.trim().to_string() });
    }
    Ok(stderr)
}

/// Writes `tree` as an ext4 image at `dest` (overwritten); returns the file bytes packed.
pub fn write(
    tree: &Tree,
    layers: &dyn LayerSource,
    dest: &Path,
    fs_config: &Filesystem,
    mtime: u32,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, Ext4Error> {
    let staged = stage(tree, layers, dest, progress)?;
    // What mke2fs will copy: fix the times on the stage, note modes and owners there.
    let mut on_disk = Vec::with_capacity(staged.entries.len());
    for entry in &staged.entries {
        if entry.special.is_some() {
            on_disk.push(None);
            continue;
        }
        set_times(&entry.host, mtime)?;
        let meta = fs::symlink_metadata(&entry.host)?;
        on_disk.push(Some((meta.mode() & 0o7777, meta.uid(), meta.gid())));
    }
    let inodes = staged.entries.len() as u64 + 1024;
    let size = image_size(staged.content_bytes, inodes, fs_config);
    let file = File::create(dest)?;
    file.set_len(size)?;
    drop(file);
    if fs_config.preallocate {
        run("fallocate", Command::new("fallocate").arg("-l").arg(size.to_string()).arg(dest))?;
    }
    let uuid = tree_uuid(tree);
    run(
        "mke2fs",
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-N", &inodes.to_string(), "-U", &uuid, "-E"])
            .arg(format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0"))
            .arg("-d")
            .arg(&staged.root)
            .arg(dest)
            .env("E2FSPROGS_FAKE_TIME", mtime.to_string()),
    )?;

    let values = staged.work.path().join("xattr-values");
    fs::create_dir(&values)?;
    let script_path = staged.work.path().join("fixups.debugfs");
    let mut script = File::create(&script_path)?;
    script.write_all(fixup_script(&staged.entries, &on_disk, mtime, &values)?.as_bytes())?;
    drop(script);
    let stderr = run(
        "debugfs",
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(dest)
            .env("E2FSPROGS_FAKE_TIME", mtime.to_string()),
    )?;
    // debugfs exits 0 even when a command fails; anything besides its banner is an error.
    let problems: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
    if !problems.is_empty() {
        return Err(Ext4Error::Failed { tool: "debugfs", message: problems.join("\n") });
    }
    Ok(staged.data_bytes)
}
