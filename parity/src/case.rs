//! One case of the parity suite: a Dockerfile, the build context it is built in and how it
//! is built, read from a `tests/parity/cases/NAME.case` file.
//!
//! The format is a header (comments, `features:`, `build:` with `target=`, `build-arg=`,
//! `secret=` and `allow=`, `fails:`) followed by sections
//! in the style of Go's txtar: `-- PATH --` starts a regular file whose content is the lines
//! up to the next section, `-- PATH/ --` a directory, `-- PATH -> TARGET --` a symlink,
//! `-- PATH => OTHER --` a hard link to the earlier file OTHER, `-- NAME.tar <= DIR/ --` (or
//! `.tar.gz`) an archive of the context directory DIR, which is then removed. Files and
//! directories take `mode=0NNN`. One file holds what git cannot: symlinks, hard links, modes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A case as its file states it.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    /// The features of `tests/parity/features.toml` it exercises.
    pub features: Vec<String>,
    pub options: Vec<BuildOption>,
    /// A fragment of the error the build must fail with; `None`: it must succeed.
    pub fails: Option<String>,
    entries: Vec<Entry>,
}

/// A build option both engines are given, each in its own spelling.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildOption {
    Target(String),
    BuildArg(String, String),
    /// A secret with this id whose content is `secret-ID\n`.
    Secret(String),
    /// An entitlement granted (`--allow`).
    Allow(String),
}

#[derive(Debug)]
enum Entry {
    File { path: String, mode: u32, content: String },
    Dir { path: String, mode: u32 },
    Symlink { path: String, target: String },
    HardLink { path: String, other: String },
    Archive { path: String, from: String },
}

/// A case written out: the build context, the `bb` context (`bin/busybox`, `bin/sh`) and the
/// secrets' files.
pub struct Materialised {
    pub context: PathBuf,
    pub bb: PathBuf,
    pub secrets: Vec<(String, PathBuf)>,
}

impl Case {
    /// Reads `path`; the case is named after the file's stem.
    pub fn read(path: &Path) -> Result<Case> {
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        Case::parse(&name, &text).with_context(|| format!("{}", path.display()))
    }

    /// Every `*.case` file of `dir`, by name.
    pub fn read_all(dir: &Path) -> Result<Vec<Case>> {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.retain(|p| p.extension().is_some_and(|e| e == "case"));
        paths.sort();
        paths.iter().map(|p| Case::read(p)).collect()
    }

    pub fn parse(name: &str, text: &str) -> Result<Case> {
        let mut case = Case {
            name: name.to_string(),
            features: Vec::new(),
            options: Vec::new(),
            fails: None,
            entries: Vec::new(),
        };
        let mut lines = text.lines().enumerate().peekable();
        while let Some((n, line)) = lines.next_if(|(_, l)| section(l).is_none()) {
            let at = || format!("line {}", n + 1);
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else if let Some(rest) = line.strip_prefix("features:") {
                case.features.extend(rest.split_whitespace().map(str::to_string));
            } else if let Some(rest) = line.strip_prefix("build:") {
                for word in rest.split_whitespace() {
                    case.options.push(BuildOption::parse(word).with_context(at)?);
                }
            } else if let Some(rest) = line.strip_prefix("fails:") {
                case.fails = Some(rest.trim().to_string());
            } else {
                bail!("{}: expected `features:`, `build:`, `fails:` or a `-- PATH --` section, found {line:?}", at());
            }
        }
        while let Some((n, line)) = lines.next() {
            let header = section(line).expect("the loop stops at sections");
            let mut content = String::new();
            while let Some((_, body)) = lines.next_if(|(_, l)| section(l).is_none()) {
                content.push_str(body);
                content.push('\n');
            }
            let entry = Entry::parse(header, content).with_context(|| format!("line {}", n + 1))?;
            case.entries.push(entry);
        }
        if case.features.is_empty() {
            bail!("no `features:` line");
        }
        if !case.entries.iter().any(|e| matches!(e, Entry::File { path, .. } if path == "Dockerfile")) {
            bail!("no `-- Dockerfile --` section");
        }
        Ok(case)
    }

