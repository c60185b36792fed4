//! Tags: answered within their TTL with no upstream contact, revalidated
//! with a free HEAD after it, and served stale when upstream fails.

mod support;

use std::time::Duration;

use support::client::{CONTAINERD_ACCEPT, CONTAINERS_IMAGE_ACCEPT, Client, DOCKERD_ACCEPT};
use support::hubsim::{
    DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, Fault, FaultTarget, HubSim, SimOptions,
};
use support::image::{Format, Image, image, index};
use support::proxy::{Proxy, config};
use support::{random_bytes, wait_until};

const TTL: Duration = Duration::from_millis(1000);

/// A TTL no test outlasts, for tests that count on a record staying fresh.
const LONG_TTL: Duration = Duration::from_secs(60);

async fn setup(sim: &HubSim, dir: &std::path::Path) -> Proxy {
    setup_with_ttl(sim, dir, TTL).await
}

async fn setup_with_ttl(sim: &HubSim, dir: &std::path::Path, ttl: Duration) -> Proxy {
    let mut cfg = config(&sim.registry_url, dir);
    cfg.tag_ttl = ttl;
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

/// Pushes `repo:tag` as a Docker manifest list over an amd64 and an arm64
/// image; returns the list's digest and the amd64 image.
fn push_multi_arch(sim: &HubSim, repo: &str, tag: &str, seed: u64) -> (String, Image) {
    let amd64 = image(Format::Docker, "amd64", &[1_000], seed);
    let arm64 = image(Format::Docker, "arm64", &[1_000], seed + 1);
    for image in [&amd64, &arm64] {
        sim.put_blob(image.config.clone());
        for layer in &image.layers {
            sim.put_blob(layer.clone());
        }
        sim.put_manifest(repo, None, DOCKER_MANIFEST_V2, image.manifest.clone());
    }
    let (list, digest) = index(Format::Docker, &[&amd64, &arm64]);
    sim.put_manifest(repo, Some(tag), DOCKER_MANIFEST_LIST, list);
    (digest, amd64)
}

/// The tag files on the proxy's disk, and the records in each.
fn tag_files(proxy: &Proxy) -> Vec<usize> {
    fn walk(dir: &std::path::Path, out: &mut Vec<usize>) {
        for item in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = item.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                out.push(json["records"].as_array().map_or(0, Vec::len));
            }
        }
    }
    let mut out = Vec::new();
    walk(&proxy.data_dir.join("tags"), &mut out);
    out
}

#[tokio::test]
async fn one_record_serves_dockerd_containerd_podman_and_skopeo() {
    let sim = HubSim::start().await;
    let (list, _) = push_multi_arch(&sim, "library/multi", "1", 1);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup_with_ttl(&sim, dir.path(), LONG_TTL).await;
    let client = Client::new(&proxy.url);
    let first = client.manifest("multi", "1").await;
    assert_eq!(first.header("docker-content-digest"), list);

    sim.reset_counters();
    let clients: [(&str, &[&str]); 4] = [
        ("containerd", &[CONTAINERD_ACCEPT]),
        ("podman", &CONTAINERS_IMAGE_ACCEPT),
        ("skopeo", &CONTAINERS_IMAGE_ACCEPT),
        ("dockerd", &DOCKERD_ACCEPT),
    ];
    for (name, accept) in clients {
        for method in ["HEAD", "GET"] {
            let answer = client
                .manifest_accepting(method, "multi", "1", accept)
                .await;
            assert_eq!(answer.status, 200, "{name} {method}");
            assert_eq!(answer.header("docker-content-digest"), list, "{name}");
            assert_eq!(
                answer.header("content-type"),
                DOCKER_MANIFEST_LIST,
                "{name}"
            );
        }
    }
    assert_eq!(
        sim.counters().total,
        0,
        "every client is served the one record"
    );
    wait_until(|| tag_files(&proxy) == [1]).await;
}

