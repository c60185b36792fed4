//! Warm requests timed one after the other, each on a fresh connection and
//! checked against its digest: how long a node asking for something already
//! cached waits, idle or while a rollout burst is going on.
//!
//! The prober runs on a thread and a single-threaded runtime of its own, so
//! the burst's clients (on their own runtime) do not delay its timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http;

/// Bound on one warm request.
const TIMEOUT: Duration = Duration::from_secs(60);

/// One blob to ask for: its URL and digest.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub digest: String,
}

/// Latencies of the requests for each target, in the targets' order, and
/// the failures.
#[derive(Debug, Default)]
pub struct Timings {
    pub seconds: Vec<Vec<f64>>,
    pub errors: Vec<String>,
}

/// Asks for each of `targets` in turn, `rounds` times, pausing `pause`
/// after each round; stops early once `stop` is set (a request already
/// under way finishes first).
fn probe(targets: &[Target], rounds: usize, pause: Duration, stop: &AtomicBool) -> Timings {
    let mut timings = Timings {
        seconds: vec![Vec::new(); targets.len()],
        errors: Vec::new(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            timings.errors.push(format!("prober runtime: {e}"));
            return timings;
        }
    };
    let client = http::client();
    for _ in 0..rounds {
        for (target, seconds) in targets.iter().zip(&mut timings.seconds) {
            if stop.load(Ordering::SeqCst) {
                return timings;
            }
            let started = Instant::now();
            let fetched = rt.block_on(http::get_checked(
                &client,
                &target.url,
                None,
                &target.digest,
                TIMEOUT,
            ));
            match fetched {
                Ok(_) => seconds.push(started.elapsed().as_secs_f64()),
                Err(e) => timings.errors.push(e),
            }
        }
        std::thread::sleep(pause);
    }
    timings
}

/// `rounds` rounds over `targets` on this thread, back to back.
pub fn run(targets: &[Target], rounds: usize) -> Timings {
    probe(targets, rounds, Duration::ZERO, &AtomicBool::new(false))
}

/// A prober running in the background until [`Background::finish`].
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Timings>,
}

impl Background {
    /// Starts up to `rounds` rounds over `targets`, `pause` apart.
    pub fn start(targets: Vec<Target>, rounds: usize, pause: Duration) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || probe(&targets, rounds, pause, &flag));
        Background { stop, thread }
    }

    /// Stops after the request under way and returns what was measured.
    pub fn finish(self) -> Timings {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_else(|_| Timings {
            errors: vec!["the prober thread panicked".to_owned()],
            ..Timings::default()
        })
    }
}

/// The `p`-th percentile (0 to 100) of `values` by the nearest-rank method;
/// `None` when there are none.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}
