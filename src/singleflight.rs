//! Single-flight: concurrent callers that want the same thing share one run
//! of the work. This is the one coalescing mechanism in pullthrough: blob
//! downloads (`cache::Flights`), manifest fetches and tag checks all use it.
//!
//! A run publishes its state through a `watch` channel: a blob download
//! publishes its progress as bytes arrive, a manifest fetch publishes its
//! one result. Callers follow that channel; none of them holds a thread or
//! a buffer of its own while it waits.
//!
//! The contract, which every user relies on:
//! - **One run per key.** [`SingleFlight::join_or_start`] joins the run under
//!   way for a key or starts one, under one short lock. Only a run that can
//!   no longer take new callers is ever replaced ([`SingleFlight::replace`]);
//!   it goes on for the callers it has, and its end leaves the new entry be.
//! - **Runs outlive their callers.** The work runs in its own task, so it
//!   completes (and fills the cache) even when every caller went away.
//! - **No hang on failure.** When the task ends, however it ends, its
//!   channel's sender is dropped and its entry removed by a drop guard. A
//!   run that ends or panics without publishing a final state leaves its
//!   callers with [`Abandoned`], never waiting forever, and the next caller
//!   starts afresh.
//! - **Results first, then the entry goes.** The entry is removed only after
//!   the work returned, so whatever the work stored in the cache before
//!   returning is findable there before another run for the key can start.
//! - **The hand-off re-check.** A caller can miss the cache just before a
//!   run stores its result, and reach `join_or_start` just after that run's
//!   entry is gone: it then starts a new run. So the work of every run first
//!   looks in the cache again, and ends there on a hit. That costs one
//!   lookup per real miss and makes "one upstream fetch per key" hold
//!   whatever the timing.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The shared run ended without a result (its task panicked or was cut off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the shared run ended without a result")]
pub struct Abandoned;

type Running<K, S> = Arc<Mutex<HashMap<K, watch::Receiver<S>>>>;

/// At most one run of some work per key at a time; cheap to clone.
pub struct SingleFlight<K, S> {
    running: Running<K, S>,
}

impl<K, S> Clone for SingleFlight<K, S> {
    fn clone(&self) -> Self {
        SingleFlight {
            running: self.running.clone(),
        }
    }
}

impl<K, S> Default for SingleFlight<K, S> {
    fn default() -> Self {
        SingleFlight {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// Removes a run's entry when its task ends, however it ends (unless a
/// newer run replaced it meanwhile).
struct Unregister<K: Hash + Eq, S> {
    running: Running<K, S>,
    key: K,
    progress: watch::Receiver<S>,
}

impl<K: Hash + Eq, S> Drop for Unregister<K, S> {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running
            .get(&self.key)
            .is_some_and(|entry| entry.same_channel(&self.progress))
        {
            running.remove(&self.key);
        }
    }
}

impl<K, S> SingleFlight<K, S>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    S: Send + Sync + 'static,
{
    /// Follows the run for `key`, or starts one: `work` gets the sender of
    /// a channel that starts at `initial`, and runs in its own task. The
    /// `bool` is true when a run under way was joined (`work` is then
    /// dropped unused).
    pub fn join_or_start<W, F>(&self, key: K, initial: S, work: W) -> (watch::Receiver<S>, bool)
    where
        W: FnOnce(watch::Sender<S>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        self.follow_or_start(key, |_| true, initial, work)
    }

    /// Starts a new run for `key` in place of `stale`, a run that new
    /// callers can no longer follow (a download whose window moved on, see
    /// `cache::window`); when another caller already replaced it, follows
    /// that run instead. The old run goes on for its own callers.
    pub fn replace<W, F>(
        &self,
        key: K,
        stale: &watch::Receiver<S>,
        initial: S,
        work: W,
    ) -> (watch::Receiver<S>, bool)
    where
        W: FnOnce(watch::Sender<S>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        self.follow_or_start(key, |running| !running.same_channel(stale), initial, work)
    }

    /// Follows the run for `key` when there is one and `join` accepts it;
    /// else starts one in its place.
    fn follow_or_start<W, F>(
        &self,
        key: K,
        join: impl FnOnce(&watch::Receiver<S>) -> bool,
        initial: S,
        work: W,
    ) -> (watch::Receiver<S>, bool)
    where
        W: FnOnce(watch::Sender<S>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(progress) = running.get(&key).filter(|progress| join(progress)) {
            return (progress.clone(), true);
        }
        let (sender, progress) = watch::channel(initial);
        running.insert(key.clone(), progress.clone());
        let unregister = Unregister {
            running: self.running.clone(),
            key,
            progress: progress.clone(),
        };
        let work = work(sender);
        tokio::spawn(async move {
            let _unregister = unregister;
            work.await;
        });
        (progress, false)
    }

    /// The run under way for `key`, if there is one.
    pub fn get(&self, key: &K) -> Option<watch::Receiver<S>> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.get(key).cloned()
    }
}

impl<K, V> SingleFlight<K, Option<V>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` to one value for `key`, or waits for the run already
    /// under way. The `bool` is true when this caller joined another's run.
    pub async fn run<F>(&self, key: K, work: F) -> (Result<V, Abandoned>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut result, joined) = self.join_or_start(key, None, |sender| async move {
            let value = work.await;
            sender.send_replace(Some(value));
        });
        let value = match result.wait_for(Option::is_some).await {
            Ok(value) => Ok(value.clone().expect("waited for a value")),
            Err(_) => Err(Abandoned),
        };
        (value, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: SingleFlight<&str, Option<usize>> = SingleFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut calls = Vec::new();
        for _ in 0..8 {
            let (flights, runs) = (flights.clone(), runs.clone());
            calls.push(tokio::spawn(async move {
                flights
                    .run("k", async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 41
                    })
                    .await
            }));
        }
        let mut joined = 0;
        for call in calls {
            let (value, was_joined) = call.await.unwrap();
            assert_eq!(value, Ok(41));
            joined += usize::from(was_joined);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
        // The entry is gone: the next call runs again.
        let (value, joined) = flights.run("k", async { 7 }).await;
        assert_eq!((value, joined), (Ok(7), false));
    }

    #[tokio::test]
    async fn a_panicking_run_is_abandoned_not_hung() {
        let flights: SingleFlight<u8, Option<u8>> = SingleFlight::default();
        let (value, _) = flights.run(1, async { panic!("boom") }).await;
        assert_eq!(value, Err(Abandoned));
        assert_eq!(flights.run(1, async { 2 }).await.0, Ok(2));
    }

    #[tokio::test]
    async fn a_run_outlives_its_callers_and_then_leaves() {
        let flights: SingleFlight<u8, Option<u8>> = SingleFlight::default();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let (mut progress, joined) = flights.join_or_start(1, None, |sender| async move {
            let _ = wait.await;
            sender.send_replace(Some(9));
            let _ = done_tx.send(());
        });
        assert!(!joined);
        // A follower that goes away does not stop the run.
        let follower = flights.get(&1).expect("running");
        drop(follower);
        release.send(()).unwrap();
        assert_eq!(*progress.wait_for(Option::is_some).await.unwrap(), Some(9));
        done.await.unwrap();
        for _ in 0..100 {
            if flights.get(&1).is_none() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the entry outlived its run");
    }
}
