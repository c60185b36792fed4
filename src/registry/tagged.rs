//! Manifests by tag: served from the tag's record for the client's `Accept`
//! within the TTL, revalidated with a HEAD that Docker Hub does not count
//! after it, served stale when upstream fails.
//!
//! Upstream is asked only when no record admits the client (see
//! `TagEntry::choose`) or the admitted one is past its TTL; the answer is
//! kept by its media type, so clients that spell `Accept` differently but
//! take the same answer share one record and one check.

use std::sync::Arc;

use super::accept::{AcceptSet, Kind};
use super::manifests::{ManifestReply, is_not_a_manifest, is_transient, not_found, store_logged};
use super::tags::{TagKey, TagRecord};
use super::{Caller, Outcome, Registry, RegistryError};
use crate::cache::{ObjectKey, Verified};
use crate::clock::now_ms;
use crate::cluster::OwnerKey;
use crate::cluster::{Cluster, Peer, PeerError};
use crate::digest::Digest;
use crate::reference::{RepoName, Tag};
use crate::upstream::{Standing, Upstream};

/// What a tag check is about: concurrent requests with equal keys share one
/// upstream exchange.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CheckKey {
    tag: TagKey,
    about: CheckAbout,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CheckAbout {
    /// Revalidating the record of this media type for clients whose richest
    /// accepted kind is this: upstream answers them all alike, whatever
    /// else their `Accept` lists (`None`: no preference).
    Record(String, Option<Kind>),
    /// No record admits clients accepting exactly this set.
    Unanswered(AcceptSet),
}

/// The result of asking upstream about a tag, shared by coalesced callers.
#[derive(Clone, Debug)]
pub(super) struct TagCheck {
    record: TagRecord,
    outcome: Outcome,
}

/// What a tag points at, as upstream (or the tag's owner) answered.
struct Answer {
    digest: Digest,
    media_type: String,
    size: Option<u64>,
    /// When upstream confirmed it (ms): now, or when the owner did.
    checked_at_ms: u64,
    /// How the owner served it when that was stale or from the reserve:
    /// then kept for `stale_retry`, like a stale record of this replica's.
    held: Option<Outcome>,
}

/// The tag a check is about, and what the asking client accepts.
struct Asked<'a> {
    upstream: &'a Arc<Upstream>,
    repo: &'a RepoName,
    tag: &'a Tag,
    accept: AcceptSet,
}

