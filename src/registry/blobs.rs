//! Blobs: immutable by digest, served from the cache with no upstream
//! contact, or streamed from one shared download on a miss: from the
//! shared tier, else from the blob's owner in the fleet, else upstream.

use std::sync::Arc;

use futures_util::TryStreamExt;

use super::splice::{Rest, spliced};
use super::{Caller, Outcome, Registry, RegistryError, Scope};
use crate::cache::{
    Content, Flight, FlightError, ObjectKey, Origin, Redirect, S3Tier, Seated, Source, SourceError,
};
use crate::cluster::{Cluster, OwnerKey, Peer, PeerError};
use crate::digest::Digest;
use crate::reference::RepoName;
use crate::upstream::{ErrorKind, Upstream, UpstreamError};

/// What a blob request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobWant {
    /// HEAD: the size.
    Head,
    /// GET: the bytes, sent by this replica.
    Body,
    /// GET from a client that may be sent to the bucket for the bytes
    /// (`s3.redirect`); streamed when the bucket cannot serve them.
    BodyOrRedirect,
}

/// Where a blob's bytes come from.
pub enum BlobBody {
    /// HEAD: no bytes.
    None,
    /// The bucket: the client is sent to a presigned URL.
    Redirect(Redirect),
    /// A cache hit.
    Cached(Content),
    /// A download in progress, possibly shared with other clients.
    Download(Seated),
}

/// A blob answer.
pub struct BlobReply {
    /// Unknown only for a download whose upstream sent no length.
    pub size: Option<u64>,
    pub body: BlobBody,
    pub outcome: Outcome,
}

/// The answer that sends the client to the bucket.
fn redirected(redirect: Redirect) -> BlobReply {
    BlobReply {
        size: Some(redirect.size),
        body: BlobBody::Redirect(redirect),
        outcome: Outcome::Redirected,
    }
}

fn upstream_error(digest: &Digest) -> impl FnOnce(UpstreamError) -> RegistryError + '_ {
    move |e| match e.kind {
        ErrorKind::NotFound => RegistryError::BlobUnknown(digest.to_string()),
        _ => RegistryError::Upstream(e),
    }
}

impl Registry {
    /// Answers a blob GET or HEAD.
    pub async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        want: BlobWant,
        caller: &Caller,
    ) -> Result<BlobReply, RegistryError> {
        let key = ObjectKey::blob(digest.clone());
        let want_body = want != BlobWant::Head;
        // Only a client's own request goes to the bucket: a peer asking
        // this replica as the owner wants the bytes themselves.
        let may_redirect = want == BlobWant::BodyOrRedirect && caller.scope == Scope::Fleet;
        if may_redirect && let Some(reply) = self.known_redirect(&key).await {
            return Ok(reply);
        }
        let in_memory = self.inner.cache.memory().get(&key);
        // A download under way is joined before the other tiers are asked:
        // they cannot have the blob yet, and in a rollout thousands of
        // clients would each queue a disk lookup on the file pool for nothing.
        if in_memory.is_none()
            && want_body
            && let Some(flight) = self.inner.blob_flights.get(&key)
        {
            return self
                .follow(upstream, repo, &key, flight, true, caller)
                .await;
        }
        let cached = match in_memory {
            Some(object) => Some((object, "memory")),
            None => self.cached(&key).await,
        };
        if let Some((object, tier)) = cached {
            if may_redirect && let Some(reply) = self.redirect(&key, Some(object.meta.size)).await {
                return Ok(reply);
            }
            let body = if want_body {
                BlobBody::Cached(object.content)
            } else {
                BlobBody::None
            };
            return Ok(BlobReply {
                size: Some(object.meta.size),
                body,
                outcome: Outcome::Hit(tier),
            });
        }
        if !want_body {
            if let Some(flight) = self.inner.blob_flights.get(&key)
                && let Ok((Some(size), _)) = flight.ready().await
            {
                return Ok(BlobReply {
                    size: Some(size),
                    body: BlobBody::None,
                    outcome: Outcome::Coalesced,
                });
            }
            if let Some(shared) = self.inner.cache.shared()
                && let Some(size) = shared.size_of(&key).await
            {
                return Ok(BlobReply {
                    size: Some(size),
                    body: BlobBody::None,
                    outcome: Outcome::Hit("s3"),
                });
            }
            let size = upstream
                .head_blob(repo, digest)
                .await
                .map_err(upstream_error(digest))?;
            return Ok(BlobReply {
                size,
                body: BlobBody::None,
                outcome: Outcome::Miss,
            });
        }
        if may_redirect && let Some(reply) = self.redirect(&key, None).await {
            return Ok(reply);
        }
        self.handoff(&key).await;
        let source = self.blob_source(upstream, repo, &key, caller);
        let (flight, joined) =
            self.inner
                .blob_flights
                .join_or_start(key.clone(), self.inner.cache.clone(), source);
        self.follow(upstream, repo, &key, flight, joined, caller)
            .await
    }

    /// A redirect to the bucket for `key` (`size` bytes, when cached here),
    /// when the shared tier can give one (see `S3Tier::redirect`).
    async fn redirect(&self, key: &ObjectKey, size: Option<u64>) -> Option<BlobReply> {
        let redirect = self.inner.cache.shared()?.redirect(key, size).await?;
        Some(redirected(redirect))
    }

    /// A redirect for `key` when the bucket is known to hold it, without
    /// looking at any local tier (see `S3Tier::known_redirect`).
    async fn known_redirect(&self, key: &ObjectKey) -> Option<BlobReply> {
        let redirect = self.inner.cache.shared()?.known_redirect(key).await?;
        Some(redirected(redirect))
    }

    /// Where a download of `key` gets its bytes (see [`download`]).
    fn blob_source(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        key: &ObjectKey,
        caller: &Caller,
    ) -> impl Future<Output = Result<Source, SourceError>> + Send + 'static {
        download(
            self.inner.cache.shared().cloned(),
            self.owner(OwnerKey::Blob(&key.digest), caller),
            upstream.clone(),
            repo.clone(),
            key.clone(),
        )
    }

    /// The answer that streams `flight` (`joined` when another client's
    /// request started it) once its bytes start to arrive. A download held
    /// in memory whose window has moved on is replaced by a new one for
    /// this client and those after it (see `cache::window`).
    async fn follow(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        key: &ObjectKey,
        mut flight: Flight,
        mut joined: bool,
        caller: &Caller,
    ) -> Result<BlobReply, RegistryError> {
        let digest = &key.digest;
        for _ in 0..3 {
            let (size, origin) = flight.ready().await.map_err(|e| flight_error(e, digest))?;
            let Some(seated) = flight.seat() else {
                let source = self.blob_source(upstream, repo, key, caller);
                let cache = self.inner.cache.clone();
                (flight, joined) =
                    self.inner
                        .blob_flights
                        .replace(key.clone(), &flight, cache, source);
                continue;
            };
            let outcome = match origin {
                Origin::Shared => Outcome::Hit("s3"),
                Origin::Peer => Outcome::Peer,
                Origin::Cached(tier) => Outcome::Hit(tier),
                Origin::Upstream => Outcome::fetched(joined),
            };
            return Ok(BlobReply {
                size,
                body: BlobBody::Download(seated),
                outcome,
            });
        }
        Err(RegistryError::Abandoned)
    }
}

