//! Artifact naming and all-or-nothing writes.
//!
//! Artifacts and manifests are written to hidden temporary files beside their destination
//! and renamed into place only when complete, so a failed or interrupted build leaves neither
//! a partial file nor a stale manifest next to a new artifact.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Suffixes that name a format; the manifest's stem drops them.
const FORMAT_SUFFIXES: [&str; 10] =
    [".cpio.gz", ".cpio.zst", ".cpio.lz4", ".cpio", ".squashfs", ".img", ".ext4", ".erofs", ".xfs", ".btrfs"];

/// Lower-case, with spaces and path separators turned into `-` (as the original Fledge).
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if matches!(c, ' ' | '/' | '\\') { '-' } else { c.to_ascii_lowercase() }).collect()
}

/// The artifact path: `-o` as given (with `.<suffix>` appended when it has no extension at
/// all), `<default_stem>.<suffix>` inside `-o` when that is a directory, or in the current
/// directory without `-o`.
pub fn artifact_path(output: Option<&Path>, default_stem: &str, suffix: &str) -> PathBuf {
    let default_name = format!("{default_stem}.{suffix}");
    match output {
        Some(dir) if dir.is_dir() || dir.as_os_str().to_string_lossy().ends_with('/') => dir.join(default_name),
        Some(path) if path.extension().is_some() => path.to_path_buf(),
        Some(path) => PathBuf::from(format!("{}.{suffix}", path.display())),
        None => PathBuf::from(default_name),
    }
}

/// The rootfs image path, with the original Fledge's rules: `-o` ending in `.<suffix>` is
/// kept, a trailing `.img` becomes `.<suffix>`, anything else gets `.<suffix>` appended
/// (`-o foo` → `foo.squashfs`); a directory gets `<default_stem>.<suffix>` inside it.
pub fn rootfs_path(output: Option<&Path>, default_stem: &str, suffix: &str) -> PathBuf {
    let with_suffix = format!(".{suffix}");
    match output {
        Some(dir) if dir.is_dir() || dir.as_os_str().to_string_lossy().ends_with('/') => {
            dir.join(format!("{default_stem}{with_suffix}"))
        }
        Some(path) => {
            let text = path.as_os_str().to_string_lossy();
            if text.ends_with(&with_suffix) {
                path.to_path_buf()
            } else if let Some(stem) = text.strip_suffix(".img") {
                PathBuf::from(format!("{stem}{with_suffix}"))
            } else {
                PathBuf::from(format!("{text}{with_suffix}"))
            }
        }
        None => PathBuf::from(format!("{default_stem}{with_suffix}")),
    }
}

/// `<stem>.manifest.json` beside the artifact: `hello.cpio.gz` → `hello.manifest.json`.
pub fn manifest_path(artifact: &Path) -> PathBuf {
    let name = artifact.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem =
        FORMAT_SUFFIXES.iter().find_map(|s| name.strip_suffix(s).filter(|stem| !stem.is_empty())).unwrap_or(&name);
    artifact.with_file_name(format!("{stem}.manifest.json"))
}

/// A file being written next to `dest`; it appears at `dest` only on [`Pending::commit`] and
/// is removed if dropped uncommitted (or, via [`crate::interrupt`], on a forced exit).
pub struct Pending {
    tmp: NamedTempFile,
    dest: PathBuf,
    _tracked: Tracked,
}

/// Keeps a temporary path registered with [`crate::interrupt`] while it exists.
struct Tracked(PathBuf);

impl Drop for Tracked {
    fn drop(&mut self) {
        crate::interrupt::untrack(&self.0);
    }
}

impl Pending {
    pub fn new(dest: &Path) -> io::Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dest.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{} is a directory", dest.display())));
        }
        if let Some(file) = dir.ancestors().find(|a| a.exists() && !a.is_dir()) {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("cannot write {}: {} is a file, not a directory", dest.display(), file.display()),
            ));
        }
        fs::create_dir_all(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        sweep_partials(&dir, &name);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.{}.", std::process::id()))
            .suffix(".partial")
            .tempfile_in(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write in {}: {e}", dir.display())))?;
        crate::interrupt::track(tmp.path());
        let tracked = Tracked(tmp.path().to_path_buf());
        Ok(Self { tmp, dest: dest.to_path_buf(), _tracked: tracked })
    }

    pub fn file(&mut self) -> &mut fs::File {
        self.tmp.as_file_mut()
    }

    /// The temporary path, for tools that write the file themselves.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Flushes to disk, sets mode 0644 and renames into place.
    pub fn commit(self) -> io::Result<PathBuf> {
        let Self { tmp, dest, _tracked } = self;
        // Through the path: a tool may have replaced the file we created.
        fs::File::open(tmp.path())?.sync_all()?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))?;
        tmp.persist(&dest)
            .map_err(|e| io::Error::new(e.error.kind(), format!("cannot create {}: {}", dest.display(), e.error)))?;
        Ok(dest)
    }
}

/// Reserves `len` bytes of disk for `file` up front (`[filesystem] preallocate`).
/// Removes the `.NAME.PID.*.partial` files beside an output whose writer is gone (killed
/// before it could remove its own), so they do not pile up beside the artifact. A file of a
/// live process, or of a name this version did not write, is left alone.
fn sweep_partials(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix).filter(|_| file.ends_with(".partial")) else { continue };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::debug!("removing {}, left by a build that was killed", entry.path().display());
            let _ = fs::remove_file(entry.path());
        }
    }
}

pub fn preallocate(file: &fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; fallocate only reserves space.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_drop_the_format_suffix() {
        assert_eq!(manifest_path(Path::new("out/hello.cpio.gz")), Path::new("out/hello.manifest.json"));
        assert_eq!(manifest_path(Path::new("nginx.squashfs")), Path::new("nginx.manifest.json"));
        assert_eq!(manifest_path(Path::new("x.bin")), Path::new("x.bin.manifest.json"));
        assert_eq!(manifest_path(Path::new(".cpio.gz")), Path::new(".cpio.gz.manifest.json"));
    }

    #[test]
    fn artifact_names() {
        assert_eq!(artifact_path(None, "hello", "cpio.gz"), Path::new("hello.cpio.gz"));
        assert_eq!(artifact_path(Some(Path::new("out/foo")), "x", "cpio.gz"), Path::new("out/foo.cpio.gz"));
        assert_eq!(artifact_path(Some(Path::new("foo.initrd")), "x", "cpio.gz"), Path::new("foo.initrd"));
        assert_eq!(artifact_path(Some(Path::new("out/")), "x", "cpio.gz"), Path::new("out/x.cpio.gz"));
        assert_eq!(rootfs_path(Some(Path::new("foo")), "x", "squashfs"), Path::new("foo.squashfs"));
        assert_eq!(rootfs_path(Some(Path::new("a/n.img")), "x", "squashfs"), Path::new("a/n.squashfs"));
        assert_eq!(rootfs_path(Some(Path::new("n.squashfs")), "x", "squashfs"), Path::new("n.squashfs"));
        assert_eq!(rootfs_path(None, "nginx", "squashfs"), Path::new("nginx.squashfs"));
        assert_eq!(sanitize("My App/x"), "my-app-x");
    }
}
