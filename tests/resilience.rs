//! Upstream resilience against the simulator: transient failures retried
//! unseen, interrupted blobs resumed with `Range`, a dead upstream cut off
//! by its circuit breaker, and a full disk that costs caching, not pulls.

mod support;

use std::time::{Duration, Instant};

use support::client::Client;
use support::disk::{Tmpfs, assert_objects_whole, files_under};
use support::hubsim::{Fault, FaultTarget, HubSim, SimOptions};
use support::proxy::{Proxy, config};
use support::random_bytes;

const MIB: usize = 1024 * 1024;

/// Every client's copy of a blob, fetched at once, as `sha256:` digests.
async fn concurrent_digests(
    client: &Client,
    repo: &str,
    digest: &str,
    clients: usize,
) -> Vec<String> {
    let fetches: Vec<_> = (0..clients)
        .map(|_| {
            let (client, repo, digest) = (client.clone(), repo.to_owned(), digest.to_owned());
            tokio::spawn(async move {
                let answer = client
                    .blob(&repo, &digest)
                    .await
                    .expect("the transfer completes");
                assert_eq!(answer.status, 200);
                answer.body_digest()
            })
        })
        .collect();
    let mut digests = Vec::new();
    for fetch in fetches {
        digests.push(fetch.await.unwrap());
    }
    digests
}

#[tokio::test]
async fn a_blob_reset_at_sixty_percent_resumes_from_there_for_every_client() {
    let sim = HubSim::start_with(SimOptions {
        // Slow enough that every client joins the one download.
        cdn_bytes_per_sec: Some(100 * MIB as u64),
        ..SimOptions::default()
    })
    .await;
    let blob = random_bytes(50 * MIB, 60);
    let digest = sim.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);

    sim.set_fault(FaultTarget::Blobs, Fault::ResetAtPercent(60), Some(1));
    let digests = concurrent_digests(&client, "library/big", &digest, 6).await;
    assert!(digests.iter().all(|d| *d == digest), "{digests:?}");

    let counters = sim.counters();
    let sent = counters.cdn_bytes as f64 / blob.len() as f64;
    assert!(sent < 1.1, "upstream sent {sent:.3}x the blob");
    assert_eq!(counters.cdn_gets, 2, "the download and its one resume");
    // The challenge, the download and the resume, each redirected to the CDN.
    assert_eq!(
        counters.blob_gets, 3,
        "the resume went through the registry"
    );
    assert_eq!(
        proxy.metric(
            "pullthrough_upstream_resumes_total",
            &[("upstream", "docker.io")]
        ),
        1.0
    );
    // Verified whole, and cached: the next pull costs upstream nothing.
    support::wait_until(|| proxy.cached_files() == 1).await;
    sim.reset_counters();
    let again = client.blob("library/big", &digest).await.unwrap();
    assert_eq!(again.body_digest(), digest);
    assert_eq!(sim.counters().total, 0);
}

#[tokio::test]
async fn a_download_broken_more_often_than_resumes_allow_fails_and_caches_nothing() {
    let sim = HubSim::start().await;
    let blob = random_bytes(4 * MIB, 61);
    let digest = sim.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);

    sim.set_fault(FaultTarget::Blobs, Fault::ResetAtPercent(30), Some(1));
    // Each of the three resumes allowed breaks again before its first byte.
    sim.set_fault(FaultTarget::Blobs, Fault::ResetAtPercent(0), Some(3));
    assert!(
        client.blob("library/x", &digest).await.is_err(),
        "the client's transfer breaks"
    );
    assert_eq!(sim.counters().cdn_gets, 4, "the download and three resumes");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.cached_files(), 0);
    let good = client.blob("library/x", &digest).await.unwrap();
    assert_eq!(good.body_digest(), digest, "the next pull starts afresh");
}