impl Registry {
    pub(super) async fn manifest_by_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: AcceptSet,
        want_body: bool,
        caller: &Caller,
    ) -> Result<ManifestReply, RegistryError> {
        let key = TagKey {
            upstream: upstream.name().to_owned(),
            repo: repo.to_string(),
            tag: tag.as_str().to_owned(),
        };
        let ttl = upstream.tag_ttl();
        let fresh = |r: &TagRecord| r.is_fresh(now_ms(), ttl, self.inner.stale_retry);
        let tags = &self.inner.tags;
        let mut entry = tags.get(&key).await.unwrap_or_default();
        if !entry.choose(accept).is_some_and(fresh) {
            // Another replica may have revalidated the tag since.
            if let Some(newer) = tags.newer_shared(&key, &entry).await {
                entry = newer;
            }
        }
        let (record, checked) = match entry.choose(accept).cloned() {
            Some(r) if fresh(&r) => (r, None),
            // A low budget is spent on content never seen before, not on
            // learning that a cached tag moved (which would also tell a
            // HEAD-first client a digest the mirror may not deliver).
            Some(r) if upstream.budget().standing() != Standing::Plenty => {
                (r, Some(Outcome::Reserve))
            }
            known => {
                let asked = Asked {
                    upstream,
                    repo,
                    tag,
                    accept,
                };
                let check = self.check_tag(&asked, key.clone(), known, caller).await?;
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
                tag_checked_at_ms: Some(record.validated_at_ms),
            });
        }
        let reply = match self
            .manifest_by_digest(upstream, repo, &digest, want_body, caller)
            .await
        {
            Err(e) if is_transient(&e) => {
                return self.previous_manifest(&record, e, want_body).await;
            }
            Err(e) if is_not_a_manifest(&e) => {
                // The tag must be asked again: a fixed upstream is then seen.
                let media_type = record.media_type.clone();
                self.inner
                    .tags
                    .update(&key, |entry| entry.forget(&media_type));
                return Err(e);
            }
            other => other?,
        };
        let outcome = match (checked, reply.outcome) {
            (Some(held @ (Outcome::Stale | Outcome::Reserve)), _) => held,
            (Some(check), Outcome::Hit(_)) => check,
            (_, body) => body,
        };
        Ok(ManifestReply {
            outcome,
            tag_checked_at_ms: Some(record.validated_at_ms),
            ..reply
        })
    }

    /// Asks upstream what a tag points at for a client accepting `accept`,
    /// revalidating `known` (the record that admits the client) if any.
    /// A client that joined a check whose answer it does not accept asks
    /// on its own.
    async fn check_tag(
        &self,
        asked: &Asked<'_>,
        key: TagKey,
        known: Option<TagRecord>,
        caller: &Caller,
    ) -> Result<TagCheck, RegistryError> {
        let accept = asked.accept;
        let about = match &known {
            Some(k) => CheckAbout::Record(k.media_type.clone(), accept.richest()),
            None => CheckAbout::Unanswered(accept),
        };
        let check_key = CheckKey {
            tag: key.clone(),
            about,
        };
        let (check, joined) = self
            .run_check(asked, check_key, known.clone(), caller)
            .await?;
        if !joined || accept.is_empty() || accept.admits(&check.record.media_type) {
            return Ok(check);
        }
        let alone = CheckKey {
            tag: key,
            about: CheckAbout::Unanswered(accept),
        };
        Ok(self.run_check(asked, alone, known, caller).await?.0)
    }

    /// One check for all concurrent callers with `check_key`: asks
    /// upstream with a HEAD, serves `known` stale when upstream fails.
    /// Says whether this caller joined another's check.
    async fn run_check(
        &self,
        asked: &Asked<'_>,
        check_key: CheckKey,
        known: Option<TagRecord>,
        caller: &Caller,
    ) -> Result<(TagCheck, bool), RegistryError> {
        let Asked {
            upstream,
            repo,
            tag,
            accept,
        } = *asked;
        let owner = self.owner(
            OwnerKey::Tag {
                upstream: upstream.name(),
                repo: repo.as_str(),
                tag: tag.as_str(),
            },
            caller,
        );
        let client = caller.client.to_header();
        let (this, upstream, repo) = (self.clone(), upstream.clone(), repo.clone());
        let (tag, key) = (tag.clone(), check_key.tag.clone());
        let (result, joined) = self
            .inner
            .tag_checks
            .run(check_key, async move {
                // The hand-off re-check: a check that ended just before
                // this one started may have answered it already. (`known`
                // was not fresh, so a fresh record is that newer answer.)
                let ttl = upstream.tag_ttl();
                if let Some(entry) = this.inner.tags.get(&key).await
                    && let Some(record) = entry.choose(accept)
                    && record.is_fresh(now_ms(), ttl, this.inner.stale_retry)
                {
                    let record = record.clone();
                    return Ok(TagCheck {
                        record,
                        outcome: Outcome::Coalesced,
                    });
                }
                let from_owner = match owner {
                    Some((cluster, peer)) => {
                        let asked = (&cluster, &peer, client.as_deref());
                        this.tag_from_owner(asked, &upstream, &repo, &tag, accept)
                            .await
                    }
                    None => None,
                };
                let checked = match from_owner {
                    Some(answer) => answer,
                    None => this.ask_upstream(&upstream, &repo, &tag, accept).await,
                };
                this.settle_tag(&upstream, &key, accept, known, checked)
            })
            .await;
        let check = result??;
        let outcome = if joined && check.outcome != Outcome::Stale {
            Outcome::Coalesced
        } else {
            check.outcome
        };
        Ok((TagCheck { outcome, ..check }, joined))
    }

    /// A HEAD for the tag's digest; a GET by tag only for registries that
    /// leave `Docker-Content-Digest` out.
    async fn ask_upstream(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: AcceptSet,
    ) -> Result<Answer, RegistryError> {
        let accept = accept.header_value();
        let head = upstream
            .head_manifest(repo, tag.as_str(), &accept)
            .await
            .map_err(not_found(tag.as_str()))?;
        if let Some(digest) = head.digest {
            return Ok(Answer {
                digest,
                media_type: head.media_type,
                size: head.size,
                checked_at_ms: now_ms(),
                held: None,
            });
        }
        // Upstream checked the body: it is a manifest, and its digest is
        // the one announced (verified) or the one it hashes to.
        let manifest = upstream
            .get_manifest(repo, tag.as_str(), &accept)
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
        Ok(Answer {
            digest,
            media_type,
            size,
            checked_at_ms: now_ms(),
            held: None,
        })
    }

    /// What the tag's owner says it points at (the owner asks upstream at
    /// most once for the fleet); `None` when the owner could not answer,
    /// to ask upstream here instead.
    async fn tag_from_owner(
        &self,
        (cluster, peer, client): (&Cluster, &Peer, Option<&str>),
        upstream: &Upstream,
        repo: &RepoName,
        tag: &Tag,
        accept: AcceptSet,
    ) -> Option<Result<Answer, RegistryError>> {
        let accept_header = accept.header_value();
        let asked = cluster.tag(
            peer,
            upstream.name(),
            repo.as_str(),
            tag.as_str(),
            &accept_header,
            client,
        );
        match asked.await {
            Ok(answer) => {
                let held = match answer.outcome.as_deref() {
                    Some("stale") => Some(Outcome::Stale),
                    Some("reserve") => Some(Outcome::Reserve),
                    _ => None,
                };
                Some(Ok(Answer {
                    digest: answer.digest,
                    media_type: answer.media_type,
                    size: answer.size,
                    checked_at_ms: now_ms().saturating_sub(answer.age.as_millis() as u64),
                    held,
                }))
            }
            Err(e @ PeerError::Answered { .. }) => Some(Err(not_found(tag.as_str())(
                super::peer_answer(upstream, e),
            ))),
            Err(PeerError::Unavailable { .. }) => None,
        }
    }

    /// Turns upstream's answer to a request accepting `asked` into the
    /// record to keep, in place of `known` (the record checked, if any).
    fn settle_tag(
        &self,
        upstream: &Upstream,
        key: &TagKey,
        asked: AcceptSet,
        known: Option<TagRecord>,
        checked: Result<Answer, RegistryError>,
    ) -> Result<TagCheck, RegistryError> {
        let tags = &self.inner.tags;
        match (checked, known) {
            (Ok(answer), known) => {
                let (digest, media_type) = (answer.digest.to_string(), answer.media_type);
                let (outcome, previous_digest) = match &known {
                    Some(k) if k.digest == digest && k.media_type == media_type => {
                        (Outcome::Revalidated, k.previous_digest.clone())
                    }
                    Some(k) => (Outcome::Miss, Some(k.digest.clone())),
                    None => (Outcome::Miss, None),
                };
                let outcome = answer.held.unwrap_or(outcome);
                let kind = Kind::of(&media_type);
                let record = TagRecord {
                    digest,
                    media_type,
                    size: answer.size,
                    proven_up_to: asked.richest().map_or(kind, |richest| richest.max(kind)),
                    validated_at_ms: answer.checked_at_ms,
                    failed_at_ms: answer.held.map(|_| now_ms()),
                    previous_digest,
                };
                let obsolete = known.map(|k| k.media_type);
                tags.update(key, |entry| {
                    entry.keep(record.clone(), asked, obsolete.as_deref())
                });
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
                tags.update(key, |entry| entry.keep(record.clone(), asked, None));
                Ok(TagCheck {
                    record,
                    outcome: Outcome::Stale,
                })
            }
            (Err(e @ RegistryError::ManifestUnknown(_)), Some(known)) => {
                tags.update(key, |entry| entry.forget(&known.media_type));
                Err(e)
            }
            (Err(e), _) => Err(e),
        }
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
        super::manifests::reply_from_object(&previous, object, want_body, Outcome::Stale).await
    }
}
