//! SHA-256 digests: parsing user-written checksums and hashing streams.

use std::fmt;
use std::io::{self, Read};
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
    fn rejects_bad_checksums() {
        assert!("sha256:abc".parse::<Sha256Digest>().is_err());
        assert!(format!("md5:{EMPTY}").parse::<Sha256Digest>().unwrap_err().contains("md5"));
        assert!(EMPTY.replace('e', "g").parse::<Sha256Digest>().is_err());
    }
}
