//! Many upstreams: routing by `?ns=` and by path prefix, separate tag caches
//! per upstream with blobs shared by digest, and manifests of any media type
//! passed through untouched.

mod support;

use bytes::Bytes;
use pullthrough::config::UpstreamConfig;
use support::client::Client;
use support::hubsim::HubSim;
use support::proxy::{Proxy, config};
use support::random_bytes;

async fn two_upstreams() -> (HubSim, HubSim, Proxy, tempfile::TempDir) {
    let hub = HubSim::start().await;
    let ghcr = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&hub.registry_url, dir.path());
    cfg.upstreams
        .insert("ghcr.io".into(), UpstreamConfig::new(&ghcr.registry_url));
    cfg.upstreams.get_mut("quay.io").unwrap().enabled = false;
    let proxy = Proxy::start(cfg).await;
    (hub, ghcr, proxy, dir)
}

#[tokio::test]
async fn one_name_on_two_upstreams_never_collides_and_blobs_are_shared() {
    let (hub, ghcr, proxy, _dir) = two_upstreams().await;
    let shared_layer = random_bytes(500_000, 1);
    let on_hub = hub.push_image("org/app", "1", &[shared_layer.clone(), random_bytes(10, 2)]);
    let on_ghcr = ghcr.push_image("org/app", "1", &[shared_layer.clone(), random_bytes(10, 3)]);
    assert_ne!(on_hub.manifest_digest, on_ghcr.manifest_digest);
    let client = Client::new(&proxy.url);

    assert_eq!(client.pull("org/app", "1").await, on_hub.manifest_digest);
    assert_eq!(
        client.pull("ghcr.io/org/app", "1").await,
        on_ghcr.manifest_digest
    );
    let by_ns = client
        .send(
            "GET",
            "/v2/org/app/manifests/1?ns=ghcr.io",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        by_ns.header("docker-content-digest"),
        on_ghcr.manifest_digest
    );
    let by_ns = client
        .send(
            "GET",
            "/v2/org/app/manifests/1?ns=docker.io",
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        by_ns.header("docker-content-digest"),
        on_hub.manifest_digest
    );

    let layer = on_hub.layer_digests[0].clone();
    assert_eq!(on_ghcr.layer_digests[0], layer);
    let fetched_from_ghcr: Vec<String> = ghcr
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("cdn GET"))
        .collect();
    assert!(
        fetched_from_ghcr.iter().all(|r| !r.contains(&layer)),
        "the shared layer came from the first upstream only: {fetched_from_ghcr:?}"
    );
}

#[tokio::test]
async fn unconfigured_or_disabled_registries_are_refused_without_a_connection() {
    let (hub, ghcr, proxy, _dir) = two_upstreams().await;
    let client = Client::new(&proxy.url);
    for path in [
        "/v2/evil.example.com/org/app/manifests/1",
        "/v2/org/app/manifests/1?ns=evil.example.com",
        "/v2/org/app/manifests/1?ns=quay.io",
        "/v2/quay.io/org/app/manifests/1",
        "/v2/org/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000?ns=127.0.0.1",
    ] {
        let answer = client.send("GET", path, Default::default()).await.unwrap();
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (404, "NAME_UNKNOWN"),
            "{path}"
        );
    }
    assert_eq!(hub.counters().total + ghcr.counters().total, 0);
}

#[tokio::test]
async fn schema1_and_unknown_media_types_pass_through_untouched() {
    let (hub, _ghcr, proxy, _dir) = two_upstreams().await;
    let client = Client::new(&proxy.url);
    let cases = [
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "old",
            "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/legacy\",\n   \"tag\": \"old\",\n   \"fsLayers\": [],\n   \"signatures\": []\n}",
        ),
        (
            "application/vnd.example.custom+json",
            "odd",
            "{\"hello\":\"world\"}",
        ),
        (
            "application/vnd.oci.artifact.manifest.v1+json",
            "artifact",
            "{\"mediaType\":\"application/vnd.oci.artifact.manifest.v1+json\",\"artifactType\":\"x\"}",
        ),
    ];
    for (media_type, tag, body) in cases {
        let body = Bytes::from_static(body.as_bytes());
        let digest = hub.put_manifest("library/legacy", Some(tag), media_type, body.clone());
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("accept", "*/*".parse().unwrap());
        for path in [
            format!("/v2/legacy/manifests/{tag}"),
            format!("/v2/legacy/manifests/{digest}"),
        ] {
            let answer = client.send("GET", &path, headers.clone()).await.unwrap();
            assert_eq!(answer.status, 200, "{media_type}");
            assert_eq!(answer.body, body, "{media_type}: byte-exact");
            assert_eq!(answer.header("content-type"), media_type);
            assert_eq!(answer.header("docker-content-digest"), digest);
        }
    }
}
