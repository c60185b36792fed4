//! What a tag pointed at, per media type, and which record serves a client.
//!
//! A tag is one [`TagEntry`]: one [`TagRecord`] per media type upstream
//! answered with (a tag naming a manifest list answers the list to clients
//! that accept lists and one platform's manifest to those that do not), and
//! the type upstream answers to a client with no preference. Records are
//! keyed by what upstream *answered*, never by what a client asked, so the
//! entry is bounded by the known media types however clients spell their
//! `Accept`. [`TagEntry::choose`] holds the rule that serves a client.
//!
//! Tags move, so a record is trusted for the upstream's TTL and then
//! revalidated with a HEAD; `tag_store` keeps entries in memory, on disk
//! and in the shared tier.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::accept::{AcceptSet, Kind};
use crate::digest::Digest;

/// Identifies one tag: the upstream, repository and tag name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
}

impl TagKey {
    /// The entry's file name, on disk and in the shared tier.
    pub(super) fn file_name(&self) -> String {
        let text = format!("{}\n{}\n{}", self.upstream, self.repo, self.tag);
        format!("{}.json", Digest::sha256_of(text.as_bytes()).hex())
    }
}

/// What upstream answered for a tag in one media type, and when that was
/// last confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub size: Option<u64>,
    /// The richest kind the request that got this answer accepted. Upstream
    /// answers the richest kind it has, so it had nothing richer than this
    /// answer up to that kind: the record can serve clients whose richest
    /// accepted kind is no richer.
    pub proven_up_to: Kind,
    /// Unix milliseconds of the last successful upstream check.
    pub validated_at_ms: u64,
    /// Unix milliseconds of the last failed check, which postpones the next.
    #[serde(default)]
    pub failed_at_ms: Option<u64>,
    /// What the tag pointed at before it last moved: served when the new
    /// manifest cannot be fetched.
    #[serde(default)]
    pub previous_digest: Option<String>,
}

impl TagRecord {
    /// Whether the record may be served without asking upstream: within the
    /// TTL of its last check, or within `retry` of a failed one.
    pub fn is_fresh(&self, now_ms: u64, ttl: Duration, retry: Duration) -> bool {
        fresh(self.validated_at_ms, self.failed_at_ms, now_ms, ttl, retry)
    }

    /// The digest, parsed (records are written from parsed digests).
    pub fn digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
    }
}

/// Whether an answer confirmed upstream at `validated_at_ms`, whose last
/// check failed at `failed_at_ms`, may be served at `now_ms` without asking
/// upstream: within `ttl` of the confirmation, or within `retry` of the
/// failure. Tags and referrers answers alike.
pub(super) fn fresh(
    validated_at_ms: u64,
    failed_at_ms: Option<u64>,
    now_ms: u64,
    ttl: Duration,
    retry: Duration,
) -> bool {
    let valid_until = validated_at_ms.saturating_add(ttl.as_millis() as u64);
    let retry_at = failed_at_ms.map_or(0, |f| f.saturating_add(retry.as_millis() as u64));
    now_ms < valid_until.max(retry_at)
}

/// Everything known about one tag; one file per tag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    /// The media type upstream answers a client with no preference.
    #[serde(default)]
    pub default_type: Option<String>,
    /// At most one record per media type.
    #[serde(default)]
    pub records: Vec<TagRecord>,
}

impl TagEntry {
    /// The record that answers a client accepting `accept`, fresh or not.
    ///
    /// The rule, so that a cached answer is the one upstream would give:
    /// - A client with no preference (no `Accept`, only `*/*` or only
    ///   unknown types) gets what upstream answers to no preference: the
    ///   record of [`default_type`](Self::default_type). distribution
    ///   ignores `*/*` the same way.
    /// - A client listing known types is admitted to a record whose type it
    ///   lists, if the record's [`proven_up_to`](TagRecord::proven_up_to)
    ///   reaches the richest kind the client lists: a platform manifest
    ///   that upstream gave a client without list support must not stand
    ///   in for the list a list-capable client would get.
    /// - Among admitted records the richest kind wins (index over manifest
    ///   over schema 1), as a registry answers; then the latest validated.
    pub fn choose(&self, accept: AcceptSet) -> Option<&TagRecord> {
        let Some(richest) = accept.richest() else {
            return self.record(self.default_type.as_deref()?);
        };
        self.records
            .iter()
            .filter(|r| accept.admits(&r.media_type) && r.proven_up_to >= richest)
            .max_by_key(|r| (Kind::of(&r.media_type), r.validated_at_ms))
    }

    /// The record of `media_type`, if any.
    pub fn record(&self, media_type: &str) -> Option<&TagRecord> {
        self.records.iter().find(|r| r.media_type == media_type)
    }

