//! Pulling through pullthrough from the Docker Hub simulator: cold and warm
//! pulls, coalesced downloads, ranges, restarts.

mod support;

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use support::client::Client;
use support::hubsim::HubSim;
use support::proxy::{Proxy, config};
use support::random_bytes;

#[tokio::test]
async fn a_cold_pull_fetches_once_and_a_warm_pull_contacts_no_upstream() {
    let sim = HubSim::start().await;
    let image = sim.push_image(
        "library/alpine",
        "3",
        &[random_bytes(300_000, 1), random_bytes(2_000_000, 2)],
    );
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);

    // `alpine` means `library/alpine` on Docker Hub.
    assert_eq!(client.pull("alpine", "3").await, image.manifest_digest);
    let cold = sim.counters();
    assert_eq!(cold.manifest_gets, 1, "one counted pull for a cold image");
    assert_eq!(cold.blob_gets, 3, "config and two layers, once each");
    assert_eq!(
        cold.cdn_refused_with_auth, 0,
        "the CDN never sees our Authorization header"
    );
    assert_eq!(
        cold.tokens, 1,
        "one token serves every request on the repository"
    );

    sim.reset_counters();
    assert_eq!(client.pull("alpine", "3").await, image.manifest_digest);
    assert_eq!(
        client.pull("library/alpine", "3").await,
        image.manifest_digest
    );
    let by_digest = client.manifest("alpine", &image.manifest_digest).await;
    assert_eq!(by_digest.body, image.manifest);
    assert_eq!(
        sim.counters().total,
        0,
        "a warm pull makes no upstream request at all"
    );
    assert!(proxy.outcomes("hit-memory") > 0);
}

#[tokio::test]
async fn manifests_keep_their_bytes_and_headers_on_get_and_head() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/redis", "7", &[random_bytes(1000, 3)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);

    // HEAD first, as containerd does: free upstream, and no body fetched.
    let head = client.manifest_head("redis", "7").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        sim.counters().manifest_gets,
        0,
        "a HEAD never becomes a counted GET"
    );
    for answer in [
        head,
        client.manifest("redis", "7").await,
        client.manifest_head("redis", "7").await,
    ] {
        assert_eq!(
            answer.header("content-type"),
            support::hubsim::DOCKER_MANIFEST_V2
        );
        assert_eq!(
            answer.header("docker-content-digest"),
            image.manifest_digest
        );
        assert_eq!(
            answer.header("etag"),
            format!("\"{}\"", image.manifest_digest)
        );
        assert_eq!(
            answer.header("content-length"),
            image.manifest.len().to_string()
        );
        assert_eq!(
            answer.header("docker-distribution-api-version"),
            "registry/2.0"
        );
    }
    assert_eq!(client.manifest("redis", "7").await.body, image.manifest);
    assert_eq!(sim.counters().manifest_gets, 1);

    let base = client.get("/v2/").await;
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn concurrent_cold_pulls_of_one_large_blob_make_one_upstream_fetch() {
    let sim = HubSim::start().await;
    let blob = random_bytes(50 * 1024 * 1024, 4);
    let digest = sim.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;

    let mut pulls = Vec::new();
    for _ in 0..8 {
        let client = Client::new(&proxy.url);
        let digest = digest.clone();
        pulls.push(tokio::spawn(async move {
            client.blob("library/big", &digest).await
        }));
    }
    for pull in pulls {
        let answer = pull
            .await
            .unwrap()
            .expect("every client gets the whole blob");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), blob.len());
        assert_eq!(answer.body_digest(), digest);
    }
    let counters = sim.counters();
    // The first request meets the 401 challenge before it has a token.
    assert_eq!(counters.unauthorized, 1);
    assert_eq!(
        counters.blob_gets,
        1 + counters.unauthorized,
        "one registry request for eight clients"
    );
    assert_eq!(counters.cdn_gets, 1, "one download for eight clients");
    assert_eq!(proxy.outcomes("miss") + proxy.outcomes("coalesced"), 8);
    assert!(proxy.outcomes("coalesced") >= 1);
}

#[tokio::test]
async fn ranges_are_served_from_cache_and_from_a_download_in_progress() {
    let sim = HubSim::start().await;
    let blob = random_bytes(3_000_000, 5);
    let digest = sim.put_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    let path = format!("/v2/library/r/blobs/{digest}");
    let ranged = |spec: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_static(spec));
        headers
    };

    // Cold: the range is cut from the download as it arrives.
    let cold = client
        .send("GET", &path, ranged("bytes=1000-1999"))
        .await
        .unwrap();
    assert_eq!(cold.status, 206);
    assert_eq!(cold.header("content-range"), "bytes 1000-1999/3000000");
    assert_eq!(cold.body, blob.slice(1000..2000));

    for (spec, start, end) in [
        ("bytes=0-0", 0, 1),
        ("bytes=2999990-", 2_999_990, 3_000_000),
        ("bytes=-10", 2_999_990, 3_000_000),
        ("bytes=100-99999999", 100, 3_000_000),
    ] {
        let answer = client.send("GET", &path, ranged(spec)).await.unwrap();
        assert_eq!(answer.status, 206, "{spec}");
        assert_eq!(
            answer.header("content-length"),
            (end - start).to_string(),
            "{spec}"
        );
        assert_eq!(answer.body, blob.slice(start..end), "{spec}");
    }
    let outside = client
        .send("GET", &path, ranged("bytes=3000000-"))
        .await
        .unwrap();
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), "bytes */3000000");
    let whole = client
        .send("GET", &path, ranged("bytes=0-1,5-6"))
        .await
        .unwrap();
    assert_eq!(
        (whole.status, whole.body.len()),
        (200, blob.len()),
        "multiple ranges get the whole blob"
    );
    assert_eq!(sim.counters().cdn_gets, 1);
}

#[tokio::test]
async fn a_restart_keeps_the_disk_cache_even_with_upstream_gone() {
    let sim = HubSim::start().await;
    let image = sim.push_image(
        "library/nginx",
        "1.27",
        &[random_bytes(2_500_000, 6), random_bytes(1000, 7)],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.tag_ttl = Duration::from_millis(200);
    let first = Proxy::start(cfg.clone()).await;
    assert_eq!(
        Client::new(&first.url).pull("nginx", "1.27").await,
        image.manifest_digest
    );
    first.stop().await;
    sim.stop().await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Proxy::start(cfg).await;
    let client = Client::new(&second.url);
    assert_eq!(client.pull("nginx", "1.27").await, image.manifest_digest);
    assert!(
        second.outcomes("hit-disk") >= 1,
        "blobs come from the disk tier after a restart"
    );
    assert_eq!(
        second.outcomes("stale"),
        1,
        "the expired tag is served stale while upstream is down"
    );
}
