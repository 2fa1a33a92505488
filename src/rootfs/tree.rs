use std::collections::BTreeMap;
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

/// An entry's place in the tree's arena.
type Id = u32;
const ROOT: Id = 0;

/// One entry: what it is, who owns it, and (for directories) its children by name.
#[derive(Debug, Clone)]
struct Slot {
    node: Node,
    /// `None` for root-owned entries without xattrs (most of them).
    attrs: Option<Box<Attrs>>,
    children: BTreeMap<String, Id>,
}

/// The image's entries as a tree of names. Every operation walks a path once, component by
/// component, so its work is linear in the path's length whatever the depth (a map keyed by
/// whole paths made one deep layer cubic to flatten). Children are kept sorted, so iteration
/// is in path order, parents before their children.
#[derive(Debug, Clone)]
pub struct Tree {
    slots: Vec<Option<Slot>>,
    free: Vec<Id>,
    live: usize,
    /// Entries ever created, implied parent directories included (never decreases).
    created: u64,
}

impl Default for Tree {
    fn default() -> Self {
        let root = Slot { node: Node::Dir { mode: 0o755 }, attrs: None, children: BTreeMap::new() };
        Self { slots: vec![Some(root)], free: Vec::new(), live: 1, created: 0 }
    }
}

/// A path being resolved: its components so far and the ids of those that exist
/// (`ids[0]` is the root, `ids[k]` the entry `names[..k]` names).
struct Walk {
    names: Vec<String>,
    ids: Vec<Id>,
}

impl Walk {
    fn root() -> Self {
        Self { names: Vec::new(), ids: vec![ROOT] }
    }

    /// The entry the whole path names, if it exists.
    fn id(&self) -> Option<Id> {
        (self.ids.len() == self.names.len() + 1).then(|| self.ids[self.names.len()])
    }

    fn path(&self) -> ImagePath {
        ImagePath::from_components(self.names.clone())
    }
}

impl Tree {
    fn slot(&self, id: Id) -> &Slot {
        self.slots[id as usize].as_ref().expect("ids in the tree name live slots")
    }

    fn slot_mut(&mut self, id: Id) -> &mut Slot {
        self.slots[id as usize].as_mut().expect("ids in the tree name live slots")
    }

    fn child(&self, dir: Id, name: &str) -> Option<Id> {
        self.slot(dir).children.get(name).copied()
    }

    /// The entry at exactly `path`, no symlink followed.
    fn find(&self, path: &ImagePath) -> Option<Id> {
        path.components().iter().try_fold(ROOT, |dir, name| self.child(dir, name))
    }