    /// Keeps `record` as the answer in its media type. `asked` is the set
    /// upstream was asked with: an empty one makes the record the
    /// no-preference answer. `obsolete` names the type of the record that
    /// was checked, dropped when `asked` listed it and upstream answered
    /// another type (the tag changed format). A type pullthrough does not
    /// know replaces any other such record, so the entry stays bounded.
    ///
    /// An answer that confirms a record's digest keeps that record's
    /// [`proven_up_to`](TagRecord::proven_up_to) if it was richer: a client
    /// asking for less (or with no preference) must not cost the clients
    /// that accept more their record.
    pub fn keep(&mut self, mut record: TagRecord, asked: AcceptSet, obsolete: Option<&str>) {
        let media_type = record.media_type.clone();
        if let Some(same) = self
            .record(&media_type)
            .filter(|r| r.digest == record.digest)
        {
            record.proven_up_to = record.proven_up_to.max(same.proven_up_to);
        }
        if let Some(old) = obsolete.filter(|old| *old != media_type && asked.admits(old)) {
            self.forget(old);
        }
        let unknown = Kind::of(&media_type) == Kind::Other;
        self.records.retain(|r| {
            r.media_type != media_type && !(unknown && Kind::of(&r.media_type) == Kind::Other)
        });
        self.records.push(record);
        if asked.is_empty() {
            self.default_type = Some(media_type);
        }
    }

    /// Drops the record of `media_type` (upstream no longer has it).
    pub fn forget(&mut self, media_type: &str) {
        self.records.retain(|r| r.media_type != media_type);
        if self.default_type.as_deref() == Some(media_type) {
            self.default_type = None;
        }
    }

