//! The scrub: a slow pass over the disk tier that hashes every file again,
//! once per `disk.scrub_interval` (a day by default).
//!
//! Why: lookups verify a file whose fingerprint changed (see `verify`), but
//! damage that moves no fingerprint (a bad sector, bit rot under an
//! unchanged inode and change time) would be served as good until the file
//! is evicted. The scrub finds it first: a file that no longer hashes to its
//! name is deleted and counted (`pullthrough_cache_corrupt_total{tier="disk"}`),
//! so the next pull fetches a good copy; a file that does is trusted again
//! as it is.
//!
//! Why it costs nothing a pull would notice: one thread at the lowest CPU
//! and I/O priority, paced so that one pass takes about the interval (at
//! least [`MIN_RATE`]); a terabyte a day is some 12 MB/s.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::disk::delete_damaged;
use super::evict::{Evictor, walk_dir};
use super::verify::{Fingerprint, Verifications, hashes_to};
use super::{ObjectKey, ObjectKind, object_path};
use crate::metrics::Metrics;

/// The slowest a pass reads, however long the interval.
const MIN_RATE: u64 = 1024 * 1024;

/// The scrub's thread, stopped when this is dropped (with the disk tier).
pub(super) struct Scrub {
    stop: Arc<AtomicBool>,
}

impl Drop for Scrub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What the scrub's thread works with: the disk tier's own parts.
pub(super) struct Scrubber {
    pub(super) root: PathBuf,
    pub(super) evictor: Evictor,
    pub(super) verified: Verifications,
    pub(super) metrics: Metrics,
}

impl Scrubber {
    /// Starts a pass every `interval` on a thread of its own.
    pub(super) fn start(self, interval: Duration) -> Scrub {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("pullthrough-scrub".into())
            .spawn(move || {
                lowest_priority();
                self.run(interval, &stopped);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the disk scrub");
        }
        Scrub { stop }
    }

    fn run(&self, interval: Duration, stop: &AtomicBool) {
        loop {
            let started = Instant::now();
            let rate = (self.evictor.usage().bytes / interval.as_secs().max(1)).max(MIN_RATE);
            let mut keys = Vec::new();
            for kind in [ObjectKind::Manifest, ObjectKind::Blob] {
                let dir = self.root.join(super::object_path_kind(kind));
                walk_dir(&dir, kind, &mut |key, _, _| keys.push(key));
            }
            let mut pace = Pace::new(rate);
            for key in keys {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                self.check(&key, &mut pace, stop);
            }
            while started.elapsed() < interval {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200).min(interval));
            }
        }
    }

    /// Hashes one file; deletes it when it does not match its name and is
    /// still the file that was hashed.
    fn check(&self, key: &ObjectKey, pace: &mut Pace, stop: &AtomicBool) {
        let path = self.root.join(object_path(key));
        let Ok((file, print)) = File::open(&path).and_then(|f| {
            let print = Fingerprint::of(&f.metadata()?);
            Ok((f, print))
        }) else {
            return;
        };
        let hashed = hashes_to(&file, print.len(), &key.digest, |read| {
            self.metrics.cache.scrubbed_bytes.inc_by(read as u64);
            pace.took(read as u64);
            !stop.load(Ordering::Acquire)
        });
        let unchanged = || {
            fs::metadata(&path)
                .is_ok_and(|m| Fingerprint::of(&m) == print && m.ino() == print.ino())
        };
        match hashed {
            Ok(Some(true)) if unchanged() => self.verified.trust(key, print),
            Ok(Some(false)) if unchanged() => {
                tracing::warn!(digest = %key.digest, path = %path.display(),
                    "the disk scrub found a file that does not match its digest: deleted");
                let (root, evictor, verified) = (&self.root, &self.evictor, &self.verified);
                if let Err(e) = delete_damaged(root, evictor, verified, &self.metrics, key) {
                    tracing::warn!(error = %e, "could not delete a damaged object");
                }
            }
            // Stopped, unreadable, or changed meanwhile (lookups see to it).
            _ => {}
        }
    }
}

/// Keeps reading at `rate` bytes a second.
struct Pace {
    rate: u64,
    started: Instant,
    read: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Pace {
            rate,
            started: Instant::now(),
            read: 0,
        }
    }

    /// Counts `n` bytes read, and sleeps until they are due.
    fn took(&mut self, n: u64) {
        self.read += n;
        let due = Duration::from_secs_f64(self.read as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// The calling thread's CPU and I/O priority, as low as they go: pulls
/// always come first.
fn lowest_priority() {
    // SAFETY: plain system calls on the calling thread (who = 0 is the
    // caller; a thread id is a process id to both calls on Linux).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        // IOPRIO_WHO_PROCESS, this thread, the idle class (3 << 13).
        libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13);
    }
}
