//! The disk tier under a small cap: a stream of images goes through it,
//! and the cap holds while pinned content, the image a client is pulling
//! and the accounting across a restart all survive.

mod support;

use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use pullthrough::cache::evict::DiskUsage;
use pullthrough::config::Config;

use support::client::Client;
use support::hubsim::{HubSim, SimImage};
use support::proxy::{self, Proxy};
use support::random_bytes;

/// Every layer's size: an image is about half a MiB.
const LAYER: usize = 256 * 1024;

/// The cap: four MiB, so eviction starts above 95% of it and stops at 85%.
const CAP: u64 = 4 * 1024 * 1024;

/// A disk tier of [`CAP`] bytes and no memory tier, so every hit is a disk
/// hit; pulls by digest are protected for one second, tags for a minute.
fn small_cache(sim: &HubSim, data_dir: &std::path::Path) -> Config {
    let mut config = proxy::config(&sim.registry_url, data_dir);
    config.memory.max_bytes = ByteSize::b(0);
    config.disk.max_bytes = Some(ByteSize::b(CAP));
    config.disk.max_percent = 100;
    config.disk.pull_hold = Duration::from_secs(1);
    config.tag_ttl = Duration::from_secs(60);
    config
}

fn push(sim: &HubSim, repo: &str, seed: u64) -> SimImage {
    let layers: Vec<Bytes> = (0..2).map(|n| random_bytes(LAYER, seed * 10 + n)).collect();
    sim.push_image(repo, "v1", &layers)
}

/// The disk tier once eviction is done: under its high watermark, and
/// unchanged for a few tenths of a second.
async fn settled(proxy: &Proxy) -> DiskUsage {
    let high = CAP * 95 / 100;
    support::wait_until_async(async || proxy.disk().await.bytes <= high).await;
    let mut last = proxy.disk().await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = proxy.disk().await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the disk tier never settled: {last:?}");
}

/// Pins (`POST`) or unpins (`DELETE`) `image` through the admin endpoint.
async fn admin(client: &Client, method: &str, image: &str) -> serde_json::Value {
    let path = format!("/_pullthrough/pin?image={image}");
    let answer = client
        .send(method, &path, Default::default())
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    serde_json::from_slice(&answer.body).unwrap()
}

