//! Manifests by digest (immutable: cached for good) and by tag (a TTL'd
//! record, revalidated with a HEAD that Docker Hub does not count, served
//! stale when upstream fails).

use std::sync::Arc;

use bytes::Bytes;

use super::tags::{TagKey, TagRecord, now_ms};
use super::{ALL_MANIFEST_TYPES, AcceptSet, Outcome, Registry, RegistryError};
use crate::cache::{CacheError, Content, Object, ObjectKey, Verified, read_whole};
use crate::digest::Digest;
use crate::reference::{Reference, RepoName, Tag};
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
}

/// The result of asking upstream about a tag, shared by coalesced callers.
#[derive(Clone, Debug)]
pub(super) struct TagCheck {
    record: TagRecord,
    outcome: Outcome,
}

fn not_found(what: &str) -> impl FnOnce(UpstreamError) -> RegistryError + '_ {
    move |e| match e.kind {
        ErrorKind::NotFound => RegistryError::ManifestUnknown(what.to_owned()),
        _ => RegistryError::Upstream(e),
    }
}

fn is_transient(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Upstream(u) if u.is_transient())
}

/// Upstream sent something that is not a manifest (see `upstream::manifest`).
fn is_not_a_manifest(e: &RegistryError) -> bool {
    matches!(e, RegistryError::Upstream(u) if u.kind == ErrorKind::Invalid)
}

