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

/// Shell-style matching of one name against one pattern component (`*`, `?`, `[a-z]`,
/// `[!x]`, `\` escapes), as Go's `filepath.Match` does it.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(close) = p.iter().position(|&c| c == ']') else { return false };
                let Some(&c) = n.first() else { return false };
                let class = &p[1..close];
                let (negate, class) = match class.first() {
                    Some('!' | '^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= (class[i]..=class[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[close + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&pattern.chars().collect::<Vec<_>>(), &name.chars().collect::<Vec<_>>())
}

fn has_wildcard(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// `.dockerignore`-style patterns: the last matching one wins, `!` re-includes, `**` spans
/// directories, and a matched directory excludes everything below it.
pub struct Excludes(Vec<(bool, Vec<String>)>);

impl Excludes {
    pub fn new(patterns: &[String]) -> Self {
        Excludes(
            patterns
                .iter()
                .map(|p| match p.strip_prefix('!') {
                    Some(rest) => (false, rest.split('/').map(String::from).collect()),
                    None => (true, p.split('/').map(String::from).collect()),
                })
                .collect(),
        )
    }

    /// Whether the context-relative `path` is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut excluded = false;
        for (exclude, pattern) in &self.0 {
            // A pattern matching the path or one of its parents applies.
            if (1..=parts.len()).any(|n| matches_path(pattern, &parts[..n])) {
                excluded = *exclude;
            }
        }
        excluded
    }
}

fn matches_path(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.first().map(String::as_str) {
        None => parts.is_empty(),
        Some("**") => (0..=parts.len()).any(|i| matches_path(&pattern[1..], &parts[i..])),
        Some(p) => !parts.is_empty() && glob_match(p, parts[0]) && matches_path(&pattern[1..], &parts[1..]),
    }
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
pub fn copied_checksums(context: &Path, op: &pb::FileOp, inputs: &[Value]) -> Result<Vec<String>> {
    let mut sums = Vec::new();
    for action in &op.actions {
        let Some(pb::file_action::Action::Copy(copy)) = &action.action else { continue };
        let Some(Value::Context { excludes }) =
            usize::try_from(action.secondary_input).ok().and_then(|i| inputs.get(i))
        else {
            continue;
        };
        let mut patterns = excludes.clone();
        patterns.extend(copy.exclude_patterns.iter().cloned());
        sums.push(checksum_of(context, &copy.src, copy.allow_empty_wildcard, &patterns)?);
    }
    Ok(sums)
}

/// Checksums of the context content an exec op's bind mounts show (their `selector` paths).
pub fn bound_checksums(context: &Path, exec: &pb::ExecOp, inputs: &[Value]) -> Result<Vec<String>> {
    let mut sums = Vec::new();
    for mount in exec.mounts.iter().filter(|m| m.mount_type == pb::MountType::Bind as i32) {
        let Some(Value::Context { excludes }) = usize::try_from(mount.input).ok().and_then(|i| inputs.get(i)) else {
            continue;
        };
        let selector = if mount.selector.is_empty() { "/" } else { &mount.selector };
        sums.push(checksum_of(context, selector, false, excludes)?);
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
    fn globs_match_like_go() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "a.log"));
        assert!(glob_match("fi?e[0-9]", "file7"));
        assert!(glob_match("[!a]b", "xb") && !glob_match("[!a]b", "ab"));
        assert!(glob_match("a\\*", "a*") && !glob_match("a\\*", "ab"));
    }

    #[test]
    fn ignore_patterns_follow_the_last_match_and_cover_subtrees() {
        let e = Excludes::new(&["*.log".into(), "!keep.log".into(), "build".into(), "**/tmp".into()]);
        assert!(e.excludes("x.log"));
        assert!(!e.excludes("keep.log"));
        assert!(e.excludes("build/out/bin"));
        assert!(e.excludes("a/b/tmp/c"));
        assert!(!e.excludes("src/main.rs"));
    }

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
