//! OCI 1.1 referrers: the list of manifests whose `subject` is a digest.
//!
//! An answer is cached like a tag: trusted for the upstream's tag TTL, then
//! fetched again, and served stale when upstream fails transiently. An
//! upstream without the referrers API (404 on the endpoint) gets the
//! distribution-spec's fallback, answered here: the index under the
//! referrers tag schema's `<alg>-<ref>` tag, filtered by `artifactType`,
//! else an empty image index. Answers are kept like tags, in memory, on
//! disk and in the shared tier (see `referrers_store`). An upstream that
//! pages its answer sends a `Link` to the next page: its query is kept with
//! the answer and handed to the client on the client's own path.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};

use super::referrers_store::{ReferrersKey, ReferrersRecord};
use super::{AcceptSet, Caller, ClientId, Outcome, Registry, RegistryError};
use crate::clock::now_ms;
use crate::digest::Digest;
use crate::reference::{Reference, RepoName, Tag};
use crate::upstream::{ErrorKind, OCI_INDEX, Upstream, is_index};

/// The filter name the spec defines, sent in `OCI-Filters-Applied`.
const ARTIFACT_TYPE: &str = "artifactType";

/// A referrers answer for the API: an image index and its filter header.
#[derive(Clone, Debug)]
pub struct ReferrersReply {
    pub body: Bytes,
    /// `OCI-Filters-Applied`, when the list was filtered.
    pub filters_applied: Option<HeaderValue>,
    /// The query of the next page, when upstream paginated the answer.
    pub next: Option<String>,
    pub outcome: Outcome,
}

impl Registry {
    /// The referrers of `digest` in `repo`, as the client's `query` (its
    /// raw, percent-encoded `artifactType` filter and a page's parameters,
    /// without `ns`) asks; the spec's fallback tag is pulled on `client`'s
    /// share.
    pub async fn referrers(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        query: &str,
        client: &ClientId,
    ) -> Result<ReferrersReply, RegistryError> {
        let key = ReferrersKey {
            upstream: upstream.name().to_owned(),
            repo: repo.to_string(),
            digest: digest.to_string(),
            query: query.to_owned(),
        };
        let store = &self.inner.referrers;
        let (known, tier) = store.get(&key).await.unzip();
        let now = now_ms();
        if let (Some(record), Some(tier)) = (known.as_ref(), tier)
            && record.is_fresh(now, upstream.tag_ttl(), self.inner.stale_retry)
        {
            return Ok(reply(record, Outcome::Hit(tier)));
        }
        match self
            .fetch_referrers(upstream, repo, digest, query, client)
            .await
        {
            Ok(fetched) => {
                let record = ReferrersRecord {
                    validated_at_ms: now_ms(),
                    failed_at_ms: None,
                    ..fetched
                };
                store.put(&key, record.clone());
                Ok(reply(&record, Outcome::Miss))
            }
            Err(RegistryError::Upstream(e)) if e.is_transient() && known.is_some() => {
                let mut record = known.expect("checked above");
                tracing::warn!(error = %e, "referrers refresh failed; serving the cached answer");
                record.failed_at_ms = Some(now_ms());
                store.put(&key, record.clone());
                Ok(reply(&record, Outcome::Stale))
            }
            Err(e) => Err(e),
        }
    }

    /// Upstream's answer, or the spec's fallback when it has no referrers
    /// API (never paged), as a record yet to be dated.
    async fn fetch_referrers(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        query: &str,
        client: &ClientId,
    ) -> Result<ReferrersRecord, RegistryError> {
        let artifact_type = query_value(query, ARTIFACT_TYPE);
        let answer = match upstream.referrers(repo, digest, query).await {
            Ok(relayed) => {
                let header = |name| {
                    relayed
                        .headers
                        .get(name)
                        .and_then(|v: &HeaderValue| v.to_str().ok())
                };
                let filters = header(crate::upstream::FILTERS_APPLIED).map(str::to_owned);
                let next = header(header::LINK.as_str())
                    .and_then(crate::upstream::next_page)
                    .map(str::to_owned);
                (relayed.body, filters, next)
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                let (body, filters) = self
                    .referrers_from_tag(upstream, repo, digest, artifact_type, client)
                    .await?;
                let filters = filters.and_then(|v| v.to_str().ok().map(str::to_owned));
                (body, filters, None)
            }
            Err(e) => return Err(RegistryError::Upstream(e)),
        };
        let (body, filters_applied, next) = answer;
        // JSON checked as an index (or built here), so UTF-8 already.
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok(ReferrersRecord {
            body,
            filters_applied,
            next,
            validated_at_ms: 0,
            failed_at_ms: None,
        })
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
        body: Bytes::from(record.body.clone()),
        filters_applied: record
            .filters_applied
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok()),
        next: record.next.clone(),
        outcome,
    }
}

/// The raw value of `name` in `query`, when given and not empty.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
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
