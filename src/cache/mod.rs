//! The content-addressed cache: tiers behind one [`Tier`] trait, composed by
//! [`TieredCache`], plus [`Flights`], which turns concurrent misses into one
//! download that every waiting client streams from as it progresses, and
//! the bounded pool that all blocking file work runs on.
//!
//! The contract every tier keeps: an object is stored only as a [`Verified`]
//! value, which can only be made by checking bytes against their digest; and
//! a lookup returns either the whole object or nothing.

pub mod blocking;
mod disk;
pub mod evict;
mod flight;
mod fresh;
mod memory;
mod pinning;
mod probe;
mod read;
mod relay;
mod s3;
mod scrub;
mod tiered;
mod verify;
mod view;
mod window;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

pub use disk::{DiskTier, TempFile};
pub use flight::{Flight, FlightError, Flights, Origin, Seated, Source, SourceError};
pub use memory::MemoryTier;
pub use pinning::Pinned;
pub use read::{ByteStream, read_whole};
pub use s3::{ProbeFailure, Redirect, S3StartError, S3Tier};
pub use tiered::TieredCache;

use crate::digest::{Digest, DigestMismatch};

/// Manifests and blobs live apart: a manifest keeps its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Manifest,
    Blob,
}

/// The identity of a cached object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub digest: Digest,
}

impl ObjectKey {
    /// The key of a blob.
    pub fn blob(digest: Digest) -> Self {
        ObjectKey {
            kind: ObjectKind::Blob,
            digest,
        }
    }

    /// The key of a manifest.
    pub fn manifest(digest: Digest) -> Self {
        ObjectKey {
            kind: ObjectKind::Manifest,
            digest,
        }
    }
}

/// What is known of an object besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// The `Content-Type` a manifest was served with; `None` for blobs.
    pub media_type: Option<String>,
}

/// The bytes of a cached object, ready to serve whole or in part.
#[derive(Clone, Debug)]
pub enum Content {
    Memory(Bytes),
    /// An open file; read with `read_at`, so clones may read concurrently.
    File(Arc<File>),
}

/// A cache hit.
#[derive(Clone, Debug)]
pub struct Object {
    pub meta: ObjectMeta,
    pub content: Content,
}

/// Where a verified object's bytes are.
#[derive(Clone, Debug)]
pub enum Payload {
    Bytes(Bytes),
    /// A finished download in the disk tier's temporary directory.
    File(Arc<TempFile>),
    /// A file already in the disk tier, copied to another tier.
    Cached(Arc<File>),
}

impl Payload {
    /// The file holding the bytes, unless they are in memory.
    pub fn file(&self) -> Option<&Arc<File>> {
        match self {
            Payload::Bytes(_) => None,
            Payload::File(temp) => Some(temp.file()),
            Payload::Cached(file) => Some(file),
        }
    }
}

/// An object whose bytes were checked against its digest; the only thing a
/// tier will store. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Verified {
    key: ObjectKey,
    meta: ObjectMeta,
    payload: Payload,
}

impl Verified {
    /// Hashes `bytes` and accepts them if they match `key`.
    pub fn bytes(
        key: ObjectKey,
        media_type: Option<String>,
        bytes: Bytes,
    ) -> Result<Self, DigestMismatch> {
        crate::digest::verify(&key.digest, &bytes)?;
        let meta = ObjectMeta {
            size: bytes.len() as u64,
            media_type,
        };
        Ok(Verified {
            key,
            meta,
            payload: Payload::Bytes(bytes),
        })
    }

    /// Accepts a downloaded file whose bytes hashed to `hashed` as they were written.
    pub fn file(
        key: ObjectKey,
        hashed: Digest,
        size: u64,
        file: TempFile,
    ) -> Result<Self, DigestMismatch> {
        if hashed != key.digest {
            return Err(DigestMismatch {
                expected: key.digest,
                actual: hashed,
            });
        }
        let meta = ObjectMeta {
            size,
            media_type: None,
        };
        Ok(Verified {
            key,
            meta,
            payload: Payload::File(Arc::new(file)),
        })
    }

    /// Content read back from a tier, which verified it when it was stored.
    fn from_tier(key: ObjectKey, meta: ObjectMeta, bytes: Bytes) -> Self {
        Verified {
            key,
            meta,
            payload: Payload::Bytes(bytes),
        }
    }

    /// An object already in a tier, on its way to another.
    fn from_tier_file(key: ObjectKey, meta: ObjectMeta, file: Arc<File>) -> Self {
        Verified {
            key,
            meta,
            payload: Payload::Cached(file),
        }
    }

    /// The object's key.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    /// The object's size and media type.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    /// The bytes themselves.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }
}

/// A storage failure inside a tier. Tiers never fail a lookup for a missing
/// object: that is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{tier} tier: {context}: {source}")]
    Io {
        tier: &'static str,
        context: String,
        source: std::io::Error,
    },
    #[error("{tier} tier: {message}")]
    Other { tier: &'static str, message: String },
}

/// One level of the cache: memory, local disk, and later a shared bucket.
#[async_trait::async_trait]
pub trait Tier: Send + Sync {
    /// A short name for logs and metrics (`memory`, `disk`).
    fn name(&self) -> &'static str;

    /// The whole object, or `None` when this tier does not hold it.
    async fn lookup(&self, key: &ObjectKey) -> Result<Option<Object>, CacheError>;

    /// Stores a verified object. Storing one already held is not an error.
    /// A tier may decline objects it is not meant for (too large for memory).
    async fn store(&self, object: &Verified) -> Result<(), CacheError>;
}

/// Where the disk tier keeps an object, relative to its root:
/// `blobs/sha256/ab/<hex>` or `manifests/sha256/ab/<hex>`.
pub fn object_path(key: &ObjectKey) -> PathBuf {
    let kind = object_path_kind(key.kind);
    let hex = key.digest.hex();
    [kind, key.digest.algorithm().as_str(), &hex[..2], hex]
        .iter()
        .collect()
}

/// The directory of the disk tier that holds objects of `kind`.
pub(crate) fn object_path_kind(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Manifest => "manifests",
        ObjectKind::Blob => "blobs",
    }
}
