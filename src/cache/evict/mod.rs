//! Keeps the disk tier within its bounds: least recently used objects go
//! first, between a high and a low watermark (see [`Bounds`]).
//!
//! How it decides:
//! - **Accounting** is in memory (`index`): each object's size and last
//!   access, updated on every store, hit and eviction. It is rebuilt at
//!   start-up by a background thread that walks the files, while the
//!   listener already serves; nothing is evicted before the walk ends.
//!   File atimes are unreliable (`noatime`), so the last access lives in
//!   the index, and a hit writes it to the file's mtime at most once an
//!   hour: after a restart, LRU order is right to the hour.
//! - **Never evicted:** a file someone is reading (the tier shares one
//!   open file per object, and a hit holds it until its last byte is
//!   sent; temporary files of downloads are not in the index at all) and
//!   a pinned digest (`pins`).
//! - **Evicted last:** a *held* digest. Serving a manifest holds it and
//!   everything it references for a while (at least its tag's TTL when
//!   served by tag), so the blobs of an image being pulled stay until the
//!   pull is done. A hold protects a rollout, but never past the cap:
//!   when nothing unheld is left, the least recently used held objects go
//!   too, with a WARN and `pullthrough_cache_holds_broken_total`. Holds
//!   are saved, so a restart mid-rollout keeps them (see `held`).
//! - **Evicting** happens on one dedicated thread, woken when a store
//!   passes the high watermark and every 30 s (others may fill the disk);
//!   a store that would take the tier past its cap first makes room
//!   itself, so the cap is checked before a store, not only after.
//!   A chosen object leaves the count once its file is unlinked; by then
//!   no reader has it open (that would have kept it), and a store of it
//!   meanwhile keeps it counted once.

mod bounds;
mod held;
mod index;
mod pins;
mod refs;
#[cfg(test)]
mod tests;
mod thread;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use bounds::{Bounds, FsUsage, Limits};
pub use refs::{References, references};
pub(super) use thread::walk_dir;

use super::{ObjectKey, ObjectKind};
use crate::clock::now_ms;
use crate::digest::Digest;
use crate::metrics::Metrics;
use index::Index;
use pins::Pins;
use thread::{Wake, run};

/// How often the bounds are checked when no store asks.
const PASS_EVERY: Duration = Duration::from_secs(30);

/// The file pins are kept in, in the tier's root.
const PINS_FILE: &str = "pins.json";

/// The disk tier's eviction: accounting, pins, holds and the thread that
/// evicts. Cheap to clone (one `Arc`); the thread ends when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Evictor {
    shared: Arc<Shared>,
}

/// Lock order: `index`, then `pins`, then `holds`, then `expanded`; each
/// is held for a hash probe or an in-memory pass, never across file I/O
/// except `pins`, whose rare changes are saved under it.
struct Shared {
    root: PathBuf,
    bounds: Bounds,
    index: Mutex<Index>,
    pins: Mutex<Pins>,
    /// Digests that may not be evicted before these Unix milliseconds.
    holds: Mutex<HashMap<Digest, u64>>,
    /// Whether `holds` changed since they were last saved.
    holds_changed: AtomicBool,
    /// Manifests whose references are held, and until when.
    expanded: Mutex<HashMap<Digest, u64>>,
    /// Whether the start-up walk has counted every file.
    loaded: AtomicBool,
    /// The high watermark and the cap in bytes, as of the last pass.
    high: AtomicU64,
    cap: AtomicU64,
    wake: Arc<Wake>,
    metrics: Metrics,
}

/// What the disk tier holds, against its bounds, at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub bytes: u64,
    pub objects: u64,
    /// False while the start-up walk is still counting.
    pub loaded: bool,
    pub limits: Limits,
}

/// What one eviction pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Evicted {
    objects: u64,
    bytes: u64,
}

