//! FileOps on the host: mkdir, mkfile, symlink and copy actions become one new layer over
//! the op's base. The layer holds what the actions create, plus each parent directory as
//! the base has it (so an existing directory keeps its mode and owner). Paths resolve through
//! the base's symlinks, inside the image.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use fledge_llb::pb;

use super::Value;
use super::context::{self, Excludes};
use crate::digest::Sha256Digest;
use crate::image::flatten::{ImageLayers, flatten};
use crate::paths::ImagePath;
use crate::rootfs::{Attrs, FileData, Node, Tree};
use crate::store::Store;

/// Builds the op's layer and returns the new filesystem.
pub fn run(store: &Store, context_dir: &Path, op: &pb::FileOp, inputs: &[Value]) -> Result<Value> {
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
    let mut layer = Layer { below: &below, tree: Tree::default(), source: None };
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
                Some(Value::Context { excludes }) => layer.copy_from_context(context_dir, excludes, copy)?,
                Some(Value::Layers(layers)) => layer.copy_from_layers(store, layers, copy)?,
                None => bail!("a copy without a source"),
            },
            pb::file_action::Action::Rm(_) => bail!("removing files is not supported by the embedded engine yet"),
        }
    }
    let digest = layer.store(store)?;
    let mut layers = base;
    layers.push(digest);
    Ok(Value::Layers(layers))
}

/// The layer being built.
struct Layer<'a> {
    below: &'a Tree,
    tree: Tree,
    /// The image a copy reads file contents from (its flattened tree and layers).
    source: Option<(Tree, Vec<Sha256Digest>)>,
}

fn owner(chown: &Option<pb::ChownOpt>) -> Result<Option<Attrs>> {
    let Some(chown) = chown else { return Ok(None) };
    let id = |opt: &Option<pb::UserOpt>| -> Result<u32> {
        match opt.as_ref().and_then(|o| o.user.as_ref()) {
            None => Ok(0),
            Some(pb::user_opt::User::ById(id)) => Ok(*id),
            Some(pb::user_opt::User::ByName(named)) => {
                bail!("owner {:?} by name is not supported by the embedded engine yet: use numeric ids", named.name)
            }
        }
    };
    Ok(Some(Attrs { uid: id(&chown.user)?, gid: id(&chown.group)?, xattrs: Vec::new() }))
}

