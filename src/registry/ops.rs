//! The registry's operations for operators and health checks, beside the
//! pull path: pinning images, protecting what a pull is about to fetch,
//! bounding tag records, readiness and the cache gauges.

use std::sync::Arc;
use std::time::Duration;

use super::accept::{AcceptSet, KNOWN_MANIFEST_TYPES};
use super::{Caller, ClientId, ManifestReply, Registry, RegistryError};
use crate::cache::evict::DiskUsage;
use crate::reference::{Reference, RepoName};
use crate::upstream::Upstream;

/// What pinning covered; see [`crate::cache::Pinned`].
pub type PinReport = crate::cache::Pinned;

/// Whether this replica can serve, and why not.
#[derive(Clone, Debug)]
pub struct Readiness {
    /// `None` when ready.
    pub not_ready: Option<String>,
    pub disk: DiskUsage,
    /// The shared tier: `off`, `ok` or `degraded` (which still serves).
    pub s3: &'static str,
}

impl Registry {
    /// Keeps at most `max` tag records on disk, least recently used
    /// dropped first.
    pub fn limit_tag_records(&self, max: u64) {
        self.inner.tags.limit(max);
    }

    /// Protects a manifest just served, and what it references, from
    /// eviction while its client pulls (`disk.pull_hold`), and for the
    /// tag's TTL when it was asked by tag: a manifest whose tag is fresh
    /// stays.
    pub(super) fn protect_pulled(&self, reply: &ManifestReply, tag_ttl: Option<Duration>) {
        self.inner
            .cache
            .hold_image(&reply.digest, reply.body.as_deref(), tag_ttl);
    }

    /// Fetches the image `reference` names (through the cache, so at most
    /// one pull) and pins it, with whatever it references that is cached;
    /// the rest is pinned as it is served. The pull is `client`'s.
    pub async fn pin_image(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        client: &ClientId,
    ) -> Result<PinReport, RegistryError> {
        let every_type = AcceptSet::of(&KNOWN_MANIFEST_TYPES);
        let reply = self
            .manifest(
                upstream,
                repo,
                reference,
                &every_type,
                true,
                &Caller::client(client.clone()),
            )
            .await?;
        Ok(self.inner.cache.pin_image(&reply.digest).await?)
    }

    /// Unpins the image `reference` names; false when it was not pinned.
    pub async fn unpin_image(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        client: &ClientId,
    ) -> Result<bool, RegistryError> {
        let digest = match reference {
            Reference::Digest(digest) => digest.clone(),
            Reference::Tag(_) => {
                let every_type = AcceptSet::of(&KNOWN_MANIFEST_TYPES);
                let reply = self
                    .manifest(
                        upstream,
                        repo,
                        reference,
                        &every_type,
                        false,
                        &Caller::client(client.clone()),
                    )
                    .await?;
                reply.digest
            }
        };
        Ok(self.inner.cache.unpin(&digest).await?)
    }

    /// The pinned images (by the digest pinned), each with how many
    /// digests its pin covers.
    pub fn pinned(&self) -> Vec<(crate::digest::Digest, usize)> {
        self.inner.cache.pinned()
    }

    /// Whether this replica can serve: its data directory takes writes
    /// and its disk is not full.
    pub async fn readiness(&self) -> Readiness {
        Readiness {
            not_ready: self.inner.cache.disk_ready().await.err(),
            disk: self.inner.cache.disk_usage(),
            s3: self.shared_tier_state(),
        }
    }

    /// Sets the memory tier's gauges, which are read when scraped (the
    /// disk tier's are kept current as it changes).
    pub fn refresh_cache_gauges(&self) {
        let (bytes, objects) = self.inner.cache.memory().held();
        let cache = &self.inner.metrics.cache;
        cache.bytes.with_label_values(&["memory"]).set(bytes as i64);
        cache
            .objects
            .with_label_values(&["memory"])
            .set(objects as i64);
        let capacity = self.inner.cache.memory().capacity();
        cache
            .capacity
            .with_label_values(&["memory"])
            .set(capacity.min(i64::MAX as u64) as i64);
    }

    /// The configured upstreams, for the status page and its budgets.
    pub fn upstreams(&self) -> &crate::upstream::Upstreams {
        &self.inner.upstreams
    }
}
