//! Chunks arriving on a channel (from a gRPC stream) as a blocking [`Read`], for code that
//! consumes them on a thread of its own: guest-init unpacking a tar, the host importing a
//! daemon's export into its store.

use std::io::Read;

use tokio::sync::mpsc;

pub struct ChannelReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl ChannelReader {
    pub fn new(chunks: mpsc::Receiver<Vec<u8>>) -> Self {
        Self { chunks, chunk: Vec::new(), at: 0 }
    }

    /// Takes and drops what is still to come, so a sender is never left waiting on a reader
    /// that stopped early.
    pub fn drain(&mut self) {
        while self.chunks.blocking_recv().is_some() {}
    }
}

impl Read for ChannelReader {
    /// Blocks until a chunk arrives; the end of the channel is the end of the data. Must not
    /// be called on an async runtime's thread.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => (self.chunk, self.at) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
