//! Streaming a [`Tree`] into an archive format. The walk fixes the order and the hard links,
//! so every writer (cpio, tar for mksquashfs, …) only encodes entries:
//!
//! 1. every entry whose bytes do not come from an image layer, in path order (so each
//!    directory comes before what it holds);
//! 2. files whose bytes are in image layers, layer by layer in stream order, so each layer is
//!    decompressed once, front to back, and never held in memory.
//!
//! Files with the same data and mode are one inode: the first written carries the bytes, the
//! others are links to it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek};

use super::tree::{Attrs, Entry, FileData, Node, Tree};
use crate::interrupt;
use crate::paths::ImagePath;

/// What accompanies an entry.
pub enum Payload<'a> {
    /// Directories, symlinks and special files.
    None,
    /// A regular file's bytes, exactly `size` of them; `links` names share this inode.
    Data { reader: &'a mut dyn Read, size: u64, links: u32 },
    /// Another name for the file first written at `to`.
    Link { to: &'a ImagePath, links: u32 },
}

/// An archive format being written.
pub trait Sink {
    fn entry(&mut self, path: &ImagePath, node: &Node, attrs: &Attrs, payload: Payload<'_>) -> io::Result<()>;
}

/// Image layers as decompressed tar streams (for `FileData::Layer`).
pub trait LayerSource {
    fn open(&self, layer: u32) -> io::Result<Box<dyn Read + '_>>;
}

/// The bytes of a small file (`/etc/passwd` and the like): at most `limit` of them.
pub fn read_small(data: &FileData, layers: &dyn LayerSource, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match data {
        FileData::Bytes(b) => bytes.extend_from_slice(&b[..b.len().min(limit as usize)]),
        FileData::Host(path) => {
            File::open(path)?.take(limit).read_to_end(&mut bytes)?;
        }
        FileData::Layer { layer, index, .. } => {
            let mut archive = tar::Archive::new(layers.open(*layer)?);
            let entry = archive.entries()?.nth(*index as usize).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, format!("layer {layer} ended before entry {index}"))
            })?;
            entry?.take(limit).read_to_end(&mut bytes)?;
        }
    }
    Ok(bytes)
}

/// For trees without image layers.
pub struct NoLayers;

impl LayerSource for NoLayers {
    fn open(&self, layer: u32) -> io::Result<Box<dyn Read + '_>> {
        Err(io::Error::other(format!("the tree refers to image layer {layer}, but no image was given")))
    }
}

type Group<'t> = (&'t FileData, u32);
type Names<'t> = Vec<(ImagePath, &'t Node, &'t Attrs)>;

/// Streams `tree` into `sink`; `progress` receives file bytes as they pass.
pub fn walk(
    tree: &Tree,
    layers: &dyn LayerSource,
    sink: &mut dyn Sink,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut links: HashMap<Group<'_>, u32> = HashMap::new();
    for Entry { node, .. } in tree.iter() {
        interrupt::check()?;
        if let Node::File { mode, data } = node
            && data.linkable()
        {
            *links.entry((data, *mode)).or_insert(0) += 1;
        }
    }
    let mut first: HashMap<Group<'_>, ImagePath> = HashMap::new();
    let mut from_layers: BTreeMap<(u32, u64), Names<'_>> = BTreeMap::new();

    for Entry { path, node, attrs } in tree.iter() {
        interrupt::check()?;
        let Node::File { mode, data } = node else {
            sink.entry(&path, node, attrs, Payload::None)?;
            continue;
        };
        let group = (data, *mode);
        let count = links.get(&group).copied().unwrap_or(1);
        if let Some(to) = first.get(&group) {
            sink.entry(&path, node, attrs, Payload::Link { to, links: count })?;
            continue;
        }
        match data {
            FileData::Layer { layer, index, .. } => {
                from_layers.entry((*layer, *index)).or_default().push((path, node, attrs));
                continue;
            }
            FileData::Bytes(bytes) => {
                let mut reader = &bytes[..];
                sink.entry(
                    &path,
                    node,
                    attrs,
                    Payload::Data { reader: &mut reader, size: bytes.len() as u64, links: 1 },
                )?;
            }
            FileData::Host(host) => {
                let context = |e: io::Error| interrupt::annotate(e, host.display());
                let file = File::open(host).map_err(context)?;
                let size = file.metadata().map_err(context)?.len();
                let mut reader = Exact { inner: file.take(size), left: size, progress: &mut *progress };
                sink.entry(&path, node, attrs, Payload::Data { reader: &mut reader, size, links: count })
                    .map_err(context)?;
            }
        }
        if count > 1 {
            first.insert(group, path);
        }
    }

    let mut by_layer: BTreeMap<u32, Vec<(u64, Names<'_>)>> = BTreeMap::new();
    for ((layer, index), names) in from_layers {
        by_layer.entry(layer).or_default().push((index, names));
    }
    for (layer, wanted) in by_layer {
        let mut archive = tar::Archive::new(layers.open(layer)?);
        let mut wanted = wanted.into_iter().peekable();
        for (index, entry) in archive.entries()?.enumerate() {
            let Some((next, _)) = wanted.peek() else { break };
            if *next != index as u64 {
                continue;
            }
            let (_, names) = wanted.next().expect("peeked");
            let mut entry = entry?;
            emit_layer_file(sink, &mut entry, &names, &links, &mut first, progress)?;
        }
        if let Some((index, names)) = wanted.next() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("layer {layer} ended before entry {index} ({})", names[0].0),
            ));
        }
    }
    Ok(())
}

/// Writes the names that want one layer entry's bytes. Names with different modes are
/// different inodes; the entry can be read only once, so it is spooled to a temporary file
/// in that (rare) case.
fn emit_layer_file<'t>(
    sink: &mut dyn Sink,
    entry: &mut dyn Read,
    names: &[(ImagePath, &'t Node, &'t Attrs)],
    links: &HashMap<Group<'t>, u32>,
    first: &mut HashMap<Group<'t>, ImagePath>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut spool: Option<File> = None;
    if names.iter().any(|(_, n, _)| *n != names[0].1) {
        let mut file = tempfile::tempfile()?;
        io::copy(entry, &mut file)?;
        spool = Some(file);
    }
    for (path, node, attrs) in names {
        let Node::File { mode, data } = node else { unreachable!("only files are queued") };
        let FileData::Layer { size, .. } = data else { unreachable!("only layer data is queued") };
        let group = (data, *mode);
        let count = links.get(&group).copied().unwrap_or(1);
        if let Some(to) = first.get(&group) {
            sink.entry(path, node, attrs, Payload::Link { to, links: count })?;
            continue;
        }
        let source: &mut dyn Read = match spool.as_mut() {
            Some(file) => {
                file.rewind()?;
                file
            }
            None => entry,
        };
        let mut reader = Exact { inner: source.take(*size), left: *size, progress: &mut *progress };
        sink.entry(path, node, attrs, Payload::Data { reader: &mut reader, size: *size, links: count })?;
        // Later names of this group become links; other groups read the spool.
        first.insert(group, path.clone());
    }
    Ok(())
}

/// Yields exactly `left` bytes or fails (a file that shrank while packing), reporting progress
/// and honouring Ctrl-C.
struct Exact<'p, R> {
    inner: R,
    left: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        interrupt::check()?;
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was being packed"));
        }
        self.left -= n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}
