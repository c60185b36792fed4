//! Blocking file work on a bounded pool: disk lookups, writes and hashing
//! of downloads, fsync, whole-file reads and unlinks of large files.
//!
//! Everything runs on tokio's blocking threads, but at most [`FILE_WORKERS`]
//! jobs at once, served in the order they asked: a burst of thousands of
//! cold requests costs a short queue, not a thread each. Clients streaming a
//! download in progress never come here (they read a memory map of the
//! growing file, see `flight.rs`), so however many wait on a download, a
//! warm lookup or a download's next write waits at most for a few short
//! jobs ahead of it.

use std::io;

use tokio::sync::Semaphore;

/// How many blocking file jobs run at once.
pub const FILE_WORKERS: usize = 16;

static PERMITS: Semaphore = Semaphore::const_new(FILE_WORKERS);

/// Runs `work` on the bounded pool and waits for its result.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let permit = PERMITS.acquire().await.map_err(io::Error::other)?;
    // The permit goes with the job: a caller that stops waiting does not
    // free a place while the job still runs.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(io::Error::other)
}

/// Runs `work` on the pool without waiting for it, when called inside the
/// runtime; elsewhere (a drop at shutdown, a plain test) runs it in place.
pub fn detach(work: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let _ = run(work).await;
            });
        }
        Err(_) => work(),
    }
}
