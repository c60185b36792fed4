//! The disk tier's accounting: every object's size and last access, in
//! memory, and the least-recently-used choice of what to evict.
//!
//! Pure bookkeeping, no I/O: the tier reports stores, hits and unlinks, and
//! the eviction pass asks which objects to remove. A chosen object is
//! marked `evicting` (never chosen again) and leaves the count once its
//! file is unlinked; a reader that still has it open or mapped keeps its
//! blocks allocated a while longer, but it is never counted twice.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Weak};

use crate::cache::ObjectKey;

/// How often a hit rewrites an object's mtime, the last-access record that
/// survives a restart: at most once an hour per object, so a hot blob
/// costs one `futimens` an hour, not one per request.
pub(super) const PERSIST_EVERY_MS: u64 = 60 * 60 * 1000;

/// One cached object.
#[derive(Debug)]
pub(super) struct Entry {
    /// Bytes on disk, the media-type file of a manifest included.
    pub size: u64,
    /// Unix milliseconds of the last store or hit.
    pub last_access_ms: u64,
    /// When the last access was last written to the file's mtime.
    persisted_ms: u64,
    /// The file as the tier has it open; alive while anyone reads it.
    open: Weak<File>,
    /// Chosen for eviction: about to be unlinked.
    evicting: bool,
}

impl Entry {
    /// Whether a reader holds the file open (a hit being served or
    /// streamed holds it until its last byte is sent).
    pub fn in_use(&self) -> bool {
        self.open.strong_count() > 0
    }
}

/// Sizes and last accesses of the objects on disk.
#[derive(Debug, Default)]
pub(super) struct Index {
    entries: HashMap<ObjectKey, Entry>,
    /// Bytes of the entries.
    bytes: u64,
    /// Entries.
    objects: u64,
}

impl Index {
    /// Bytes counted.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Objects counted.
    pub fn objects(&self) -> u64 {
        self.objects
    }

    /// Records a stored object (again, if it was there: the size is
    /// replaced, never added twice) accessed at `now_ms`.
    pub fn stored(&mut self, key: &ObjectKey, size: u64, now_ms: u64) {
        let previous = self.entries.insert(
            key.clone(),
            Entry {
                size,
                last_access_ms: now_ms,
                persisted_ms: now_ms,
                open: Weak::new(),
                evicting: false,
            },
        );
        if let Some(previous) = previous {
            self.uncount(previous.size);
        }
        self.count(size);
    }

    /// Records an object found by the start-up scan, whose mtime is its
    /// last recorded access; an entry the running tier made meanwhile is
    /// newer and wins.
    pub fn scanned(&mut self, key: ObjectKey, size: u64, mtime_ms: u64) {
        if self.entries.contains_key(&key) {
            return;
        }
        self.entries.insert(
            key,
            Entry {
                size,
                last_access_ms: mtime_ms,
                persisted_ms: mtime_ms,
                open: Weak::new(),
                evicting: false,
            },
        );
        self.count(size);
    }

    /// A file the tier still has open for `key`, to share with a new
    /// reader instead of opening it again.
    pub fn open_file(&self, key: &ObjectKey) -> Option<(Arc<File>, u64)> {
        let entry = self.entries.get(key)?;
        Some((entry.open.upgrade()?, entry.size))
    }

    /// Records a hit at `now_ms` on `file` (of `size` bytes, as found on
    /// disk: an object the start-up scan has not reached yet is counted
    /// now). Returns true when the access should be written to the file's
    /// mtime.
    pub fn hit(&mut self, key: &ObjectKey, file: &Arc<File>, size: u64, now_ms: u64) -> bool {
        if !self.entries.contains_key(key) {
            self.scanned(key.clone(), size, now_ms);
        }
        let entry = self.entries.get_mut(key).expect("inserted above");
        entry.last_access_ms = entry.last_access_ms.max(now_ms);
        if entry.open.strong_count() == 0 {
            entry.open = Arc::downgrade(file);
        }
        let persist = now_ms.saturating_sub(entry.persisted_ms) >= PERSIST_EVERY_MS;
        if persist {
            entry.persisted_ms = now_ms;
        }
        persist
    }

