//! Blobs: immutable by digest, served from the cache with no upstream
//! contact, or streamed from one shared download on a miss.

use std::sync::Arc;

use futures_util::TryStreamExt;

use super::{Outcome, Registry, RegistryError};
use crate::cache::{Content, Flight, FlightError, ObjectKey, Origin, S3Tier, Source, SourceError};
use crate::digest::Digest;
use crate::reference::RepoName;
use crate::upstream::{ErrorKind, Upstream, UpstreamError};

/// Where a blob's bytes come from.
pub enum BlobBody {
    /// HEAD: no bytes.
    None,
    /// A cache hit.
    Cached(Content),
    /// A download in progress, possibly shared with other clients.
    Download(Flight),
}

/// A blob answer.
pub struct BlobReply {
    /// Unknown only for a download whose upstream sent no length.
    pub size: Option<u64>,
    pub body: BlobBody,
    pub outcome: Outcome,
}

fn upstream_error(digest: &Digest) -> impl FnOnce(UpstreamError) -> RegistryError + '_ {
    move |e| match e.kind {
        ErrorKind::NotFound => RegistryError::BlobUnknown(digest.to_string()),
        _ => RegistryError::Upstream(e),
    }
}

impl Registry {
    /// Answers a blob GET (`want_body`) or HEAD.
    pub async fn blob(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        want_body: bool,
    ) -> Result<BlobReply, RegistryError> {
        let key = ObjectKey::blob(digest.clone());
        let in_memory = self.inner.cache.memory().get(&key);
        // A download under way is joined before the other tiers are asked:
        // they cannot have the blob yet, and in a rollout thousands of
        // clients would each queue a disk lookup on the file pool for nothing.
        if in_memory.is_none()
            && want_body
            && let Some(flight) = self.inner.blob_flights.get(&key)
        {
            return follow(flight, true, digest).await;
        }
        let cached = match in_memory {
            Some(object) => Some((object, "memory")),
            None => self.cached(&key).await,
        };
        if let Some((object, tier)) = cached {
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
        self.handoff(&key).await;
        let source = download(
            self.inner.cache.shared().cloned(),
            upstream.clone(),
            repo.clone(),
            key.clone(),
        );
        let (flight, joined) =
            self.inner
                .blob_flights
                .join_or_start(key, self.inner.cache.clone(), source);
        follow(flight, joined, digest).await
    }
}

/// The answer that streams `flight` (`joined` when another client's
/// request started it) once its bytes start to arrive.
async fn follow(flight: Flight, joined: bool, digest: &Digest) -> Result<BlobReply, RegistryError> {
    let (size, origin) = flight.ready().await.map_err(|e| flight_error(e, digest))?;
    let outcome = match origin {
        Origin::Shared => Outcome::Hit("s3"),
        Origin::Cached(tier) => Outcome::Hit(tier),
        Origin::Upstream => Outcome::fetched(joined),
    };
    Ok(BlobReply {
        size,
        body: BlobBody::Download(flight),
        outcome,
    })
}

/// The fetch a blob flight runs: from the shared tier when it has the
/// blob (another replica fetched it), else from upstream.
async fn download(
    shared: Option<Arc<S3Tier>>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    key: ObjectKey,
) -> Result<Source, SourceError> {
    if let Some(s3) = &shared
        && let Some(source) = s3.open(&key).await
    {
        return Ok(source);
    }
    let blob = upstream
        .get_blob(&repo, &key.digest)
        .await
        .map_err(|e| Arc::new(e) as SourceError)?;
    let body = blob.body.map_err(|e| Arc::new(e) as SourceError);
    Ok(Source {
        size: blob.size,
        body: Box::new(body),
        shared: false,
    })
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