    fn alloc(&mut self, node: Node) -> Id {
        let slot = Slot { node, attrs: None, children: BTreeMap::new() };
        self.live += 1;
        self.created += 1;
        match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                Id::try_from(self.slots.len() - 1).expect("a tree holds fewer than 2^32 entries")
            }
        }
    }

    /// Frees `id` and everything below it (already unlinked from its parent).
    fn free_subtree(&mut self, id: Id) {
        let mut pending = vec![id];
        while let Some(id) = pending.pop() {
            let slot = self.slots[id as usize].take().expect("a slot is freed once");
            pending.extend(slot.children.into_values());
            self.free.push(id);
            self.live -= 1;
        }
    }

    /// Removes the child `name` of `dir` and everything below it.
    fn unlink(&mut self, dir: Id, name: &str) {
        if let Some(id) = self.slot_mut(dir).children.remove(name) {
            self.free_subtree(id);
        }
    }

    pub fn get(&self, path: &ImagePath) -> Option<&Node> {
        self.find(path).map(|id| &self.slot(id).node)
    }

    /// Owner and xattrs of the entry at `path` (root and none unless set).
    pub fn attrs(&self, path: &ImagePath) -> &Attrs {
        self.find(path).map_or(&ROOT_ATTRS, |id| self.attrs_of(id))
    }

    fn attrs_of(&self, id: Id) -> &Attrs {
        self.slot(id).attrs.as_deref().unwrap_or(&ROOT_ATTRS)
    }

    /// Sets owner and xattrs of an existing entry.
    pub fn set_attrs(&mut self, path: &ImagePath, attrs: Attrs) {
        if let Some(id) = self.find(path) {
            self.slot_mut(id).attrs = (attrs != Attrs::ROOT).then(|| Box::new(attrs));
        }
    }

    /// All entries in path order, the root first.
    pub fn iter(&self) -> Iter<'_> {
        Iter { tree: self, names: Vec::new(), stack: Vec::new(), started: false }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    /// How many entries were ever created in this tree, implied parent directories
    /// included: what a layer adds is the difference across applying it.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The bytes of every entry's absolute path added up (what iterating the tree, or a
    /// tar or cpio of it, spells out), counted up to just past `limit`: linear in the
    /// entries, whatever their depth.
    pub fn path_bytes(&self, limit: u64) -> u64 {
        let mut total = 0;
        let mut pending = vec![(ROOT, 0u64)];
        while let Some((id, len)) = pending.pop() {
            for (name, &child) in &self.slot(id).children {
                let child_len = len + 1 + name.len() as u64;
                total += child_len;
                if total > limit {
                    return total;
                }
                pending.push((child, child_len));
            }
        }
        total
    }

    pub fn is_empty(&self) -> bool {
        self.live <= 1
    }

    /// Creates `path` and any missing parents as directories (parents 0755). Existing
    /// directories keep their mode; symlinked components are followed inside the image, and a
    /// dangling link's target is created. Returns the resolved directory.
    pub fn mkdir_all(&mut self, path: &ImagePath, mode: u32) -> Result<ImagePath, TreeError> {
        Ok(self.mkdir_walk(path, mode)?.path())
    }

    fn mkdir_walk(&mut self, path: &ImagePath, mode: u32) -> Result<Walk, TreeError> {
        let mut walk = Walk::root();
        let last = path.components().len();
        for (i, part) in path.components().iter().enumerate() {
            walk = self.walk(walk, vec![part.clone()], true, path)?;
            // What is missing (the rest of a dangling link's target included) is created.
            while walk.ids.len() <= walk.names.len() {
                let depth = walk.ids.len() - 1;
                let parent = walk.ids[depth];
                if !matches!(self.slot(parent).node, Node::Dir { .. }) {
                    let component = ImagePath::from_components(walk.names[..depth].to_vec());
                    return Err(TreeError::NotADirectory { path: path.to_string(), component: component.to_string() });
                }
                let whole = i + 1 == last && depth + 1 == walk.names.len();
                let id = self.alloc(Node::Dir { mode: if whole { mode } else { 0o755 } });
                self.slot_mut(parent).children.insert(walk.names[depth].clone(), id);
                walk.ids.push(id);
            }
            let id = walk.id().expect("every component exists now");
            if !matches!(self.slot(id).node, Node::Dir { .. }) {
                return Err(TreeError::NotADirectory { path: path.to_string(), component: walk.path().to_string() });
            }
        }
        Ok(walk)
    }

    /// The existing directory `path` resolves to, created as [`Tree::mkdir_all`] does.
    fn mkdir_id(&mut self, path: &ImagePath) -> Result<(Id, Walk), TreeError> {
        let walk = self.mkdir_walk(path, 0o755)?;
        Ok((walk.id().expect("mkdir_walk creates every component"), walk))
    }

    /// Puts `node` at `path`, replacing what was there. The final component is never followed,
    /// so writing over a symlink replaces the link instead of writing through it; parents are
    /// resolved inside the image. A directory that holds entries is never replaced by a
    /// non-directory: that would silently drop its contents (e.g. `/bin` and the shell).
    pub fn insert(&mut self, path: &ImagePath, node: Node) -> Result<ImagePath, TreeError> {
        let Some(name) = path.file_name() else {
            return match node {
                Node::Dir { mode } => {
                    self.slot_mut(ROOT).node = Node::Dir { mode };
                    Ok(ImagePath::root())
                }
                _ => Err(TreeError::RootNotDir),
            };
        };
        let (parent, walk) = self.mkdir_id(&path.parent().expect("non-root paths have a parent"))?;
        let target = walk.path().join(name);
        let existing = self.child(parent, name).filter(|id| matches!(self.slot(*id).node, Node::Dir { .. }));
        match (&node, existing) {
            (Node::Dir { .. }, Some(id)) => {
                let slot = self.slot_mut(id);
                slot.node = node;
                slot.attrs = None;
                return Ok(target);
            }
            (Node::Symlink { target: link }, Some(id)) => {
                let link = link.clone();
                self.merge_into_link_target(&target, parent, id, &link)?;
            }
            (_, Some(id)) if !self.slot(id).children.is_empty() => {
                let children = self.descendants(&target);
                return Err(TreeError::ReplacesDirectory {
                    path: target.to_string(),
                    kind: "file",
                    entries: children.len(),
                    example: children[0].to_string(),
                });
            }
            _ => self.unlink(parent, name),
        }
        let id = self.alloc(node);
        self.slot_mut(parent).children.insert(name.to_string(), id);
        Ok(target)
    }

    /// Puts `node` at `path` with image-layer semantics: whatever was there, a non-empty
    /// directory included, is replaced (as an upper layer hides a lower one). Directories
    /// keep their contents when the new node is a directory too. Parents resolve inside
    /// the image.
    pub fn replace(&mut self, path: &ImagePath, node: Node) -> Result<ImagePath, TreeError> {
        if let (Some(name), Some(parent)) = (path.file_name(), path.parent()) {
            let (parent, _) = self.mkdir_id(&parent)?;
            let keep_children = matches!(node, Node::Dir { .. })
                && self.child(parent, name).is_some_and(|id| matches!(self.slot(id).node, Node::Dir { .. }));
            if !keep_children {
                self.unlink(parent, name);
            }
        }
        self.insert(path, node)
    }

    /// Everything strictly below `dir`, in path order.
    pub fn descendants(&self, dir: &ImagePath) -> Vec<ImagePath> {
        let Some(id) = self.find(dir) else { return Vec::new() };
        let mut out = Vec::new();
        let mut pending: Vec<(ImagePath, Id)> = Vec::new();
        let push_children = |pending: &mut Vec<(ImagePath, Id)>, path: &ImagePath, id: Id| {
            // In reverse, so that the first child is taken first.
            for (name, child) in self.slot(id).children.iter().rev() {
                pending.push((path.join(name), *child));
            }
        };
        push_children(&mut pending, dir, id);
        while let Some((path, id)) = pending.pop() {
            push_children(&mut pending, &path, id);
            out.push(path);
        }
        out
    }

    /// Turning directory `dir` (entry `id`, a child of `parent`) into a symlink to `link` (as
    /// a merged-/usr tree does with `/bin -> usr/bin`): what `dir` held moves to the link's
    /// target, so nothing is lost and the old paths still resolve. Entries already at the
    /// target win over moved ones. `dir` is gone afterwards.
    fn merge_into_link_target(&mut self, dir: &ImagePath, parent: Id, id: Id, link: &str) -> Result<(), TreeError> {
        let parent_path = dir.parent().expect("the root is never replaced by a link");
        let spelled = if link.starts_with('/') { link.to_string() } else { format!("{parent_path}/{link}") };
        let spelled =
            ImagePath::from_components(spelled.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect());
        let dest = self.resolve(&spelled, true)?;
        let name = dir.file_name().expect("the root is never replaced by a link");
        if dest.starts_with(dir) {
            let children = self.descendants(dir);
            return Err(TreeError::ReplacesDirectory {
                path: dir.to_string(),
                kind: "symlink into itself",
                entries: children.len(),
                example: children.first().map(ToString::to_string).unwrap_or_default(),
            });
        }
        if self.slot(id).children.is_empty() {
            self.unlink(parent, name);
            return Ok(());
        }
        let (dest, _) = self.mkdir_id(&dest)?;
        self.slot_mut(parent).children.remove(name);
        let mut pending = vec![(id, dest)];
        while let Some((from, into)) = pending.pop() {
            let moved = std::mem::take(&mut self.slot_mut(from).children);
            for (name, child) in moved {
                match self.child(into, &name) {
                    None => {
                        self.slot_mut(into).children.insert(name, child);
                    }
                    Some(there)
                        if matches!(self.slot(there).node, Node::Dir { .. })
                            && matches!(self.slot(child).node, Node::Dir { .. }) =>
                    {
                        pending.push((child, there));
                    }
                    Some(_) => self.free_subtree(child),
                }
            }
            self.free_subtree(from);
        }
        Ok(())
    }

    /// Removes `path` and everything below it (the root: everything it holds).
    pub fn remove(&mut self, path: &ImagePath) {
        match (path.parent().and_then(|p| self.find(&p)), path.file_name()) {
            (Some(parent), Some(name)) => self.unlink(parent, name),
            (_, None) => {
                for id in std::mem::take(&mut self.slot_mut(ROOT).children).into_values() {
                    self.free_subtree(id);
                }
            }
            (None, Some(_)) => {}
        }
    }

    /// Resolves `path` to the entry it names, following symlinks in every component (and in
    /// the last one when `follow_last`), confined to the image: absolute link targets restart
    /// at the image root and `..` never climbs above it, whatever the links say.
    pub fn resolve(&self, path: &ImagePath, follow_last: bool) -> Result<ImagePath, TreeError> {
        Ok(self.walk(Walk::root(), path.components().to_vec(), follow_last, path)?.path())
    }

    /// Continues `walk` with the components `parts`, following symlinks as
    /// [`Tree::resolve`] does; errors name `path`.
    fn walk(&self, mut walk: Walk, parts: Vec<String>, follow_last: bool, path: &ImagePath) -> Result<Walk, TreeError> {
        let mut pending: Vec<String> = parts.into_iter().rev().collect();
        let mut followed = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    walk.names.pop();
                    walk.ids.truncate(walk.names.len() + 1);
                    continue;
                }
                _ => {}
            }
            let is_last = pending.is_empty();
            let here = walk.id().and_then(|dir| self.child(dir, &part));
            match here.map(|id| &self.slot(id).node) {
                Some(Node::Symlink { target }) if follow_last || !is_last => {
                    followed += 1;
                    if followed > MAX_SYMLINKS {
                        return Err(TreeError::SymlinkLoop { path: path.to_string() });
                    }
                    if target.starts_with('/') {
                        walk.names.clear();
                        walk.ids.truncate(1);
                    }
                    pending.extend(target.split('/').rev().map(str::to_string));
                    continue;
                }
                Some(Node::File { .. }) if !is_last => {
                    let component = walk.path().join(&part);
                    return Err(TreeError::NotADirectory { path: path.to_string(), component: component.to_string() });
                }
                _ => {}
            }
            walk.names.push(part);
            walk.ids.extend(here);
        }
        Ok(walk)
    }
}

