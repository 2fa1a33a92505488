//! SHA-256 digests: parsing user-written checksums and hashing streams.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest. Displays as `sha256:<lowercase hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Hashes everything `reader` yields, in constant memory.
    pub fn of_reader(mut reader: impl Read) -> io::Result<(Self, u64)> {
        let mut hasher = HashingWriter::new(io::sink());
        let len = io::copy(&mut reader, &mut hasher)?;
        Ok((hasher.finish().0, len))
    }

    /// Hashes a file as `of_reader` would, without reading its holes: a sparse filesystem
    /// image is mostly holes, and reading one makes the kernel zero every page of it (a
    /// 4.5 GB ext4 image of 278 MB data took 12 s to read, most of it zeroing). Holes are
    /// hashed from a zero buffer instead. A file system without SEEK_DATA reads whole.
    pub fn of_sparse_file(file: &mut File) -> io::Result<(Self, u64)> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let len = file.metadata()?.len();
        let mut hasher = HashingWriter::new(io::sink());
        let mut at = 0;
        while at < len {
            // ENXIO: no data after `at`; any other error (no SEEK_DATA): read from `at`.
            let data = seek(file, at, libc::SEEK_DATA)
                .unwrap_or_else(|e| if e.raw_os_error() == Some(libc::ENXIO) { len } else { at });
            let mut zeros = data - at;
            while zeros > 0 {
                crate::interrupt::check()?;
                let n = zeros.min(ZEROS.len() as u64);
                io::Write::write_all(&mut hasher, &ZEROS[..n as usize])?;
                zeros -= n;
            }
            if data == len {
                break;
            }
            let hole = seek(file, data, libc::SEEK_HOLE).unwrap_or(len);
            file.seek(SeekFrom::Start(data))?;
            io::copy(&mut crate::interrupt::Checked((&mut *file).take(hole - data)), &mut hasher)?;
            at = hole;
        }
        let (digest, hashed, _) = hasher.finish();
        Ok((digest, hashed))
    }
}

/// `lseek` with a `whence` std does not offer (SEEK_DATA, SEEK_HOLE).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek only reads the descriptor, which `file` keeps open.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if at < 0 { Err(io::Error::last_os_error()) } else { Ok(at as u64) }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

/// Accepts `sha256:<hex>` or bare `<hex>` (64 hex digits, any case, surrounding space ignored).
impl FromStr for Sha256Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let hex_part = match s.split_once(':') {
            Some((algo, rest)) if algo.eq_ignore_ascii_case("sha256") => rest,
            Some((algo, _)) => {
                return Err(format!("unsupported digest algorithm `{algo}` (only sha256 is supported)"));
            }
            None => s,
        };
        let mut bytes = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut bytes).is_err() {
            return Err(format!(
                "`{s}` is not a sha256 checksum: expected 64 hex digits, optionally prefixed by `sha256:`"
            ));
        }
        Ok(Self(bytes))
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), written: 0 }
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Sha256Digest, u64, W) {
        (Sha256Digest(self.hasher.finalize().into()), self.written, self.inner)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_prefixed_bare_and_uppercase() {
        let d: Sha256Digest = format!("sha256:{EMPTY}").parse().unwrap();
        assert_eq!(d, Sha256Digest::of_bytes(b""));
        assert_eq!(EMPTY.to_uppercase().parse::<Sha256Digest>().unwrap(), d);
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
    }

    #[test]
    fn a_sparse_file_hashes_as_its_bytes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        // A hole first, data across a hole, data at the very end, and a trailing hole.
        for (writes, len) in [
            (vec![(5 << 20, &b"abc"[..])], 9 << 20),
            (vec![(0, &b"x"[..]), (3 << 20, &b"yz"[..]), ((8 << 20) - 1, &b"w"[..])], 8 << 20),
            (vec![], 1 << 20),
            (vec![(0, &b"whole"[..])], 5),
        ] {
            let mut file = File::create(&path).unwrap();
            file.set_len(len).unwrap();
            for (at, bytes) in writes {
                file.seek(SeekFrom::Start(at)).unwrap();
                file.write_all(bytes).unwrap();
            }
            let expected = Sha256Digest::of_reader(File::open(&path).unwrap()).unwrap();
            assert_eq!(Sha256Digest::of_sparse_file(&mut File::open(&path).unwrap()).unwrap(), expected);
        }
    }

    #[test]
    fn rejects_bad_checksums() {
        assert!("sha256:abc".parse::<Sha256Digest>().is_err());
        assert!(format!("md5:{EMPTY}").parse::<Sha256Digest>().unwrap_err().contains("md5"));
        assert!(EMPTY.replace('e', "g").parse::<Sha256Digest>().is_err());
    }
}
