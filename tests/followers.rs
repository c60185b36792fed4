//! A rollout in miniature: hundreds of clients join one cold download while
//! pullthrough runs on a runtime with a tiny blocking pool. Clients that
//! wait on a download must hold no thread, so every one of them streams at
//! once, and a warm blob is still served from disk meanwhile; a client that
//! joins late needs no file work at all.
//!
//! This file holds one test on its own runtime, so nothing else shares the
//! pool it starves on purpose.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use support::hubsim::{HubSim, SimOptions};
use support::proxy::{Proxy, config};
use support::{random_bytes, sha256_digest};

/// Far more followers than blocking threads.
const FOLLOWERS: usize = 300;
const BLOCKING_THREADS: usize = 4;
/// Slow enough that every follower joins long before the download ends.
const UPSTREAM_BYTES_PER_SEC: u64 = 512 * 1024;
const COLD_BLOB: usize = 4 * 1024 * 1024;

#[test]
fn followers_of_a_download_hold_no_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(rollout());
}

async fn rollout() {
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(UPSTREAM_BYTES_PER_SEC),
        ..SimOptions::default()
    })
    .await;
    // Above the memory tier's object limit, so it is served from disk.
    let warm = random_bytes(1536 * 1024, 1);
    let cold = random_bytes(COLD_BLOB, 2);
    let (warm_digest, cold_digest) = (sim.put_blob(warm.clone()), sim.put_blob(cold.clone()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let blob_url = |digest: &str| format!("{}/v2/library/app/blobs/{digest}", proxy.url);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let get = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    assert_eq!(get(blob_url(&warm_digest)).await, warm);
    sim.reset_counters();

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let (client, url) = (client.clone(), blob_url(&cold_digest));
            let (started, finished) = (started.clone(), finished.clone());
            tokio::spawn(async move {
                let response = client.get(url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let mut body = response.bytes_stream();
                let mut bytes = Vec::with_capacity(COLD_BLOB);
                let mut first = true;
                while let Some(piece) = body.next().await {
                    bytes.extend_from_slice(&piece.unwrap());
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                sha256_digest(&bytes)
            })
        })
        .collect();

    // Every follower streams at once: none waits for another to finish.
    // (With a thread per follower, four would stream and the rest wait.)
    let download = Duration::from_secs_f64(COLD_BLOB as f64 / UPSTREAM_BYTES_PER_SEC as f64);
    let all_started = async {
        while started.load(Ordering::SeqCst) < FOLLOWERS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(download, all_started)
        .await
        .expect("every follower gets bytes while the download runs");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "all {FOLLOWERS} followers stream before any finishes"
    );
    // And a warm blob is served from disk while they wait.
    assert_eq!(get(blob_url(&warm_digest)).await, warm);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "served during the download"
    );

    // A late client joins the download without any file work: with every
    // blocking thread held, it still gets its answer at once.
    let release = hold_blocking_threads().await;
    let late = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(blob_url(&cold_digest)).send(),
    )
    .await
    .expect("a client joining a download waits for no file work")
    .unwrap();
    assert_eq!(late.status(), 200);
    drop(release);
    let late = late.bytes().await.unwrap();
    assert_eq!(sha256_digest(&late), cold_digest);

    for follower in followers {
        assert_eq!(follower.await.unwrap(), cold_digest);
    }
    assert_eq!(sim.counters().cdn_gets, 1, "one upstream download for all");
    assert_eq!(proxy.outcomes("hit-disk"), 1);
    proxy.stop().await;
}

/// Takes every blocking thread of the runtime with a job of the file pool
/// that waits until the returned sender is dropped; returns once they all
/// run, so no other blocking work can start meanwhile.
async fn hold_blocking_threads() -> std::sync::mpsc::Sender<()> {
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = Arc::new(std::sync::Mutex::new(wait));
    let running = Arc::new(AtomicUsize::new(0));
    for _ in 0..pullthrough::cache::blocking::FILE_WORKERS {
        let (wait, running) = (wait.clone(), running.clone());
        tokio::spawn(pullthrough::cache::blocking::run(move || {
            running.fetch_add(1, Ordering::SeqCst);
            // One job waits on the channel, the others on the lock: all
            // stay blocked until the sender goes.
            let _ = wait.lock().unwrap().recv();
        }));
    }
    while running.load(Ordering::SeqCst) < BLOCKING_THREADS {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release
}