/// The fetch a blob flight runs: from the shared tier when it has the
/// blob (another replica fetched it), else from its owner in the fleet
/// when that is another replica and it answers, else from upstream. When
/// upstream fails too, the shared tier is asked once more even if it is
/// being skipped after a failure (degraded): it may well have the blob,
/// and nothing else is left to serve it. A source that breaks off
/// mid-stream is continued from the others (see `splice`).
async fn download(
    shared: Option<Arc<S3Tier>>,
    owner: Option<(Cluster, Peer)>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    key: ObjectKey,
) -> Result<Source, SourceError> {
    let from_upstream = Rest::Upstream(upstream.clone(), repo.clone());
    let bucket = || shared.clone().map(Rest::Bucket);
    if let Some(s3) = &shared
        && let Some(source) = s3.open(&key).await
    {
        return Ok(spliced(source, key, vec![from_upstream]));
    }
    if let Some((cluster, peer)) = owner {
        let asked = cluster.blob(&peer, upstream.name(), repo.as_str(), &key.digest);
        match asked.await {
            Ok(blob) => {
                let source = Source {
                    size: blob.size,
                    body: Box::new(blob.body.map_err(|e| Arc::new(e) as SourceError)),
                    origin: Origin::Peer,
                    etag: None,
                };
                let rests = bucket().into_iter().chain([from_upstream]).collect();
                return Ok(spliced(source, key, rests));
            }
            Err(e @ PeerError::Answered { .. }) => {
                return Err(Arc::new(super::peer_answer(&upstream, e)) as SourceError);
            }
            // Counted by the cluster; fetched here as without peers.
            Err(PeerError::Unavailable { .. }) => {}
        }
    }
    let blob = match upstream.get_blob(&repo, &key.digest).await {
        Ok(blob) => blob,
        Err(e) => {
            if e.kind != ErrorKind::NotFound
                && let Some(s3) = &shared
                && let Some(source) = s3.open_even_degraded(&key).await
            {
                tracing::warn!(digest = %key.digest, error = %e,
                    "upstream failed; serving the blob from the shared tier, which was being skipped");
                return Ok(source);
            }
            return Err(Arc::new(e));
        }
    };
    let body = blob.body.map_err(|e| Arc::new(e) as SourceError);
    let source = Source {
        size: blob.size,
        body: Box::new(body),
        origin: Origin::Upstream,
        etag: None,
    };
    Ok(spliced(source, key, bucket().into_iter().collect()))
}

fn flight_error(error: FlightError, digest: &Digest) -> RegistryError {
    match error {
        FlightError::Source(source) => match source.downcast_ref::<UpstreamError>() {
            Some(e) => upstream_error(digest)(e.clone()),
            None => RegistryError::Abandoned,
        },
        FlightError::Mismatch(e) => RegistryError::DigestMismatch(e),
        FlightError::Cache(e) => RegistryError::Cache(e),
        FlightError::Abandoned => RegistryError::Abandoned,
    }
}
