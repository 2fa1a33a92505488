//! The build context as copies see it: source paths matched with wildcards, `.dockerignore`
//! and `--exclude` patterns, and content checksums for cache keys (names, types, modes, sizes,
//! link targets and file contents; never times or host owners, so touching a file or copying
//! the context elsewhere changes nothing).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use fledge_llb::pb;
use sha2::{Digest as _, Sha256};

use super::Value;
pub use fledge_llb::patterns::{Excludes, glob_match};

fn has_wildcard(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// The context paths a copy source names (`/a/*.txt`), sorted, each resolved inside the
/// context (`crate::confined`) but for its last component, which keeps the name the copy
/// gives it; an error when a path without wildcards does not exist.
pub fn matches(context: &Path, src: &str, allow_empty: bool) -> Result<Vec<PathBuf>> {
    let mut found = vec![PathBuf::new()];
    for part in src.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let mut next = Vec::new();
        for base in &found {
            if has_wildcard(part) {
                let dir = crate::confined::resolve(context, base, true)?;
                let Ok(entries) = std::fs::read_dir(context.join(&dir)) else { continue };
                let mut names: Vec<String> =
                    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                next.extend(names.into_iter().filter(|n| glob_match(part, n)).map(|n| dir.join(n)));
            } else {
                next.push(base.join(part));
            }
        }
        found = next;
    }
    let mut resolved = Vec::new();
    for path in found {
        let path = crate::confined::resolve(context, &path, false)?;
        if context.join(&path).symlink_metadata().is_ok() {
            resolved.push(path);
        }
    }
    if resolved.is_empty() && !(allow_empty && has_wildcard(src)) {
        bail!("failed to compute cache key: \"{src}\" not found in the build context");
    }
    Ok(resolved)
}

/// A matched source as a copy reads it: with `follow`, a symlink at the source itself is
/// followed (inside the context); the path stays relative to the context.
pub fn followed(context: &Path, source: &Path, follow: bool) -> Result<PathBuf> {
    let path = if follow { crate::confined::resolve(context, source, true)? } else { source.to_path_buf() };
    if context.join(&path).symlink_metadata().is_err() {
        bail!("failed to compute cache key: \"{}\" not found in the build context", path.display());
    }
    Ok(path)
}

/// Whether the context directory `dir` holds something `.dockerignore` lets in (only
/// possible when it has exceptions).
pub fn keeps_something_below(context_dir: &Path, dir: &Path, ignored: &Excludes) -> bool {
    if !ignored.has_exceptions() {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(context_dir.join(dir)) else { return false };
    entries.flatten().any(|entry| {
        let path = dir.join(entry.file_name());
        !ignored.excludes(&path.to_string_lossy())
            || (entry.file_type().is_ok_and(|t| t.is_dir()) && keeps_something_below(context_dir, &path, ignored))
    })
}

/// What a checksum leaves out: `.dockerignore` patterns (relative to the context) and a
/// copy's `--exclude` patterns (relative to the source it copies, `root`), as the copy
/// itself applies them.
struct Skip<'a> {
    context: &'a Path,
    ignored: &'a Excludes,
    excluded: &'a Excludes,
    root: &'a Path,
}

impl Skip<'_> {
    fn skips(&self, path: &Path) -> bool {
        let below = path.strip_prefix(self.root).ok().filter(|p| !p.as_os_str().is_empty());
        (self.ignored.excludes(&path.to_string_lossy()) && !keeps_something_below(self.context, path, self.ignored))
            || below.is_some_and(|below| self.excluded.excludes(&below.to_string_lossy()))
    }
}

/// Content checksum of `path` (inside `context`, its links already resolved as the copy
/// resolves them) and everything below it; links below it count as links.
fn checksum(context: &Path, path: &Path, skip: &Skip, hasher: &mut Sha256) -> Result<()> {
    let full = context.join(path);
    let meta = full.symlink_metadata()?;
    let name = path.to_string_lossy();
    if skip.skips(path) {
        return Ok(());
    }
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(meta.permissions().mode().to_le_bytes());
    if meta.file_type().is_symlink() {
        hasher.update(std::fs::read_link(&full)?.as_os_str().as_encoded_bytes());
        hasher.update([0]);
    } else if meta.is_file() {
        hasher.update(meta.len().to_le_bytes());
        let mut file = std::fs::File::open(&full)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    } else if meta.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(&full)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            checksum(context, &path.join(child.file_name()), skip, hasher)?;
        }
    }
    Ok(())
}

