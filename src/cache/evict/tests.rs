//! The evictor driven through a real disk tier: what a pass removes, and
//! what it must leave.

use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;

use super::Bounds;
use crate::cache::{DiskTier, ObjectKey, Tier, Verified};
use crate::config::DiskConfig;
use crate::digest::Digest;
use crate::metrics::Metrics;

/// A tier capped at 1000 bytes: eviction above 950, down to 850.
async fn small_tier(dir: &std::path::Path) -> DiskTier {
    let config = DiskConfig {
        max_bytes: Some(ByteSize::b(1000)),
        max_percent: 100,
        pull_hold: Duration::from_secs(60),
        ..DiskConfig::default()
    };
    let tier = DiskTier::open_bounded(dir, Bounds::new(&config), Metrics::new()).unwrap();
    settle(|| tier.evictor().usage().loaded).await;
    tier
}

/// Stores a 300-byte blob made from `seed`; returns its key.
async fn store(tier: &DiskTier, seed: u8) -> ObjectKey {
    let bytes = Bytes::from(vec![seed; 300]);
    let key = ObjectKey::blob(Digest::sha256_of(&bytes));
    let object = Verified::bytes(key.clone(), None, bytes).unwrap();
    tier.store(&object).await.unwrap();
    // Accesses a millisecond apart at least: LRU order is then certain.
    tokio::time::sleep(Duration::from_millis(5)).await;
    key
}

async fn settle(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not settled within 5 s");
}

fn on_disk(dir: &std::path::Path, key: &ObjectKey) -> bool {
    dir.join(crate::cache::object_path(key)).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_being_read_stays_until_its_reader_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let tier = small_tier(dir.path()).await;
    let read = store(&tier, 1).await;
    let reader = tier.lookup(&read).await.unwrap().expect("a hit");
    let others = [
        store(&tier, 2).await,
        store(&tier, 3).await,
        store(&tier, 4).await,
    ];
    // 1200 bytes: the pass frees 350, least recently used first, but the
    // blob being read is skipped.
    settle(|| tier.evictor().usage().bytes <= 950).await;
    assert!(on_disk(dir.path(), &read), "in use: kept");
    assert!(!on_disk(dir.path(), &others[0]) && !on_disk(dir.path(), &others[1]));
    assert!(on_disk(dir.path(), &others[2]));
    assert_eq!(tier.evictor().usage().bytes, 600);

    drop(reader);
    store(&tier, 5).await;
    store(&tier, 6).await;
    settle(|| tier.evictor().usage().bytes <= 950).await;
    assert!(
        !on_disk(dir.path(), &read),
        "no longer read: the oldest goes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_and_held_objects_stay_and_holds_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let tier = small_tier(dir.path()).await;
    let pinned = store(&tier, 1).await;
    let held = store(&tier, 2).await;
    tier.evictor()
        .pin(pinned.digest.clone(), [].into())
        .unwrap();
    let now = crate::clock::now_ms();
    tier.evictor().hold([&held.digest], now + 300);
    let newest = store(&tier, 3).await;
    store(&tier, 4).await;
    settle(|| tier.evictor().usage().bytes <= 950).await;
    assert!(on_disk(dir.path(), &pinned) && on_disk(dir.path(), &held));
    assert!(!on_disk(dir.path(), &newest), "only the unprotected go");

    tokio::time::sleep(Duration::from_millis(400)).await;
    store(&tier, 5).await;
    store(&tier, 6).await;
    settle(|| tier.evictor().usage().bytes <= 950).await;
    assert!(!on_disk(dir.path(), &held), "the hold ran out");
    assert!(on_disk(dir.path(), &pinned), "pins do not");
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tier = small_tier(dir.path()).await;
    let held = store(&tier, 1).await;
    let unheld = store(&tier, 2).await;
    let now = crate::clock::now_ms();
    tier.evictor().hold([&held.digest], now + 60_000);
    drop(tier);
    let saved = dir.path().join(super::held::HOLDS_FILE);
    settle(|| saved.exists()).await;

    let reopened = small_tier(dir.path()).await;
    store(&reopened, 3).await;
    store(&reopened, 4).await;
    settle(|| reopened.evictor().usage().bytes <= 950).await;
    assert!(on_disk(dir.path(), &held), "still held after the restart");
    assert!(!on_disk(dir.path(), &unheld), "the oldest unheld one went");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_tier_counts_what_the_last_one_held() {
    let dir = tempfile::tempdir().unwrap();
    let tier = small_tier(dir.path()).await;
    store(&tier, 1).await;
    store(&tier, 2).await;
    let manifest = Bytes::from_static(b"{\"schemaVersion\":2}");
    let key = ObjectKey::manifest(Digest::sha256_of(&manifest));
    let media = Some("application/vnd.oci.image.manifest.v1+json".to_owned());
    tier.store(&Verified::bytes(key, media, manifest).unwrap())
        .await
        .unwrap();
    let before = tier.evictor().usage();
    assert_eq!(before.objects, 3);
    assert_eq!(
        before.bytes,
        600 + 19 + 42,
        "a manifest counts its media type"
    );
    let reopened = small_tier(dir.path()).await;
    let after = reopened.evictor().usage();
    assert_eq!((after.bytes, after.objects), (before.bytes, before.objects));
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_yield_at_the_cap_and_a_store_makes_room_before_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let config = DiskConfig {
        max_bytes: Some(ByteSize::b(1000)),
        max_percent: 100,
        pull_hold: Duration::from_secs(60),
        ..DiskConfig::default()
    };
    let tier = DiskTier::open_bounded(dir.path(), Bounds::new(&config), metrics.clone()).unwrap();
    settle(|| tier.evictor().usage().loaded).await;
    settle(|| tier.evictor().usage().limits.cap == 1000).await;
    let mut keys = Vec::new();
    for seed in 1..=6 {
        // Every object is held, as the images of a burst of new pulls are.
        let key = store(&tier, seed).await;
        tier.evictor().hold([&key.digest], u64::MAX);
        keys.push(key);
        let bytes = tier.evictor().usage().bytes;
        assert!(
            bytes <= 1000,
            "{bytes} bytes after store {seed}: never past the cap"
        );
    }
    assert!(on_disk(dir.path(), &keys[5]), "the newest stays");
    assert!(
        !on_disk(dir.path(), &keys[0]),
        "the least recently used held one went"
    );
    let broken = metrics
        .cache
        .holds_broken
        .with_label_values(&["disk"])
        .get();
    assert!(broken >= 3, "{broken} holds broken");
}
