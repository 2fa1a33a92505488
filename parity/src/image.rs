//! The description of a built image that both engines' results are compared by: a text of
//! one fact a line, so that a difference reads as a line diff.
//!
//! It holds the image config (the `config` object's keys, os and architecture), the history
//! (created_by, empty_layer, comment), every layer's entries (whiteouts and opaque markers
//! included) sorted by path, and the final tree those layers make, with hard-link groups.
//! Each entry states its path, type, permission bits (with setuid, setgid and sticky),
//! owner, and what makes its content: size and sha256 for a file (and the text of a small
//! one, so that a difference reads), the target of a link,
//! the numbers of a device, the extended attributes. Times are left out: BuildKit and
//! Fledge both stamp what a RUN step writes with the time it ran.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// What stands for the sha256 of the BusyBox binary the cases start from, so that a
/// description does not depend on the BusyBox build of the machine.
pub const BUSYBOX: &str = "busybox";

/// Describes the OCI image layout tarball `oci_tar` (one image, or an index whose first
/// linux manifest is taken). A file whose sha256 is `busybox_sha256` shows as [`BUSYBOX`].
pub fn describe(oci_tar: &Path, busybox_sha256: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    tar::Archive::new(fs::File::open(oci_tar).with_context(|| format!("opening {}", oci_tar.display()))?)
        .unpack(dir.path())
        .with_context(|| format!("unpacking {}", oci_tar.display()))?;
    let blob = |digest: &str| dir.path().join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json = |digest: &str| -> Result<Value> {
        Ok(serde_json::from_slice(&fs::read(blob(digest)).with_context(|| format!("blob {digest}"))?)?)
    };
    let mut manifest: Value = serde_json::from_slice(&fs::read(dir.path().join("index.json"))?)?;
    while manifest.get("manifests").is_some() {
        let chosen = manifest["manifests"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["platform"]["os"].as_str().is_none_or(|os| os == "linux")))
            .context("an index without a linux manifest")?;
        manifest = json(chosen["digest"].as_str().context("a manifest without a digest")?)?;
    }
    let config = json(manifest["config"]["digest"].as_str().context("a manifest without a config")?)?;
    let mut out = describe_config(&config);
    let mut tree = Tree::default();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    for (n, layer) in layers.iter().enumerate() {
        let digest = layer["digest"].as_str().context("a layer without a digest")?;
        let entries = read_layer(&blob(digest), busybox_sha256).with_context(|| format!("layer {digest}"))?;
        out.push_str(&format!("layer {}\n", n + 1));
        let mut lines: Vec<String> = entries.iter().map(|e| format!("  {}\n", e.line(None))).collect();
        lines.sort();
        out.extend(lines);
        tree.apply(entries);
    }
    out.push_str("tree\n");
    out.push_str(&tree.describe());
    Ok(out)
}

/// The config's facts that a Dockerfile decides.
fn describe_config(config: &Value) -> String {
    let mut out = String::new();
    for key in ["os", "architecture", "variant"] {
        if let Some(v) = config.get(key) {
            out.push_str(&format!("{key} {v}\n"));
        }
    }
    if let Some(Value::Object(fields)) = config.get("config") {
        let fields: BTreeMap<_, _> = fields.iter().filter(|(_, v)| !v.is_null()).collect();
        for (key, value) in fields {
            out.push_str(&format!("config {key} {value}\n"));
        }
    }
    for entry in config["history"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "history {} empty_layer={} comment={}\n",
            entry.get("created_by").unwrap_or(&Value::Null),
            entry.get("empty_layer").and_then(Value::as_bool).unwrap_or(false),
            entry.get("comment").unwrap_or(&Value::Null),
        ));
    }
    out
}

/// Files up to this size that are UTF-8 show their content.
const TEXT_LIMIT: u64 = 256;