fn blobs(image: &SimImage) -> Vec<String> {
    let mut blobs = vec![image.config_digest.clone()];
    blobs.extend(image.layer_digests.iter().cloned());
    blobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_of_images_keeps_the_cap_pins_and_the_pull_in_progress() {
    let sim = HubSim::start().await;
    let pinned = push(&sim, "library/pinned", 1);
    let rollout = push(&sim, "library/rollout", 2);
    let flood: Vec<SimImage> = (0..16)
        .map(|n| push(&sim, &format!("library/flood{n}"), 100 + n))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let proxy = Proxy::start(small_cache(&sim, &data_dir)).await;
    proxy.disk_counted().await;
    let client = Client::new(&proxy.url);

    // Pinned by digest, so only the pin protects it once its hold ran out.
    client.pull("library/pinned", &pinned.manifest_digest).await;
    let pinned_image = format!("library/pinned@{}", pinned.manifest_digest);
    let pin = admin(&client, "POST", &pinned_image).await;
    assert_eq!(pin["pinned"], pinned.manifest_digest.as_str(), "{pin}");
    assert_eq!(pin["digests"], 4, "the manifest, its config and two layers");
    assert_eq!(pin["manifests_not_cached"], serde_json::json!([]));
    let pins = client.get("/_pullthrough/pin").await;
    let pins: serde_json::Value = serde_json::from_slice(&pins.body).unwrap();
    assert_eq!(pins["pins"][0]["pinned"], pinned.manifest_digest.as_str());
    assert_eq!(pins["pins"].as_array().unwrap().len(), 1);

    // The image of a rollout: cached, then a client starts pulling it by
    // tag and has one layer when the flood comes.
    client.pull("library/rollout", "v1").await;
    let manifest = client.manifest("library/rollout", "v1").await;
    assert_eq!(manifest.status, 200);
    let first = client
        .blob("library/rollout", &rollout.layer_digests[0])
        .await
        .unwrap();
    assert_eq!(first.body_digest(), rollout.layer_digests[0]);

    // Twice the cap goes through, in batches a hold apart: what the last
    // batch holds, with the pin and the rollout, stays under the cap, so
    // only the earlier batches' objects are evicted (holds yield only to
    // the cap itself, see `holds_yield_only_to_the_cap` below).
    for batch in flood.chunks(4) {
        for image in batch {
            client.pull(&image.repo, &image.manifest_digest).await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let last = push(&sim, "library/last", 999);
    client.pull(&last.repo, &last.manifest_digest).await;
    let disk = settled(&proxy).await;
    assert_eq!(disk.limits.cap, CAP);
    assert!(
        disk.bytes <= CAP * 95 / 100,
        "under the high watermark: {disk:?}"
    );
    let low = CAP * 85 / 100;
    assert!(
        disk.bytes >= low - 2 * LAYER as u64,
        "no more than needed: {disk:?}"
    );
    let evicted = proxy.metric("pullthrough_cache_evicted_bytes_total", &[("tier", "disk")]);
    assert!(
        evicted >= (8 * 1024 * 1024 - CAP) as f64,
        "evicted {evicted}"
    );
    let flood_left = flood.iter().flat_map(blobs).filter(|b| proxy.has_blob(b));
    assert!(
        flood_left.count() < 3 * flood.len() / 2,
        "the flood went first"
    );

    for blob in blobs(&pinned) {
        assert!(proxy.has_blob(&blob), "pinned {blob} stays");
    }
    // The pull in progress completes from the cache, with the right bytes.
    let upstream_before = sim.counters().cdn_gets;
    for blob in blobs(&rollout).iter().skip(1) {
        let answer = client.blob("library/rollout", blob).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body_digest(), blob);
    }
    assert_eq!(sim.counters().cdn_gets, upstream_before, "all hits");

    // A restart counts exactly what was there.
    let before = settled(&proxy).await;
    proxy.stop().await;
    let restarted = Proxy::start(small_cache(&sim, &data_dir)).await;
    restarted.disk_counted().await;
    let after = restarted.disk().await;
    assert_eq!((after.bytes, after.objects), (before.bytes, before.objects));
    assert_eq!(
        restarted.metric("pullthrough_cache_bytes", &[("tier", "disk")]),
        before.bytes as f64
    );
    let restarted_client = Client::new(&restarted.url);
    let unpin = admin(&restarted_client, "DELETE", &pinned_image).await;
    assert_eq!(unpin["unpinned"], true, "the pin survived the restart");
    let again = admin(&restarted_client, "DELETE", &pinned_image).await;
    assert_eq!(again["unpinned"], false);
}

#[tokio::test]
async fn the_gauges_count_what_each_tier_holds() {
    let sim = HubSim::start().await;
    let image = push(&sim, "library/counted", 7);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(proxy::config(&sim.registry_url, dir.path())).await;
    proxy.disk_counted().await;
    let client = Client::new(&proxy.url);
    client.pull("library/counted", "v1").await;
    let config_size = blob_size(&client, "library/counted", &image.config_digest).await;
    // The manifest with its media type, the config and two layers.
    let media_type = "application/vnd.docker.distribution.manifest.v2+json".len() as u64;
    let bytes = image.manifest.len() as u64 + media_type + config_size + 2 * LAYER as u64;
    support::wait_until_async(async || proxy.disk().await.objects == 4).await;
    assert_eq!(proxy.disk().await.bytes, bytes);
    let text = client.get("/metrics").await.body;
    let text = String::from_utf8_lossy(&text);
    let gauge = |name, tier| support::metric_sum(&text, name, &[("tier", tier)]);
    assert_eq!(gauge("pullthrough_cache_bytes", "disk"), bytes as f64);
    assert_eq!(gauge("pullthrough_cache_objects", "disk"), 4.0);
    // Everything is under the memory tier's 1 MiB object limit.
    assert_eq!(gauge("pullthrough_cache_objects", "memory"), 4.0);
    assert!(gauge("pullthrough_cache_bytes", "memory") >= (bytes - media_type) as f64);
}

/// The size of a blob, as the mirror serves it.
async fn blob_size(client: &Client, repo: &str, digest: &str) -> u64 {
    client.blob(repo, digest).await.unwrap().body.len() as u64
}

/// Bytes of the object files under the disk tier, as `du` would count them.
fn bytes_on_disk(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_on_disk(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_yield_only_to_the_cap() {
    let sim = HubSim::start().await;
    // Six new images of 1.5 MiB each, pulled one after another by tag, all
    // within their tag TTL and pull hold: together more than twice the cap.
    let images: Vec<SimImage> = (0..6)
        .map(|n| {
            let layers: Vec<Bytes> = (0..2)
                .map(|l| random_bytes(768 * 1024, 500 + n * 10 + l))
                .collect();
            sim.push_image(&format!("library/burst{n}"), "v1", &layers)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut config = small_cache(&sim, &data_dir);
    config.tag_ttl = Duration::from_secs(3600);
    config.disk.pull_hold = pullthrough::config::DiskConfig::default().pull_hold;
    let proxy = Proxy::start(config).await;
    proxy.disk_counted().await;
    support::wait_until_async(async || proxy.disk().await.limits.cap == CAP).await;
    let client = Client::new(&proxy.url);
    let objects = data_dir.join("cache");
    for image in &images {
        client.pull(&image.repo, "v1").await;
        let counted = proxy.disk().await.bytes;
        let files =
            bytes_on_disk(&objects.join("blobs")) + bytes_on_disk(&objects.join("manifests"));
        assert!(
            counted <= CAP,
            "{counted} bytes counted after {}",
            image.repo
        );
        assert!(files <= CAP, "{files} bytes of files after {}", image.repo);
    }
    let broken = proxy.metric("pullthrough_cache_holds_broken_total", &[("tier", "disk")]);
    assert!(broken > 0.0, "holds had to yield");
    // The newest image is still warm: pulled again with no upstream bytes.
    let before = sim.counters();
    let newest = images.last().unwrap();
    client.pull(&newest.repo, "v1").await;
    let after = sim.counters();
    assert_eq!(after.cdn_gets, before.cdn_gets, "the newest image is warm");
}
