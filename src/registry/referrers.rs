//! OCI 1.1 referrers: the list of manifests whose `subject` is a digest.
//!
//! An answer is cached like a tag: trusted for the upstream's tag TTL, then
//! fetched again, and served stale when upstream fails transiently. An
//! upstream without the referrers API (404 on the endpoint) gets the
//! distribution-spec's fallback, answered here: the index under the
//! referrers tag schema's `<alg>-<ref>` tag, filtered by `artifactType`,
//! else an empty image index. Answers live in memory only: losing them costs
//! one upstream request each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use moka::sync::Cache;
use serde_json::{Value, json};

use super::{AcceptSet, Caller, ClientId, Outcome, Registry, RegistryError};
use crate::clock::now_ms;
use crate::digest::Digest;
use crate::reference::{Reference, RepoName, Tag};
use crate::upstream::{ErrorKind, OCI_INDEX, Upstream, is_index};

/// Referrers answers kept in memory.
const MEMORY_ANSWERS: u64 = 10_000;

/// The filter name the spec defines, sent in `OCI-Filters-Applied`.
const ARTIFACT_TYPE: &str = "artifactType";

/// One referrers question: the upstream, repository, subject digest and the
/// raw `artifactType` filter (which changes the answer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReferrersKey {
    upstream: String,
    repo: String,
    digest: String,
    artifact_type: Option<String>,
}

/// A cached answer and when upstream last confirmed it.
#[derive(Clone, Debug)]
struct ReferrersRecord {
    body: Bytes,
    /// The `OCI-Filters-Applied` value to send with it.
    filters_applied: Option<HeaderValue>,
    validated_at_ms: u64,
    failed_at_ms: Option<u64>,
}

impl ReferrersRecord {
    fn is_fresh(&self, now: u64, ttl: Duration, retry: Duration) -> bool {
        let valid_until = self.validated_at_ms.saturating_add(ttl.as_millis() as u64);
        let retry_at = self
            .failed_at_ms
            .map_or(0, |f| f.saturating_add(retry.as_millis() as u64));
        now < valid_until.max(retry_at)
    }
}

/// The in-memory referrers answers.
pub(super) struct ReferrersStore(Cache<ReferrersKey, ReferrersRecord>);

impl Default for ReferrersStore {
    fn default() -> Self {
        ReferrersStore(Cache::new(MEMORY_ANSWERS))
    }
}

/// A referrers answer for the API: an image index and its filter header.
#[derive(Clone, Debug)]
pub struct ReferrersReply {
    pub body: Bytes,
    /// `OCI-Filters-Applied`, when the list was filtered.
    pub filters_applied: Option<HeaderValue>,
    pub outcome: Outcome,
}

impl Registry {
    /// The referrers of `digest` in `repo`, filtered by the client's raw
    /// (percent-encoded) `artifact_type` when given; the spec's fallback
    /// tag is pulled on `client`'s share.
    pub async fn referrers(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
        client: &ClientId,
    ) -> Result<ReferrersReply, RegistryError> {
        let key = ReferrersKey {
            upstream: upstream.name().to_owned(),
            repo: repo.to_string(),
            digest: digest.to_string(),
            artifact_type: artifact_type.map(str::to_owned),
        };
        let store = &self.inner.referrers.0;
        let known = store.get(&key);
        let now = now_ms();
        if let Some(record) = known.as_ref()
            && record.is_fresh(now, upstream.tag_ttl(), self.inner.stale_retry)
        {
            return Ok(reply(record, Outcome::Hit("memory")));
        }
        match self
            .fetch_referrers(upstream, repo, digest, artifact_type, client)
            .await
        {
            Ok((body, filters_applied)) => {
                let record = ReferrersRecord {
                    body,
                    filters_applied,
                    validated_at_ms: now_ms(),
                    failed_at_ms: None,
                };
                store.insert(key, record.clone());
                Ok(reply(&record, Outcome::Miss))
            }
            Err(RegistryError::Upstream(e)) if e.is_transient() && known.is_some() => {
                let mut record = known.expect("checked above");
                tracing::warn!(error = %e, "referrers refresh failed; serving the cached answer");
                record.failed_at_ms = Some(now_ms());
                store.insert(key, record.clone());
                Ok(reply(&record, Outcome::Stale))
            }
            Err(e) => Err(e),
        }
    }

