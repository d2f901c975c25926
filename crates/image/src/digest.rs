//! Content digests (`sha256:<64 hex>`): parsing, and hashing that counts bytes as they pass.
//!
//! Only sha256 is accepted: it is what every registry and builder produces, and an algorithm we cannot
//! verify must not be trusted. Parsing is strict (lowercase hex, exact length) because a digest becomes a
//! file name in the content store.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {text:?}: {reason}")]
pub struct DigestError {
    pub text: String,
    pub reason: &'static str,
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest { hex: hex(&Sha256::digest(data)) }
    }

    /// The 64 lowercase hex characters, which name the blob's file.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Parses the bare hex form used in file names.
    pub fn from_hex(text: &str) -> Result<Digest, DigestError> {
        Digest::from_str(&format!("sha256:{text}"))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(text: &str) -> Result<Digest, DigestError> {
        let fail = |reason| DigestError { text: text.to_owned(), reason };
        let (algorithm, hex) = text.split_once(':').ok_or_else(|| fail("expected ALGORITHM:HEX"))?;
        if algorithm != "sha256" {
            return Err(fail("only sha256 digests are supported"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(fail("a sha256 digest is 64 lowercase hex characters"));
        }
        Ok(Digest { hex: hex.to_owned() })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// sha256 and a byte count over a stream, fed by whoever reads or writes it.
#[derive(Clone, Default)]
pub struct Hasher {
    hash: Sha256,
    pub bytes: u64,
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.hash.update(data);
        self.bytes += data.len() as u64;
    }

    pub fn finish(self) -> Digest {
        Digest { hex: hex(&self.hash.finalize()) }
    }
}

/// A reader that hashes everything read through it.
pub struct HashingReader<R> {
    pub inner: R,
    pub hasher: Hasher,
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The chain ID of a layer stack (OCI image spec, "ChainID"): the identity of "this layer on top of
/// exactly those below it", which names the layer's snapshot directory.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_strictly() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::of(b"").to_string(), empty);
        assert_eq!(empty.parse::<Digest>().unwrap(), Digest::of(b""));
        for bad in ["sha256:abc", "md5:e3b0", "e3b0c442", &empty.to_uppercase(), "sha256:../../../../etc/passwd"] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
