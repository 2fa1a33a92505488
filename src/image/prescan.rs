//! Scanning a layer while it downloads. The bytes going into the store are copied, in bounded
//! chunks, to a second thread that decompresses and reads the tar, so flattening finds the
//! layer's entry list already recorded and the build reads each layer only once more (to
//! pack it). The record is written only after the blob's digest was verified; if the scan
//! fails (a hostile or unreadable layer), nothing is recorded and flattening reports the
//! problem as usual. The same pass hashes the uncompressed stream: the layer's diff_id,
//! which the pull then checks against the config without reading the layer again.

use std::io::{self, BufReader, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::diff_ids::{self, Hashing};
use super::flatten::{ENTRIES_RECORD, LayerId, decompress, scan};
use crate::digest::Sha256Digest;
use crate::store::Store;

/// Chunks in flight between the download and the scanner (each at most one read's worth).
const CHUNKS_IN_FLIGHT: usize = 16;

/// Passes reads through and sends a copy of each to the scanner, while it listens.
struct Tee<'r> {
    inner: &'r mut dyn Read,
    tx: Option<SyncSender<Vec<u8>>>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0
            && let Some(tx) = &self.tx
            && tx.send(buf[..n].to_vec()).is_err()
        {
            self.tx = None; // the scanner stopped; the download goes on
        }
        Ok(n)
    }
}

/// The scanner's side of the channel as a reader.
struct Chunks {
    rx: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(chunk) => (self.current, self.at) = (chunk, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Runs `store_blob` on `reader` (it must store the layer blob `digest`, verifying it) while
/// the same bytes are scanned; records the entries if both succeed.
pub fn store_and_scan<T, E>(
    store: &Store,
    digest: &Sha256Digest,
    reader: &mut dyn Read,
    store_blob: impl FnOnce(&mut dyn Read) -> Result<T, E>,
) -> Result<T, E> {
    let (tx, rx) = sync_channel(CHUNKS_IN_FLIGHT);
    std::thread::scope(|s| {
        let scanner = s.spawn(move || {
            let chunks = Chunks { rx, current: Vec::new(), at: 0 };
            let id = LayerId { layer: 0, digest };
            let mut stream = Hashing::new(decompress(BufReader::with_capacity(1 << 20, chunks)).ok()?);
            let entries = scan(&mut stream, &id).ok()?;
            Some((entries, stream.finish().ok()?))
        });
        let stored = store_blob(&mut Tee { inner: reader, tx: Some(tx) });
        let scanned = scanner.join().ok().flatten();
        if stored.is_ok()
            && let Some((entries, diff_id)) = scanned
        {
            diff_ids::record(store, digest, &diff_id);
            if let Ok(record) = serde_json::to_vec(&entries)
                && let Err(e) = store.write_derived(ENTRIES_RECORD, digest, &record)
            {
                tracing::debug!("cannot record the entries of layer {digest}: {e}");
            }
        }
        stored
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "etc/motd", &b"hi\n"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_stored_layer_gets_its_entries_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        let data = layer();
        let digest = Sha256Digest::of_bytes(&data);
        let stored = store_and_scan(&store, &digest, &mut &data[..], |r| store.write_blob(r, None, "layer"));
        assert_eq!(stored.unwrap().0, digest);
        let record = store.read_derived(ENTRIES_RECORD, &digest).expect("recorded");
        assert!(String::from_utf8_lossy(&record).contains("etc/motd"));
    }

    #[test]
    fn nothing_is_recorded_when_storing_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path())).unwrap();
        let data = layer();
        let wrong = Sha256Digest::of_bytes(b"something else");
        let expected = crate::store::Expected { digest: wrong, size: None };
        let stored = store_and_scan(&store, &wrong, &mut &data[..], |r| store.write_blob(r, Some(expected), "layer"));
        assert!(stored.is_err());
        assert_eq!(store.read_derived(ENTRIES_RECORD, &wrong), None);
    }
}