    /// Upstream's answer, or the spec's fallback when it has no referrers API.
    async fn fetch_referrers(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
        client: &ClientId,
    ) -> Result<(Bytes, Option<HeaderValue>), RegistryError> {
        match upstream.referrers(repo, digest, artifact_type).await {
            Ok(relayed) => {
                let filters = relayed
                    .headers
                    .get(crate::upstream::FILTERS_APPLIED)
                    .cloned();
                Ok((relayed.body, filters))
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.referrers_from_tag(upstream, repo, digest, artifact_type, client)
                    .await
            }
            Err(e) => Err(RegistryError::Upstream(e)),
        }
    }

    /// The spec's fallback: the index under the `<alg>-<ref>` tag, filtered
    /// here, or an empty index when upstream has no such tag. The tag goes
    /// through the tag cache like any other.
    async fn referrers_from_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
        client: &ClientId,
    ) -> Result<(Bytes, Option<HeaderValue>), RegistryError> {
        let tag = Tag::parse(&fallback_tag(digest)).map_err(|e| {
            RegistryError::ManifestUnknown(format!("no referrers tag for {digest}: {e}"))
        })?;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(OCI_INDEX));
        let accept = AcceptSet::from_headers(&headers);
        let found = self
            .manifest(
                upstream,
                repo,
                &Reference::Tag(tag),
                &accept,
                true,
                &Caller::client(client.clone()),
            )
            .await;
        let descriptors = match found {
            Ok(reply) => {
                let body = reply.body.unwrap_or_default();
                if reply.media_type != OCI_INDEX || !is_index(&body) {
                    tracing::warn!(upstream = upstream.name(), %repo, %digest,
                        media_type = reply.media_type, "the referrers tag holds no image index; answering an empty list");
                    Vec::new()
                } else {
                    manifests_of(&body)
                }
            }
            Err(RegistryError::ManifestUnknown(_) | RegistryError::NameUnknown(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let wanted = artifact_type.map(percent_decoded);
        let filters = wanted
            .is_some()
            .then(|| HeaderValue::from_static(ARTIFACT_TYPE));
        let manifests: Vec<Value> = descriptors
            .into_iter()
            .filter(|d| {
                wanted
                    .as_deref()
                    .is_none_or(|w| d.get(ARTIFACT_TYPE).and_then(Value::as_str) == Some(w))
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        Ok((Bytes::from(index.to_string()), filters))
    }
}

fn reply(record: &ReferrersRecord, outcome: Outcome) -> ReferrersReply {
    ReferrersReply {
        body: record.body.clone(),
        filters_applied: record.filters_applied.clone(),
        outcome,
    }
}

/// The referrers tag schema's tag for `digest`: the algorithm truncated to
/// 32 characters, `-`, the encoded part truncated to 64, with any character
/// a tag may not hold replaced by `-`, as the distribution-spec says.
pub fn fallback_tag(digest: &Digest) -> String {
    let algorithm: String = digest.algorithm().as_str().chars().take(32).collect();
    let encoded: String = digest.hex().chars().take(64).collect();
    format!("{algorithm}-{encoded}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The descriptors of an index body (one already checked by `is_index`).
fn manifests_of(body: &[u8]) -> Vec<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("manifests").map(Value::take))
        .and_then(|m| match m {
            Value::Array(items) => Some(items),
            _ => None,
        })
        .unwrap_or_default()
}

/// `%XX` escapes (and nothing else) decoded, as query values arrive.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_tag_follows_the_schema() {
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(fallback_tag(&digest), format!("sha256-{}", "ab".repeat(32)));
        let long: Digest = format!("sha512:{}", "c".repeat(128)).parse().unwrap();
        assert_eq!(fallback_tag(&long), format!("sha512-{}", "c".repeat(64)));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            percent_decoded("application%2Fvnd.example%2bsig"),
            "application/vnd.example+sig"
        );
        assert_eq!(percent_decoded("a%2"), "a%2");
        assert_eq!(percent_decoded("plain"), "plain");
    }

    #[test]
    fn descriptors_come_out_of_an_index() {
        let body = br#"{"manifests":[{"digest":"x"},{"digest":"y"}]}"#;
        assert_eq!(manifests_of(body).len(), 2);
        assert!(manifests_of(b"{}").is_empty());
    }
}
