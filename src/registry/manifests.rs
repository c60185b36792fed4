//! Manifests by digest (immutable: cached for good), and what answers by
//! tag (see `tagged`) share with them.

use std::sync::Arc;

use bytes::Bytes;

use super::{ALL_MANIFEST_TYPES, AcceptSet, Caller, Outcome, Registry, RegistryError};
use crate::cache::{CacheError, Content, Object, ObjectKey, Verified, read_whole};
use crate::cluster::{Cluster, OwnerKey, Peer, PeerError};
use crate::digest::Digest;
use crate::reference::{Reference, RepoName};
use crate::upstream::{ErrorKind, Upstream, UpstreamError};

/// Media type assumed for a manifest stored without one.
const DEFAULT_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A manifest answer: what the headers need, and the bytes for a GET.
#[derive(Clone, Debug)]
pub struct ManifestReply {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `None` for HEAD.
    pub body: Option<Bytes>,
    pub outcome: Outcome,
    /// For an answer by tag: when upstream last confirmed the tag (ms),
    /// which a peer asking the tag's owner keeps as its own record's age.
    pub tag_checked_at_ms: Option<u64>,
}

pub(super) fn not_found(what: &str) -> impl FnOnce(UpstreamError) -> RegistryError + '_ {
    move |e| match e.kind {
        ErrorKind::NotFound => RegistryError::ManifestUnknown(what.to_owned()),
        _ => RegistryError::Upstream(e),
    }
}

pub(super) fn is_transient(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Upstream(u) if u.is_transient())
}

/// Upstream sent something that is not a manifest (see `upstream::manifest`).
pub(super) fn is_not_a_manifest(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Upstream(u) if u.kind == ErrorKind::Invalid)
}

impl Registry {
    /// Answers a manifest GET (`want_body`) or HEAD for `client`, whose
    /// fair share pays for any pull this costs, and protects what it served
    /// from eviction while the client pulls (see `ops`).
    pub async fn manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &AcceptSet,
        want_body: bool,
        caller: &Caller,
    ) -> Result<ManifestReply, RegistryError> {
        let (reply, tag_ttl) = match reference {
            Reference::Digest(digest) => (
                self.manifest_by_digest(upstream, repo, digest, want_body, caller)
                    .await?,
                None,
            ),
            Reference::Tag(tag) => (
                self.manifest_by_tag(upstream, repo, tag, *accept, want_body, caller)
                    .await?,
                Some(upstream.tag_ttl()),
            ),
        };
        self.protect_pulled(&reply, tag_ttl);
        if want_body {
            self.count_pull_avoided(upstream, reply.outcome);
        }
        Ok(reply)
    }

    /// Counts a manifest GET that upstream would have counted as a pull,
    /// had it gone there.
    fn count_pull_avoided(&self, upstream: &Upstream, outcome: Outcome) {
        let reason = match outcome {
            Outcome::Hit(_) | Outcome::Redirected => "cached",
            Outcome::Revalidated => "revalidated",
            Outcome::Coalesced => "coalesced",
            Outcome::Reserve => "reserve",
            Outcome::Stale => "stale",
            Outcome::Peer => "peer",
            Outcome::Miss | Outcome::Relayed | Outcome::Local => return,
        };
        self.inner
            .metrics
            .pulls_avoided
            .with_label_values(&[upstream.name(), reason])
            .inc();
    }

    /// A cached object from the fastest tier that has it. A failing tier is
    /// logged and treated as a miss: upstream can still answer.
    pub(super) async fn cached(&self, key: &ObjectKey) -> Option<(Object, &'static str)> {
        if let Some(object) = self.inner.cache.memory().get(key) {
            return Some((object, "memory"));
        }
        match self.inner.cache.lookup(key).await {
            Ok(hit) => hit,
            Err(e) => {
                tracing::warn!(error = %e, "cache lookup failed; treating as a miss");
                None
            }
        }
    }

    pub(super) async fn manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        want_body: bool,
        caller: &Caller,
    ) -> Result<ManifestReply, RegistryError> {
        let key = ObjectKey::manifest(digest.clone());
        if let Some((object, tier)) = self.cached(&key).await {
            return reply_from_object(digest, object, want_body, Outcome::Hit(tier)).await;
        }
        if !want_body {
            // A HEAD is free upstream; fetching the body would spend a pull.
            let head = upstream
                .head_manifest(repo, digest.as_str(), ALL_MANIFEST_TYPES)
                .await
                .map_err(not_found(digest.as_str()))?;
            if let Some(size) = head.size {
                let media_type = head.media_type;
                return Ok(ManifestReply {
                    digest: digest.clone(),
                    media_type,
                    size,
                    body: None,
                    outcome: Outcome::Miss,
                    tag_checked_at_ms: None,
                });
            }
        }
        self.handoff(&key).await;
        if self.inner.manifest_fetches.get(&key).is_none() {
            // Joining a fetch is free; starting one spends the client's share.
            self.inner
                .shares
                .check(upstream, &caller.client)
                .map_err(|e| {
                    self.inner
                        .metrics
                        .fair_share_refusals
                        .with_label_values(&[upstream.name()])
                        .inc();
                    RegistryError::Upstream(e)
                })?;
        }
        let (reply, joined) = self.fetch_manifest(upstream, repo, key, caller).await?;
        let outcome = match reply.outcome {
            Outcome::Miss => Outcome::fetched(joined),
            other => other,
        };
        Ok(ManifestReply {
            body: reply.body.filter(|_| want_body),
            outcome,
            tag_checked_at_ms: None,
            ..reply
        })
    }

    /// GETs a manifest by digest once for all concurrent callers, verifies
    /// and stores it. The run first looks in the cache again (the
    /// single-flight's hand-off re-check), so a caller that missed just
    /// before another run stored the manifest spends no second pull.
    async fn fetch_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        key: ObjectKey,
        caller: &Caller,
    ) -> Result<(ManifestReply, bool), RegistryError> {
        let owner = self.owner(OwnerKey::Manifest(&key.digest), caller);
        let (this, upstream, repo) = (self.clone(), upstream.clone(), repo.clone());
        let caller = caller.clone();
        let work_key = key.clone();
        let (result, joined) = self
            .inner
            .manifest_fetches
            .run(key, async move {
                let digest = &work_key.digest;
                if let Some((object, tier)) = this.cached(&work_key).await {
                    return reply_from_object(digest, object, true, Outcome::Hit(tier)).await;
                }
                if let Some((cluster, peer)) = owner
                    && let Some(answer) = this
                        .manifest_from_owner(&cluster, &peer, &upstream, &repo, &work_key, &caller)
                        .await
                {
                    return answer;
                }
                let fetched = upstream
                    .get_manifest(&repo, digest.as_str(), ALL_MANIFEST_TYPES)
                    .await;
                if fetched
                    .as_ref()
                    .is_err_and(|e| e.kind == ErrorKind::RateLimited)
                {
                    this.inner.shares.refused(&upstream, &caller.client);
                }
                let manifest = fetched.map_err(not_found(digest.as_str()))?;
                this.inner.shares.charge(&upstream, &caller.client);
                let (media_type, body) = (manifest.media_type, manifest.body);
                let verified =
                    Verified::bytes(work_key.clone(), Some(media_type.clone()), body.clone())
                        .map_err(|e| this.mismatch(&upstream, e))?;
                store_logged(&this, &verified).await;
                Ok(ManifestReply {
                    digest: digest.clone(),
                    media_type,
                    size: body.len() as u64,
                    body: Some(body),
                    outcome: Outcome::Miss,
                    tag_checked_at_ms: None,
                })
            })
            .await;
        Ok((result??, joined))
    }
}

