//! The registry service: the one place that decides how each request is
//! answered (from which tier, after which upstream exchange, stale or not)
//! and says so in an [`Outcome`] that the API logs and counts.
//!
//! The API calls this layer; this layer calls the cache and upstreams, and
//! never the API. It knows nothing of HTTP responses.

mod accept;
mod blobs;
mod budget_share;
mod caller;
#[cfg(test)]
mod handoff_tests;
mod manifests;
mod ops;
mod referrers;
mod referrers_store;
mod share;
mod splice;
mod tag_prune;
mod tag_store;
mod tagged;
mod tags;

use std::sync::Arc;
use std::time::Duration;

pub use crate::singleflight::{Abandoned, SingleFlight};
pub use accept::{ALL_MANIFEST_TYPES, AcceptSet, KNOWN_MANIFEST_TYPES, Kind};
pub use blobs::{BlobBody, BlobReply, BlobWant};
pub use caller::{Caller, Scope};
pub use manifests::ManifestReply;
pub use ops::{PinReport, Readiness};
pub use referrers::{ReferrersReply, fallback_tag};
pub use share::ClientId;
pub use tag_store::TagStore;
pub use tags::{TagEntry, TagKey, TagRecord};

use crate::cache::{CacheError, Flights, ObjectKey, TieredCache};
use crate::cluster::{Cluster, OwnerKey, Peer, PeerError};
use crate::config::Config;
use crate::digest::DigestMismatch;
use crate::metrics::Metrics;
use crate::reference::RepoName;
use crate::upstream::{Relayed, RouteError, Upstream, UpstreamError, Upstreams};

/// How a request was answered; one per request, logged and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Served from a cache tier with no upstream contact.
    Hit(&'static str),
    /// Fetched from upstream for this request.
    Miss,
    /// Joined another request's upstream fetch.
    Coalesced,
    /// A tag past its TTL, confirmed unchanged by a free HEAD.
    Revalidated,
    /// Upstream failed; a cached copy was served instead.
    Stale,
    /// A cached tag served past its TTL without asking upstream: the
    /// upstream's pull budget is at its reserve or spent.
    Reserve,
    /// Answered by the replica that owns the key in the fleet.
    Peer,
    /// A blob the bucket holds: the client was sent there for its bytes.
    Redirected,
    /// Relayed from upstream without caching (tag lists).
    Relayed,
    /// Answered locally without the cache (`/v2/`, errors).
    Local,
}

impl Outcome {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit("memory") => "hit-memory",
            Outcome::Hit("disk") => "hit-disk",
            Outcome::Hit("s3") => "hit-s3",
            Outcome::Hit(_) => "hit-shared",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Revalidated => "revalidated",
            Outcome::Stale => "stale",
            Outcome::Reserve => "reserve",
            Outcome::Peer => "peer",
            Outcome::Redirected => "hit-redirect",
            Outcome::Relayed => "relayed",
            Outcome::Local => "local",
        }
    }

    fn fetched(joined: bool) -> Outcome {
        if joined {
            Outcome::Coalesced
        } else {
            Outcome::Miss
        }
    }
}

/// The service layer's error; the API turns each into an OCI error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    #[error("repository unknown: {0}")]
    NameUnknown(String),
    #[error("no upstream named {0:?} is configured")]
    UnknownUpstream(String),
    /// A repository the upstream's allow and deny lists refuse.
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("upstream sent corrupt content: {0}")]
    DigestMismatch(DigestMismatch),
    #[error(transparent)]
    Cache(Arc<CacheError>),
    #[error("an upstream fetch ended without a result")]
    Abandoned,
}

impl From<CacheError> for RegistryError {
    fn from(e: CacheError) -> Self {
        RegistryError::Cache(Arc::new(e))
    }
}

impl From<Abandoned> for RegistryError {
    fn from(_: Abandoned) -> Self {
        RegistryError::Abandoned
    }
}

/// The service handle; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Upstreams,
    cache: TieredCache,
    tags: TagStore,
    referrers: referrers_store::ReferrersStore,
    blob_flights: Flights,
    manifest_fetches: SingleFlight<ObjectKey, Option<Result<ManifestReply, RegistryError>>>,
    tag_checks: SingleFlight<tagged::CheckKey, Option<Result<tagged::TagCheck, RegistryError>>>,
    stale_retry: Duration,
    shares: share::FairShare,
    /// The other replicas, when there are any.
    cluster: Option<Cluster>,
    metrics: Metrics,
    /// Where tests park a request between its cache miss and its fetch.
    #[cfg(test)]
    handoff: handoff_tests::Hook,
}