#[tokio::test]
async fn junk_in_accept_reaches_upstream_no_more_and_adds_no_record() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/junk", "1", &[random_bytes(100, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup_with_ttl(&sim, dir.path(), LONG_TTL).await;
    let client = Client::new(&proxy.url);
    client.pull("junk", "1").await;
    // What upstream answers to no preference is learned once.
    let plain = client.manifest_accepting("GET", "junk", "1", &[]).await;
    assert_eq!(plain.header("docker-content-digest"), image.manifest_digest);

    sim.reset_counters();
    for i in 0..20 {
        let junk = format!("application/x-junk-{i}");
        let weighted = format!("text/html;q=0.{i}, */*");
        let mut accept = vec![junk.as_str(), weighted.as_str()];
        if i % 2 == 1 {
            accept.extend(DOCKERD_ACCEPT);
        }
        let answer = client.manifest_accepting("GET", "junk", "1", &accept).await;
        assert_eq!(answer.status, 200, "request {i}");
        assert_eq!(
            answer.header("docker-content-digest"),
            image.manifest_digest
        );
    }
    assert_eq!(sim.counters().total, 0, "junk types never go upstream");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(tag_files(&proxy), [1], "one file, one record");
}

#[tokio::test]
async fn a_client_accepting_only_an_uncached_type_asks_upstream_once() {
    let sim = HubSim::start().await;
    let (list, amd64) = push_multi_arch(&sim, "library/old", "1", 3);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup_with_ttl(&sim, dir.path(), LONG_TTL).await;
    let client = Client::new(&proxy.url);
    // dockerd resolves the list, then fetches its platform's manifest.
    assert_eq!(
        client
            .manifest("old", "1")
            .await
            .header("docker-content-digest"),
        list
    );
    assert_eq!(client.manifest("old", &amd64.digest).await.status, 200);

    // A client without list support: upstream gives it amd64's manifest.
    sim.reset_counters();
    for _ in 0..3 {
        let answer = client
            .manifest_accepting("GET", "old", "1", &[DOCKER_MANIFEST_V2])
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("docker-content-digest"), amd64.digest);
        assert_eq!(answer.body, amd64.manifest);
    }
    let counters = sim.counters();
    assert_eq!(
        (counters.manifest_heads, counters.manifest_gets),
        (1, 0),
        "one HEAD; the manifest itself was cached by digest"
    );
    assert_eq!(counters.total, 1);

    // Both answers stay cached side by side in the tag's one file.
    sim.reset_counters();
    assert_eq!(
        client
            .manifest("old", "1")
            .await
            .header("docker-content-digest"),
        list
    );
    assert_eq!(sim.counters().total, 0);
    wait_until(|| tag_files(&proxy) == [2]).await;
}

#[tokio::test]
async fn after_the_ttl_clients_of_every_kind_share_one_free_head() {
    let sim = HubSim::start().await;
    let (list, _) = push_multi_arch(&sim, "library/shared", "1", 5);
    let dir = tempfile::tempdir().unwrap();
    let proxy = setup(&sim, dir.path()).await;
    let client = Client::new(&proxy.url);
    assert_eq!(
        client
            .manifest("shared", "1")
            .await
            .header("docker-content-digest"),
        list
    );

    after_ttl().await;
    sim.reset_counters();
    let (containerd, podman, dockerd) = tokio::join!(
        client.manifest_accepting("HEAD", "shared", "1", &[CONTAINERD_ACCEPT]),
        client.manifest_accepting("GET", "shared", "1", &CONTAINERS_IMAGE_ACCEPT),
        client.manifest_accepting("GET", "shared", "1", &DOCKERD_ACCEPT),
    );
    for answer in [containerd, podman, dockerd] {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("docker-content-digest"), list);
    }
    let counters = sim.counters();
    assert_eq!(counters.manifest_heads, 1, "one HEAD revalidates for all");
    assert_eq!(counters.manifest_gets, 0, "and spends no counted pull");
    assert_eq!(proxy.outcomes("revalidated"), 1);
}
