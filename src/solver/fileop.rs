//! FileOps on the host: mkdir, mkfile, symlink, rm and copy actions become one new layer over
//! the op's base. The layer holds what the actions create (and whiteouts for what they
//! remove from the base), plus each parent directory as the base has it (so an existing
//! directory keeps its mode and owner). Paths resolve through the base's symlinks, inside the
//! image. Owners given by name are looked up in the `/etc/passwd` and `/etc/group` of the
//! filesystem being changed, as BuildKit's frontend means them.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use fledge_llb::pb;

use super::Value;
use super::context::{self, Excludes};
use crate::digest::Sha256Digest;
use crate::image::flatten::{ImageLayers, flatten};
use crate::paths::ImagePath;
use crate::rootfs::{Attrs, FileData, Node, Tree};
use crate::store::Store;
use fledge_llb::patterns::Includes;

/// Builds the op's layer and returns the new filesystem.
pub fn run(store: &Store, op: &pb::FileOp, inputs: &[Value]) -> Result<Value> {
    let first = op.actions.first().context("the file op has no actions")?;
    let base: Vec<Sha256Digest> = match first.input {
        -1 => Vec::new(),
        i => inputs.get(i as usize).context("a file action's input is out of range")?.layers("a file action")?.to_vec(),
    };
    for (i, action) in op.actions.iter().enumerate().skip(1) {
        if action.input != (inputs.len() + i - 1) as i64 {
            bail!("file actions that do not build on the previous one are not supported by the embedded engine yet");
        }
    }
    let base_layers = ImageLayers::from_digests(store, base.clone());
    let mut below = Tree::default();
    flatten(&base_layers, &mut below)?;
    let mut layer =
        Layer { store, below: &below, below_layers: &base_layers, tree: Tree::default(), sources: Vec::new() };
    for action in &op.actions {
        let source = match action.secondary_input {
            -1 => None,
            i => Some(inputs.get(i as usize).context("a copy source is out of range")?),
        };
        match action.action.as_ref().context("a file action without a body")? {
            pb::file_action::Action::Mkdir(mkdir) => layer.mkdir(mkdir)?,
            pb::file_action::Action::Mkfile(mkfile) => layer.mkfile(mkfile)?,
            pb::file_action::Action::Symlink(link) => layer.symlink(link)?,
            pb::file_action::Action::Copy(copy) => match source {
                Some(Value::Context { dir, excludes }) => layer.copy_from_context(dir, excludes, copy)?,
                Some(Value::Layers(layers)) => layer.copy_from_layers(layers, copy)?,
                None => bail!("a copy without a source"),
            },
            pb::file_action::Action::Rm(rm) => layer.rm(rm)?,
        }
    }
    let digest = layer.store()?;
    let mut layers = base;
    layers.push(digest);
    Ok(Value::Layers(layers))
}

/// A local directory (minus its `.dockerignore` patterns) as one layer, for bind mounts.
pub fn context_layer(store: &Store, context_dir: &Path, excludes: &[String]) -> Result<Sha256Digest> {
    let copy = pb::FileActionCopy {
        src: "/".into(),
        dest: "/".into(),
        dir_copy_contents: true,
        mode: -1,
        ..Default::default()
    };
    let action =
        pb::FileAction { input: -1, secondary_input: 0, output: 0, action: Some(pb::file_action::Action::Copy(copy)) };
    let op = pb::FileOp { actions: vec![action] };
    let local = Value::Context { dir: context_dir.to_path_buf(), excludes: excludes.to_vec() };
    match run(store, &op, &[local])? {
        Value::Layers(layers) => layers.last().copied().context("copying the context made no layer"),
        Value::Context { .. } => unreachable!("file ops make layers"),
    }
}

/// The layer being built.
struct Layer<'a> {
    store: &'a Store,
    below: &'a Tree,
    below_layers: &'a ImageLayers<'a>,
    tree: Tree,
    /// The filesystems copies read from (stages or images): their layers and flattened trees.
    /// File contents refer to the layers of all of them, in this order.
    sources: Vec<(Vec<Sha256Digest>, Tree)>,
}