    /// Writes the case below `dir` (which must be empty): `dir/context`, `dir/bb`,
    /// `dir/secrets`. `busybox` is the static BusyBox both engines' images start from.
    pub fn materialise(&self, dir: &Path, busybox: &Path) -> Result<Materialised> {
        let context = dir.join("context");
        fs::create_dir_all(&context)?;
        let mut modes = BTreeMap::new();
        for entry in &self.entries {
            entry.create(&context, &mut modes)?;
        }
        // Directories last and deepest first, so that a read-only one does not stop its
        // children being written.
        for (path, mode) in modes.iter().rev() {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))?;
        }
        for entry in &self.entries {
            if let Entry::Archive { path, from } = entry {
                archive(&context.join(path), &context.join(from))?;
                fs::remove_dir_all(context.join(from))?;
            }
        }
        let bb = dir.join("bb");
        fs::create_dir_all(bb.join("bin"))?;
        fs::set_permissions(bb.join("bin"), fs::Permissions::from_mode(0o755))?;
        fs::copy(busybox, bb.join("bin/busybox")).with_context(|| format!("copying {}", busybox.display()))?;
        fs::set_permissions(bb.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::symlink("busybox", bb.join("bin/sh"))?;
        let mut secrets = Vec::new();
        for option in &self.options {
            if let BuildOption::Secret(id) = option {
                let path = dir.join("secrets").join(id);
                fs::create_dir_all(dir.join("secrets"))?;
                fs::write(&path, format!("secret-{id}\n"))?;
                secrets.push((id.clone(), path));
            }
        }
        Ok(Materialised { context, bb, secrets })
    }
}

/// The inside of a `-- ... --` section line.
fn section(line: &str) -> Option<&str> {
    line.strip_prefix("-- ")?.strip_suffix(" --")
}

impl BuildOption {
    fn parse(word: &str) -> Result<BuildOption> {
        match word.split_once('=') {
            Some(("target", stage)) => Ok(BuildOption::Target(stage.to_string())),
            Some(("build-arg", kv)) => match kv.split_once('=') {
                Some((k, v)) => Ok(BuildOption::BuildArg(k.to_string(), v.to_string())),
                None => bail!("build-arg={kv}: expected build-arg=KEY=VALUE"),
            },
            Some(("secret", id)) => Ok(BuildOption::Secret(id.to_string())),
            Some(("allow", entitlement)) => Ok(BuildOption::Allow(entitlement.to_string())),
            _ => bail!("unknown build option {word:?}: expected target=, build-arg=, secret= or allow="),
        }
    }
}

impl Entry {
    fn parse(header: &str, content: String) -> Result<Entry> {
        let relative = |p: &str| -> Result<String> {
            let p = p.trim();
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                bail!("{p:?} is not a path inside the context");
            }
            Ok(p.to_string())
        };
        if let Some((path, target)) = header.split_once(" -> ") {
            return Ok(Entry::Symlink { path: relative(path)?, target: target.to_string() });
        }
        if let Some((path, other)) = header.split_once(" => ") {
            return Ok(Entry::HardLink { path: relative(path)?, other: relative(other)? });
        }
        if let Some((path, from)) = header.split_once(" <= ") {
            return Ok(Entry::Archive {
                path: relative(path)?,
                from: relative(from)?.trim_end_matches('/').to_string(),
            });
        }
        let (path, mode) = match header.split_once(" mode=") {
            Some((path, mode)) => {
                (path, u32::from_str_radix(mode.trim(), 8).with_context(|| format!("mode={mode}: expected octal"))?)
            }
            None => (header, if header.ends_with('/') { 0o755 } else { 0o644 }),
        };
        match path.strip_suffix('/') {
            Some(dir) => Ok(Entry::Dir { path: relative(dir)?, mode }),
            None => Ok(Entry::File { path: relative(path)?, mode, content }),
        }
    }

    /// Creates the entry below `context`; directory modes are collected into `modes` to be
    /// set once everything is written.
    fn create(&self, context: &Path, modes: &mut BTreeMap<PathBuf, u32>) -> Result<()> {
        let mut parent = |path: &str| parent_of(context, path, modes);
        match self {
            Entry::File { path, mode, content } => {
                let full = parent(path)?;
                fs::write(&full, content)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(*mode))?;
            }
            Entry::Dir { path, mode } => {
                let full = parent(path)?;
                fs::create_dir_all(&full)?;
                modes.insert(full, *mode);
            }
            Entry::Symlink { path, target } => std::os::unix::fs::symlink(target, parent(path)?)?,
            Entry::HardLink { path, other } => fs::hard_link(context.join(other), parent(path)?)?,
            Entry::Archive { path, .. } => {
                parent(path)?;
            }
        }
        Ok(())
    }
}

