//! Tags: answered within their TTL with no upstream contact, revalidated
//! with a free HEAD after it, and served stale when upstream fails.

mod support;

use std::time::Duration;

use support::client::Client;
use support::hubsim::{Fault, FaultTarget, HubSim, SimOptions};
use support::proxy::{Proxy, config};
use support::random_bytes;

const TTL: Duration = Duration::from_millis(1000);

async fn setup(sim: &HubSim, dir: &std::path::Path) -> Proxy {
    let mut cfg = config(&sim.registry_url, dir);
    cfg.tag_ttl = TTL;
    cfg.timeouts.request = Duration::from_millis(700);
    cfg.timeouts.read = Duration::from_millis(700);
    Proxy::start(cfg).await
}

async fn after_ttl() {
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
}

#[tokio::test]
async fn within_the_ttl_a_tag_needs_no_upstream_and_after_it_only_a_free_head() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/busybox", "1", &[random_bytes(100, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup(&sim, dir.path()).await;
    let client = Client::new(&proxy.url);
    client.pull("busybox", "1").await;
    let key = "127.0.0.1";
    let remaining = sim.rate_limit_remaining(key);

    sim.reset_counters();
    for _ in 0..20 {
        assert_eq!(
            client
                .manifest("busybox", "1")
                .await
                .header("docker-content-digest"),
            image.manifest_digest
        );
    }
    assert_eq!(
        sim.counters().total,
        0,
        "within the TTL nothing goes upstream"
    );

    after_ttl().await;
    let answer = client.manifest("busybox", "1").await;
    assert_eq!(
        answer.header("docker-content-digest"),
        image.manifest_digest
    );
    let counters = sim.counters();
    assert_eq!(counters.manifest_heads, 1, "one HEAD revalidates the tag");
    assert_eq!(
        counters.manifest_gets, 0,
        "revalidation spends no counted pull"
    );
    assert_eq!(sim.rate_limit_remaining(key), remaining);
    assert_eq!(proxy.outcomes("revalidated"), 1);
    let remaining_seen = proxy.metric(
        "pullthrough_upstream_ratelimit_remaining",
        &[("upstream", "docker.io")],
    );
    assert_eq!(
        remaining_seen as u32, remaining,
        "the rate-limit headers are read"
    );
}

#[tokio::test]
async fn a_tag_that_moved_is_fetched_once_after_the_ttl() {
    let sim = HubSim::start().await;
    let old = sim.push_image("library/app", "latest", &[random_bytes(100, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup(&sim, dir.path()).await;
    let client = Client::new(&proxy.url);
    assert_eq!(client.pull("app", "latest").await, old.manifest_digest);

    let new = sim.push_image("library/app", "latest", &[random_bytes(100, 2)]);
    assert_ne!(new.manifest_digest, old.manifest_digest);
    assert_eq!(
        client
            .manifest("app", "latest")
            .await
            .header("docker-content-digest"),
        old.manifest_digest
    );
    after_ttl().await;
    sim.reset_counters();
    assert_eq!(client.pull("app", "latest").await, new.manifest_digest);
    let counters = sim.counters();
    assert_eq!((counters.manifest_heads, counters.manifest_gets), (1, 1));
    assert_eq!(counters.blob_gets, 2, "only the new config and layer");
}

#[tokio::test]
async fn upstream_failures_serve_the_cached_tag_stale() {
    for fault in [
        Fault::InternalError,
        Fault::ServiceUnavailable,
        Fault::TooManyRequests,
        Fault::Slow(Duration::from_secs(3)),
    ] {
        let sim = HubSim::start().await;
        let image = sim.push_image("library/web", "2", &[random_bytes(100, 1)]);
        let dir = tempfile::tempdir().unwrap();
        let proxy = setup(&sim, dir.path()).await;
        let client = Client::new(&proxy.url);
        client.pull("web", "2").await;

        after_ttl().await;
        sim.set_fault(FaultTarget::Manifests, fault, None);
        let answer = client.manifest("web", "2").await;
        assert_eq!(answer.status, 200, "{fault:?}");
        assert_eq!(answer.body, image.manifest, "{fault:?}");
        assert_eq!(proxy.outcomes("stale"), 1, "{fault:?}");
        // The failure postpones the next check: no storm of retries.
        sim.reset_counters();
        for _ in 0..5 {
            assert_eq!(client.manifest("web", "2").await.status, 200);
        }
        assert_eq!(sim.counters().total, 0, "{fault:?}");
    }
}

#[tokio::test]
async fn a_tag_is_served_stale_when_upstream_is_unreachable() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/db", "16", &[random_bytes(100, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup(&sim, dir.path()).await;
    let client = Client::new(&proxy.url);
    client.pull("db", "16").await;
    sim.stop().await;
    after_ttl().await;
    assert_eq!(client.pull("db", "16").await, image.manifest_digest);
    assert_eq!(proxy.outcomes("stale"), 1);
}

#[tokio::test]
async fn a_moved_tag_whose_new_manifest_breaks_mid_body_serves_the_previous_one() {
    let sim = HubSim::start().await;
    let old = sim.push_image("library/svc", "v", &[random_bytes(100, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup(&sim, dir.path()).await;
    let client = Client::new(&proxy.url);
    client.pull("svc", "v").await;
    let new = sim.push_image("library/svc", "v", &[random_bytes(100, 2)]);

    after_ttl().await;
    sim.set_fault(FaultTarget::Manifests, Fault::ResetMidBody, None);
    let answer = client.manifest("svc", "v").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("docker-content-digest"), old.manifest_digest);
    assert_eq!(proxy.outcomes("stale"), 1);

    sim.clear_faults();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        client
            .manifest("svc", "v")
            .await
            .header("docker-content-digest"),
        new.manifest_digest
    );
}

#[tokio::test]
async fn a_cold_tag_with_upstream_out_of_pulls_is_a_429_and_uses_the_limit_sparingly() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(1),
        ..SimOptions::default()
    })
    .await;
    sim.push_image("library/a", "1", &[random_bytes(100, 1)]);
    sim.push_image("library/b", "1", &[random_bytes(100, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup(&sim, dir.path()).await;
    let client = Client::new(&proxy.url);
    client.pull("a", "1").await;
    let refused = client.manifest("b", "1").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "TOOMANYREQUESTS");
    // The image already pulled keeps working, by tag and by digest.
    for _ in 0..3 {
        client.pull("a", "1").await;
    }
    assert_eq!(
        proxy.metric("pullthrough_upstream_ratelimit_remaining", &[]),
        0.0
    );
}
