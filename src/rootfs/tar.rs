//! A tar writer for [`walk`](super::walk): the stream `mksquashfs -tar` (and later other
//! packers) reads. GNU long names and links, PAX `SCHILY.xattr.*` records, numeric owners,
//! device numbers, hard links, and one fixed mtime. The root directory is not written:
//! packers take its mode and owner as options.

use std::io::{self, Write};

use super::walk::{LayerSource, Payload, Sink, walk};
use super::{Attrs, Node, SpecialKind, Tree};
use crate::paths::ImagePath;

struct TarSink<W: Write> {
    builder: tar::Builder<W>,
    mtime: u64,
    data_bytes: u64,
}

fn relative(path: &ImagePath) -> String {
    path.components().join("/")
}

impl<W: Write> Sink for TarSink<W> {
    fn entry(&mut self, path: &ImagePath, node: &Node, attrs: &Attrs, payload: Payload<'_>) -> io::Result<()> {
        if path.is_root() {
            return Ok(());
        }
        let name = relative(path);
        if !attrs.xattrs.is_empty() {
            let keys: Vec<String> = attrs.xattrs.iter().map(|(k, _)| format!("SCHILY.xattr.{k}")).collect();
            self.builder.append_pax_extensions(
                keys.iter().map(String::as_str).zip(attrs.xattrs.iter().map(|(_, v)| v.as_slice())),
            )?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mtime(self.mtime);
        h.set_uid(attrs.uid.into());
        h.set_gid(attrs.gid.into());
        h.set_size(0);
        match (node, payload) {
            (Node::Dir { mode }, _) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                self.builder.append_data(&mut h, &name, io::empty())
            }
            (Node::Symlink { target }, _) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                self.builder.append_link(&mut h, &name, target)
            }
            (Node::Special { kind, mode, major, minor }, _) => {
                h.set_entry_type(match kind {
                    SpecialKind::Char => tar::EntryType::Char,
                    SpecialKind::Block => tar::EntryType::Block,
                    SpecialKind::Fifo => tar::EntryType::Fifo,
                });
                h.set_mode(*mode);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                self.builder.append_data(&mut h, &name, io::empty())
            }
            (Node::File { mode, .. }, Payload::Link { to, .. }) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(*mode);
                self.builder.append_link(&mut h, &name, relative(to))
            }
            (Node::File { mode, .. }, Payload::Data { reader, size, .. }) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(size);
                self.data_bytes += size;
                self.builder.append_data(&mut h, &name, reader)
            }
            (Node::File { .. }, Payload::None) => unreachable!("walk always sends files with data or a link"),
        }
    }
}

/// Writes `tree` as a tar stream into `out`; returns the file bytes written.
pub fn write_tree<W: Write>(
    tree: &Tree,
    layers: &dyn LayerSource,
    out: W,
    mtime: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut sink = TarSink { builder: tar::Builder::new(out), mtime, data_bytes: 0 };
    walk(tree, layers, &mut sink, progress)?;
    sink.builder.into_inner()?.flush()?;
    Ok(sink.data_bytes)
}