impl Evictor {
    /// Starts accounting for the tier under `root`: loads its pins and
    /// starts the thread that walks the files, then keeps `bounds`.
    pub fn start(root: &Path, bounds: Bounds, metrics: Metrics) -> io::Result<Evictor> {
        let pins = Pins::load(&root.join(PINS_FILE))?;
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            bounds,
            index: Mutex::default(),
            pins: Mutex::new(pins),
            holds: Mutex::new(held::load(&root.join(held::HOLDS_FILE), now_ms())),
            holds_changed: AtomicBool::new(false),
            expanded: Mutex::default(),
            loaded: AtomicBool::new(false),
            high: AtomicU64::new(u64::MAX),
            cap: AtomicU64::new(u64::MAX),
            wake: Arc::default(),
            metrics,
        });
        let (weak, wake) = (Arc::downgrade(&shared), shared.wake.clone());
        std::thread::Builder::new()
            .name("pullthrough-evict".into())
            .spawn(move || run(weak, wake))?;
        Ok(Evictor { shared })
    }

    /// Before `size` more bytes are stored: when they would take the tier
    /// past its cap, evicts enough first (on the caller's thread, a file
    /// pool job) to bring it back to the low watermark with them.
    pub fn make_room(&self, size: u64) {
        let over = {
            let index = self.shared.lock_index();
            let cap = self.shared.cap.load(Ordering::Relaxed);
            index.bytes().saturating_add(size) > cap
        };
        if over {
            self.shared.pass_with(size);
        }
    }

    /// Counts a stored object of `size` bytes on disk, and wakes the
    /// eviction thread when the tier passed its high watermark.
    pub fn stored(&self, key: &ObjectKey, size: u64) {
        let bytes = {
            let mut index = self.shared.lock_index();
            index.stored(key, size, now_ms());
            self.shared.publish(&index);
            index.bytes()
        };
        if bytes > self.shared.high.load(Ordering::Relaxed) {
            self.shared.wake.notify();
        }
    }

    /// The file of `key` if a reader has it open already: new readers
    /// share it (and the object stays in use while any reads).
    pub fn open_file(&self, key: &ObjectKey) -> Option<Arc<File>> {
        self.shared
            .lock_index()
            .open_file(key)
            .map(|(file, _)| file)
    }

    /// Records a hit on `file` (`size` bytes on disk). Returns true when
    /// the caller should write the access to the file's mtime.
    pub fn hit(&self, key: &ObjectKey, file: &Arc<File>, size: u64) -> bool {
        let mut index = self.shared.lock_index();
        let persist = index.hit(key, file, size, now_ms());
        self.shared.publish(&index);
        persist
    }

    /// Forgets an object whose file turned out to be missing.
    pub fn forget(&self, key: &ObjectKey) {
        let mut index = self.shared.lock_index();
        index.forget(key);
        self.shared.publish(&index);
    }

    /// Whether the references of `manifest` should be held (again) for a
    /// hold of `length` ending at `until_ms`: not when a hold of them runs
    /// past half of it already. Records the new hold when it answers yes.
    pub fn expand_due(&self, manifest: &Digest, until_ms: u64, length: Duration) -> bool {
        let half = length.as_millis() as u64 / 2;
        let mut expanded = self
            .shared
            .expanded
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let held = expanded.entry(manifest.clone()).or_default();
        if *held >= until_ms.saturating_sub(half) {
            return false;
        }
        *held = until_ms;
        true
    }

    /// Keeps `digests` from eviction until `until_ms` (Unix milliseconds),
    /// or longer if they were held longer already.
    pub fn hold<'d>(&self, digests: impl IntoIterator<Item = &'d Digest>, until_ms: u64) {
        let mut holds = self.shared.holds.lock().unwrap_or_else(|e| e.into_inner());
        for digest in digests {
            let held = holds.entry(digest.clone()).or_default();
            *held = (*held).max(until_ms);
        }
        self.shared.holds_changed.store(true, Ordering::Release);
    }

    /// Pins `root` and `members` until [`Evictor::unpin`]; saved at once.
    pub fn pin(&self, root: Digest, members: BTreeSet<Digest>) -> io::Result<()> {
        self.shared.lock_pins().pin(root, members)
    }

    /// Unpins `root`; false when it was not pinned.
    pub fn unpin(&self, root: &Digest) -> io::Result<bool> {
        self.shared.lock_pins().unpin(root)
    }

    /// Whether a pin covers `digest`.
    pub fn is_pinned(&self, digest: &Digest) -> bool {
        self.shared.lock_pins().covers(digest)
    }

    /// Adds `more` to the pins that cover `member`.
    pub fn extend_pins(&self, member: &Digest, more: &[Digest]) -> io::Result<bool> {
        self.shared.lock_pins().extend(member, more)
    }

    /// The pinned roots, each with the number of digests it covers.
    pub fn pinned(&self) -> Vec<(Digest, usize)> {
        self.shared.lock_pins().roots()
    }

    /// How long serving a manifest protects it and what it references.
    pub fn pull_hold(&self) -> Duration {
        self.shared.bounds.pull_hold
    }

    /// The tier's size against its bounds now.
    pub fn usage(&self) -> DiskUsage {
        let fs = FsUsage::of(&self.shared.root).ok();
        let index = self.shared.lock_index();
        DiskUsage {
            bytes: index.bytes(),
            objects: index.objects(),
            loaded: self.shared.loaded.load(Ordering::Acquire),
            limits: self.shared.bounds.limits(index.bytes(), fs),
        }
    }
}