/// One entry of a layer.
#[derive(Clone, Debug)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    xattrs: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
enum Kind {
    /// `text`: the content of a small text file, so that a difference shows it.
    File {
        size: u64,
        sha256: String,
        text: Option<String>,
    },
    Dir,
    Symlink(String),
    /// A hard link to this path (in a layer; the tree resolves it).
    HardLink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

impl Entry {
    /// The entry's line; `group` names the hard-link group of a file in the tree.
    fn line(&self, group: Option<&str>) -> String {
        let name = self.path.rsplit('/').next().unwrap_or_default();
        if name.starts_with(".wh.") {
            return format!("{} whiteout", self.path);
        }
        let what = match &self.kind {
            Kind::File { size, sha256, text: None } => format!("file size={size} sha256={sha256}"),
            Kind::File { size, sha256, text: Some(text) } => {
                format!("file size={size} sha256={sha256} text={}", Value::String(text.clone()))
            }
            Kind::Dir => "dir".to_string(),
            Kind::Symlink(target) => format!("symlink -> {target}"),
            Kind::HardLink(target) => format!("hardlink => {target}"),
            Kind::Char(major, minor) => format!("char {major},{minor}"),
            Kind::Block(major, minor) => format!("block {major},{minor}"),
            Kind::Fifo => "fifo".to_string(),
        };
        let slash = if matches!(self.kind, Kind::Dir) { "/" } else { "" };
        let mut line = format!("{}{slash} {:04o} {}:{} {what}", self.path, self.mode, self.uid, self.gid);
        if let Some(group) = group {
            line.push_str(&format!(" links={group}"));
        }
        for (key, value) in &self.xattrs {
            line.push_str(&format!(" xattr:{key}={value}"));
        }
        line
    }
}

/// The entries of the layer blob at `path` (gzip, zstd or plain tar).
fn read_layer(path: &Path, busybox_sha256: &str) -> Result<Vec<Entry>> {
    let mut start = [0u8; 4];
    fs::File::open(path)?.read_exact(&mut start).ok();
    let file = fs::File::open(path)?;
    let reader: Box<dyn Read> = match start {
        // BuildKit writes some layers as several gzip members.
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd] => bail!("a zstd layer: the parity suite reads gzip and plain tar"),
        _ => Box::new(file),
    };
    let mut entries = Vec::new();
    for entry in tar::Archive::new(reader).entries()? {
        let mut entry = entry?;
        let header = entry.header().clone();
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
        if path.is_empty() {
            continue;
        }
        let mut xattrs = BTreeMap::new();
        if let Some(extensions) = entry.pax_extensions()? {
            for ext in extensions {
                let ext = ext?;
                if let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(name.to_string(), hex::encode(ext.value_bytes()));
                }
            }
        }
        let link = || -> Result<String> {
            Ok(entry.link_name()?.map(|l| l.to_string_lossy().into_owned()).unwrap_or_default())
        };
        let device =
            || (header.device_major().ok().flatten().unwrap_or(0), header.device_minor().ok().flatten().unwrap_or(0));
        let kind = match header.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()?),
            tar::EntryType::Link => {
                Kind::HardLink(link()?.trim_start_matches("./").trim_start_matches('/').to_string())
            }
            tar::EntryType::Char => Kind::Char(device().0, device().1),
            tar::EntryType::Block => Kind::Block(device().0, device().1),
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut head = Vec::new();
                (&mut entry).take(TEXT_LIMIT + 1).read_to_end(&mut head)?;
                let (rest, sha256) = crate::sha256_read(std::io::Cursor::new(&head).chain(&mut entry))?;
                let text = String::from_utf8(head).ok().filter(|t| t.len() as u64 <= TEXT_LIMIT);
                let sha256 = if sha256 == busybox_sha256 { BUSYBOX.to_string() } else { sha256 };
                Kind::File { size: rest, sha256, text }
            }
            other => bail!("{path}: an entry of type {other:?}"),
        };
        entries.push(Entry {
            path,
            kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
            xattrs,
        });
    }
    Ok(entries)
}

/// The filesystem the layers make, as the OCI image spec applies them.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, (Entry, u64)>,
    next_inode: u64,
}

impl Tree {
    fn apply(&mut self, layer: Vec<Entry>) {
        for entry in &layer {
            let (dir, name) = match entry.path.rsplit_once('/') {
                Some((dir, name)) => (dir.to_string(), name),
                None => (String::new(), entry.path.as_str()),
            };
            if name == ".wh..wh..opq" {
                let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
                self.entries.retain(|p, _| !(p.starts_with(&prefix) && p.len() > prefix.len()));
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = if dir.is_empty() { hidden.to_string() } else { format!("{dir}/{hidden}") };
                self.remove(&gone);
            }
        }
        for entry in layer {
            let name = entry.path.rsplit('/').next().unwrap_or_default();
            if name.starts_with(".wh.") {
                continue;
            }
            let existing_dir = matches!(self.entries.get(&entry.path), Some((Entry { kind: Kind::Dir, .. }, _)));
            if !(existing_dir && matches!(entry.kind, Kind::Dir)) {
                self.remove(&entry.path);
            }
            self.next_inode += 1;
            let (entry, inode) = match &entry.kind {
                Kind::HardLink(target) => match self.entries.get(target) {
                    Some((linked, inode)) => (Entry { path: entry.path.clone(), ..linked.clone() }, *inode),
                    None => (entry, self.next_inode),
                },
                _ => (entry, self.next_inode),
            };
            self.entries.insert(entry.path.clone(), (entry, inode));
        }
    }