/// `context/path`, after creating its parent directories (recorded in `modes` as 0755 unless
/// a section gave them a mode).
fn parent_of(context: &Path, path: &str, modes: &mut BTreeMap<PathBuf, u32>) -> Result<PathBuf> {
    let full = context.join(path);
    let mut dir = full.parent().expect("below the context").to_path_buf();
    while dir != context && !modes.contains_key(&dir) {
        modes.insert(dir.clone(), 0o755);
        dir = dir.parent().expect("below the context").to_path_buf();
    }
    fs::create_dir_all(full.parent().expect("below the context"))?;
    Ok(full)
}

/// Writes the content of `dir` as the tar (gzip-compressed for `.tar.gz`) `path`: entries
/// sorted, owned by 0:0, dated 0, hard links kept.
fn archive(path: &Path, dir: &Path) -> Result<()> {
    let file = fs::File::create(path)?;
    let out: Box<dyn Write> = if path.to_string_lossy().ends_with(".gz") {
        Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Builder::new(out);
    let mut seen: HashMap<u64, PathBuf> = HashMap::new();
    let mut paths = Vec::new();
    walk(dir, dir, &mut paths)?;
    for rel in paths {
        let full = dir.join(&rel);
        let meta = fs::symlink_metadata(&full)?;
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_mode(meta.mode() & 0o7777);
        header.set_size(0);
        if meta.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut header, format!("{}/", rel.display()), std::io::empty())?;
        } else if meta.file_type().is_symlink() {
            header.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut header, &rel, fs::read_link(&full)?)?;
        } else if let Some(first) = seen.get(&meta.ino()) {
            header.set_entry_type(tar::EntryType::Link);
            tar.append_link(&mut header, &rel, first)?;
        } else {
            seen.insert(meta.ino(), rel.clone());
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            tar.append_data(&mut header, &rel, fs::File::open(&full)?)?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}

/// The paths below `dir`, relative to `root`, parents before children, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    names.sort();
    for path in names {
        out.push(path.strip_prefix(root)?.to_path_buf());
        if fs::symlink_metadata(&path)?.is_dir() {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_read_with_its_header_and_sections() {
        let case = Case::parse(
            "x",
            "# why\nfeatures: a b\nbuild: target=t build-arg=K=v=w secret=s\nfails: not found\n\
             -- Dockerfile --\nFROM scratch\n-- d/ mode=0700 --\n-- d/f mode=0600 --\none\ntwo\n\
             -- l -> d/f --\n-- h => d/f --\n-- x.tar <= src/ --\n-- src/in --\n-- empty --\n",
        )
        .unwrap();
        assert_eq!(case.features, ["a", "b"]);
        assert_eq!(
            case.options,
            [
                BuildOption::Target("t".into()),
                BuildOption::BuildArg("K".into(), "v=w".into()),
                BuildOption::Secret("s".into())
            ]
        );
        assert_eq!(case.fails.as_deref(), Some("not found"));
        let dir = tempfile::tempdir().unwrap();
        let m = case.materialise(dir.path(), Path::new("/proc/self/exe")).unwrap();
        assert_eq!(fs::read_to_string(m.context.join("Dockerfile")).unwrap(), "FROM scratch\n");
        assert_eq!(fs::read_to_string(m.context.join("d/f")).unwrap(), "one\ntwo\n");
        assert_eq!(fs::metadata(m.context.join("d")).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(fs::metadata(m.context.join("d/f")).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::read_link(m.context.join("l")).unwrap(), Path::new("d/f"));
        assert_eq!(
            fs::metadata(m.context.join("h")).unwrap().ino(),
            fs::metadata(m.context.join("d/f")).unwrap().ino()
        );
        assert_eq!(fs::read(m.context.join("empty")).unwrap(), b"");
        assert!(!m.context.join("src").exists());
        let mut names = Vec::new();
        for entry in tar::Archive::new(fs::File::open(m.context.join("x.tar")).unwrap()).entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["in"]);
        assert_eq!(fs::read_to_string(&m.secrets[0].1).unwrap(), "secret-s\n");
        assert_eq!(fs::read_link(m.bb.join("bin/sh")).unwrap(), Path::new("busybox"));
    }

    #[test]
    fn a_case_without_features_or_a_dockerfile_is_refused() {
        assert!(Case::parse("x", "-- Dockerfile --\nFROM scratch\n").is_err());
        assert!(Case::parse("x", "features: a\n-- f --\n").is_err());
        assert!(Case::parse("x", "features: a\nbuild: platform=x\n-- Dockerfile --\n").is_err());
        assert!(Case::parse("x", "features: a\n-- ../escape --\n-- Dockerfile --\n").is_err());
    }
}
