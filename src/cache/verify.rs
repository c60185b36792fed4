//! Disk files are trusted only as verified. A file on disk can be damaged
//! behind the tier's back (a bad block, a stray `truncate`, an operator's
//! copy), and a damaged layer served as a good `200` makes containerd and
//! dockerd fail the pull on its digest, retry the mirror, and fail again.
//!
//! The scheme: each object this process stored or verified is remembered
//! with its file's fingerprint (length, inode, change time). `ctime` moves
//! on any write, truncation or rename of the file, and cannot be set back
//! by a user, so a fingerprint that still matches means the bytes are the
//! ones verified. A file whose fingerprint differs, or that this process
//! has not verified since it started, is hashed whole before it is served,
//! once for all concurrent lookups (a single-flight on the file pool). On a
//! mismatch the file is deleted and counted, and the lookup is a miss: the
//! same request then fetches a good copy.
//!
//! Why before serving rather than while streaming: a stream hashed per
//! reader costs a rollout of N clients N hashes of the same layer, and one
//! shared verifying stream would need the download machinery for files
//! already whole. Hashing up front costs the first request for an object
//! after a restart the time of one hash (SHA-256 at about a gigabyte a
//! second), and every later hit a hash-map probe. Damage that moves no
//! fingerprint (bit rot under an unchanged inode) is not caught here but by
//! the scrub (see `scrub`).

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use moka::sync::Cache;

use super::{ObjectKey, blocking};
use crate::digest::Hasher;
use crate::singleflight::SingleFlight;

/// Bytes hashed per read.
const CHUNK: usize = 1024 * 1024;

/// Verified files remembered at once (about 150 bytes each). Entries of
/// evicted objects are never looked up again; past the bound the least
/// recently used go, and a file forgotten so is hashed again on its next
/// use, so the bound costs a hash, never a wrong answer.
const REMEMBERED: u64 = 500_000;

/// What identifies a file's bytes as the ones verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    len: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Fingerprint {
    pub(super) fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            len: meta.len(),
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }

    /// The file's length.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The file's inode number.
    pub(super) fn ino(&self) -> u64 {
        self.ino
    }
}

/// The disk tier's verified files; cheap to clone.
#[derive(Clone)]
pub(super) struct Verifications {
    trusted: Cache<ObjectKey, Fingerprint>,
    checks: SingleFlight<ObjectKey, Option<bool>>,
}

impl Default for Verifications {
    fn default() -> Self {
        Verifications {
            trusted: Cache::new(REMEMBERED),
            checks: SingleFlight::default(),
        }
    }
}

impl Verifications {
    /// Remembers that `key`'s file, as `print` describes it, holds its bytes.
    pub(super) fn trust(&self, key: &ObjectKey, print: Fingerprint) {
        self.trusted.insert(key.clone(), print);
    }

    /// Forgets `key` (its file was deleted).
    pub(super) fn forget(&self, key: &ObjectKey) {
        self.trusted.invalidate(key);
    }

    /// Whether `file` (as `print` describes it) holds `key`'s bytes:
    /// at once when it was verified as it is, else after hashing it, once
    /// for every concurrent caller.
    pub(super) async fn check(&self, key: &ObjectKey, file: Arc<File>, print: Fingerprint) -> bool {
        if self.trusted.get(key) == Some(print) {
            return true;
        }
        let (this, work_key) = (self.clone(), key.clone());
        let (checked, _) = self
            .checks
            .run(key.clone(), async move {
                let digest = work_key.digest.clone();
                let hashed =
                    blocking::run(move || hashes_to(&file, print.len, &digest, |_| true)).await;
                let good = matches!(hashed, Ok(Ok(Some(true))));
                if good {
                    this.trust(&work_key, print);
                }
                good
            })
            .await;
        checked.unwrap_or(false)
    }
}

/// Whether the `len` bytes of `file` hash to `digest`; a file shorter than
/// `len` does not. `read` hears of each piece read, and stops the hashing
/// (`None`) by returning false.
pub(super) fn hashes_to(
    file: &File,
    len: u64,
    digest: &crate::digest::Digest,
    mut read: impl FnMut(usize) -> bool,
) -> io::Result<Option<bool>> {
    let mut hasher = Hasher::new(digest.algorithm());
    let mut buf = vec![0; CHUNK];
    let mut at = 0;
    while at < len {
        let want = CHUNK.min((len - at) as usize);
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Ok(Some(false));
        }
        hasher.update(&buf[..n]);
        at += n as u64;
        if !read(n) {
            return Ok(None);
        }
    }
    Ok(Some(hasher.finish() == *digest))
}
