use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use crate::paths::ImagePath;

/// Where a regular file's bytes come from. Files with equal `Host` or `Layer` data (and
/// mode) are hard links of one inode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileData {
    /// Read from the host when packing (streamed, never held in memory).
    Host(PathBuf),
    /// Small generated or embedded content.
    Bytes(Arc<[u8]>),
    /// Entry number `index` of image layer `layer`'s tar stream, `size` bytes long; read
    /// when packing, layer by layer.
    Layer { layer: u32, index: u64, size: u64 },
}

impl FileData {
    /// True for data that can be shared by several names (hard links).
    pub fn linkable(&self) -> bool {
        !matches!(self, Self::Bytes(_))
    }
}

/// Device nodes and fifos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialKind {
    Char,
    Block,
    Fifo,
}

/// Owner and extended attributes; the default (root, none) is not stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub uid: u32,
    pub gid: u32,
    /// Sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    pub const ROOT: Attrs = Attrs { uid: 0, gid: 0, xattrs: Vec::new() };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        data: FileData,
    },
    Symlink {
        target: String,
    },
    /// A device node or fifo, e.g. `/dev/console` (packers write it; nothing is created on
    /// the host, so no privilege is needed).
    Special {
        kind: SpecialKind,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("cannot create {path}: {component} is a file, not a directory")]
    NotADirectory { path: String, component: String },
    #[error("cannot resolve {path}: too many levels of symbolic links")]
    SymlinkLoop { path: String },
    #[error("cannot replace the image root with a file")]
    RootNotDir,
    #[error("cannot replace directory {path} with a {kind}: it holds {entries} entries (e.g. {example})")]
    ReplacesDirectory { path: String, kind: &'static str, entries: usize, example: String },
}

/// Maximum symlinks followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// The image's entries keyed by path; parents sort before their children.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: BTreeMap<ImagePath, Node>,
    /// Entries not owned by root or carrying xattrs.
    attrs: HashMap<ImagePath, Attrs>,
}

impl Default for Tree {
    fn default() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(ImagePath::root(), Node::Dir { mode: 0o755 });
        Self { nodes, attrs: HashMap::new() }
    }
}

impl Tree {
    pub fn get(&self, path: &ImagePath) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Owner and xattrs of the entry at `path` (root and none unless set).
    pub fn attrs(&self, path: &ImagePath) -> &Attrs {
        static ROOT: Attrs = Attrs::ROOT;
        self.attrs.get(path).unwrap_or(&ROOT)
    }

    /// Sets owner and xattrs of an existing entry.
    pub fn set_attrs(&mut self, path: &ImagePath, attrs: Attrs) {
        if attrs == Attrs::ROOT {
            self.attrs.remove(path);
        } else if self.nodes.contains_key(path) {
            self.attrs.insert(path.clone(), attrs);
        }
    }