fn image_path(path: &str) -> Result<ImagePath> {
    ImagePath::parse(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

impl Layer<'_> {
    /// `path` with its parent resolved through the base's symlinks.
    fn resolve(&self, path: &ImagePath) -> Result<ImagePath> {
        let Some(parent) = path.parent() else { return Ok(path.clone()) };
        let name = path.components().last().expect("not the root").clone();
        Ok(self.below.resolve(&parent, true)?.join(&name))
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
        self.tree.replace(path, node)?;
        if let Some(attrs) = attrs {
            self.tree.set_attrs(path, attrs);
        }
        Ok(())
    }

    fn mkdir(&mut self, mkdir: &pb::FileActionMkDir) -> Result<()> {
        let path = self.resolve(&image_path(&mkdir.path)?)?;
        if !mkdir.make_parents
            && path.parent().is_some_and(|p| self.below.get(&p).is_none() && self.tree.get(&p).is_none())
        {
            bail!("mkdir {}: the parent directory does not exist", mkdir.path);
        }
        if matches!(self.below.get(&path), Some(Node::Dir { .. })) {
            return Ok(()); // exists: mkdir -p leaves it as it is
        }
        self.put(&path, Node::Dir { mode: mkdir.mode as u32 & 0o7777 }, owner(&mkdir.owner)?)
    }

    fn mkfile(&mut self, mkfile: &pb::FileActionMkFile) -> Result<()> {
        let path = self.resolve(&image_path(&mkfile.path)?)?;
        let node = Node::File { mode: mkfile.mode as u32 & 0o7777, data: FileData::Bytes(mkfile.data.clone().into()) };
        self.put(&path, node, owner(&mkfile.owner)?)
    }

    fn symlink(&mut self, link: &pb::FileActionSymlink) -> Result<()> {
        let path = self.resolve(&image_path(&link.newpath)?)?;
        self.put(&path, Node::Symlink { target: link.oldpath.clone() }, owner(&link.owner)?)
    }

    /// Where a copied source lands: inside `dest` when it ends with `/`, names several
    /// sources, or is an existing directory; else at `dest` itself.
    fn destination(&self, dest: &str, name: &str, into_dir: bool) -> Result<ImagePath> {
        let dest_path = self.resolve(&image_path(dest)?)?;
        let is_dir = into_dir
            || dest.ends_with('/')
            || matches!(self.below.get(&dest_path), Some(Node::Dir { .. }))
            || matches!(self.tree.get(&dest_path), Some(Node::Dir { .. }));
        Ok(if is_dir { dest_path.join(name) } else { dest_path })
    }

    fn mode(copy: &pb::FileActionCopy, mode: u32) -> Result<u32> {
        if !copy.mode_str.is_empty() {
            bail!("--chmod={} (symbolic) is not supported by the embedded engine yet: use octal", copy.mode_str);
        }
        Ok(if copy.mode >= 0 { copy.mode as u32 & 0o7777 } else { mode & 0o7777 })
    }

    fn copy_from_context(&mut self, context_dir: &Path, excludes: &[String], copy: &pb::FileActionCopy) -> Result<()> {
        let mut patterns = excludes.to_vec();
        patterns.extend(copy.exclude_patterns.iter().cloned());
        let excludes = Excludes::new(&patterns);
        let sources = context::matches(context_dir, &copy.src, copy.allow_empty_wildcard)?;
        let several = sources.len() > 1 || copy.src.contains(['*', '?', '[']);
        let attrs = owner(&copy.owner)?;
        for source in sources {
            let full = context_dir.join(&source);
            let meta = if copy.follow_symlink { std::fs::metadata(&full) } else { std::fs::symlink_metadata(&full) }
                .with_context(|| format!("cannot read {} in the build context", source.display()))?;
            let name = source.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            if meta.is_dir() && copy.dir_copy_contents {
                let dest = self.resolve(&image_path(&copy.dest)?)?;
                let dest = if several { dest.join(&name) } else { dest };
                self.put(&dest, Node::Dir { mode: Self::mode(copy, meta.mode())? }, attrs.clone())?;
                self.copy_dir(context_dir, &source, &dest, &excludes, copy, &attrs)?;
            } else {
                let dest = self.destination(&copy.dest, &name, several)?;
                self.copy_entry(&full, &meta, &dest, copy, &attrs)?;
            }
        }
        Ok(())
    }

    fn copy_dir(
        &mut self,
        context_dir: &Path,
        dir: &Path,
        dest: &ImagePath,
        excludes: &Excludes,
        copy: &pb::FileActionCopy,
        attrs: &Option<Attrs>,
    ) -> Result<()> {
        let mut children: Vec<_> = std::fs::read_dir(context_dir.join(dir))?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let relative = dir.join(child.file_name());
            if excludes.excludes(&relative.to_string_lossy()) {
                continue;
            }
            let target = dest.join(&child.file_name().to_string_lossy());
            let meta = child.path().symlink_metadata()?;
            if meta.is_dir() {
                self.put(&target, Node::Dir { mode: Self::mode(copy, meta.mode())? }, attrs.clone())?;
                self.copy_dir(context_dir, &relative, &target, excludes, copy, attrs)?;
            } else {
                self.copy_entry(&child.path(), &meta, &target, copy, attrs)?;
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
    ) -> Result<()> {
        let kind = meta.file_type();
        let node = if kind.is_symlink() {
            Node::Symlink { target: std::fs::read_link(full)?.to_string_lossy().into_owned() }
        } else if kind.is_file() {
            Node::File { mode: Self::mode(copy, meta.mode())?, data: FileData::Host(full.to_path_buf()) }
        } else {
            bail!("{}: only files, directories and symlinks can be copied from the build context", full.display());
        };
        self.put(dest, node, attrs.clone())
    }

    /// Copies from another filesystem (a stage or an image): its flattened tree supplies the
    /// entries, its layers the file contents.
    fn copy_from_layers(&mut self, store: &Store, layers: &[Sha256Digest], copy: &pb::FileActionCopy) -> Result<()> {
        if self.source.as_ref().is_some_and(|(_, l)| l != layers) {
            bail!("copies from two different sources in one step are not supported by the embedded engine yet");
        }
        if self.source.is_none() {
            let mut tree = Tree::default();
            flatten(&ImageLayers::from_digests(store, layers.to_vec()), &mut tree)?;
            self.source = Some((tree, layers.to_vec()));
        }
        let (source, _) = self.source.as_ref().expect("set above");
        let src = source.resolve(&image_path(&copy.src)?, copy.follow_symlink)?;
        let node =
            source.get(&src).cloned().with_context(|| format!("\"{}\" not found in the source stage", copy.src))?;
        let name = src.components().last().cloned().unwrap_or_default();
        let attrs = owner(&copy.owner)?;
        let entries: Vec<(ImagePath, Node, Attrs)> = if matches!(node, Node::Dir { .. }) && copy.dir_copy_contents {
            let dest = self.resolve(&image_path(&copy.dest)?)?;
            let mut all = vec![(dest.clone(), node.clone(), source.attrs(&src).clone())];
            for path in source.descendants(&src) {
                let relative = &path.components()[src.components().len()..];
                let target = relative.iter().fold(dest.clone(), |p, c| p.join(c));
                all.push((target, source.get(&path).cloned().expect("listed"), source.attrs(&path).clone()));
            }
            all
        } else {
            vec![(self.destination(&copy.dest, &name, false)?, node, source.attrs(&src).clone())]
        };
        for (target, node, original) in entries {
            let node = match node {
                Node::File { mode, data } => Node::File { mode: Self::mode(copy, mode)?, data },
                Node::Dir { mode } => Node::Dir { mode: Self::mode(copy, mode)? },
                other => other,
            };
            self.put(&target, node, Some(attrs.clone().unwrap_or(original)))?;
        }
        Ok(())
    }

    /// Writes the layer as a tar blob into the store.
    fn store(&self, store: &Store) -> Result<Sha256Digest> {
        let tmp = tempfile::Builder::new().prefix("layer-").tempfile_in(store.root().join("tmp"))?;
        let source_layers = self.source.as_ref().map(|(_, l)| l.clone()).unwrap_or_default();
        let layers = ImageLayers::from_digests(store, source_layers);
        crate::rootfs::tar::write_tree(&self.tree, &layers, std::io::BufWriter::new(tmp.reopen()?), 0, &mut |_| {})?;
        let (digest, _) = store.write_blob(&mut tmp.reopen()?, None, "a file step's layer")?;
        Ok(digest)
    }
}