static ROOT_ATTRS: Attrs = Attrs::ROOT;

/// One entry as [`Tree::iter`] yields it.
#[derive(Debug, Clone)]
pub struct Entry<'t> {
    pub path: ImagePath,
    pub node: &'t Node,
    pub attrs: &'t Attrs,
}

/// A depth-first walk over a [`Tree`] in path order.
pub struct Iter<'t> {
    tree: &'t Tree,
    /// The path of the directory whose children the top of `stack` yields.
    names: Vec<String>,
    stack: Vec<std::collections::btree_map::Iter<'t, String, Id>>,
    started: bool,
}

impl<'t> Iterator for Iter<'t> {
    type Item = Entry<'t>;

    fn next(&mut self) -> Option<Entry<'t>> {
        let tree = self.tree;
        if !self.started {
            self.started = true;
            self.stack.push(tree.slot(ROOT).children.iter());
            return Some(Entry { path: ImagePath::root(), node: &tree.slot(ROOT).node, attrs: tree.attrs_of(ROOT) });
        }
        loop {
            let depth = self.stack.len().checked_sub(1)?;
            let Some((name, &id)) = self.stack[depth].next() else {
                self.stack.pop();
                self.names.truncate(self.stack.len().saturating_sub(1));
                continue;
            };
            let mut names = self.names.clone();
            names.push(name.clone());
            let slot = tree.slot(id);
            if !slot.children.is_empty() {
                self.names = names.clone();
                self.stack.push(slot.children.iter());
            }
            return Some(Entry { path: ImagePath::from_components(names), node: &slot.node, attrs: tree.attrs_of(id) });
        }
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
        let paths: Vec<String> = t.iter().map(|e| e.path.to_string()).collect();
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
            t.iter().filter(|e| matches!(e.node, Node::Dir { .. })).map(|e| e.path.to_string()).collect();
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
