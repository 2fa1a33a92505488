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

/// The context paths a copy source names (`/a/*.txt`), sorted; an error when a path
/// without wildcards does not exist.
pub fn matches(context: &Path, src: &str, allow_empty: bool) -> Result<Vec<PathBuf>> {
    let mut found = vec![PathBuf::new()];
    for part in src.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let mut next = Vec::new();
        for base in &found {
            if has_wildcard(part) {
                let Ok(entries) = std::fs::read_dir(context.join(base)) else { continue };
                let mut names: Vec<String> =
                    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                next.extend(names.into_iter().filter(|n| glob_match(part, n)).map(|n| base.join(n)));
            } else {
                next.push(base.join(part));
            }
        }
        found = next;
    }
    found.retain(|p| context.join(p).symlink_metadata().is_ok());
    if found.is_empty() && !(allow_empty && has_wildcard(src)) {
        bail!("failed to compute cache key: \"{src}\" not found in the build context");
    }
    Ok(found)
}

/// Content checksum of `path` (inside `context`) and everything below it.
fn checksum(context: &Path, path: &Path, excludes: &Excludes, hasher: &mut Sha256) -> Result<()> {
    let full = context.join(path);
    let meta = full.symlink_metadata()?;
    let name = path.to_string_lossy();
    if excludes.excludes(&name) {
        return Ok(());
    }
    hasher.update(name.as_bytes());
    hasher.update([0]);
    hasher.update(meta.permissions().mode().to_le_bytes());
    if meta.file_type().is_symlink() {
        hasher.update(std::fs::read_link(&full)?.as_os_str().as_encoded_bytes());
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
            checksum(context, &path.join(child.file_name()), excludes, hasher)?;
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
        let mut patterns = excludes.clone();
        patterns.extend(copy.exclude_patterns.iter().cloned());
        sums.push(checksum_of(dir, &copy.src, copy.allow_empty_wildcard, &patterns)?);
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
        sums.push(checksum_of(dir, selector, false, excludes)?);
    }
    Ok(sums)
}

/// The checksum of what `src` (a path or wildcard) names in the context, minus `excludes`.
fn checksum_of(context: &Path, src: &str, allow_empty: bool, excludes: &[String]) -> Result<String> {
    let excludes = Excludes::new(excludes);
    let mut hasher = Sha256::new();
    for path in matches(context, src, allow_empty)? {
        checksum(context, &path, &excludes, &mut hasher)?;
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
            checksum(d, Path::new("a.txt"), &Excludes::new(&[]), &mut h).unwrap();
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
}