impl Registry {
    /// Assembles the service; tag records go under `data_dir/tags`.
    pub fn new(
        upstreams: Upstreams,
        cache: TieredCache,
        cluster: Option<Cluster>,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Self, CacheError> {
        let data_dir = &config.data_dir;
        let tags =
            TagStore::open(&data_dir.join("tags"), cache.shared().cloned()).map_err(|source| {
                CacheError::Io {
                    tier: "disk",
                    context: "opening the tag records".into(),
                    source,
                }
            })?;
        let referrers =
            referrers_store::ReferrersStore::open(&data_dir.join("tags"), cache.shared().cloned())
                .map_err(|source| CacheError::Io {
                    tier: "disk",
                    context: "opening the referrers answers".into(),
                    source,
                })?;
        let inner = Inner {
            upstreams,
            cache,
            tags,
            referrers,
            blob_flights: Flights::new(config.memory.download_bytes(), metrics.clone()),
            manifest_fetches: SingleFlight::default(),
            tag_checks: SingleFlight::default(),
            stale_retry: config.stale_retry,
            shares: share::FairShare::new(config.budget.client_share_percent),
            cluster,
            metrics,
            #[cfg(test)]
            handoff: Default::default(),
        };
        Ok(Registry {
            inner: Arc::new(inner),
        })
    }

    /// The upstream a request addresses and the repository name as that
    /// upstream knows it (see [`Upstreams::route`]).
    pub fn route(
        &self,
        ns: Option<&str>,
        name: &RepoName,
    ) -> Result<(Arc<Upstream>, RepoName), RegistryError> {
        self.inner.upstreams.route(ns, name).map_err(|e| match e {
            RouteError::Unknown(unknown) => RegistryError::UnknownUpstream(unknown.0),
            denied @ RouteError::Denied { .. } => RegistryError::Denied(denied.to_string()),
        })
    }

    /// Relays a tag list, with the client's `n` and `last`.
    pub async fn tags_list(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        query: Option<&str>,
    ) -> Result<Relayed, RegistryError> {
        upstream
            .tags_list(repo, query)
            .await
            .map_err(|e| match e.kind {
                crate::upstream::ErrorKind::NotFound => {
                    RegistryError::NameUnknown(repo.to_string())
                }
                _ => RegistryError::Upstream(e),
            })
    }

    /// `off`, `ok` or `degraded`: the shared tier as health checks report it.
    pub fn shared_tier_state(&self) -> &'static str {
        match self.inner.cache.shared() {
            None => "off",
            Some(s3) if s3.is_degraded() => "degraded",
            Some(_) => "ok",
        }
    }

    /// The fleet, when this replica has peers.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    /// The owner to ask for `key` on `caller`'s behalf: another replica,
    /// and only for a client's own request (a peer's is answered here).
    fn owner(&self, key: OwnerKey<'_>, caller: &Caller) -> Option<(Cluster, Peer)> {
        let cluster = self.inner.cluster.as_ref()?;
        if caller.scope == Scope::Local {
            return None;
        }
        Some((cluster.clone(), cluster.owner(key)?))
    }

    fn mismatch(&self, upstream: &Upstream, e: DigestMismatch) -> RegistryError {
        self.inner
            .metrics
            .digest_mismatches
            .with_label_values(&["manifest"])
            .inc();
        tracing::error!(upstream = upstream.name(), error = %e, "digest mismatch; nothing stored");
        RegistryError::DigestMismatch(e)
    }
}

impl Registry {
    /// The point between a request's cache miss and its joining or starting
    /// a fetch, where the single-flight's hand-off re-check matters; tests
    /// park requests here.
    #[cfg(test)]
    async fn handoff(&self, key: &ObjectKey) {
        self.inner.handoff.pause(key).await;
    }

    #[cfg(not(test))]
    async fn handoff(&self, _key: &ObjectKey) {}
}

/// An owner's answer about the content, as if `upstream` had given it:
/// it holds for the whole fleet (not found, denied, out of pulls).
fn peer_answer(upstream: &Upstream, answer: PeerError) -> UpstreamError {
    let (status, message, retry_after) = match answer {
        PeerError::Answered {
            status,
            message,
            retry_after,
        } => (status, message, retry_after),
        unavailable @ PeerError::Unavailable { .. } => {
            let detail = unavailable.to_string();
            return UpstreamError::new(
                upstream.name(),
                crate::upstream::ErrorKind::Transport,
                detail,
            );
        }
    };
    let kind = match status.as_u16() {
        404 => crate::upstream::ErrorKind::NotFound,
        403 => crate::upstream::ErrorKind::Denied,
        429 => crate::upstream::ErrorKind::RateLimited,
        other => crate::upstream::ErrorKind::Status(other),
    };
    // The owner's message already names the upstream.
    let prefix = format!("upstream {}: ", upstream.name());
    let detail = message.strip_prefix(&prefix).unwrap_or(&message);
    let error = UpstreamError::new(upstream.name(), kind, detail);
    match retry_after {
        Some(wait) => error.with_retry_after(wait),
        None => error,
    }
}
