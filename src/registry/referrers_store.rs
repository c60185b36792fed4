//! Referrers answers in memory over disk over the shared tier, as tags are
//! kept (see `tag_store`): a restart, or another replica, still has the
//! answer, serves it within its TTL without asking upstream, and serves it
//! stale when upstream is down.
//!
//! One small JSON file per question, `<dir>/referrers/<hash>.json`, written
//! with rename; the shared tier holds the same file under
//! `tags/referrers/`. The files on disk are bounded like tag records: the
//! least recently written go (see `tag_prune`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::cache::{S3Tier, blocking};
use crate::digest::Digest;

/// Answers kept in memory.
const MEMORY_ANSWERS: u64 = 10_000;

/// Answers kept on disk.
const DISK_ANSWERS: u64 = 100_000;

/// The subdirectory (and shared-tier prefix) of the answers.
const REFERRERS: &str = "referrers";

/// One referrers question: the upstream, repository, subject digest and the
/// client's query (the `artifactType` filter and a page's parameters, which
/// change the answer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ReferrersKey {
    pub upstream: String,
    pub repo: String,
    pub digest: String,
    pub query: String,
}

impl ReferrersKey {
    fn file_name(&self) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}",
            self.upstream, self.repo, self.digest, self.query
        );
        format!("{}.json", Digest::sha256_of(text.as_bytes()).hex())
    }
}

/// An answer and when upstream last confirmed it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ReferrersRecord {
    /// The image index, as served.
    pub body: String,
    /// The `OCI-Filters-Applied` value to send with it.
    pub filters_applied: Option<String>,
    /// The query of upstream's next page, when it paginated.
    #[serde(default)]
    pub next: Option<String>,
    pub validated_at_ms: u64,
    pub failed_at_ms: Option<u64>,
}

impl ReferrersRecord {
    /// Whether it may be served without asking upstream: within `ttl` of
    /// its last check, or within `retry` of a failed one.
    pub fn is_fresh(&self, now: u64, ttl: std::time::Duration, retry: std::time::Duration) -> bool {
        super::tags::fresh(self.validated_at_ms, self.failed_at_ms, now, ttl, retry)
    }
}

/// The referrers answers.
pub(super) struct ReferrersStore {
    memory: Cache<ReferrersKey, ReferrersRecord>,
    dir: PathBuf,
    shared: Option<Arc<S3Tier>>,
    /// Saves so far, which pace the pruning.
    saves: AtomicU64,
}

impl ReferrersStore {
    /// Opens the store under `dir`, creating it, over `shared` if given.
    pub fn open(dir: &Path, shared: Option<Arc<S3Tier>>) -> std::io::Result<Self> {
        let dir = dir.join(REFERRERS);
        std::fs::create_dir_all(&dir)?;
        Ok(ReferrersStore {
            memory: Cache::new(MEMORY_ANSWERS),
            dir,
            shared,
            saves: AtomicU64::new(0),
        })
    }

    /// The answer and the tier it came from: memory, else disk, else the
    /// shared tier (where another replica may have left it).
    pub async fn get(&self, key: &ReferrersKey) -> Option<(ReferrersRecord, &'static str)> {
        if let Some(record) = self.memory.get(key) {
            return Some((record, "memory"));
        }
        let path = self.dir.join(key.file_name());
        let found = match blocking::run(move || read(&path)).await.ok().flatten() {
            Some(record) => (record, "disk"),
            None => {
                let s3 = self.shared.as_ref()?;
                let object = s3.tag_key(&format!("{REFERRERS}/{}", key.file_name()));
                let bytes = s3.get_small(&object).await?.bytes;
                (serde_json::from_slice(&bytes).ok()?, "s3")
            }
        };
        self.memory.insert(key.clone(), found.0.clone());
        Some(found)
    }

    /// Keeps `record` as the answer to `key`: in memory now, on disk and in
    /// the shared tier in the background.
    pub fn put(&self, key: &ReferrersKey, record: ReferrersRecord) {
        self.memory.insert(key.clone(), record.clone());
        let Ok(json) = serde_json::to_vec(&record) else {
            return;
        };
        let name = key.file_name();
        if let Some(s3) = self.shared.clone() {
            let object = s3.tag_key(&format!("{REFERRERS}/{name}"));
            let json = json.clone();
            tokio::spawn(async move {
                s3.put_small(&object, json.into(), Some("application/json"), false)
                    .await;
            });
        }
        let saves = self.saves.fetch_add(1, Ordering::Relaxed);
        let prune = saves.is_multiple_of(DISK_ANSWERS / 20);
        let dir = self.dir.clone();
        blocking::detach(move || {
            let temp = dir.join(format!(".{name}.{}", rand::random::<u64>()));
            let written =
                std::fs::write(&temp, &json).and_then(|()| std::fs::rename(&temp, dir.join(&name)));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                tracing::warn!(error = %e, "could not save a referrers answer");
            }
            if prune && let Err(e) = super::tag_prune::prune(&dir, DISK_ANSWERS) {
                tracing::warn!(error = %e, "could not prune the referrers answers");
            }
        });
    }
}

fn read(path: &Path) -> Option<ReferrersRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