/// For a FileOp's copies from the build context, one checksum per copy action of what it
/// reads, so the op's cache key follows the copied content and nothing else.
pub fn copied_checksums(op: &pb::FileOp, inputs: &[Value]) -> Result<Vec<String>> {
    let mut sums = Vec::new();
    for action in &op.actions {
        let Some(pb::file_action::Action::Copy(copy)) = &action.action else { continue };
        let Some(Value::Context { dir, excludes }) =
            usize::try_from(action.secondary_input).ok().and_then(|i| inputs.get(i))
        else {
            continue;
        };
        let copied = Copied { src: &copy.src, allow_empty: copy.allow_empty_wildcard, follow: copy.follow_symlink };
        sums.push(checksum_of(dir, &copied, excludes, &copy.exclude_patterns)?);
    }
    Ok(sums)
}

/// Checksums of the context content an exec op's bind mounts show (their `selector` paths).
pub fn bound_checksums(exec: &pb::ExecOp, inputs: &[Value]) -> Result<Vec<String>> {
    let mut sums = Vec::new();
    for mount in exec.mounts.iter().filter(|m| m.mount_type == pb::MountType::Bind as i32) {
        let Some(Value::Context { dir, excludes }) = usize::try_from(mount.input).ok().and_then(|i| inputs.get(i))
        else {
            continue;
        };
        let selector = if mount.selector.is_empty() { "/" } else { &mount.selector };
        let shown = Copied { src: selector, allow_empty: false, follow: false };
        sums.push(checksum_of(dir, &shown, excludes, &[])?);
    }
    Ok(sums)
}

/// What a step reads from a local directory: a path or wildcard, whether a wildcard may
/// match nothing, and whether a symlink it names is followed.
struct Copied<'a> {
    src: &'a str,
    allow_empty: bool,
    follow: bool,
}

/// The checksum of what `copied` names in the context, minus `ignored` (`.dockerignore`)
/// and `excluded` (`--exclude`, relative to each matched source).
fn checksum_of(context: &Path, copied: &Copied, ignored: &[String], excluded: &[String]) -> Result<String> {
    let (ignored, excluded) = (Excludes::new(ignored), Excludes::new(excluded));
    let mut hasher = Sha256::new();
    for path in matches(context, copied.src, copied.allow_empty)? {
        let path = followed(context, &path, copied.follow)?;
        let skip = Skip { context, ignored: &ignored, excluded: &excluded, root: &path };
        checksum(context, &path, &skip, &mut hasher)?;
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_follow_content_not_times() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();
        let sum = |d: &Path| {
            let mut h = Sha256::new();
            let none = Excludes::new(&[]);
            let skip = Skip { context: d, ignored: &none, excluded: &none, root: Path::new("a.txt") };
            checksum(d, Path::new("a.txt"), &skip, &mut h).unwrap();
            hex::encode(h.finalize())
        };
        let before = sum(dir.path());
        let file = std::fs::File::options().write(true).open(dir.path().join("a.txt")).unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(sum(dir.path()), before, "a touch changes nothing");
        std::fs::write(dir.path().join("a.txt"), "two").unwrap();
        assert_ne!(sum(dir.path()), before, "an edit does");
        assert!(matches(dir.path(), "/missing", true).is_err());
        assert!(matches(dir.path(), "/*.none", true).unwrap().is_empty());
        assert_eq!(matches(dir.path(), "/*.txt", false).unwrap(), [PathBuf::from("a.txt")]);
    }

    #[test]
    fn checksums_see_what_the_copy_copies() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("target.txt"), "one").unwrap();
        std::os::unix::fs::symlink("target.txt", d.join("link.txt")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/f"), "f").unwrap();
        std::fs::write(d.join("sub/g"), "g").unwrap();
        let sum = |src: &str, follow: bool, excluded: &[&str]| {
            let excluded: Vec<String> = excluded.iter().map(|e| e.to_string()).collect();
            checksum_of(d, &Copied { src, allow_empty: false, follow }, &[], &excluded).unwrap()
        };
        // A followed link is its target's content; a link kept as a link is its target name.
        let (followed, kept) = (sum("link.txt", true, &[]), sum("link.txt", false, &[]));
        std::fs::write(d.join("target.txt"), "two").unwrap();
        assert_ne!(sum("link.txt", true, &[]), followed);
        assert_eq!(sum("link.txt", false, &[]), kept);
        // --exclude is relative to the copied source, as the copy applies it.
        let (relative, rooted) = (sum("sub", false, &["f"]), sum("sub", false, &["sub/f"]));
        std::fs::write(d.join("sub/f"), "f changed").unwrap();
        assert_eq!(sum("sub", false, &["f"]), relative, "an excluded file busts nothing");
        assert_ne!(sum("sub", false, &["sub/f"]), rooted, "sub/f is not a path below sub");
    }
}
