//! Soak: minutes of bounded load from many clients, mixing cache hits,
//! misses and revalidations while faults are injected upstream on a
//! schedule. Cached content must never fail, and memory must stay flat.
//!
//! `SOAK_SECS` sets the length (default 120). Run with `--nocapture` to see
//! the figures: requests, errors by kind, RSS at start and end.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::client::Client;
use support::hubsim::{Fault, FaultTarget, HubSim, SimOptions};
use support::proxy::{Proxy, config};
use support::random_bytes;

const CLIENTS: usize = 50;
const WARM_IMAGES: usize = 20;
/// A new image upstream this often; clients pull the newest as misses.
const TICK: Duration = Duration::from_millis(500);
/// Allowed RSS growth after warm-up.
const RSS_SLACK: u64 = 64 * 1024 * 1024;

/// The faults armed in turn, one every five ticks.
const FAULTS: [(FaultTarget, Fault, usize); 6] = [
    (FaultTarget::Manifests, Fault::ServiceUnavailable, 3),
    (FaultTarget::Blobs, Fault::ResetAtPercent(50), 2),
    (
        FaultTarget::Manifests,
        Fault::Slow(Duration::from_millis(300)),
        5,
    ),
    (FaultTarget::All, Fault::InternalError, 2),
    (FaultTarget::Blobs, Fault::ServiceUnavailable, 2),
    (FaultTarget::Manifests, Fault::TooManyRequests, 1),
];

/// Requests made and errors seen, by kind.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn errors_of(&self, prefix: &str) -> u64 {
        let errors = self.errors.lock().unwrap();
        errors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

/// Pulls `repo:tag` like a client, checking every digest; each request is
/// counted, each failure tallied as `<what> <kind>`.
async fn pull(client: &Client, tally: &Tally, what: &str, repo: &str, tag: &str) {
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let manifest = client.manifest(repo, tag).await;
    if manifest.status != 200 {
        return tally.error(format!("{what} manifest {}", manifest.status));
    }
    if manifest.body_digest() != manifest.header("docker-content-digest") {
        return tally.error(format!("{what} manifest corrupt"));
    }
    let json: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    let mut blobs = vec![json["config"]["digest"].as_str().unwrap().to_owned()];
    for layer in json["layers"].as_array().unwrap() {
        blobs.push(layer["digest"].as_str().unwrap().to_owned());
    }
    for digest in blobs {
        tally.requests.fetch_add(1, Ordering::Relaxed);
        match client.blob(&format!("library/{repo}"), &digest).await {
            Ok(answer) if answer.status == 200 && answer.body_digest() == digest => {}
            Ok(answer) if answer.status == 200 => tally.error(format!("{what} blob corrupt")),
            Ok(answer) => tally.error(format!("{what} blob {}", answer.status)),
            Err(_) => tally.error(format!("{what} blob broken")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_faults_keeps_cached_content_whole_and_memory_flat() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let sim = Arc::new(
        HubSim::start_with(SimOptions {
            rate_limit: Some(u32::MAX),
            ..SimOptions::default()
        })
        .await,
    );
    for i in 0..WARM_IMAGES as u64 {
        // One layer above the memory tier's object limit, served from disk.
        let layers = [random_bytes(1536 * 1024, i), random_bytes(4096, 1000 + i)];
        sim.push_image("library/warm", &format!("t{i}"), &layers);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.tag_ttl = Duration::from_secs(1);
    cfg.memory.max_bytes = bytesize::ByteSize::mib(32);
    cfg.timeouts.request = Duration::from_secs(2);
    cfg.resilience.circuit_cooldown = Duration::from_secs(2);
    let proxy = Proxy::start(cfg).await;
    let client = Client::pooled(&proxy.url);
    for i in 0..WARM_IMAGES {
        client.pull("warm", &format!("t{i}")).await;
    }

    let tally = Arc::new(Tally::default());
    let newest = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let schedule = {
        let (sim, newest) = (sim.clone(), newest.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            while Instant::now() < deadline {
                tick += 1;
                sim.push_image(
                    "library/fresh",
                    &format!("f{tick}"),
                    &[random_bytes(32 * 1024, 1_000_000 + tick)],
                );
                newest.store(tick, Ordering::SeqCst);
                if tick.is_multiple_of(5) {
                    let (target, fault, times) = FAULTS[(tick / 5) as usize % FAULTS.len()];
                    sim.set_fault(target, fault, Some(times));
                }
                // Keeps the simulator's request log from growing for minutes.
                sim.reset_counters();
                tokio::time::sleep(TICK).await;
            }
            sim.clear_faults();
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (client, tally, newest) = (client.clone(), tally.clone(), newest.clone());
            tokio::spawn(async move {
                let mut n = id;
                while Instant::now() < deadline {
                    n += 1;
                    match (n % 5, newest.load(Ordering::SeqCst)) {
                        (0, tick) if tick > 0 => {
                            let tag = format!("f{tick}");
                            pull(&client, &tally, "fresh", "fresh", &tag).await;
                        }
                        _ => {
                            let tag = format!("t{}", n % WARM_IMAGES);
                            pull(&client, &tally, "cached", "warm", &tag).await;
                        }
                    }
                }
            })
        })
        .collect();

    let warm_up = Duration::from_secs((secs / 6).clamp(2, 20));
    tokio::time::sleep(warm_up).await;
    let rss_start = rss();
    let requests_start = tally.requests.load(Ordering::Relaxed);
    for task in clients {
        task.await.unwrap();
    }
    schedule.await.unwrap();
    let rss_end = rss();

    let requests = tally.requests.load(Ordering::Relaxed);
    let errors = tally.errors.lock().unwrap().clone();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "soak: {secs} s, {CLIENTS} clients, {requests} requests ({requests_start} in the first {warm_up:?})"
    );
    println!("soak: errors by kind: {errors:?}");
    for outcome in [
        "hit-memory",
        "hit-disk",
        "miss",
        "coalesced",
        "revalidated",
        "stale",
    ] {
        println!("soak: outcome {outcome}: {}", proxy.outcomes(outcome));
    }
    for (name, labels) in [
        ("pullthrough_upstream_retries_total", &[][..]),
        ("pullthrough_upstream_resumes_total", &[][..]),
        (
            "pullthrough_upstream_requests_total",
            &[("status", "503")][..],
        ),
    ] {
        println!("soak: {name}{labels:?}: {}", proxy.metric(name, labels));
    }
    println!(
        "soak: RSS after warm-up {:.1} MiB, at the end {:.1} MiB",
        mib(rss_start),
        mib(rss_end)
    );
    assert_eq!(
        tally.errors_of("cached"),
        0,
        "cached content never fails: {errors:?}"
    );
    assert!(requests > 1000, "the load ran: {requests} requests");
    assert!(
        rss_end <= rss_start + RSS_SLACK,
        "RSS grew from {:.1} to {:.1} MiB",
        mib(rss_start),
        mib(rss_end)
    );
}
