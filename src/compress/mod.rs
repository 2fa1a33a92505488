//! Stream compressors for initramfs archives, in the formats the Linux kernel's initramfs
//! unpacker reads: gzip (one member, compressed in parallel), zstd frames, and lz4 in the
//! *legacy* frame format (the kernel does not read the modern lz4 frame).
//!
//! Output depends only on the input, the compressor and the level, never on the number of
//! cores: parallel work is split into fixed-size blocks.

mod gzip;
pub(crate) mod lz4_legacy;
mod parallel;

use std::io::{self, Write};

use crate::config::{Compression, Compressor};

pub use gzip::ParallelGzip;
pub use lz4_legacy::Lz4Legacy;

/// A compressing writer; call [`Encoder::finish`] to write the trailer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::Encoder<'static, W>),
    Lz4(Lz4Legacy<W>),
}

/// Worker threads for compression: every core (output is the same whatever this returns).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, out: W) -> io::Result<Self> {
        let level = compression.level.unwrap_or(0);
        Ok(match compression.compressor {
            Compressor::None => Self::None(out),
            Compressor::Gzip => Self::Gzip(ParallelGzip::new(out, level)),
            Compressor::Zstd => {
                let mut enc = zstd::Encoder::new(out, level as i32)?;
                // Multi-threaded zstd output is identical for any worker count >= 1.
                enc.multithread(threads() as u32)?;
                enc.include_checksum(true)?;
                // Levels 20-22 default to a 128 MiB window, which the kernel must allocate to
                // unpack at boot; 8 MiB (level 19's window) keeps small guests bootable.
                if level > 19 {
                    enc.window_log(23)?;
                }
                Self::Zstd(enc)
            }
            Compressor::Lz4 => Self::Lz4(Lz4Legacy::new(out, level)),
            Compressor::Lz4hc | Compressor::Xz => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{} cannot compress an initramfs", compression.compressor),
                ));
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Self::None(w) => Ok(w),
            Self::Gzip(g) => g.finish(),
            Self::Zstd(z) => z.finish(),
            Self::Lz4(l) => l.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::None(w) => w.write(buf),
            Self::Gzip(g) => g.write(buf),
            Self::Zstd(z) => z.write(buf),
            Self::Lz4(l) => l.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::None(w) => w.flush(),
            Self::Gzip(g) => g.flush(),
            Self::Zstd(z) => z.flush(),
            Self::Lz4(l) => l.flush(),
        }
    }
}

/// File-name suffix of an initramfs compressed this way, e.g. `cpio.gz`.
pub fn initramfs_format(compressor: Compressor) -> &'static str {
    match compressor {
        Compressor::Gzip => "cpio.gz",
        Compressor::Zstd => "cpio.zst",
        Compressor::Lz4 => "cpio.lz4",
        _ => "cpio",
    }
}