impl Registry {
    /// Answers a manifest GET (`want_body`) or HEAD.
    pub async fn manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &AcceptSet,
        want_body: bool,
    ) -> Result<ManifestReply, RegistryError> {
        match reference {
            Reference::Digest(digest) => {
                self.manifest_by_digest(upstream, repo, digest, want_body)
                    .await
            }
            Reference::Tag(tag) => {
                self.manifest_by_tag(upstream, repo, tag, accept, want_body)
                    .await
            }
        }
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

    async fn manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        want_body: bool,
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
                });
            }
        }
        self.handoff(&key).await;
        let (reply, joined) = self.fetch_manifest(upstream, repo, key).await?;
        let outcome = match reply.outcome {
            Outcome::Miss => Outcome::fetched(joined),
            other => other,
        };
        Ok(ManifestReply {
            body: reply.body.filter(|_| want_body),
            outcome,
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
    ) -> Result<(ManifestReply, bool), RegistryError> {
        let (this, upstream, repo) = (self.clone(), upstream.clone(), repo.clone());
        let work_key = key.clone();
        let (result, joined) = self
            .inner
            .manifest_fetches
            .run(key, async move {
                let digest = &work_key.digest;
                if let Some((object, tier)) = this.cached(&work_key).await {
                    return reply_from_object(digest, object, true, Outcome::Hit(tier)).await;
                }
                let manifest = upstream
                    .get_manifest(&repo, digest.as_str(), ALL_MANIFEST_TYPES)
                    .await
                    .map_err(not_found(digest.as_str()))?;
                let body = manifest.body.clone();
                let verified =
                    Verified::bytes(work_key.clone(), Some(manifest.media_type), manifest.body)
                        .map_err(|e| this.mismatch(&upstream, e))?;
                store_logged(&this, &verified).await;
                Ok(ManifestReply {
                    digest: digest.clone(),
                    media_type: verified
                        .meta()
                        .media_type
                        .clone()
                        .unwrap_or_else(|| DEFAULT_MEDIA_TYPE.into()),
                    size: verified.meta().size,
                    body: Some(body),
                    outcome: Outcome::Miss,
                })
            })
            .await;
        Ok((result??, joined))
    }

    async fn manifest_by_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &AcceptSet,
        want_body: bool,
    ) -> Result<ManifestReply, RegistryError> {
        let key = TagKey {
            upstream: upstream.name().to_owned(),
            repo: repo.to_string(),
            tag: tag.as_str().to_owned(),
            accept: accept.as_str().to_owned(),
        };
        let ttl = upstream.tag_ttl();
        let fresh = |r: &TagRecord| r.is_fresh(now_ms(), ttl, self.inner.stale_retry);
        let mut known = self.inner.tags.get(&key).await;
        if !known.as_ref().is_some_and(fresh) {
            // Another replica may have revalidated the tag since.
            if let Some(newer) = self.inner.tags.newer_shared(&key, known.as_ref()).await {
                known = Some(newer);
            }
        }
        let (record, checked) = match known {
            Some(r) if fresh(&r) => (r, None),
            known => {
                let check = self
                    .check_tag(upstream, repo, tag, accept, key.clone(), known)
                    .await?;
                (check.record, Some(check.outcome))
            }
        };
        let digest = record
            .digest()
            .ok_or_else(|| RegistryError::ManifestUnknown(tag.as_str().into()))?;
        if let (false, Some(size)) = (want_body, record.size) {
            let outcome = checked.unwrap_or(Outcome::Hit("memory"));
            let media_type = record.media_type;
            return Ok(ManifestReply {
                digest,
                media_type,
                size,
                body: None,
                outcome,
            });
        }
        let reply = match self
            .manifest_by_digest(upstream, repo, &digest, want_body)
            .await
        {
            Err(e) if is_transient(&e) => {
                return self.previous_manifest(&record, e, want_body).await;
            }
            Err(e) if is_not_a_manifest(&e) => {
                // The tag must be asked again: a fixed upstream is then seen.
                self.inner.tags.remove(&key);
                return Err(e);
            }
            other => other?,
        };
        let outcome = match (checked, reply.outcome) {
            (Some(Outcome::Stale), _) => Outcome::Stale,
            (Some(check), Outcome::Hit(_)) => check,
            (_, body) => body,
        };
        Ok(ManifestReply { outcome, ..reply })
    }

    /// When a tag moved but its new manifest cannot be fetched (upstream
    /// down or out of pulls), the manifest it pointed at before is served.
    async fn previous_manifest(
        &self,
        record: &TagRecord,
        error: RegistryError,
        want_body: bool,
    ) -> Result<ManifestReply, RegistryError> {
        let Some(previous) = record
            .previous_digest
            .as_deref()
            .and_then(|d| d.parse::<Digest>().ok())
        else {
            return Err(error);
        };
        let Some((object, _)) = self.cached(&ObjectKey::manifest(previous.clone())).await else {
            return Err(error);
        };
        tracing::warn!(digest = %previous, error = %error, "serving the tag's previous manifest: the new one is unavailable");
        reply_from_object(&previous, object, want_body, Outcome::Stale).await
    }

    /// Asks upstream what a tag points at, with a HEAD, once for all
    /// concurrent callers; serves `known` stale when upstream fails.
    async fn check_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &AcceptSet,
        key: TagKey,
        known: Option<TagRecord>,
    ) -> Result<TagCheck, RegistryError> {
        let (this, upstream, repo) = (self.clone(), upstream.clone(), repo.clone());
        let (tag, accept, work_key) = (tag.clone(), accept.clone(), key.clone());
        let (result, joined) = self
            .inner
            .tag_checks
            .run(key, async move {
                let checked = this.ask_upstream(&upstream, &repo, &tag, &accept).await;
                this.settle_tag(&upstream, &work_key, known, checked)
            })
            .await;
        let check = result??;
        let outcome = if joined && check.outcome != Outcome::Stale {
            Outcome::Coalesced
        } else {
            check.outcome
        };
        Ok(TagCheck { outcome, ..check })
    }

    /// A HEAD for the tag's digest; a GET by tag only for registries that
    /// leave `Docker-Content-Digest` out.
    async fn ask_upstream(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &AcceptSet,
    ) -> Result<(Digest, String, Option<u64>), RegistryError> {
        let head = upstream
            .head_manifest(repo, tag.as_str(), accept.as_str())
            .await
            .map_err(not_found(tag.as_str()))?;
        if let Some(digest) = head.digest {
            return Ok((digest, head.media_type, head.size));
        }
        // Upstream checked the body: it is a manifest, and its digest is
        // the one announced (verified) or the one it hashes to.
        let manifest = upstream
            .get_manifest(repo, tag.as_str(), accept.as_str())
            .await
            .map_err(not_found(tag.as_str()))?;
        let size = Some(manifest.body.len() as u64);
        let (digest, media_type) = (manifest.digest, manifest.media_type);
        let verified = Verified::bytes(
            ObjectKey::manifest(digest.clone()),
            Some(media_type.clone()),
            manifest.body,
        )
        .map_err(|e| self.mismatch(upstream, e))?;
        store_logged(self, &verified).await;
        Ok((digest, media_type, size))
    }

    /// Turns upstream's answer about a tag into the record to keep.
    fn settle_tag(
        &self,
        upstream: &Upstream,
        key: &TagKey,
        known: Option<TagRecord>,
        checked: Result<(Digest, String, Option<u64>), RegistryError>,
    ) -> Result<TagCheck, RegistryError> {
        let tags = &self.inner.tags;
        match (checked, known) {
            (Ok((digest, media_type, size)), known) => {
                let digest = digest.to_string();
                let (outcome, previous_digest) = match known {
                    Some(k) if k.digest == digest => (Outcome::Revalidated, k.previous_digest),
                    Some(k) => (Outcome::Miss, Some(k.digest)),
                    None => (Outcome::Miss, None),
                };
                let record = TagRecord {
                    digest,
                    media_type,
                    size,
                    validated_at_ms: now_ms(),
                    failed_at_ms: None,
                    previous_digest,
                };
                tags.put(key, record.clone());
                Ok(TagCheck { record, outcome })
            }
            (Err(e), Some(known)) if is_transient(&e) => {
                tracing::warn!(
                    upstream = upstream.name(), repo = %key.repo, tag = %key.tag, error = %e,
                    "upstream failed; serving the cached tag stale"
                );
                let record = TagRecord {
                    failed_at_ms: Some(now_ms()),
                    ..known
                };
                tags.put(key, record.clone());
                Ok(TagCheck {
                    record,
                    outcome: Outcome::Stale,
                })
            }
            (Err(e @ RegistryError::ManifestUnknown(_)), _) => {
                tags.remove(key);
                Err(e)
            }
            (Err(e), _) => Err(e),
        }
    }
}

async fn store_logged(registry: &Registry, verified: &Verified) {
    if let Err(e) = registry.inner.cache.store(verified).await {
        tracing::warn!(error = %e, "could not cache a verified manifest");
    }
}

async fn reply_from_object(
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
    })
}
