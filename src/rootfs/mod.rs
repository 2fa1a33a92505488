//! An image filesystem described in memory (paths, modes, link targets, where file bytes come
//! from) and never materialised on the host. Packers stream it into cpio, squashfs, etc., so
//! ownership is always root and nothing depends on the host's users or umask.

pub mod limits;
pub mod tar;
mod tree;
pub mod walk;

pub use tree::{Attrs, Entry, FileData, Node, SpecialKind, Tree, TreeError};
