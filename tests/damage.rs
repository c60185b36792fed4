//! Damage on disk heals and is never served as good: a cached layer whose
//! file was altered or cut short, while the replica runs or before it
//! restarts, is found when it is next asked for, deleted, and fetched
//! again in the same request; the pull after that is a hit. Damage no one
//! asks for is found by the background scrub.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use support::client::Client;
use support::hubsim::HubSim;
use support::proxy::{self, Proxy};
use support::random_bytes;

/// A replica without a memory tier, so every hit is a disk hit.
async fn replica(sim: &HubSim, data_dir: &Path) -> Proxy {
    let mut config = proxy::config(&sim.registry_url, data_dir);
    config.memory.max_bytes = ByteSize::b(0);
    Proxy::start(config).await
}

fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    data_dir
        .join("cache/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Damages the file: four bytes overwritten in the middle, or cut short.
fn damage(path: &Path, truncate: bool) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    if truncate {
        file.set_len(1_000_000).unwrap();
    } else {
        let middle = file.metadata().unwrap().len() / 2;
        file.write_all_at(b"\0bad", middle).unwrap();
    }
}

/// GETs the layer and checks it whole; the number of upstream downloads
/// it took.
async fn get_layer(sim: &HubSim, proxy: &Proxy, digest: &str, layer: &[u8]) -> u64 {
    let before = sim.counters().cdn_gets;
    let answer = Client::new(&proxy.url)
        .blob("library/damaged", digest)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answer.body == layer,
        "the whole layer, right: {} of {} bytes, {}",
        answer.body.len(),
        layer.len(),
        answer.body_digest()
    );
    sim.counters().cdn_gets - before
}

/// Waits until no download runs: the layer is stored, and its download's
/// own view of the file (which a damage would reach too) is gone.
async fn settled(proxy: &Proxy) {
    support::wait_until(|| proxy.metric("pullthrough_downloads_active", &[]) == 0.0).await;
}

async fn heals(truncate: bool, restart: bool) {
    let sim = HubSim::start().await;
    let layer = random_bytes(8 << 20, 90 + u64::from(truncate));
    let image = sim.push_image("library/damaged", "1", std::slice::from_ref(&layer));
    let digest = &image.layer_digests[0];
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = replica(&sim, dir.path()).await;
    assert_eq!(get_layer(&sim, &proxy, digest, &layer).await, 1, "cold");
    assert_eq!(get_layer(&sim, &proxy, digest, &layer).await, 0, "warm");

    let file = blob_file(dir.path(), digest);
    settled(&proxy).await;
    damage(&file, truncate);
    if restart {
        proxy.stop().await;
        proxy = replica(&sim, dir.path()).await;
        proxy.disk_counted().await;
    }
    assert_eq!(
        get_layer(&sim, &proxy, digest, &layer).await,
        1,
        "found, and fetched again"
    );
    let corrupt = proxy.metric("pullthrough_cache_corrupt_total", &[("tier", "disk")]);
    assert_eq!(corrupt, 1.0);
    settled(&proxy).await;
    assert_eq!(
        get_layer(&sim, &proxy, digest, &layer).await,
        0,
        "healed: a hit"
    );
    let healed = std::fs::read(&file).unwrap();
    assert!(healed == layer, "the file on disk is whole again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_file_is_found_while_the_replica_runs() {
    heals(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_found_while_the_replica_runs() {
    heals(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_file_is_found_after_a_restart() {
    heals(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_is_found_after_a_restart() {
    heals(true, true).await;
}

/// Damage nobody asks for is found by the scrub: it deletes the bad file
/// (and only that one) before any client meets it, and the next pull
/// fetches a good copy.
#[tokio::test]
async fn the_scrub_finds_damage_no_pull_has_met() {
    let sim = HubSim::start().await;
    let (good, bad) = (random_bytes(3 << 20, 95), random_bytes(3 << 20, 96));
    let image = sim.push_image("library/damaged", "1", &[good.clone(), bad.clone()]);
    let (good_digest, bad_digest) = (&image.layer_digests[0], &image.layer_digests[1]);
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy::config(&sim.registry_url, dir.path());
    config.memory.max_bytes = ByteSize::b(0);
    config.disk.scrub_interval = std::time::Duration::from_secs(1);
    let proxy = Proxy::start(config).await;
    get_layer(&sim, &proxy, good_digest, &good).await;
    get_layer(&sim, &proxy, bad_digest, &bad).await;
    settled(&proxy).await;
    damage(&blob_file(dir.path(), bad_digest), false);

    let corrupt = || proxy.metric("pullthrough_cache_corrupt_total", &[("tier", "disk")]);
    for _ in 0..100 {
        if corrupt() > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(corrupt(), 1.0, "found by the scrub, with no request");
    assert!(!blob_file(dir.path(), bad_digest).exists(), "deleted");
    assert!(
        blob_file(dir.path(), good_digest).exists(),
        "the good one stays"
    );
    assert!(proxy.metric("pullthrough_cache_scrubbed_bytes_total", &[]) >= (3 << 20) as f64);
    assert_eq!(
        get_layer(&sim, &proxy, bad_digest, &bad).await,
        1,
        "fetched again"
    );
    assert_eq!(
        get_layer(&sim, &proxy, bad_digest, &bad).await,
        0,
        "then a hit"
    );
    assert_eq!(get_layer(&sim, &proxy, good_digest, &good).await, 0);
}