#[tokio::test]
async fn one_503_is_retried_unseen_and_a_429_is_not_retried() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/app", "1", &[random_bytes(2 * MIB, 62)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);

    sim.set_fault(FaultTarget::Manifests, Fault::ServiceUnavailable, Some(1));
    sim.set_fault(FaultTarget::Blobs, Fault::ServiceUnavailable, Some(1));
    let manifest = client.manifest("app", &image.manifest_digest).await;
    assert_eq!(manifest.status, 200);
    assert_eq!(manifest.body, image.manifest);
    let layer = client
        .blob("library/app", &image.layer_digests[0])
        .await
        .unwrap();
    assert_eq!(
        (layer.status, layer.body_digest()),
        (200, image.layer_digests[0].clone())
    );
    let counters = sim.counters();
    // The manifest GET: the token challenge, the 503, the answer.
    assert_eq!(
        (counters.manifest_gets, counters.blob_gets),
        (3, 2),
        "each asked again"
    );
    let retries = |kind: &str| {
        proxy.metric(
            "pullthrough_upstream_retries_total",
            &[("upstream", "docker.io"), ("kind", kind)],
        )
    };
    assert_eq!((retries("manifest_get"), retries("blob_get")), (1.0, 1.0));

    sim.reset_counters();
    sim.set_fault(FaultTarget::Manifests, Fault::TooManyRequests, Some(1));
    let refused = client.manifest("app", "1").await;
    assert_eq!(
        (refused.status, refused.error_code().as_str()),
        (429, "TOOMANYREQUESTS")
    );
    assert_eq!(sim.counters().manifest_heads, 1, "a 429 is asked once");
    assert_eq!(retries("manifest_head"), 0.0);
    assert_eq!(
        proxy.metric(
            "pullthrough_upstream_circuit_state",
            &[("upstream", "docker.io")]
        ),
        0.0,
        "neither a 503 that recovered nor a 429 opens the circuit"
    );
}

#[tokio::test]
async fn a_dead_upstream_costs_no_timeout_per_request() {
    let sim = HubSim::start().await;
    let images: Vec<_> = (0..10)
        .map(|i| {
            sim.push_image(
                "library/svc",
                &format!("v{i}"),
                &[random_bytes(1000, 70 + i)],
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.tag_ttl = Duration::from_millis(100);
    cfg.timeouts.request = Duration::from_secs(1);
    cfg.resilience.circuit_failures = 2;
    cfg.resilience.circuit_cooldown = Duration::from_secs(3);
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);
    for image in &images {
        client.pull("svc", &image.tag).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Upstream hangs: each request would cost the whole request timeout.
    sim.set_fault(FaultTarget::All, Fault::Slow(Duration::from_secs(30)), None);
    let uncached = |n: u32| format!("sha256:{}", n.to_string().repeat(64));
    // Two distinct fetches (identical ones would share one).
    let (first, second) = (uncached(8), uncached(9));
    let tripping = [
        client.manifest("svc", &first),
        client.manifest("svc", &second),
    ];
    for answer in futures_util::future::join_all(tripping).await {
        assert_eq!(answer.status, 504, "{:?}", answer.body);
    }
    assert_eq!(
        proxy.metric(
            "pullthrough_upstream_circuit_state",
            &[("upstream", "docker.io")]
        ),
        2.0,
        "open"
    );

    // Cached content: tags past their TTL served stale, blobs from the cache.
    let started = Instant::now();
    for i in 0..100 {
        let image = &images[i % images.len()];
        let answer = match i % 2 {
            0 => client.manifest("svc", &image.tag).await,
            _ => client
                .blob("library/svc", &image.config_digest)
                .await
                .unwrap(),
        };
        assert_eq!(answer.status, 200, "request {i}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "100 cached requests took {elapsed:?}"
    );

    for n in 1..=5 {
        let started = Instant::now();
        let answer = client.manifest("svc", &uncached(n)).await;
        let elapsed = started.elapsed();
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (503, "UNAVAILABLE")
        );
        let retry_after: u64 = answer.header("retry-after").parse().unwrap();
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let message = String::from_utf8_lossy(&answer.body);
        assert!(
            message.contains("circuit for upstream docker.io is open")
                && message.contains("tried again in"),
            "{message}"
        );
        assert!(
            elapsed < Duration::from_millis(200),
            "failed fast: {elapsed:?}"
        );
    }

    // After the cool-down one probe goes out; upstream answers, so it closes.
    sim.clear_faults();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answer = client.manifest("svc", &images[0].manifest_digest).await;
    assert_eq!(answer.status, 200);
    let missing = client.manifest("svc", &uncached(8)).await;
    assert_eq!(missing.status, 404, "the upstream's own answer again");
    assert_eq!(
        proxy.metric(
            "pullthrough_upstream_circuit_state",
            &[("upstream", "docker.io")]
        ),
        0.0,
        "closed"
    );
}

#[tokio::test]
async fn a_full_disk_streams_the_download_through_uncached() {
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "size=8m");
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(40 * MIB as u64),
        ..SimOptions::default()
    })
    .await;
    let big = random_bytes(12 * MIB, 80);
    let big_digest = sim.put_blob(big.clone());
    let small = random_bytes(2 * MIB, 81);
    let small_digest = sim.put_blob(small.clone());
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);

    let digests = concurrent_digests(&client, "library/fat", &big_digest, 4).await;
    assert!(digests.iter().all(|d| *d == big_digest), "{digests:?}");
    assert_eq!(sim.counters().cdn_gets, 1, "one download for every client");
    assert_eq!(
        proxy.metric(
            "pullthrough_cache_store_failures_total",
            &[("tier", "disk"), ("reason", "no_space")]
        ),
        1.0
    );
    // Nothing of it was kept, and its file is gone, freeing the space.
    let cache = dir.path().join("cache");
    support::wait_until(|| files_under(&cache.join("tmp")).is_empty()).await;
    assert!(files_under(&cache.join("blobs")).is_empty());

    // Uncached means asked again; and a blob that fits is cached as ever.
    let again = client.blob("library/fat", &big_digest).await.unwrap();
    assert_eq!(again.body_digest(), big_digest);
    assert_eq!(sim.counters().cdn_gets, 2);
    let fits = client.blob("library/fat", &small_digest).await.unwrap();
    assert_eq!(fits.body_digest(), small_digest);
    support::wait_until(|| files_under(&cache.join("blobs")).len() == 1).await;
    assert_eq!(assert_objects_whole(&cache), 1);
}