impl Shared {
    /// Saves the holds when they changed since the last save.
    fn save_holds(&self) {
        if !self.holds_changed.swap(false, Ordering::AcqRel) {
            return;
        }
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = held::save(&self.root.join(held::HOLDS_FILE), &holds) {
            tracing::warn!(error = %e, "could not save the holds");
        }
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_pins(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the disk tier's gauges from `index`.
    fn publish(&self, index: &Index) {
        let m = &self.metrics;
        m.cache
            .bytes
            .with_label_values(&["disk"])
            .set(index.bytes() as i64);
        m.cache
            .objects
            .with_label_values(&["disk"])
            .set(index.objects() as i64);
    }

    /// Counts every object file under the tier's object directories.
    fn walk(&self) {
        let mut batch = Vec::new();
        for kind in [ObjectKind::Blob, ObjectKind::Manifest] {
            let dir = self.root.join(super::object_path_kind(kind));
            walk_dir(&dir, kind, &mut |key, size, mtime_ms| {
                batch.push((key, size, mtime_ms));
                if batch.len() >= 1024 {
                    self.add_scanned(&mut batch);
                }
            });
        }
        self.add_scanned(&mut batch);
        self.loaded.store(true, Ordering::Release);
        let index = self.lock_index();
        tracing::info!(
            objects = index.objects(),
            bytes = index.bytes(),
            "disk tier counted"
        );
    }

    fn add_scanned(&self, batch: &mut Vec<(ObjectKey, u64, u64)>) {
        let mut index = self.lock_index();
        for (key, size, mtime_ms) in batch.drain(..) {
            index.scanned(key, size, mtime_ms);
        }
        self.publish(&index);
    }

    /// Checks the bounds and evicts down to the low watermark if the high
    /// one is passed.
    fn pass(&self) -> Evicted {
        self.pass_with(0)
    }

    /// As [`Shared::pass`], counting `incoming` bytes about to be stored.
    fn pass_with(&self, incoming: u64) -> Evicted {
        let mut evicted = Evicted::default();
        if !self.loaded.load(Ordering::Acquire) {
            return evicted;
        }
        let fs = FsUsage::of(&self.root).ok();
        let chosen = {
            let mut index = self.lock_index();
            let limits = self.bounds.limits(index.bytes(), fs);
            self.high.store(limits.high, Ordering::Relaxed);
            self.cap.store(limits.cap, Ordering::Relaxed);
            self.metrics
                .cache
                .capacity
                .with_label_values(&["disk"])
                .set(limits.cap.min(i64::MAX as u64) as i64);
            let need = limits.excess(index.bytes().saturating_add(incoming));
            if need == 0 {
                return evicted;
            }
            let now = now_ms();
            let pins = self.lock_pins();
            let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
            holds.retain(|_, until| *until > now);
            let mut expanded = self.expanded.lock().unwrap_or_else(|e| e.into_inner());
            expanded.retain(|_, until| *until > now);
            drop(expanded);
            let mut chosen = index.choose(need, |key| {
                pins.covers(&key.digest) || holds.contains_key(&key.digest)
            });
            let freed: u64 = chosen.iter().map(|(_, size)| size).sum();
            // Over the cap with nothing unheld left: holds yield.
            let over_cap =
                index.bytes().saturating_add(incoming).saturating_sub(freed) > limits.cap;
            if freed < need && over_cap {
                let broken = index.choose(need - freed, |key| pins.covers(&key.digest));
                if !broken.is_empty() {
                    let bytes: u64 = broken.iter().map(|(_, size)| size).sum();
                    tracing::warn!(
                        objects = broken.len(),
                        bytes,
                        cap = limits.cap,
                        "the disk tier is over its cap with only held objects left: evicting the least recently used of them"
                    );
                    self.metrics
                        .cache
                        .holds_broken
                        .with_label_values(&["disk"])
                        .inc_by(broken.len() as u64);
                }
                chosen.extend(broken);
            }
            self.publish(&index);
            chosen
        };
        let m = &self.metrics.cache;
        for (key, size) in chosen {
            if let Err(e) = self.unlink(&key) {
                tracing::warn!(digest = %key.digest, error = %e, "could not evict an object");
            }
            m.evictions.with_label_values(&["disk"]).inc();
            m.evicted_bytes.with_label_values(&["disk"]).inc_by(size);
            let mut index = self.lock_index();
            index.evicted(&key);
            self.publish(&index);
            evicted.objects += 1;
            evicted.bytes += size;
        }
        tracing::info!(
            objects = evicted.objects,
            bytes = evicted.bytes,
            "evicted from the disk tier"
        );
        evicted
    }

    /// Removes an object's file, and then a manifest's media type (so a
    /// manifest is never found without it).
    fn unlink(&self, key: &ObjectKey) -> io::Result<()> {
        let path = self.root.join(super::object_path(key));
        remove_if_present(&path)?;
        if key.kind == ObjectKind::Manifest {
            remove_if_present(&super::disk::media_type_path(&path))?;
        }
        Ok(())
    }
}

impl Drop for Shared {
    /// The tier closes: the thread ends, and the holds are kept for the
    /// next start.
    fn drop(&mut self) {
        self.wake.close();
        self.save_holds();
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