    /// Removes `path` and everything below it.
    fn remove(&mut self, path: &str) {
        let below = format!("{path}/");
        self.entries.retain(|p, _| p != path && !p.starts_with(&below));
    }

    fn describe(&self) -> String {
        let mut groups: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
        for (path, (_, inode)) in &self.entries {
            groups.entry(*inode).or_default().insert(path);
        }
        let mut out = String::new();
        for (entry, inode) in self.entries.values() {
            let group = groups.get(inode).filter(|g| g.len() > 1).and_then(|g| g.first().copied());
            out.push_str(&format!("  {}\n", entry.line(group)));
        }
        out
    }
}

/// The lines of `expected` and `actual` that differ, as a short unified listing (`-` only in
/// `expected`, `+` only in `actual`); lines starting with `#` are comments and not compared.
/// Empty when they agree.
pub fn difference(expected: &str, actual: &str) -> String {
    // Each entry line carries its section (`layer 2`, `tree`), so that a difference says
    // where it is.
    let facts = |text: &str| -> Vec<String> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            match line.strip_prefix("  ") {
                Some(entry) if !section.is_empty() => out.push(format!("[{section}] {entry}")),
                _ => {
                    if line.starts_with("layer ") || line == "tree" {
                        section = line.to_string();
                    }
                    out.push(line.to_string());
                }
            }
        }
        out
    };
    let (expected, actual) = (facts(expected), facts(actual));
    if expected == actual {
        return String::new();
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    // A greedy walk is enough for short descriptions: report each side's lines until the
    // two resynchronise on an equal line.
    while i < expected.len() || j < actual.len() {
        if i < expected.len() && j < actual.len() && expected[i] == actual[j] {
            i += 1;
            j += 1;
        } else if i < expected.len() && !actual[j..].contains(&expected[i]) {
            out.push_str(&format!("- {}\n", expected[i]));
            i += 1;
        } else if j < actual.len() {
            out.push_str(&format!("+ {}\n", actual[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", expected[i]));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry { path: path.into(), kind, mode: 0o644, uid: 0, gid: 0, xattrs: BTreeMap::new() }
    }

    fn file(path: &str, sha: &str) -> Entry {
        entry(path, Kind::File { size: 1, sha256: sha.into(), text: None })
    }

    #[test]
    fn whiteouts_opaque_directories_and_hard_links_make_the_tree() {
        let mut tree = Tree::default();
        tree.apply(vec![
            entry("a", Kind::Dir),
            file("a/x", "1"),
            file("a/y", "2"),
            entry("b", Kind::Dir),
            file("b/z", "3"),
            file("c", "4"),
        ]);
        tree.apply(vec![
            entry("a", Kind::Dir),
            entry("a/.wh..wh..opq", Kind::File { size: 0, sha256: String::new(), text: None }),
            file("a/new", "5"),
            entry(".wh.b", Kind::File { size: 0, sha256: String::new(), text: None }),
            entry("d", Kind::HardLink("c".into())),
        ]);
        assert_eq!(
            tree.describe(),
            "  a/ 0644 0:0 dir\n  a/new 0644 0:0 file size=1 sha256=5\n  \
             c 0644 0:0 file size=1 sha256=4 links=c\n  d 0644 0:0 file size=1 sha256=4 links=c\n"
        );
    }

    #[test]
    fn a_difference_lists_only_the_lines_that_differ() {
        assert_eq!(difference("# one\na\nb\n", "# two\na\nb\n"), "");
        assert_eq!(difference("a\nb\nc\n", "a\nB\nc\n"), "- b\n+ B\n");
        assert_eq!(difference("a\nc\n", "a\nb\nc\n"), "+ b\n");
        assert_eq!(difference("tree\n  x 0644\n", "tree\n  x 0755\n"), "- [tree] x 0644\n+ [tree] x 0755\n");
    }
}
