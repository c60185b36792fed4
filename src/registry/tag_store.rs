//! Tag entries in memory over disk over the shared tier.
//!
//! One small JSON file per tag, `<dir>/by-tag/<hash>.json`, written with
//! rename so a crash leaves the old entry or the new one, never half of
//! either; restarts keep serving (stale if upstream is down). The shared
//! tier holds the same file under `tags/by-tag/`, where every replica sees
//! the others' revalidations. Earlier versions kept one file per tag *and*
//! `Accept` list directly under `<dir>`; those are removed at open. The
//! files on disk are bounded (see `tag_prune`): the store prunes them in
//! the background at its first update and every twentieth of its limit
//! after.

use crate::cache::blocking;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::sync::Cache;

use super::tags::{TagEntry, TagKey};
use crate::cache::S3Tier;

/// Tag entries kept in memory; the disk holds every one.
const MEMORY_ENTRIES: u64 = 100_000;

/// Tag records kept on disk unless [`TagStore::limit`] says otherwise.
const DEFAULT_MAX_RECORDS: u64 = 100_000;

/// The subdirectory (and shared-tier prefix) of the per-tag files.
const BY_TAG: &str = "by-tag";

/// Tag entries in memory over disk, over the shared tier when there is one.
pub struct TagStore {
    memory: Cache<TagKey, TagEntry>,
    dir: PathBuf,
    shared: Option<Arc<S3Tier>>,
    /// Most records kept on disk.
    max_records: AtomicU64,
    /// Updates so far, which pace the pruning.
    updates: AtomicU64,
}

impl TagStore {
    /// Opens the store under `dir`, creating it, over `shared` if given.
    /// Files of the per-`Accept` layout left directly in `dir` are removed:
    /// their answers are re-learned with one HEAD each.
    pub fn open(dir: &Path, shared: Option<Arc<S3Tier>>) -> std::io::Result<Self> {
        let files = dir.join(BY_TAG);
        std::fs::create_dir_all(&files)?;
        let old = remove_files(dir)?;
        if old > 0 {
            tracing::info!(files = old, "removed tag records of the per-Accept layout");
        }
        remove_files_where(&files, |name| name.starts_with('.'))?;
        Ok(TagStore {
            memory: Cache::new(MEMORY_ENTRIES),
            dir: files,
            shared,
            max_records: AtomicU64::new(DEFAULT_MAX_RECORDS),
            updates: AtomicU64::new(0),
        })
    }

    /// Keeps at most `max` records on disk from now on.
    pub fn limit(&self, max: u64) {
        self.max_records.store(max.max(1), Ordering::Relaxed);
    }

    /// The limit to prune the records on disk to, at the first update and
    /// every twentieth of the limit after; `None` between.
    fn prune_turn(&self) -> Option<u64> {
        let max = self.max_records.load(Ordering::Relaxed);
        let updates = self.updates.fetch_add(1, Ordering::Relaxed);
        updates.is_multiple_of((max / 20).max(1)).then_some(max)
    }

    /// The entry for `key` from memory, else from disk, else from the
    /// shared tier.
    pub async fn get(&self, key: &TagKey) -> Option<TagEntry> {
        if let Some(entry) = self.memory.get(key) {
            return Some(entry);
        }
        let path = self.dir.join(key.file_name());
        match blocking::run(move || read_entry(&path))
            .await
            .ok()
            .flatten()
        {
            Some(entry) => Some(
                self.memory
                    .entry(key.clone())
                    .or_insert_with(|| entry)
                    .into_value(),
            ),
            None => self.newer_shared(key, &TagEntry::default()).await,
        }
    }

    /// `known` updated with what another replica left in the shared tier,
    /// if that has anything newer; it is kept in memory too.
    pub async fn newer_shared(&self, key: &TagKey, known: &TagEntry) -> Option<TagEntry> {
        let shared = self.shared.as_ref()?;
        let name = format!("{BY_TAG}/{}", key.file_name());
        let bytes = shared.get_small(&shared.tag_key(&name)).await?.bytes;
        let theirs: TagEntry = serde_json::from_slice(&bytes).ok()?;
        if !known.clone().merge(theirs.clone()) {
            return None;
        }
        let merged = self
            .memory
            .entry(key.clone())
            .and_upsert_with(|current| {
                let mut entry = current.map_or_else(|| known.clone(), |c| c.into_value());
                entry.merge(theirs);
                entry
            })
            .into_value();
        Some(merged)
    }

