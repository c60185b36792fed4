//! Content digests: parsing, validation and incremental verification.
//!
//! Everything pullthrough caches is addressed by digest, and nothing enters a
//! cache tier before its bytes were hashed and compared with the digest it
//! claims. This module owns both halves of that promise.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash algorithms the OCI image spec registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as written before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated `algorithm:hex` digest, kept in its canonical text form so it
/// can be used as a key and printed without allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: Box<str>,
    algorithm: Algorithm,
}

/// Why a string is not a digest pullthrough accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix")]
    MissingAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} must have {1} lowercase hex characters")]
    BadEncoding(String, usize),
}

impl Digest {
    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.as_str().len() + 1..]
    }

    /// The whole `algorithm:hex` text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The sha256 digest of `bytes`, for tests and for content whose digest
    /// upstream did not announce.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut verifier = Hasher::new(Algorithm::Sha256);
        verifier.update(bytes);
        verifier.finish()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = text
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(text.to_owned()))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let valid_hex = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hex {
            return Err(DigestError::BadEncoding(
                text.to_owned(),
                algorithm.hex_len(),
            ));
        }
        Ok(Digest {
            text: text.into(),
            algorithm,
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An incremental hash of one of the supported algorithms.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        let text = format!("{}:{hex}", algorithm.as_str());
        Digest {
            text: text.into(),
            algorithm,
        }
    }
}

/// The bytes hashed to something other than the digest they were fetched by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content does not match digest {expected}: it hashes to {actual}")]
pub struct DigestMismatch {
    pub expected: Digest,
    pub actual: Digest,
}

/// Checks `bytes` against `expected` in one go (manifests and small blobs).
pub fn verify(expected: &Digest, bytes: &[u8]) -> Result<(), DigestMismatch> {
    let mut hasher = Hasher::new(expected.algorithm());
    hasher.update(bytes);
    let actual = hasher.finish();
    if &actual == expected {
        Ok(())
    } else {
        Err(DigestMismatch {
            expected: expected.clone(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_canonical_digests() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(d.hex().len(), 64);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(
            sha512.parse::<Digest>().unwrap().algorithm(),
            Algorithm::Sha512
        );
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            "md5:abc",
            "sha256:ABC",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha512:abcd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn verifies_content() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert!(verify(&d, b"").is_ok());
        let err = verify(&d, b"x").unwrap_err();
        assert_eq!(err.expected, d);
        assert_eq!(Digest::sha256_of(b""), d);
    }
}
