//! Tag→digest records with the time they were last confirmed upstream.
//!
//! Tags move, so a record is trusted for the upstream's TTL and then
//! revalidated with a HEAD. Records live in memory and, so a restart keeps
//! serving (stale if upstream is down), as small JSON files under
//! `<data_dir>/tags/`, written with rename so a crash leaves the old record
//! or the new one, never half of either.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::cache::S3Tier;
use crate::digest::Digest;

/// Tag records kept in memory; the disk holds every one.
const MEMORY_RECORDS: u64 = 100_000;

/// Identifies one tag answer: the upstream, repository, tag, and the media
/// types the client accepts (which can change the answer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: String,
    pub repo: String,
    pub tag: String,
    pub accept: String,
}

impl TagKey {
    fn file_name(&self) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}",
            self.upstream, self.repo, self.tag, self.accept
        );
        format!("{}.json", Digest::sha256_of(text.as_bytes()).hex())
    }
}

/// What a tag pointed at, and when that was last confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub size: Option<u64>,
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl TagRecord {
    /// Whether the record may be served without asking upstream: within the
    /// TTL of its last check, or within `retry` of a failed one.
    pub fn is_fresh(&self, now_ms: u64, ttl: Duration, retry: Duration) -> bool {
        let valid_until = self.validated_at_ms.saturating_add(ttl.as_millis() as u64);
        let retry_at = self
            .failed_at_ms
            .map_or(0, |f| f.saturating_add(retry.as_millis() as u64));
        now_ms < valid_until.max(retry_at)
    }

    /// The digest, parsed (records are written from parsed digests).
    pub fn digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
    }
}

/// Tag records in memory over disk, over the shared tier when there is
/// one, where every replica sees the others' revalidations.
pub struct TagStore {
    memory: Cache<TagKey, TagRecord>,
    dir: PathBuf,
    shared: Option<Arc<S3Tier>>,
}

impl TagStore {
    /// Opens the store under `dir`, creating it, over `shared` if given.
    pub fn open(dir: &Path, shared: Option<Arc<S3Tier>>) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(TagStore {
            memory: Cache::new(MEMORY_RECORDS),
            dir: dir.to_owned(),
            shared,
        })
    }

    /// The record another replica left in the shared tier, if it is newer
    /// than `known`; it is kept locally too.
    pub async fn newer_shared(&self, key: &TagKey, known: Option<&TagRecord>) -> Option<TagRecord> {
        let shared = self.shared.as_ref()?;
        let (bytes, _) = shared.get_small(&shared.tag_key(&key.file_name())).await?;
        let record: TagRecord = serde_json::from_slice(&bytes).ok()?;
        let newer = known.is_none_or(|k| record.validated_at_ms > k.validated_at_ms);
        if newer {
            self.memory.insert(key.clone(), record.clone());
        }
        newer.then_some(record)
    }

    /// The record for `key` from memory, else from disk.
    pub async fn get(&self, key: &TagKey) -> Option<TagRecord> {
        if let Some(record) = self.memory.get(key) {
            return Some(record);
        }
        let path = self.dir.join(key.file_name());
        match tokio::fs::read(&path)
            .await
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
        {
            Some(record) => {
                self.memory.insert(key.clone(), record);
                self.memory.get(key)
            }
            None => self.newer_shared(key, None).await,
        }
    }

    /// Saves `record` in memory now, and on disk and in the shared tier in
    /// the background. Replicas racing on one tag each write a record they
    /// just validated, so whichever lands last is as good as the other: a
    /// lost race costs at most one extra revalidation.
    pub fn put(&self, key: &TagKey, record: TagRecord) {
        self.memory.insert(key.clone(), record.clone());
        let dir = self.dir.clone();
        let name = key.file_name();
        if let Some(shared) = self.shared.clone() {
            let (name, record) = (name.clone(), record.clone());
            tokio::spawn(async move {
                if let Ok(json) = serde_json::to_vec(&record) {
                    shared
                        .put_small(
                            &shared.tag_key(&name),
                            json.into(),
                            Some("application/json"),
                            false,
                        )
                        .await;
                }
            });
        }
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write_record(&dir, &name, &record) {
                tracing::warn!(error = %e, "could not save a tag record");
            }
        });
    }

    /// Forgets a tag that upstream no longer has.
    pub fn remove(&self, key: &TagKey) {
        self.memory.invalidate(key);
        let _ = std::fs::remove_file(self.dir.join(key.file_name()));
    }
}

fn write_record(dir: &Path, name: &str, record: &TagRecord) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.{}", rand::random::<u64>()));
    std::fs::write(&temp, serde_json::to_vec(record)?)?;
    std::fs::rename(&temp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(validated: u64, failed: Option<u64>) -> TagRecord {
        TagRecord {
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: "m".into(),
            size: Some(1),
            validated_at_ms: validated,
            failed_at_ms: failed,
            previous_digest: None,
        }
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

    #[tokio::test]
    async fn records_survive_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let key = TagKey {
            upstream: "u".into(),
            repo: "r".into(),
            tag: "t".into(),
            accept: "".into(),
        };
        let store = TagStore::open(dir.path(), None).unwrap();
        store.put(&key, record(5, None));
        // The disk write runs in the background; wait for it.
        for _ in 0..100 {
            if dir.path().join(key.file_name()).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reopened = TagStore::open(dir.path(), None).unwrap();
        assert_eq!(reopened.get(&key).await, Some(record(5, None)));
        reopened.remove(&key);
        assert_eq!(
            TagStore::open(dir.path(), None).unwrap().get(&key).await,
            None
        );
    }
}