    /// Changes the entry of `key` with `change`, atomically against other
    /// changes of the same tag in this process, and returns the result. It
    /// is saved in memory now, and on disk and in the shared tier in the
    /// background. Replicas racing on one tag each write records they just
    /// validated, so whichever lands last is as good as the other: a lost
    /// race costs at most one extra revalidation.
    pub fn update(&self, key: &TagKey, change: impl FnOnce(&mut TagEntry)) -> TagEntry {
        let entry = self
            .memory
            .entry(key.clone())
            .and_upsert_with(|current| {
                // Not in memory (evicted): start from the disk's copy, a
                // small file, so the change loses no other record.
                let mut entry = current
                    .map(|c| c.into_value())
                    .or_else(|| read_entry(&self.dir.join(key.file_name())))
                    .unwrap_or_default();
                change(&mut entry);
                entry
            })
            .into_value();
        let prune = self.prune_turn();
        let name = key.file_name();
        if let Some(shared) = self.shared.clone() {
            let object = shared.tag_key(&format!("{BY_TAG}/{name}"));
            if let Ok(json) = serde_json::to_vec(&entry) {
                tokio::spawn(async move {
                    shared
                        .put_small(&object, json.into(), Some("application/json"), false)
                        .await;
                });
            }
        }
        let (memory, dir, key, snapshot) = (
            self.memory.clone(),
            self.dir.clone(),
            key.clone(),
            entry.clone(),
        );
        blocking::detach(move || {
            // The latest entry, not this change's: background writes may
            // run out of order, and each must leave the newest on disk.
            let latest = memory.get(&key).unwrap_or(snapshot);
            if let Err(e) = write_entry(&dir, &name, &latest) {
                tracing::warn!(error = %e, "could not save a tag entry");
            }
            // After the write, in the same job: a prune that ran before a
            // write still in flight would leave one record too many.
            if let Some(max) = prune {
                match super::tag_prune::prune(&dir, max) {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::info!(removed, "dropped the least recently used tag records")
                    }
                    Err(e) => tracing::warn!(error = %e, "could not prune the tag records"),
                }
            }
        });
        entry
    }
}

fn read_entry(path: &Path) -> Option<TagEntry> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_entry(dir: &Path, name: &str, entry: &TagEntry) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.{}", rand::random::<u64>()));
    std::fs::write(&temp, serde_json::to_vec(entry)?)?;
    std::fs::rename(&temp, dir.join(name))
}

/// Removes the regular files directly in `dir`; returns how many.
fn remove_files(dir: &Path) -> std::io::Result<usize> {
    remove_files_where(dir, |_| true)
}

fn remove_files_where(dir: &Path, matches: impl Fn(&str) -> bool) -> std::io::Result<usize> {
    let mut removed = 0;
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        if item.file_type()?.is_file() && matches(&name.to_string_lossy()) {
            std::fs::remove_file(item.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::accept::{AcceptSet, Kind};
    use crate::registry::tags::TagRecord;

    const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

    fn record(validated: u64) -> TagRecord {
        TagRecord {
            digest: format!("sha256:{}", "a".repeat(64)),
            media_type: V2.into(),
            size: Some(1),
            proven_up_to: Kind::Index,
            validated_at_ms: validated,
            failed_at_ms: None,
            previous_digest: None,
        }
    }

    fn key() -> TagKey {
        TagKey {
            upstream: "u".into(),
            repo: "r".into(),
            tag: "t".into(),
        }
    }

    /// Whether the background disk write leaves `expected` as `key`'s file.
    async fn written(dir: &Path, expected: &TagEntry) -> bool {
        let path = dir.join(BY_TAG).join(key().file_name());
        for _ in 0..100 {
            let on_disk: Option<TagEntry> = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice(&t).ok());
            if on_disk.as_ref() == Some(expected) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn entries_survive_a_new_store_and_old_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(format!("{}.json", "b".repeat(64)));
        std::fs::write(&old, b"{}").unwrap();
        let store = TagStore::open(dir.path(), None).unwrap();
        assert!(!old.exists(), "per-Accept records are removed at open");
        let entry = store.update(&key(), |e| e.keep(record(5), AcceptSet::of(&[V2]), None));
        assert!(written(dir.path(), &entry).await);
        let reopened = TagStore::open(dir.path(), None).unwrap();
        assert_eq!(reopened.get(&key()).await, Some(entry));
        let forgotten = reopened.update(&key(), |e| e.forget(V2));
        assert!(forgotten.records.is_empty());
        assert!(written(dir.path(), &forgotten).await);
    }

    #[tokio::test]
    async fn records_on_disk_stay_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::open(dir.path(), None).unwrap();
        store.limit(10);
        for n in 0..30 {
            let key = TagKey {
                tag: format!("t{n}"),
                ..key()
            };
            store.update(&key, |e| e.keep(record(n), AcceptSet::of(&[V2]), None));
            // Distinct mtimes, so "least recently written" is well defined.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let newest = dir.path().join(BY_TAG).join(
            TagKey {
                tag: "t29".into(),
                ..key()
            }
            .file_name(),
        );
        let files = || std::fs::read_dir(dir.path().join(BY_TAG)).unwrap().count();
        for _ in 0..100 {
            if files() <= 10 && newest.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} records on disk; newest kept: {}",
            files(),
            newest.exists()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn updates_of_one_tag_keep_every_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TagStore::open(dir.path(), None).unwrap());
        let types = crate::registry::accept::KNOWN_MANIFEST_TYPES;
        let tasks: Vec<_> = types
            .iter()
            .map(|&t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let r = TagRecord {
                        media_type: t.into(),
                        ..record(1)
                    };
                    store.update(&key(), |e| e.keep(r, AcceptSet::of(&[t]), None));
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.get(&key()).await.unwrap().records.len(), types.len());
    }
}
