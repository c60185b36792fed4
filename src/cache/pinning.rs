//! The cache's operations beyond lookups and stores: pinning images so
//! they are never evicted, holding what a pull is about to fetch, and
//! whether the disk tier is ready to serve.

use std::collections::BTreeSet;
use std::time::Duration;

use super::evict::{DiskUsage, references};
use super::{CacheError, Content, ObjectKey, TieredCache, blocking, read_whole};
use crate::digest::Digest;

/// What a pin covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    /// The digest pinned: an image's manifest or index.
    pub root: Digest,
    /// Digests covered, the root included.
    pub digests: usize,
    /// Manifests the root references that are not cached yet: pinned by
    /// digest, and their blobs pinned once they are served.
    pub manifests_not_cached: Vec<Digest>,
}

fn pool_error(e: std::io::Error) -> CacheError {
    CacheError::Io {
        tier: "disk",
        context: "saving the pins".into(),
        source: e,
    }
}

impl TieredCache {
    /// Pins the image whose manifest or index is `root`: every manifest
    /// it references, found through the cached ones, and every blob of
    /// those. Pinning a root again replaces its pin.
    pub async fn pin_image(&self, root: &Digest) -> Result<Pinned, CacheError> {
        let mut members = BTreeSet::new();
        let mut missing = Vec::new();
        let mut manifests = vec![root.clone()];
        while let Some(manifest) = manifests.pop() {
            if !members.insert(manifest.clone()) {
                continue;
            }
            let Some((object, _)) = self.lookup(&ObjectKey::manifest(manifest.clone())).await?
            else {
                missing.push(manifest);
                continue;
            };
            let bytes = match object.content {
                Content::Memory(bytes) => bytes,
                Content::File(file) => {
                    read_whole(file, object.meta.size)
                        .await
                        .map_err(|e| CacheError::Io {
                            tier: "disk",
                            context: format!("reading manifest {manifest}"),
                            source: e,
                        })?
                }
            };
            let refs = references(&bytes);
            manifests.extend(refs.manifests);
            members.extend(refs.blobs);
        }
        let digests = members.len();
        let (evictor, pinned) = (self.disk().evictor().clone(), root.clone());
        blocking::run(move || evictor.pin(pinned, members))
            .await
            .map_err(pool_error)?
            .map_err(pool_error)?;
        Ok(Pinned {
            root: root.clone(),
            digests,
            manifests_not_cached: missing,
        })
    }

    /// The pinned roots, each with how many digests it covers.
    pub fn pinned(&self) -> Vec<(Digest, usize)> {
        self.disk().evictor().pinned()
    }

    /// Unpins `root`; false when it was not pinned.
    pub async fn unpin(&self, root: &Digest) -> Result<bool, CacheError> {
        let (evictor, root) = (self.disk().evictor().clone(), root.clone());
        blocking::run(move || evictor.unpin(&root))
            .await
            .map_err(pool_error)?
            .map_err(pool_error)
    }

    /// Keeps the manifest `digest` and, when its `body` is given,
    /// everything it references from eviction for the configured pull
    /// hold, or `at_least` if that is longer: a client that got a manifest
    /// is about to fetch its blobs. A pinned manifest's pin grows to cover
    /// what it references. Cheap when repeated: the references are parsed
    /// again only when half the hold has passed.
    pub fn hold_image(&self, digest: &Digest, body: Option<&[u8]>, at_least: Option<Duration>) {
        let evictor = self.disk().evictor();
        let length = at_least.map_or(evictor.pull_hold(), |d| d.max(evictor.pull_hold()));
        let until = crate::clock::now_ms().saturating_add(length.as_millis() as u64);
        evictor.hold([digest], until);
        let Some(body) = body else {
            return;
        };
        if !evictor.expand_due(digest, until, length) {
            return;
        }
        let refs = references(body);
        evictor.hold(refs.all(), until);
        if evictor.is_pinned(digest) {
            let (evictor, digest) = (evictor.clone(), digest.clone());
            let more: Vec<Digest> = refs.all().cloned().collect();
            blocking::detach(move || {
                if let Err(e) = evictor.extend_pins(&digest, &more) {
                    tracing::warn!(error = %e, "could not save the pins");
                }
            });
        }
    }

    /// The disk tier's size against its bounds.
    pub fn disk_usage(&self) -> DiskUsage {
        self.disk().evictor().usage()
    }

    /// `Ok` when the disk tier can take writes; else why not.
    pub async fn disk_ready(&self) -> Result<(), String> {
        self.disk().probe().check().await
    }
}