    /// Takes from `other` (another replica's copy) every record validated
    /// later than ours, and its default type if we have none. Returns
    /// whether anything changed.
    pub fn merge(&mut self, other: TagEntry) -> bool {
        let mut changed = false;
        for theirs in other.records {
            let ours = self.record(&theirs.media_type);
            if ours.is_none_or(|o| theirs.validated_at_ms > o.validated_at_ms) {
                self.records.retain(|r| r.media_type != theirs.media_type);
                self.records.push(theirs);
                changed = true;
            }
        }
        if self.default_type.is_none() && other.default_type.is_some() {
            self.default_type = other.default_type;
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const PRETTYJWS: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    const V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

    fn record(validated: u64, failed: Option<u64>) -> TagRecord {
        TagRecord {
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: V2.into(),
            size: Some(1),
            proven_up_to: Kind::Index,
            validated_at_ms: validated,
            failed_at_ms: failed,
            previous_digest: None,
        }
    }

    fn typed(media_type: &str, proven_up_to: Kind, validated: u64) -> TagRecord {
        TagRecord {
            media_type: media_type.into(),
            proven_up_to,
            ..record(validated, None)
        }
    }

    fn chosen(entry: &TagEntry, accept: &[&str]) -> Option<String> {
        entry
            .choose(AcceptSet::of(accept))
            .map(|r| r.media_type.clone())
    }

    #[test]
    fn freshness_follows_ttl_and_retry() {
        let ttl = Duration::from_secs(10);
        let retry = Duration::from_secs(2);
        assert!(record(1_000, None).is_fresh(10_999, ttl, retry));
        assert!(!record(1_000, None).is_fresh(11_000, ttl, retry));
        assert!(record(1_000, Some(20_000)).is_fresh(21_999, ttl, retry));
        assert!(!record(1_000, Some(20_000)).is_fresh(22_000, ttl, retry));
    }

    #[test]
    fn one_record_serves_every_client_that_lists_its_type() {
        let mut entry = TagEntry::default();
        entry.keep(
            typed(LIST, Kind::Index, 1),
            AcceptSet::of(&[LIST, V2]),
            None,
        );
        let dockerd = [V2, LIST, OCI, OCI_INDEX, PRETTYJWS, "application/json"];
        let containerd = [V2, LIST, OCI, OCI_INDEX, "*/*"];
        let containers_image = [OCI, OCI_INDEX, LIST, V2, PRETTYJWS, V1];
        for accept in [&dockerd[..], &containerd, &containers_image] {
            assert_eq!(chosen(&entry, accept).as_deref(), Some(LIST));
        }
        assert_eq!(chosen(&entry, &[OCI_INDEX, OCI]), None, "list not listed");
    }

    #[test]
    fn a_platform_manifest_does_not_stand_in_for_a_list() {
        let mut entry = TagEntry::default();
        // A client without list support got one platform's manifest.
        entry.keep(typed(V2, Kind::Manifest, 1), AcceptSet::of(&[V2]), None);
        assert_eq!(chosen(&entry, &[V2]).as_deref(), Some(V2));
        assert_eq!(chosen(&entry, &[V2, PRETTYJWS]).as_deref(), Some(V2));
        assert_eq!(chosen(&entry, &[V2, LIST]), None, "the list may exist");
        // Once a list-capable client got the list, it wins for such clients
        // and the platform manifest still serves the others.
        entry.keep(
            typed(LIST, Kind::Index, 2),
            AcceptSet::of(&[V2, LIST]),
            None,
        );
        assert_eq!(chosen(&entry, &[V2, LIST]).as_deref(), Some(LIST));
        assert_eq!(chosen(&entry, &[V2]).as_deref(), Some(V2));
        assert_eq!(entry.records.len(), 2);
    }

    #[test]
    fn a_narrower_confirmation_keeps_the_wider_proof() {
        let mut entry = TagEntry::default();
        entry.keep(typed(V2, Kind::Index, 1), AcceptSet::of(&[V2, LIST]), None);
        entry.keep(typed(V2, Kind::Manifest, 2), AcceptSet::default(), None);
        assert_eq!(entry.record(V2).unwrap().proven_up_to, Kind::Index);
        assert_eq!(chosen(&entry, &[V2, LIST]).as_deref(), Some(V2));
        // A new digest is a new answer: its own proof only.
        let moved = TagRecord {
            digest: format!("sha256:{}", "b".repeat(64)),
            ..typed(V2, Kind::Manifest, 3)
        };
        entry.keep(moved, AcceptSet::of(&[V2]), None);
        assert_eq!(entry.record(V2).unwrap().proven_up_to, Kind::Manifest);
        assert_eq!(chosen(&entry, &[V2, LIST]), None);
    }

    #[test]
    fn the_richest_admitted_record_wins() {
        let mut entry = TagEntry::default();
        entry.keep(typed(V2, Kind::Index, 5), AcceptSet::of(&[V2, LIST]), None);
        entry.keep(
            typed(OCI_INDEX, Kind::Index, 1),
            AcceptSet::of(&[OCI_INDEX]),
            None,
        );
        assert_eq!(chosen(&entry, &[V2, OCI_INDEX]).as_deref(), Some(OCI_INDEX));
        assert_eq!(chosen(&entry, &[V2, LIST]).as_deref(), Some(V2));
    }

    #[test]
    fn no_preference_gets_upstreams_default_answer() {
        let mut entry = TagEntry::default();
        entry.keep(typed(LIST, Kind::Index, 1), AcceptSet::of(&[LIST]), None);
        assert_eq!(chosen(&entry, &[]), None, "default not known yet");
        assert_eq!(chosen(&entry, &["*/*", "application/x-junk"]), None);
        entry.keep(typed(V2, Kind::Manifest, 2), AcceptSet::default(), None);
        assert_eq!(entry.default_type.as_deref(), Some(V2));
        assert_eq!(chosen(&entry, &[]).as_deref(), Some(V2));
        assert_eq!(chosen(&entry, &[LIST, V2]).as_deref(), Some(LIST));
    }

    #[test]
    fn a_tag_that_changed_format_drops_the_old_record() {
        let mut entry = TagEntry::default();
        entry.keep(
            typed(LIST, Kind::Index, 1),
            AcceptSet::of(&[LIST, V2]),
            None,
        );
        entry.keep(
            typed(V2, Kind::Index, 2),
            AcceptSet::of(&[LIST, V2]),
            Some(LIST),
        );
        assert_eq!(entry.records.len(), 1);
        assert_eq!(chosen(&entry, &[LIST, V2]).as_deref(), Some(V2));
        // Asked without the old type, the answer says nothing about it.
        entry.keep(
            typed(OCI_INDEX, Kind::Index, 3),
            AcceptSet::of(&[OCI_INDEX]),
            Some(V2),
        );
        assert_eq!(entry.records.len(), 2);
    }

    #[test]
    fn records_stay_bounded_by_the_known_types() {
        let mut entry = TagEntry::default();
        for i in 0..50 {
            entry.keep(typed(V2, Kind::Index, i), AcceptSet::of(&[V2]), None);
            let odd = format!("application/x-odd-{i}");
            entry.keep(typed(&odd, Kind::Other, i), AcceptSet::default(), None);
        }
        assert_eq!(entry.records.len(), 2);
        assert_eq!(entry.default_type.as_deref(), Some("application/x-odd-49"));
    }

    #[test]
    fn merging_takes_only_newer_records() {
        let mut ours = TagEntry::default();
        ours.keep(typed(V2, Kind::Index, 10), AcceptSet::of(&[V2]), None);
        let mut theirs = TagEntry::default();
        theirs.keep(typed(V2, Kind::Index, 5), AcceptSet::of(&[V2]), None);
        assert!(!ours.clone().merge(theirs.clone()));
        theirs.keep(typed(LIST, Kind::Index, 20), AcceptSet::default(), None);
        assert!(ours.merge(theirs));
        assert_eq!(ours.records.len(), 2);
        assert_eq!(ours.record(V2).unwrap().validated_at_ms, 10);
        assert_eq!(ours.default_type.as_deref(), Some(LIST));
    }
}