#[tokio::test]
async fn a_download_that_gets_no_temporary_file_streams_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(dir.path(), "size=64m,nr_inodes=64");
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(40 * MIB as u64),
        ..SimOptions::default()
    })
    .await;
    let blob = random_bytes(6 * MIB, 82);
    let digest = sim.put_blob(blob);
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    // Spend every inode, so not even an empty file can be created.
    let filler = dir.path().join("filler");
    std::fs::create_dir(&filler).unwrap();
    let made = (0..64)
        .take_while(|n| std::fs::File::create(filler.join(n.to_string())).is_ok())
        .count();
    assert!(made < 64, "the inodes ran out");

    let digests = concurrent_digests(&client, "library/lean", &digest, 3).await;
    assert!(digests.iter().all(|d| *d == digest), "{digests:?}");
    assert_eq!(sim.counters().cdn_gets, 1);
    assert_eq!(
        proxy.metric(
            "pullthrough_cache_store_failures_total",
            &[("tier", "disk"), ("reason", "no_space")]
        ),
        1.0
    );
    assert_eq!(assert_objects_whole(&dir.path().join("cache")), 0);
}

#[tokio::test]
async fn fetches_beyond_the_limit_wait_their_turn() {
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(8 * MIB as u64),
        ..SimOptions::default()
    })
    .await;
    let (first, second) = (random_bytes(4 * MIB, 83), random_bytes(4 * MIB, 84));
    let (first_digest, second_digest) = (sim.put_blob(first), sim.put_blob(second));
    let (d1, d2) = (first_digest.clone(), second_digest.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.resilience.max_concurrent_fetches = 1;
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);

    let (one, two) = (client.clone(), client.clone());
    let a = tokio::spawn(async move { one.blob("library/q", &d1).await.unwrap() });
    support::wait_until(|| sim.counters().cdn_gets == 1).await;
    let b = tokio::spawn(async move { two.blob("library/q", &d2).await.unwrap() });
    let waiting = || {
        proxy.metric(
            "pullthrough_upstream_fetches_waiting",
            &[("upstream", "docker.io")],
        )
    };
    support::wait_until(|| waiting() == 1.0).await;
    assert_eq!(
        sim.counters().blob_gets,
        2,
        "the second is not asked while the first runs"
    );
    for (answer, digest) in [(a, &first_digest), (b, &second_digest)] {
        let answer = answer.await.unwrap();
        assert_eq!((answer.status, answer.body_digest()), (200, digest.clone()));
    }
    assert_eq!(sim.counters().cdn_gets, 2);
    assert_eq!(waiting(), 0.0);
}