/// Whether `path` is an archive `ADD` unpacks: a tar, plain or compressed, as BuildKit decides
/// it (the first entry reads).
fn is_archive(path: &Path) -> Result<bool> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let magic = std::io::BufRead::fill_buf(&mut file)?;
    if magic.starts_with(b"BZh") || magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        bail!(
            "{}: ADD cannot unpack bzip2 or xz archives in the embedded engine\n  = help: recompress it with gzip or zstd, or COPY it and unpack it in a RUN step",
            path.display()
        );
    }
    let Ok(tar) = crate::image::flatten::decompress(file) else { return Ok(false) };
    let mut archive = tar::Archive::new(tar);
    let first = archive.entries().ok().and_then(|mut e| e.next().map(|entry| entry.is_ok()));
    Ok(first == Some(true))
}

/// What a copy from the context walks with.
struct ContextWalk<'w> {
    context_dir: &'w Path,
    /// The copy's source, which its include and exclude patterns are relative to.
    root: &'w Path,
    /// `.dockerignore` (relative to the context).
    ignored: Excludes,
    /// `--exclude` (relative to the source).
    excludes: Excludes,
    includes: Includes,
    copy: &'w pb::FileActionCopy,
    attrs: &'w Option<Attrs>,
}

/// A whiteout: the OCI layer entry that removes `path` from the layers below.
fn whiteout(path: &ImagePath) -> Option<ImagePath> {
    let name = path.components().last()?;
    Some(path.parent()?.join(&format!(".wh.{name}")))
}

/// The id `name` has in a passwd or group file (`name:x:ID:...`), and the primary group
/// (fourth field) for passwd lines.
fn lookup_id(file: &str, name: &str) -> Option<(u32, Option<u32>)> {
    file.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields.get(3).and_then(|g| g.parse().ok()))))
            .flatten()
    })
}