    /// All entries in path order, the root first.
    pub fn iter(&self) -> impl Iterator<Item = (&ImagePath, &Node)> {
        self.nodes.iter()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Creates `path` and any missing parents as directories (parents 0755). Existing
    /// directories keep their mode; symlinked components are followed inside the image, and a
    /// dangling link's target is created. Returns the resolved directory.
    pub fn mkdir_all(&mut self, path: &ImagePath, mode: u32) -> Result<ImagePath, TreeError> {
        let mut current = ImagePath::root();
        let last = path.components().len();
        for (i, part) in path.components().iter().enumerate() {
            let dir = self.resolve(&current.join(part), true)?;
            match self.nodes.get(&dir) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(TreeError::NotADirectory { path: path.to_string(), component: dir.to_string() });
                }
                None => {
                    if let Some(parent) = dir.parent().filter(|p| *p != current) {
                        self.mkdir_all(&parent, 0o755)?;
                    }
                    self.nodes.insert(dir.clone(), Node::Dir { mode: if i + 1 == last { mode } else { 0o755 } });
                }
            }
            current = dir;
        }
        Ok(current)
    }

    /// Puts `node` at `path`, replacing what was there. The final component is never followed,
    /// so writing over a symlink replaces the link instead of writing through it; parents are
    /// resolved inside the image. A directory that holds entries is never replaced by a
    /// non-directory: that would silently drop its contents (e.g. `/bin` and the shell).
    pub fn insert(&mut self, path: &ImagePath, node: Node) -> Result<ImagePath, TreeError> {
        let Some(name) = path.file_name() else {
            return match node {
                Node::Dir { mode } => {
                    self.nodes.insert(ImagePath::root(), Node::Dir { mode });
                    Ok(ImagePath::root())
                }
                _ => Err(TreeError::RootNotDir),
            };
        };
        let parent = path.parent().expect("non-root paths have a parent");
        let parent = self.mkdir_all(&parent, 0o755)?;
        let target = parent.join(name);
        match (&node, self.nodes.get(&target)) {
            (Node::Dir { .. }, Some(Node::Dir { .. })) => {}
            (Node::Symlink { target: link }, Some(Node::Dir { .. })) => {
                let link = link.clone();
                self.merge_into_link_target(&target, &link)?;
            }
            (_, Some(Node::Dir { .. })) => {
                let children = self.descendants(&target);
                if let Some(first) = children.first() {
                    return Err(TreeError::ReplacesDirectory {
                        path: target.to_string(),
                        kind: "file",
                        entries: children.len(),
                        example: first.to_string(),
                    });
                }
                self.remove(&target);
            }
            _ => self.remove(&target),
        }
        self.attrs.remove(&target);
        self.nodes.insert(target.clone(), node);
        Ok(target)
    }

    /// Puts `node` at `path` with image-layer semantics: whatever was there, a non-empty
    /// directory included, is replaced (as an upper layer hides a lower one). Directories
    /// keep their contents when the new node is a directory too. Parents resolve inside
    /// the image.
    pub fn replace(&mut self, path: &ImagePath, node: Node) -> Result<ImagePath, TreeError> {
        if let (Some(name), Some(parent)) = (path.file_name(), path.parent()) {
            let target = self.mkdir_all(&parent, 0o755)?.join(name);
            let keep_children =
                matches!(node, Node::Dir { .. }) && matches!(self.nodes.get(&target), Some(Node::Dir { .. }));
            if !keep_children {
                self.remove(&target);
            }
        }
        self.insert(path, node)
    }

    /// Everything strictly below `dir`, in path order.
    pub fn descendants(&self, dir: &ImagePath) -> Vec<ImagePath> {
        self.nodes.range(dir.clone()..).map(|(p, _)| p.clone()).take_while(|p| p.starts_with(dir)).skip(1).collect()
    }

    /// Turning directory `dir` into a symlink to `link` (as a merged-/usr tree does with
    /// `/bin -> usr/bin`): what `dir` held moves to the link's target, so nothing is lost and
    /// the old paths still resolve. Entries already at the target win over moved ones.
    fn merge_into_link_target(&mut self, dir: &ImagePath, link: &str) -> Result<(), TreeError> {
        let children = self.descendants(dir);
        let parent = dir.parent().expect("the root is never replaced by a link");
        let spelled = if link.starts_with('/') { link.to_string() } else { format!("{parent}/{link}") };
        let spelled =
            ImagePath::from_components(spelled.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect());
        let dest = self.resolve(&spelled, true)?;
        if dest.starts_with(dir) {
            let example = children.first().map(ToString::to_string).unwrap_or_default();
            return Err(TreeError::ReplacesDirectory {
                path: dir.to_string(),
                kind: "symlink into itself",
                entries: children.len(),
                example,
            });
        }
        if children.is_empty() {
            self.remove(dir);
            return Ok(());
        }
        let dest = self.mkdir_all(&dest, 0o755)?;
        let moved: Vec<(ImagePath, Node, Option<Attrs>)> = children
            .iter()
            .map(|p| (p.clone(), self.nodes.remove(p).expect("listed above"), self.attrs.remove(p)))
            .collect();
        self.remove(dir);
        for (old, node, attrs) in moved {
            let relative = &old.components()[dir.components().len()..];
            let new = ImagePath::from_components(dest.components().iter().chain(relative).cloned().collect());
            if !self.nodes.contains_key(&new) {
                self.nodes.insert(new.clone(), node);
                if let Some(attrs) = attrs {
                    self.attrs.insert(new, attrs);
                }
            }
        }
        Ok(())
    }

    /// Removes `path` and everything below it.
    pub fn remove(&mut self, path: &ImagePath) {
        let doomed: Vec<ImagePath> =
            self.nodes.range(path.clone()..).take_while(|(p, _)| p.starts_with(path)).map(|(p, _)| p.clone()).collect();
        for p in doomed {
            self.nodes.remove(&p);
            self.attrs.remove(&p);
        }
    }

    /// Resolves `path` to the entry it names, following symlinks in every component (and in
    /// the last one when `follow_last`), confined to the image: absolute link targets restart
    /// at the image root and `..` never climbs above it, whatever the links say.
    pub fn resolve(&self, path: &ImagePath, follow_last: bool) -> Result<ImagePath, TreeError> {
        let mut pending: Vec<String> = path.components().iter().rev().cloned().collect();
        let mut current: Vec<String> = Vec::new();
        let mut followed = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    current.pop();
                    continue;
                }
                _ => {}
            }
            current.push(part);
            let here = ImagePath::from_components(current.clone());
            let is_last = pending.is_empty();
            match self.nodes.get(&here) {
                Some(Node::Symlink { target }) if follow_last || !is_last => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(TreeError::SymlinkLoop { path: path.to_string() });
                    }
                    current.pop();
                    if target.starts_with('/') {
                        current.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_string));
                }
                Some(Node::File { .. }) if !is_last => {
                    return Err(TreeError::NotADirectory { path: path.to_string(), component: here.to_string() });
                }
                _ => {}
            }
        }
        Ok(ImagePath::from_components(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImagePath {
        ImagePath::parse(s).unwrap()
    }

    fn file() -> Node {
        Node::File { mode: 0o644, data: FileData::Bytes(Arc::from(&b"x"[..])) }
    }

    #[test]
    fn insert_creates_parents_and_keeps_order() {
        let mut t = Tree::default();
        t.insert(&p("/usr/bin/hello"), file()).unwrap();
        let paths: Vec<String> = t.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(paths, ["/", "/usr", "/usr/bin", "/usr/bin/hello"]);
    }

    #[test]
    fn symlinked_parent_directories_are_followed_inside_the_image() {
        let mut t = Tree::default();
        t.mkdir_all(&p("/usr/bin"), 0o755).unwrap();
        t.insert(&p("/bin"), Node::Symlink { target: "usr/bin".into() }).unwrap();
        assert_eq!(t.insert(&p("/bin/kestrel"), file()).unwrap(), p("/usr/bin/kestrel"));
        t.insert(&p("/sbin"), Node::Symlink { target: "/usr/bin".into() }).unwrap();
        assert_eq!(t.resolve(&p("/sbin/x"), true).unwrap(), p("/usr/bin/x"));
    }

    #[test]
    fn dangling_links_get_their_target_created() {
        let mut t = Tree::default();
        t.insert(&p("/lib"), Node::Symlink { target: "usr/lib".into() }).unwrap();
        assert_eq!(t.mkdir_all(&p("/lib/modules"), 0o700).unwrap(), p("/usr/lib/modules"));
        let dirs: Vec<String> =
            t.iter().filter(|(_, n)| matches!(n, Node::Dir { .. })).map(|(p, _)| p.to_string()).collect();
        assert_eq!(dirs, ["/", "/usr", "/usr/lib", "/usr/lib/modules"]);
        assert_eq!(t.get(&p("/usr/lib/modules")), Some(&Node::Dir { mode: 0o700 }));
    }

    #[test]
    fn links_cannot_escape_the_root() {
        let mut t = Tree::default();
        t.insert(&p("/evil"), Node::Symlink { target: "../../../../etc".into() }).unwrap();
        assert_eq!(t.insert(&p("/evil/passwd"), file()).unwrap(), p("/etc/passwd"));
        t.insert(&p("/abs"), Node::Symlink { target: "/tmp/../../root".into() }).unwrap();
        assert_eq!(t.resolve(&p("/abs/x"), true).unwrap(), p("/root/x"));
    }

    #[test]
    fn the_last_component_is_replaced_not_followed() {
        let mut t = Tree::default();
        t.insert(&p("/etc/target"), file()).unwrap();
        t.insert(&p("/link"), Node::Symlink { target: "/etc/target".into() }).unwrap();
        t.insert(&p("/link"), file()).unwrap();
        assert_eq!(t.get(&p("/etc/target")), Some(&file()));
        assert_eq!(t.get(&p("/link")), Some(&file()));
    }

    #[test]
    fn loops_and_files_as_directories_are_errors() {
        let mut t = Tree::default();
        t.insert(&p("/a"), Node::Symlink { target: "b".into() }).unwrap();
        t.insert(&p("/b"), Node::Symlink { target: "a".into() }).unwrap();
        assert!(matches!(t.insert(&p("/a/x"), file()), Err(TreeError::SymlinkLoop { .. })));
        t.insert(&p("/f"), file()).unwrap();
        assert!(matches!(t.insert(&p("/f/x"), file()), Err(TreeError::NotADirectory { .. })));
    }

    #[test]
    fn a_link_over_a_directory_moves_its_contents_to_the_link_target() {
        let mut t = Tree::default();
        t.insert(&p("/bin/busybox"), file()).unwrap();
        t.insert(&p("/bin/sh"), Node::Symlink { target: "busybox".into() }).unwrap();
        t.insert(&p("/usr/bin/sh"), Node::Symlink { target: "dash".into() }).unwrap();
        t.insert(&p("/bin"), Node::Symlink { target: "usr/bin".into() }).unwrap();
        assert_eq!(t.get(&p("/bin")), Some(&Node::Symlink { target: "usr/bin".into() }));
        assert_eq!(t.get(&p("/usr/bin/busybox")), Some(&file()));
        assert_eq!(t.resolve(&p("/bin/busybox"), true).unwrap(), p("/usr/bin/busybox"));
        assert_eq!(
            t.get(&p("/usr/bin/sh")),
            Some(&Node::Symlink { target: "dash".into() }),
            "entries already there win"
        );
    }

    #[test]
    fn a_non_empty_directory_is_never_replaced_by_a_file_or_link() {
        let mut t = Tree::default();
        t.insert(&p("/d/inner"), file()).unwrap();
        let err = t.insert(&p("/d"), file()).unwrap_err();
        assert_eq!(
            err,
            TreeError::ReplacesDirectory { path: "/d".into(), kind: "file", entries: 1, example: "/d/inner".into() }
        );
        assert!(matches!(
            t.insert(&p("/d"), Node::Symlink { target: "d/sub".into() }),
            Err(TreeError::ReplacesDirectory { kind: "symlink into itself", .. })
        ));
        assert_eq!(t.get(&p("/d/inner")), Some(&file()));
        t.mkdir_all(&p("/empty"), 0o755).unwrap();
        t.insert(&p("/empty"), file()).unwrap();
        assert_eq!(t.get(&p("/empty")), Some(&file()));
    }
}
