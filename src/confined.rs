//! Host paths resolved inside a root directory, as if that directory were `/`: the build
//! context, a named local context, the Dockerfile's directory.
//!
//! Guarantee: a path returned here names, below `root`, only directories that are not
//! symlinks (the last component may be a symlink when it is not followed). A symlink met on
//! the way is followed *inside* the root, the way BuildKit resolves a context (continuity's
//! `fs.RootPath`): an absolute target starts again at the root, `..` stops at it. So a link
//! to `/etc/shadow` means `<root>/etc/shadow`, and no spelling of a path reaches a file
//! outside the root. Hand-written because the std and `nix` path APIs follow links on the
//! host, and `openat2(RESOLVE_IN_ROOT)` answers with a descriptor where callers need a path.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Links followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// `path` (relative to `root`, or absolute meaning the same) resolved inside `root`; the
/// result is relative to `root`. With `follow_last`, a symlink in the last component is
/// followed too. Components that do not exist are kept as they are written.
pub fn resolve(root: &Path, path: &Path, follow_last: bool) -> io::Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        if pending.is_empty() && !follow_last {
            return Ok(candidate);
        }
        match root.join(&candidate).symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{}: too many levels of symbolic links", path.display()),
                    ));
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                push_components(&mut pending, &target);
            }
            Ok(_) => resolved = candidate,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                resolved = candidate
            }
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

/// Pushes the normal and `..` components of `path` so that the first one is popped first.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let start = pending.len();
    for component in path.components() {
        match component {
            Component::Normal(name) => pending.push(name.to_os_string()),
            Component::ParentDir => pending.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    pending[start..].reverse();
}

/// Reads the regular file at `path` inside `root` (links resolved inside it).
pub fn read(root: &Path, path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(root.join(resolve(root, path, true)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::write(root.join("data/f"), "f").unwrap();
        symlink("/etc/shadow", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("climb")).unwrap();
        symlink("/data", root.join("datalink")).unwrap();
        symlink("sub/..", root.join("data/back")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str, follow: bool| resolve(root, Path::new(p), follow).unwrap();
        assert_eq!(r("abs", true), Path::new("etc/shadow"));
        assert_eq!(r("abs", false), Path::new("abs"), "the last component is kept when not followed");
        assert_eq!(r("climb/passwd", true), Path::new("etc/passwd"));
        assert_eq!(r("/datalink/f", false), Path::new("data/f"));
        assert_eq!(r("../../datalink/../datalink/f", true), Path::new("data/f"));
        assert_eq!(r("data/back/f", true), Path::new("data/f"));
        assert_eq!(r("missing/x", true), Path::new("missing/x"));
        assert_eq!(r("", true), Path::new(""));
        assert!(resolve(root, Path::new("loop"), true).is_err());
        assert_eq!(read(root, Path::new("datalink/f")).unwrap(), b"f");
        assert!(read(root, Path::new("abs")).is_err(), "never the host's /etc/shadow");
    }
}
