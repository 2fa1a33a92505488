//! LZ4 in the legacy frame format (`lz4 -l`), the only LZ4 framing the kernel's initramfs
//! unpacker understands: magic `0x184C2102`, then blocks of at most 8 MiB of input, each a
//! little-endian compressed size followed by a raw LZ4 block. Blocks compress in parallel.

use std::io::{self, Write};

use lz4::block::{CompressionMode, compress};

use super::parallel::map_blocks;

const MAGIC: u32 = 0x184C_2102;
const BLOCK: usize = 8 << 20;

pub struct Lz4Legacy<W: Write> {
    out: W,
    level: u32,
    threads: usize,
    pending: Vec<u8>,
    header_written: bool,
}

impl<W: Write> Lz4Legacy<W> {
    pub fn new(out: W, level: u32) -> Self {
        Self { out, level, threads: super::threads(), pending: Vec::new(), header_written: false }
    }

    fn mode(&self) -> CompressionMode {
        // As the lz4 tool: levels 1-2 are the fast compressor, 3-12 the HC compressor.
        if self.level >= 3 { CompressionMode::HIGHCOMPRESSION(self.level as i32) } else { CompressionMode::DEFAULT }
    }

    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        if !self.header_written {
            self.out.write_all(&MAGIC.to_le_bytes())?;
            self.header_written = true;
        }
        let blocks: Vec<&[u8]> = data.chunks(BLOCK).collect();
        let mode = self.mode();
        let pieces = map_blocks(&blocks, self.threads, |_, block| compress(block, Some(mode), false))?;
        for piece in pieces {
            self.out.write_all(&(piece.len() as u32).to_le_bytes())?;
            self.out.write_all(&piece)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        let data = std::mem::take(&mut self.pending);
        self.emit(&data)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Lz4Legacy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let round = BLOCK * self.threads;
        if self.pending.len() >= round {
            let data = std::mem::take(&mut self.pending);
            self.emit(&data[..round])?;
            self.pending = data[round..].to_vec();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_decode_back() {
        let data: Vec<u8> = (0..(BLOCK + 4321)).map(|i| (i % 251) as u8).collect();
        let mut w = Lz4Legacy::new(Vec::new(), 9);
        w.write_all(&data).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), MAGIC);
        let mut pos = 4;
        let mut back = Vec::new();
        while pos < out.len() {
            let n = u32::from_le_bytes(out[pos..pos + 4].try_into().unwrap()) as usize;
            pos += 4;
            back.extend(lz4::block::decompress(&out[pos..pos + n], Some(BLOCK as i32)).unwrap());
            pos += n;
        }
        assert_eq!(back, data);
    }
}