    /// Forgets an object whose file is gone (found missing by a lookup).
    pub fn forget(&mut self, key: &ObjectKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.uncount(entry.size);
        }
    }

    /// Chooses objects to evict, least recently used first, until at least
    /// `need` bytes are chosen or nothing evictable is left; objects in use
    /// or for which `keep` holds are never chosen. Call [`Index::evicted`]
    /// once each chosen file is unlinked. Sorts every entry: a few
    /// milliseconds per hundred thousand objects, once per pass, which only
    /// runs above the high watermark.
    pub fn choose(
        &mut self,
        need: u64,
        keep: impl Fn(&ObjectKey) -> bool,
    ) -> Vec<(ObjectKey, u64)> {
        let mut candidates: Vec<(u64, &ObjectKey)> = self
            .entries
            .iter()
            .filter(|(key, e)| !e.evicting && !e.in_use() && !keep(key))
            .map(|(key, e)| (e.last_access_ms, key))
            .collect();
        candidates.sort_unstable_by_key(|(last_access, _)| *last_access);
        let mut chosen = Vec::new();
        let mut freed = 0;
        for (_, key) in candidates {
            if freed >= need {
                break;
            }
            let size = self.entries[key].size;
            freed += size;
            chosen.push((key.clone(), size));
        }
        for (key, _) in &chosen {
            self.entries
                .get_mut(key)
                .expect("chosen from entries")
                .evicting = true;
        }
        chosen
    }

    /// Drops an evicted object's entry, unless a store brought it back
    /// while its file was being unlinked.
    pub fn evicted(&mut self, key: &ObjectKey) {
        if self.entries.get(key).is_some_and(|e| e.evicting) {
            self.forget(key);
        }
    }

    fn count(&mut self, size: u64) {
        self.bytes += size;
        self.objects += 1;
    }

    fn uncount(&mut self, size: u64) {
        self.bytes -= size;
        self.objects -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn key(n: u8) -> ObjectKey {
        ObjectKey::blob(Digest::sha256_of(&[n]))
    }

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().unwrap())
    }

    #[test]
    fn stores_are_counted_once_however_often_repeated() {
        let mut index = Index::default();
        index.stored(&key(1), 100, 1);
        index.stored(&key(1), 100, 2);
        index.scanned(key(1), 100, 0);
        index.stored(&key(2), 50, 3);
        assert_eq!((index.bytes(), index.objects()), (150, 2));
        index.forget(&key(1));
        index.forget(&key(1));
        assert_eq!((index.bytes(), index.objects()), (50, 1));
    }

    #[test]
    fn the_least_recently_used_go_first_and_a_hit_renews() {
        let mut index = Index::default();
        for n in 1..=4 {
            index.stored(&key(n), 10, u64::from(n));
        }
        let held = file();
        index.hit(&key(1), &held, 10, 100);
        drop(held);
        let chosen = index.choose(15, |_| false);
        let keys: Vec<_> = chosen.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![key(2), key(3)], "oldest first, until enough");
        assert_eq!(index.bytes(), 40, "counted until unlinked");
        assert_eq!(
            index.choose(100, |_| false).len(),
            2,
            "the chosen are not chosen again"
        );
        index.evicted(&key(2));
        assert_eq!((index.bytes(), index.objects()), (30, 3));
    }

    #[test]
    fn objects_in_use_or_kept_are_never_chosen() {
        let mut index = Index::default();
        for n in 1..=3 {
            index.stored(&key(n), 10, u64::from(n));
        }
        let reader = file();
        index.hit(&key(1), &reader, 10, 1);
        assert!(
            index.open_file(&key(1)).is_some(),
            "shared with new readers"
        );
        let chosen = index.choose(u64::MAX, |k| *k == key(2));
        assert_eq!(chosen, vec![(key(3), 10)]);
        drop(reader);
        assert!(index.open_file(&key(1)).is_none());
        assert_eq!(index.choose(u64::MAX, |k| *k == key(2)), vec![(key(1), 10)]);
    }

    #[test]
    fn a_store_during_eviction_keeps_the_object_counted() {
        let mut index = Index::default();
        index.stored(&key(1), 10, 1);
        index.stored(&key(2), 10, 2);
        assert_eq!(index.choose(1, |_| false).len(), 1);
        index.stored(&key(1), 10, 3);
        assert_eq!(index.bytes(), 20, "stored again: counted once");
        index.evicted(&key(1));
        assert_eq!((index.bytes(), index.objects()), (20, 2));
        assert_eq!(index.choose(1, |_| false), vec![(key(2), 10)]);
        index.evicted(&key(2));
        assert_eq!((index.bytes(), index.objects()), (10, 1));
    }

    #[test]
    fn hits_persist_their_access_at_most_hourly() {
        let mut index = Index::default();
        let f = file();
        index.stored(&key(1), 10, 0);
        assert!(!index.hit(&key(1), &f, 10, 1_000));
        assert!(index.hit(&key(1), &f, 10, PERSIST_EVERY_MS));
        assert!(!index.hit(&key(1), &f, 10, PERSIST_EVERY_MS + 1));
        index.hit(&key(9), &f, 7, 5_000);
        assert_eq!(
            index.bytes(),
            17,
            "a hit the scan had not reached is counted"
        );
    }
}