fn image_path(path: &str) -> Result<ImagePath> {
    ImagePath::parse(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

impl Layer<'_> {
    /// The owner a `--chown` names, as BuildKit resolves it: a user alone gives the user's
    /// group too (its primary group when named, the same number when numeric), and a name the
    /// image does not know is root, with a warning (so both engines build the same files).
    fn owner(&self, chown: &Option<pb::ChownOpt>) -> Result<Option<Attrs>> {
        let Some(chown) = chown else { return Ok(None) };
        let unknown = |what: &str, name: &str, file: &str| {
            tracing::warn!("{what} {name:?} is not in the image's /etc/{file}: root (0) is used, as BuildKit does");
        };
        let named = |o: &Option<pb::UserOpt>| match o.as_ref().and_then(|o| o.user.as_ref()) {
            Some(pb::user_opt::User::ByName(named)) => Some(named.input),
            _ => None,
        };
        // A name read from no filesystem (the first step on scratch): BuildKit's error.
        if let Some(input) = [named(&chown.user), named(&chown.group)].into_iter().flatten().find(|i| *i < 0) {
            bail!("invalid user index: {input}");
        }
        let (mut uid, mut gid) = (0, 0);
        match chown.user.as_ref().and_then(|o| o.user.as_ref()) {
            None => {}
            Some(pb::user_opt::User::ById(id)) => (uid, gid) = (*id, *id),
            Some(pb::user_opt::User::ByName(named)) => match lookup_id(&self.read_etc("passwd")?, &named.name) {
                Some((id, group)) => (uid, gid) = (id, group.unwrap_or(id)),
                None => unknown("user", &named.name, "passwd"),
            },
        }
        match chown.group.as_ref().and_then(|o| o.user.as_ref()) {
            None => {}
            Some(pb::user_opt::User::ById(id)) => gid = *id,
            Some(pb::user_opt::User::ByName(named)) => match lookup_id(&self.read_etc("group")?, &named.name) {
                Some((id, _)) => gid = id,
                None => unknown("group", &named.name, "group"),
            },
        }
        Ok(Some(Attrs { uid, gid, xattrs: Vec::new() }))
    }

    /// `/etc/NAME` as the filesystem has it so far (empty when there is none).
    fn read_etc(&self, name: &str) -> Result<String> {
        let path = ImagePath::root().join("etc").join(name);
        let sources = self.source_layers();
        let (node, layers): (_, &dyn crate::rootfs::walk::LayerSource) = match self.tree.get(&path) {
            Some(node) => (Some(node), &sources),
            None => (self.below.resolve(&path, true).ok().and_then(|p| self.below.get(&p)), self.below_layers),
        };
        let Some(Node::File { data, .. }) = node else { return Ok(String::new()) };
        let bytes = crate::rootfs::walk::read_small(data, layers, 16 << 20)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The layers of every copy source, in the order file contents refer to them.
    fn source_layers(&self) -> ImageLayers<'_> {
        ImageLayers::from_digests(self.store, self.sources.iter().flat_map(|(l, _)| l.iter().copied()).collect())
    }

    /// Puts the parents of `path` into the layer, as the base has them (new ones 0755).
    fn parents(&mut self, path: &ImagePath) -> Result<()> {
        let mut current = ImagePath::root();
        for part in path.parent().iter().flat_map(|p| p.components().to_vec()) {
            current = current.join(&part);
            if self.tree.get(&current).is_some() {
                continue;
            }
            match self.below.get(&current) {
                Some(node @ Node::Dir { .. }) => {
                    self.tree.insert(&current, node.clone())?;
                    self.tree.set_attrs(&current, self.below.attrs(&current).clone());
                }
                Some(_) => bail!("cannot create {path}: {current} is not a directory"),
                None => {
                    self.tree.insert(&current, Node::Dir { mode: 0o755 })?;
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, path: &ImagePath, node: Node, attrs: Option<Attrs>) -> Result<()> {
        self.parents(path)?;
        if let Some(whiteout) = whiteout(path) {
            self.tree.remove(&whiteout); // made again after an rm in this step
        }
        self.tree.replace(path, node)?;
        if let Some(attrs) = attrs {
            self.tree.set_attrs(path, attrs);
        }
        Ok(())
    }

    /// BuildKit's mkdir: the path followed through symlinks (so `WORKDIR /link` keeps the
    /// link and makes what it points to); with parents, every missing directory gets the
    /// mode and owner.
    fn mkdir(&mut self, mkdir: &pb::FileActionMkDir) -> Result<()> {
        let path = self.resolve_all(&image_path(&mkdir.path)?, true)?;
        let (mode, owner) = (mkdir.mode as u32 & 0o777, self.owner(&mkdir.owner)?);
        if mkdir.make_parents {
            return self.mkdir_all(&path, mode, &owner);
        }
        match (path.parent(), self.node(&path)) {
            (_, Some(_)) => Ok(()), // exists: left as it is
            (Some(parent), None) if !matches!(self.node(&parent), Some(Node::Dir { .. })) => {
                bail!("mkdir {}: the parent directory does not exist", mkdir.path)
            }
            _ => self.put(&path, Node::Dir { mode }, owner),
        }
    }

    fn mkfile(&mut self, mkfile: &pb::FileActionMkFile) -> Result<()> {
        let path = self.resolve_all(&image_path(&mkfile.path)?, false)?;
        let node = Node::File { mode: mkfile.mode as u32 & 0o7777, data: FileData::Bytes(mkfile.data.clone().into()) };
        self.put(&path, node, self.owner(&mkfile.owner)?)
    }

    fn symlink(&mut self, link: &pb::FileActionSymlink) -> Result<()> {
        let path = self.resolve_all(&image_path(&link.newpath)?, false)?;
        self.put(&path, Node::Symlink { target: link.oldpath.clone() }, self.owner(&link.owner)?)
    }

    /// Removes a path (or the names a wildcard in its last component matches): from this
    /// layer if it made them, from the base by whiteouts.
    fn rm(&mut self, rm: &pb::FileActionRm) -> Result<()> {
        let path = self.resolve_all(&image_path(&rm.path)?, false)?;
        let name = path.components().last().cloned().unwrap_or_default();
        let targets: Vec<ImagePath> = match path.parent() {
            Some(parent) if rm.allow_wildcard && name.contains(['*', '?', '[']) => {
                let depth = path.components().len();
                let mut found: Vec<ImagePath> = [self.below, &self.tree]
                    .iter()
                    .flat_map(|tree| tree.descendants(&parent))
                    .filter(|p| p.components().len() == depth && !p.components()[depth - 1].starts_with(".wh."))
                    .filter(|p| context::glob_match(&name, &p.components()[depth - 1]))
                    .collect();
                found.sort();
                found.dedup();
                found
            }
            _ => vec![path.clone()],
        };
        let exists = |layer: &Self, p: &ImagePath| {
            layer.tree.get(p).is_some()
                || (layer.below.get(p).is_some() && whiteout(p).is_none_or(|w| layer.tree.get(&w).is_none()))
        };
        let targets: Vec<ImagePath> = targets.into_iter().filter(|p| exists(self, p)).collect();
        if targets.is_empty() && !rm.allow_not_found {
            bail!("rm {}: no such file or directory", rm.path);
        }
        for target in targets {
            if target.parent().is_none() {
                bail!("rm {}: the root cannot be removed", rm.path);
            }
            self.tree.remove(&target);
            if self.below.get(&target).is_some() {
                let whiteout = whiteout(&target).expect("not the root");
                self.parents(&whiteout)?;
                self.tree.replace(&whiteout, Node::File { mode: 0, data: FileData::Bytes(Vec::new().into()) })?;
            }
        }
        Ok(())
    }

    /// The entry at `path` as the filesystem is after this layer so far: the layer's own,
    /// else the base's unless the layer removed it or a parent of it.
    fn node(&self, path: &ImagePath) -> Option<&Node> {
        if let Some(node) = self.tree.get(path) {
            return Some(node);
        }
        let mut at = path.clone();
        loop {
            if whiteout(&at).is_some_and(|w| self.tree.get(&w).is_some()) {
                return None;
            }
            match at.parent() {
                Some(parent) if self.tree.get(&parent).is_some_and(|n| !matches!(n, Node::Dir { .. })) => return None,
                Some(parent) => at = parent,
                None => return self.below.get(path),
            }
        }
    }

    /// `path` with the symlinks of every component followed (and of the last one when
    /// `follow_last`), as the filesystem is after this layer so far, confined to the image.
    fn resolve_all(&self, path: &ImagePath, follow_last: bool) -> Result<ImagePath> {
        let mut pending: Vec<String> = path.components().iter().rev().cloned().collect();
        let (mut done, mut followed) = (ImagePath::root(), 0);
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    done = done.parent().unwrap_or_else(ImagePath::root);
                    continue;
                }
                _ => {}
            }
            let here = done.join(&part);
            match self.node(&here) {
                Some(Node::Symlink { target }) if follow_last || !pending.is_empty() => {
                    followed += 1;
                    if followed > 255 {
                        bail!("cannot resolve {path}: too many levels of symbolic links");
                    }
                    if target.starts_with('/') {
                        done = ImagePath::root();
                    }
                    pending.extend(target.split('/').rev().map(str::to_string));
                }
                Some(Node::Dir { .. }) | None => done = here,
                Some(_) if pending.is_empty() => done = here,
                Some(_) => bail!("cannot resolve {path}: {here} is not a directory"),
            }
        }
        Ok(done)
    }

    /// Creates the directories of the resolved `path` that are missing, with `mode` and
    /// `attrs` (fsutil's `MkdirAll`, which BuildKit's copies use).
    fn mkdir_all(&mut self, path: &ImagePath, mode: u32, attrs: &Option<Attrs>) -> Result<()> {
        let mut current = ImagePath::root();
        for part in path.components() {
            current = current.join(part);
            match self.node(&current) {
                Some(Node::Dir { .. }) => {}
                Some(_) => bail!("mkdir {current}: not a directory"),
                None => self.put(&current, Node::Dir { mode }, attrs.clone())?,
            }
        }
        Ok(())
    }

    /// Where a copy of the source named `name` lands, with the directories it needs made,
    /// as BuildKit's copy decides it: `dest` (its directory part, all of it when it ends with
    /// `/`, made first) is followed through symlinks; a source goes inside it when it is an
    /// existing directory (a directory source too when its contents are not what is
    /// copied), else replaces it. New directories are 0755, or the octal `--chmod`, owned
    /// as `--chown` says.
    fn prepare_target(
        &mut self,
        copy: &pb::FileActionCopy,
        name: &str,
        src_is_dir: bool,
        attrs: &Option<Attrs>,
    ) -> Result<ImagePath> {
        let mode = if copy.mode_str.is_empty() && copy.mode >= 0 { copy.mode as u32 & 0o7777 } else { 0o755 };
        let written = image_path(&copy.dest)?;
        let first =
            if copy.dest.ends_with('/') { written.clone() } else { written.parent().unwrap_or_else(ImagePath::root) };
        let first = self.resolve_all(&first, true)?;
        self.mkdir_all(&first, mode, attrs)?;
        let mut dest = self.resolve_all(&written, true)?;
        let existing = self.node(&dest).cloned();
        let dest_is_dir = matches!(existing, Some(Node::Dir { .. }));
        if (!copy.dir_copy_contents && src_is_dir && existing.is_some()) || (!src_is_dir && dest_is_dir) {
            dest = dest.join(name);
        }
        let made = if copy.dir_copy_contents && src_is_dir && existing.is_none() {
            dest.clone()
        } else {
            dest.parent().unwrap_or_else(ImagePath::root)
        };
        self.mkdir_all(&made, mode, attrs)?;
        if !src_is_dir && matches!(self.node(&dest), Some(Node::Dir { .. })) {
            bail!("cannot replace the directory {dest} with a file");
        }
        Ok(dest)
    }

    /// The root of a directory copy at `dest`: made with the source's mode if missing, left
    /// as it is if there.
    fn copy_root_dir(&mut self, dest: &ImagePath, mode: u32, attrs: &Option<Attrs>) -> Result<()> {
        if self.node(dest).is_none() {
            self.put(dest, Node::Dir { mode }, attrs.clone())?;
        }
        Ok(())
    }

    /// The mode a copied entry gets: `--chmod` (symbolic or octal) applied to its own.
    fn mode(copy: &pb::FileActionCopy, mode: u32, is_dir: bool) -> Result<u32> {
        if !copy.mode_str.is_empty() {
            return super::chmod::apply(&copy.mode_str, mode, is_dir);
        }
        Ok(if copy.mode >= 0 { copy.mode as u32 & 0o7777 } else { mode & 0o7777 })
    }

    fn copy_from_context(&mut self, context_dir: &Path, excludes: &[String], copy: &pb::FileActionCopy) -> Result<()> {
        let copy_excludes = Excludes::new(&copy.exclude_patterns);
        for required in &copy.required_paths {
            let required = Path::new(required.trim_start_matches('/'));
            if context_dir.join(crate::confined::resolve(context_dir, required, false)?).symlink_metadata().is_err() {
                bail!("\"{}\" not found in the build context", required.display());
            }
        }
        // What .dockerignore leaves out is not in the context at all (BuildKit never
        // receives it): a source naming only that is not found.
        let ignored = Excludes::new(excludes);
        let mut sources = context::matches(context_dir, &copy.src, copy.allow_empty_wildcard)?;
        sources.retain(|s| {
            !ignored.excludes(&s.to_string_lossy()) || context::keeps_something_below(context_dir, s, &ignored)
        });
        if sources.is_empty() && !(copy.allow_empty_wildcard && copy.src.contains(['*', '?', '['])) {
            bail!(
                "failed to compute cache key: \"{}\" not found in the build context",
                copy.src.trim_start_matches('/')
            );
        }
        let attrs = self.owner(&copy.owner)?;
        for named in sources {
            // Read where the copy reads (a followed link, inside the context); named as given.
            let source = context::followed(context_dir, &named, copy.follow_symlink)?;
            let full = context_dir.join(&source);
            let meta = std::fs::symlink_metadata(&full)
                .with_context(|| format!("cannot read {} in the build context", source.display()))?;
            let name = named.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            // Names of one inode in one source stay one inode (BuildKit's copier links them).
            let mut inodes = HashMap::new();
            if meta.is_dir() {
                let dest = self.prepare_target(copy, &name, true, &attrs)?;
                self.copy_root_dir(&dest, Self::mode(copy, meta.mode(), true)?, &attrs)?;
                let walk = ContextWalk {
                    context_dir,
                    root: &source,
                    ignored: Excludes::new(excludes),
                    excludes: Excludes::new(&copy.exclude_patterns),
                    includes: Includes::new(&copy.include_patterns),
                    copy,
                    attrs: &attrs,
                };
                self.copy_dir(&walk, &source, &dest, &mut inodes)?;
            } else if copy_excludes.excludes(&name) {
                continue;
            } else if copy.attempt_unpack_docker_compatibility && meta.is_file() && is_archive(&full)? {
                let dest = self.resolve_all(&image_path(&copy.dest)?, true)?;
                self.unpack(&full, &dest, &attrs)?;
            } else {
                let dest = self.prepare_target(copy, &name, false, &attrs)?;
                self.copy_entry(&full, &meta, &dest, copy, &attrs, &mut inodes)?;
            }
        }
        Ok(())
    }

    /// Copies the context directory `dir` into `dest`, minus what the walk's patterns leave
    /// out (include patterns are relative to the copy's source, as `COPY --parents` makes them).
    fn copy_dir(
        &mut self,
        walk: &ContextWalk<'_>,
        dir: &Path,
        dest: &ImagePath,
        inodes: &mut HashMap<(u64, u64), PathBuf>,
    ) -> Result<()> {
        let mut children: Vec<_> = std::fs::read_dir(walk.context_dir.join(dir))?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let relative = dir.join(child.file_name());
            let below_root = relative.strip_prefix(walk.root).unwrap_or(&relative).to_string_lossy().into_owned();
            let ignored = walk.ignored.excludes(&relative.to_string_lossy());
            // An ignored directory with something taken back below it is walked (and made, as
            // the parent of what is in), as BuildKit's context transfer does.
            if (ignored && !context::keeps_something_below(walk.context_dir, &relative, &walk.ignored))
                || walk.excludes.excludes(&below_root)
            {
                continue;
            }
            let included = walk.includes.includes(&below_root);
            let target = dest.join(&child.file_name().to_string_lossy());
            let meta = child.path().symlink_metadata()?;
            if meta.is_dir() && (included || walk.includes.may_include_below(&below_root)) {
                let mode = Self::mode(walk.copy, meta.mode(), true)?;
                if included {
                    self.put(&target, Node::Dir { mode }, walk.attrs.clone())?;
                }
                let existed = self.node(&target).is_some();
                self.copy_dir(walk, &relative, &target, inodes)?;
                // A directory made only as the parent of what was copied (COPY --parents)
                // has the source's mode, as fsutil's createParentDirs gives it.
                if !included && !existed && self.tree.get(&target).is_some() {
                    self.put(&target, Node::Dir { mode }, walk.attrs.clone())?;
                }
            } else if !meta.is_dir() && included {
                self.copy_entry(&child.path(), &meta, &target, walk.copy, walk.attrs, inodes)?;
            }
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        full: &Path,
        meta: &std::fs::Metadata,
        dest: &ImagePath,
        copy: &pb::FileActionCopy,
        attrs: &Option<Attrs>,
        inodes: &mut HashMap<(u64, u64), PathBuf>,
    ) -> Result<()> {
        let kind = meta.file_type();
        let node = if kind.is_symlink() {
            Node::Symlink { target: std::fs::read_link(full)?.to_string_lossy().into_owned() }
        } else if kind.is_file() {
            // Equal host data makes the packers write hard links.
            let first = inodes.entry((meta.dev(), meta.ino())).or_insert_with(|| full.to_path_buf());
            Node::File { mode: Self::mode(copy, meta.mode(), false)?, data: FileData::Host(first.clone()) }
        } else {
            bail!("{}: only files, directories and symlinks can be copied from the build context", full.display());
        };
        self.put(dest, node, attrs.clone())
    }

    /// The copy source with `layers` (flattened on first use), and where its layers start in
    /// the list file contents refer to.
    fn source(&mut self, layers: &[Sha256Digest]) -> Result<(usize, u32)> {
        let mut offset = 0;
        for (n, (known, _)) in self.sources.iter().enumerate() {
            if known == layers {
                return Ok((n, offset));
            }
            offset += known.len() as u32;
        }
        let mut tree = Tree::default();
        flatten(&ImageLayers::from_digests(self.store, layers.to_vec()), &mut tree)?;
        self.sources.push((layers.to_vec(), tree));
        Ok((self.sources.len() - 1, offset))
    }

    /// `ADD`'s unpacking: the archive's entries go into the directory `dest`, keeping their
    /// modes, and their owners unless `--chown` names one. The archive, decompressed, becomes
    /// a copy source of its own (kept in the store like a layer).
    fn unpack(&mut self, archive: &Path, dest: &ImagePath, attrs: &Option<Attrs>) -> Result<()> {
        let file = std::io::BufReader::new(std::fs::File::open(archive)?);
        let mut tar = crate::image::flatten::decompress(file)?;
        let (digest, _) = self.store.write_blob(&mut tar, None, "an archive ADD unpacks")?;
        let (n, offset) = self.source(&[digest]).with_context(|| format!("cannot unpack {}", archive.display()))?;
        // An existing directory keeps its mode (ADD x.tar /tmp/ leaves /tmp 1777).
        self.mkdir_all(dest, 0o755, attrs)?;
        let entries = Self::entries(&self.sources[n].1, &ImagePath::root());
        for (path, node, original) in entries.into_iter().skip(1) {
            let target = path.components().iter().fold(dest.clone(), |p, c| p.join(c));
            self.put(&target, Self::relocated(node, offset), Some(attrs.clone().unwrap_or(original)))?;
        }
        Ok(())
    }

    /// `src` and, for a directory, everything below it, with their attributes.
    fn entries(source: &Tree, src: &ImagePath) -> Vec<(ImagePath, Node, Attrs)> {
        let Some(node) = source.get(src) else { return Vec::new() };
        let mut entries = vec![(src.clone(), node.clone(), source.attrs(src).clone())];
        if matches!(node, Node::Dir { .. }) {
            entries.extend(source.descendants(src).into_iter().map(|path| {
                let node = source.get(&path).cloned().expect("listed");
                let attrs = source.attrs(&path).clone();
                (path, node, attrs)
            }));
        }
        entries
    }

    /// A copy source's node, its contents referring to that source's place among all of them.
    fn relocated(node: Node, offset: u32) -> Node {
        match node {
            Node::File { mode, data: FileData::Layer { layer, index, size } } => {
                Node::File { mode, data: FileData::Layer { layer: layer + offset, index, size } }
            }
            other => other,
        }
    }

    /// Copies from another filesystem (a stage or an image): its flattened tree supplies the
    /// entries, its layers the file contents.
    fn copy_from_layers(&mut self, layers: &[Sha256Digest], copy: &pb::FileActionCopy) -> Result<()> {
        let (n, offset) = self.source(layers)?;
        let source = &self.sources[n].1;
        let src = source.resolve(&image_path(&copy.src)?, copy.follow_symlink)?;
        let node =
            source.get(&src).cloned().with_context(|| format!("\"{}\" not found in the source stage", copy.src))?;
        // Named as the source was written, not as what a link there points to.
        let name = image_path(&copy.src)?.components().last().cloned().unwrap_or_default();
        let is_dir = matches!(node, Node::Dir { .. });
        let entries = Self::entries(source, &src);
        let attrs = self.owner(&copy.owner)?;
        let into = self.prepare_target(copy, &name, is_dir, &attrs)?;
        for (path, node, original) in entries {
            let relative = &path.components()[src.components().len()..];
            let target = relative.iter().fold(into.clone(), |p, c| p.join(c));
            let node = match Self::relocated(node, offset) {
                Node::File { mode, data } => Node::File { mode: Self::mode(copy, mode, false)?, data },
                Node::Dir { mode } if relative.is_empty() => {
                    self.copy_root_dir(
                        &target,
                        Self::mode(copy, mode, true)?,
                        &Some(attrs.clone().unwrap_or(original)),
                    )?;
                    continue;
                }
                Node::Dir { mode } => Node::Dir { mode: Self::mode(copy, mode, true)? },
                other => other,
            };
            self.put(&target, node, Some(attrs.clone().unwrap_or(original)))?;
        }
        Ok(())
    }

    /// Writes the layer as a tar blob into the store.
    fn store(&self) -> Result<Sha256Digest> {
        let tmp = tempfile::Builder::new().prefix("layer-").tempfile_in(self.store.tmp_dir()?)?;
        let layers = self.source_layers();
        crate::rootfs::tar::write_tree(&self.tree, &layers, std::io::BufWriter::new(tmp.reopen()?), 0, &mut |_| {})?;
        let (digest, _) = self.store.write_blob(&mut tmp.reopen()?, None, "a file step's layer")?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_tar(files: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for path in files {
            let mut header = tar::Header::new_ustar();
            let dir = path.ends_with('/');
            header.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
            header.set_mode(if dir { 0o755 } else { 0o644 });
            header.set_size(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            builder.append_data(&mut header, path, &[][..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn rm(path: &str, allow_not_found: bool, allow_wildcard: bool, input: i64) -> pb::FileAction {
        pb::FileAction {
            input,
            secondary_input: -1,
            output: -1,
            action: Some(pb::file_action::Action::Rm(pb::FileActionRm {
                path: path.into(),
                allow_not_found,
                allow_wildcard,
            })),
        }
    }

    /// The names in a stored layer, in order.
    fn names(store: &Store, layer: &Sha256Digest) -> Vec<String> {
        let mut archive = tar::Archive::new(store.open_blob(layer).unwrap());
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    #[test]
    fn rm_whites_out_what_the_base_has_and_refuses_what_is_missing() {
        let state = tempfile::tempdir().unwrap();
        let store = Store::open(Some(state.path())).unwrap();
        let base = layer_tar(&["a/", "a/x.log", "a/y.log", "a/keep", "b"]);
        let (base, _) = store.write_blob(&mut &base[..], None, "test").unwrap();
        let inputs = [Value::Layers(vec![base])];
        let op = pb::FileOp {
            actions: vec![rm("/b", false, false, 0), rm("/a/*.log", false, true, 1), rm("/gone", true, false, 2)],
        };
        let Value::Layers(layers) = run(&store, &op, &inputs).unwrap() else { panic!() };
        assert_eq!(layers.len(), 2);
        let mut got = names(&store, &layers[1]);
        got.sort();
        assert_eq!(got, ["./.wh.b", "a", "a/.wh.x.log", "a/.wh.y.log"].map(|n| n.trim_start_matches("./").to_string()));

        let missing = pb::FileOp { actions: vec![rm("/nope", false, false, 0)] };
        let error = run(&store, &missing, &inputs).unwrap_err();
        assert!(format!("{error:#}").contains("rm /nope: no such file or directory"), "{error:#}");
    }
}
