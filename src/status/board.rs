//! The board: what the status page shows that Prometheus does not keep.
//! The API's access layer posts every request here; a sampler adds a
//! point to the history every few seconds. Everything is bounded. The
//! hottest-images list is saved every minute and read back at start, so a
//! restart does not empty it (the errors and history are recent by nature
//! and start afresh).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hot::HotImages;
use super::samples::Samples;
use crate::metrics::Metrics;

/// Error responses kept.
const ERRORS_KEPT: usize = 50;
/// Images counted for the hottest list (see [`HotImages`]).
const IMAGES_COUNTED: usize = 256;
/// Points of history kept: ten minutes at the default interval.
const HISTORY_KEPT: usize = 120;
/// How often the sampler adds a point.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples between two saves of the hottest images: a minute.
const SAVE_EVERY: u64 = 12;

/// One error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// When it was answered, in seconds since the Unix epoch.
    pub at: u64,
    pub method: String,
    /// Path and query as the client sent them.
    pub path: String,
    pub status: u16,
    /// The OCI error code, or `-` for answers that carry none.
    pub code: String,
    pub message: String,
}

/// One point of history: what happened since the previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken, in seconds since the Unix epoch.
    pub at: u64,
    /// Manifest and blob requests answered from the cache or upstream.
    pub lookups: u64,
    /// Of which from a cache tier.
    pub hits: u64,
    /// Error responses of any kind.
    pub errors: u64,
}

#[derive(Debug)]
struct State {
    errors: VecDeque<ErrorEntry>,
    hot: HotImages,
    history: VecDeque<Sample>,
    /// Totals at the last sample, for the next one's differences.
    last: Option<(u64, u64, u64)>,
}

/// Shared by the access layer, the sampler and the status handlers;
/// cheap to clone.
#[derive(Clone, Debug)]
pub struct Board {
    state: Arc<Mutex<State>>,
    /// Where the hottest images are saved, if anywhere.
    hot_file: Option<Arc<PathBuf>>,
}

impl Default for Board {
    fn default() -> Self {
        Board::new()
    }
}

impl Board {
    /// An empty board.
    pub fn new() -> Self {
        Board {
            state: Arc::new(Mutex::new(State {
                errors: VecDeque::with_capacity(ERRORS_KEPT),
                hot: HotImages::new(IMAGES_COUNTED),
                history: VecDeque::with_capacity(HISTORY_KEPT),
                last: None,
            })),
            hot_file: None,
        }
    }

    /// A board whose hottest images are saved in `path`, starting from
    /// those saved there before (none when it is missing or unreadable).
    pub fn saved_in(path: PathBuf) -> Self {
        let mut board = Board::new();
        let saved: Option<HashMap<String, u64>> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if let Some(counts) = saved {
            board.lock().hot = HotImages::with_counts(IMAGES_COUNTED, counts);
        }
        board.hot_file = Some(Arc::new(path));
        board
    }

    /// Saves the hottest images where [`Board::saved_in`] said, off the
    /// async threads.
    async fn save_hot(&self) {
        let Some(path) = self.hot_file.clone() else {
            return;
        };
        let Ok(json) = serde_json::to_vec(self.lock().hot.counts()) else {
            return;
        };
        let saved = tokio::task::spawn_blocking(move || write_replacing(&path, &json)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(error = %e, "could not save the hottest images");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a manifest request for `image` (`name:tag` or `name@digest`).
    pub fn count_image(&self, image: &str) {
        self.lock().hot.count(image);
    }

    /// Keeps an error response, dropping the oldest beyond the bound.
    pub fn error(&self, entry: ErrorEntry) {
        let mut state = self.lock();
        if state.errors.len() == ERRORS_KEPT {
            state.errors.pop_front();
        }
        state.errors.push_back(entry);
    }

    /// The `n` most requested images, most first.
    pub fn hottest(&self, n: usize) -> Vec<(String, u64)> {
        self.lock().hot.top(n)
    }

    /// The recent errors, newest first.
    pub fn errors(&self) -> Vec<ErrorEntry> {
        self.lock().errors.iter().rev().cloned().collect()
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.lock().history.iter().copied().collect()
    }

    /// Adds a point from the totals now in `metrics`.
    pub fn sample(&self, metrics: &Metrics, at: u64) {
        let totals = Samples::new(metrics.gather()).lookup_totals();
        let mut state = self.lock();
        let (lookups, hits, errors) = totals;
        if let Some((l0, h0, e0)) = state.last {
            if state.history.len() == HISTORY_KEPT {
                state.history.pop_front();
            }
            state.history.push_back(Sample {
                at,
                lookups: lookups.saturating_sub(l0),
                hits: hits.saturating_sub(h0),
                errors: errors.saturating_sub(e0),
            });
        }
        state.last = Some(totals);
    }

    /// Samples every `SAMPLE_EVERY` for as long as the process runs.
    pub fn spawn_sampler(&self, metrics: Metrics) {
        let board = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            for n in 1u64.. {
                tick.tick().await;
                board.sample(&metrics, super::now_secs());
                if n.is_multiple_of(SAVE_EVERY) {
                    board.save_hot().await;
                }
            }
        });
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_hottest_images_outlive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status/hot.json");
        let board = Board::saved_in(path.clone());
        for _ in 0..3 {
            board.count_image("docker.io/library/nginx:1");
        }
        board.count_image("docker.io/library/redis:7");
        board.save_hot().await;
        let restarted = Board::saved_in(path);
        assert_eq!(
            restarted.hottest(2),
            vec![
                ("docker.io/library/nginx:1".to_owned(), 3),
                ("docker.io/library/redis:7".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn errors_are_bounded_and_newest_first() {
        let board = Board::new();
        for n in 0..(ERRORS_KEPT as u64 + 5) {
            board.error(ErrorEntry {
                at: n,
                method: "GET".into(),
                path: format!("/v2/x/manifests/{n}"),
                status: 404,
                code: "MANIFEST_UNKNOWN".into(),
                message: "no".into(),
            });
        }
        let errors = board.errors();
        assert_eq!(errors.len(), ERRORS_KEPT);
        assert_eq!(errors[0].at, ERRORS_KEPT as u64 + 4);
        assert_eq!(errors.last().unwrap().at, 5);
    }

    #[test]
    fn history_holds_the_differences_between_samples() {
        let metrics = Metrics::new();
        let board = Board::new();
        board.sample(&metrics, 1);
        let requests = &metrics.requests;
        requests
            .with_label_values(&["blob", "hit-disk", "200"])
            .inc_by(3);
        requests
            .with_label_values(&["manifest", "miss", "200"])
            .inc();
        requests
            .with_label_values(&["manifest", "error", "404"])
            .inc();
        board.sample(&metrics, 6);
        assert_eq!(
            board.history(),
            vec![Sample {
                at: 6,
                lookups: 4,
                hits: 3,
                errors: 1
            }]
        );
    }
}
