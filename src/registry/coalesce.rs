//! Single-flight for small answers (manifests, tag checks): concurrent
//! callers with one key share one run of the work.
//!
//! The contract: the work runs in its own task, so it completes even if
//! every caller goes away; its entry is removed when it ends, by a drop
//! guard, so a panicking run leaves no entry behind and callers get
//! [`Abandoned`] instead of hanging. A caller arriving after the end starts
//! a new run: results are shared, never cached here.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// The shared run ended without a result (its task panicked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abandoned;

type Running<K, V> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Result<V, Abandoned>>>>>>;

/// Runs at most one piece of work per key at a time; cheap to clone.
pub struct SingleFlight<K, V> {
    running: Running<K, V>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            running: self.running.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

struct Unregister<K: Hash + Eq, V> {
    running: Running<K, V>,
    key: K,
}

impl<K: Hash + Eq, V> Drop for Unregister<K, V> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or waits for the run already under way. The
    /// `bool` is true when this caller joined another's run.
    pub async fn run<F>(&self, key: K, work: F) -> (Result<V, Abandoned>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (shared, joined) = {
            let mut running = self.running.lock().expect("single-flight lock");
            match running.get(&key) {
                Some(shared) => (shared.clone(), true),
                None => {
                    let unregister = Unregister {
                        running: self.running.clone(),
                        key: key.clone(),
                    };
                    let task = tokio::spawn(async move {
                        let _unregister = unregister;
                        work.await
                    });
                    let shared = async move { task.await.map_err(|_| Abandoned) }
                        .boxed()
                        .shared();
                    running.insert(key, shared.clone());
                    (shared, false)
                }
            }
        };
        (shared.await, joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: SingleFlight<&str, usize> = SingleFlight::default();
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
        let flights: SingleFlight<u8, u8> = SingleFlight::default();
        let (value, _) = flights.run(1, async { panic!("boom") }).await;
        assert_eq!(value, Err(Abandoned));
        assert_eq!(flights.run(1, async { 2 }).await.0, Ok(2));
    }
}