impl Registry {
    /// A manifest by digest from the replica that owns it, verified and
    /// kept in this replica's own tiers (the owner fills the shared one);
    /// `None` when the owner could not answer, to fetch it here instead.
    async fn manifest_from_owner(
        &self,
        cluster: &Cluster,
        peer: &Peer,
        upstream: &Upstream,
        repo: &RepoName,
        key: &ObjectKey,
        caller: &Caller,
    ) -> Option<Result<ManifestReply, RegistryError>> {
        let digest = &key.digest;
        let client = caller.client.to_header();
        let asked = cluster.manifest(
            peer,
            upstream.name(),
            repo.as_str(),
            digest,
            client.as_deref(),
        );
        let manifest = match asked.await {
            Ok(manifest) => manifest,
            Err(e @ PeerError::Answered { .. }) => {
                return Some(Err(not_found(digest.as_str())(super::peer_answer(
                    upstream, e,
                ))));
            }
            Err(PeerError::Unavailable { .. }) => return None,
        };
        let (media_type, body) = (manifest.media_type, manifest.body);
        let verified = match Verified::bytes(key.clone(), Some(media_type.clone()), body.clone()) {
            Ok(verified) => verified,
            Err(e) => {
                tracing::error!(peer = peer.url(), error = %e, "the owner sent a manifest that does not match its digest; fetching it here");
                return None;
            }
        };
        if let Err(e) = self.inner.cache.store_local(&verified).await {
            tracing::warn!(error = %e, "could not cache a verified manifest");
        }
        Some(Ok(ManifestReply {
            digest: digest.clone(),
            media_type,
            size: body.len() as u64,
            body: Some(body),
            outcome: Outcome::Peer,
            tag_checked_at_ms: None,
        }))
    }
}

pub(super) async fn store_logged(registry: &Registry, verified: &Verified) {
    if let Err(e) = registry.inner.cache.store(verified).await {
        tracing::warn!(error = %e, "could not cache a verified manifest");
    }
}

pub(super) async fn reply_from_object(
    digest: &Digest,
    object: Object,
    want_body: bool,
    outcome: Outcome,
) -> Result<ManifestReply, RegistryError> {
    let body = match (want_body, object.content) {
        (false, _) => None,
        (true, Content::Memory(bytes)) => Some(bytes),
        (true, Content::File(file)) => {
            let bytes =
                read_whole(file, object.meta.size)
                    .await
                    .map_err(|source| CacheError::Io {
                        tier: "disk",
                        context: "reading a manifest".into(),
                        source,
                    })?;
            Some(bytes)
        }
    };
    Ok(ManifestReply {
        digest: digest.clone(),
        media_type: object
            .meta
            .media_type
            .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into()),
        size: object.meta.size,
        body,
        outcome,
        tag_checked_at_ms: None,
    })
}
