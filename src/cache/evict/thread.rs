//! The eviction thread and what it walks: the object files at start-up,
//! then a pass whenever a store passes the high watermark or
//! [`PASS_EVERY`](super::PASS_EVERY) elapses. One dedicated thread, so
//! unlinking large files never occupies the file pool or the runtime.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::{PASS_EVERY, Shared};
use crate::cache::{ObjectKey, ObjectKind};
use crate::clock::unix_ms;
use crate::digest::Digest;

/// Calls `found` with each object under `dir` (`<algorithm>/<xx>/<hex>`):
/// its key, its bytes on disk (a manifest's media type included) and its
/// mtime. Unreadable entries are skipped: they are counted when hit.
pub(in crate::cache) fn walk_dir(
    dir: &Path,
    kind: ObjectKind,
    found: &mut impl FnMut(ObjectKey, u64, u64),
) {
    let read = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten();
    for algorithm in read(dir) {
        for shard in read(&algorithm.path()) {
            for file in read(&shard.path()) {
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(crate::cache::disk::MEDIA_TYPE_SUFFIX) {
                    continue;
                }
                let text = format!("{}:{name}", algorithm.file_name().to_string_lossy());
                let (Ok(digest), Ok(meta)) = (text.parse::<Digest>(), file.metadata()) else {
                    continue;
                };
                let mut size = meta.len();
                if kind == ObjectKind::Manifest {
                    let type_file = crate::cache::disk::media_type_path(&file.path());
                    size += std::fs::metadata(type_file).map_or(0, |m| m.len());
                }
                let mtime_ms = meta.modified().map_or(0, unix_ms);
                found(ObjectKey { kind, digest }, size, mtime_ms);
            }
        }
    }
}

/// The eviction thread: walks the files, then checks the bounds whenever
/// woken or every [`PASS_EVERY`], until the evictor is dropped.
pub(super) fn run(shared: Weak<Shared>, wake: Arc<Wake>) {
    match shared.upgrade() {
        Some(shared) => {
            shared.walk();
            shared.pass();
        }
        None => return,
    }
    while wake.wait(PASS_EVERY) {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.pass();
        shared.save_holds();
    }
}

/// Wakes the eviction thread; closed when the evictor is dropped.
#[derive(Default)]
pub(super) struct Wake {
    /// (woken, closed)
    state: Mutex<(bool, bool)>,
    signal: Condvar,
}

impl Wake {
    pub(super) fn notify(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        self.signal.notify_one();
    }

    pub(super) fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.signal.notify_one();
    }

    /// Waits until woken or `timeout` passes; false once closed.
    pub(super) fn wait(&self, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (mut state, _) = self
            .signal
            .wait_timeout_while(state, timeout, |(woken, closed)| !*woken && !*closed)
            .unwrap_or_else(|e| e.into_inner());
        state.0 = false;
        !state.1
    }
}
