//! Bad input gets a clear OCI error; corrupt upstream content is never
//! cached; only configured upstreams are contacted.

mod support;

use reqwest::header::HeaderMap;
use support::client::Client;
use support::hubsim::{Fault, FaultTarget, HubSim, SimOptions};
use support::proxy::{Proxy, config};
use support::random_bytes;

#[tokio::test]
async fn bad_names_digests_and_methods_get_oci_errors_without_upstream_contact() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    let digest = format!("sha256:{}", "a".repeat(64));
    let cases = [
        (
            "GET",
            "/v2/Alpine/manifests/3".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/a//b/manifests/3".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/a___b/blobs/sha256:00".to_owned(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/alpine/manifests/-bad".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            "/v2/alpine/manifests/sha256:1234".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            "/v2/alpine/blobs/sha256:XYZ".to_owned(),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "GET",
            "/v2/alpine/blobs/md5:d41d8cd98f00b204e9800998ecf8427e".to_owned(),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "GET",
            "/v2/alpine/blobs/notadigest".to_owned(),
            404,
            "BLOB_UNKNOWN",
        ),
        (
            "PUT",
            "/v2/alpine/manifests/3".to_owned(),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("/v2/alpine/blobs/{digest}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "POST",
            "/v2/alpine/blobs/uploads/".to_owned(),
            405,
            "UNSUPPORTED",
        ),
        (
            "PATCH",
            "/v2/alpine/blobs/uploads/1234".to_owned(),
            405,
            "UNSUPPORTED",
        ),
        ("GET", "/v2/_catalog".to_owned(), 404, "UNSUPPORTED"),
        (
            "GET",
            "/v2/alpine/manifests/3?ns=evil.example.com".to_owned(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/alpine/blobs/{digest}?ns=127.0.0.1:1"),
            404,
            "NAME_UNKNOWN",
        ),
    ];
    for (method, path, status, code) in cases {
        let answer = client.send(method, &path, HeaderMap::new()).await.unwrap();
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (status, code),
            "{method} {path}"
        );
        assert_eq!(
            answer.header("content-type"),
            "application/json",
            "{method} {path}"
        );
        let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert!(!json["errors"][0]["message"].as_str().unwrap().is_empty());
    }
    let put = client
        .send("PUT", "/v2/alpine/manifests/3", HeaderMap::new())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&put.body).contains("read-only mirror"));
    assert_eq!(sim.counters().total, 0, "nothing invalid reaches upstream");
}

#[tokio::test]
async fn unknown_content_is_reported_with_the_right_code() {
    let sim = HubSim::start().await;
    sim.push_image("library/known", "1", &[random_bytes(10, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    let digest = format!("sha256:{}", "b".repeat(64));
    assert_eq!(
        client.manifest("known", "2").await.error_code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        client.manifest("known", &digest).await.error_code(),
        "MANIFEST_UNKNOWN"
    );
    let blob = client.blob("known", &digest).await.unwrap();
    assert_eq!(
        (blob.status, blob.error_code().as_str()),
        (404, "BLOB_UNKNOWN")
    );
    let head = client
        .send(
            "HEAD",
            &format!("/v2/known/blobs/{digest}"),
            HeaderMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(head.status, 404);
}

#[tokio::test]
async fn a_blob_with_wrong_bytes_aborts_the_client_and_is_not_cached() {
    // A reset mid-body is resumed instead (see `resilience.rs`).
    for fault in [Fault::WrongBytes, Fault::TruncatedBody] {
        let sim = HubSim::start().await;
        let blob = random_bytes(3_000_000, 9);
        let digest = sim.put_blob(blob.clone());
        let dir = tempfile::tempdir().unwrap();
        let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
        let client = Client::new(&proxy.url);

        sim.set_fault(FaultTarget::Blobs, fault, Some(1));
        match client.blob("library/x", &digest).await {
            Err(_) => {}
            Ok(answer) => panic!(
                "{fault:?}: a corrupt blob must not complete: {} with {} bytes",
                answer.status,
                answer.body.len()
            ),
        }
        // Give the download task a moment to discard its file.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            proxy.cached_files(),
            0,
            "{fault:?}: nothing corrupt or partial is stored"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("cache/tmp"))
                .unwrap()
                .count(),
            0,
            "{fault:?}"
        );

        let good = client.blob("library/x", &digest).await.unwrap();
        assert_eq!(
            good.body_digest(),
            digest,
            "{fault:?}: the next pull fetches afresh"
        );
        assert_eq!(sim.counters().cdn_gets, 2, "{fault:?}");
        // The client has every byte once verified; the store follows.
        support::wait_until(|| proxy.cached_files() == 1).await;
    }
}

#[tokio::test]
async fn a_manifest_with_wrong_bytes_is_a_502_and_is_not_cached() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/m", "1", &[random_bytes(10, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    sim.set_fault(FaultTarget::Manifests, Fault::WrongBytes, Some(1));
    let answer = client.manifest("m", &image.manifest_digest).await;
    assert_eq!(answer.status, 502);
    assert!(String::from_utf8_lossy(&answer.body).contains("does not match"));
    assert_eq!(proxy.cached_files(), 0);
    assert_eq!(
        proxy.metric(
            "pullthrough_digest_mismatches_total",
            &[("kind", "manifest")]
        ),
        1.0
    );
    assert_eq!(
        client.manifest("m", &image.manifest_digest).await.body,
        image.manifest
    );
}

#[tokio::test]
async fn upstream_failure_without_a_cached_copy_is_a_gateway_error() {
    let sim = HubSim::start().await;
    sim.push_image("library/e", "1", &[random_bytes(10, 1)]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    sim.set_fault(FaultTarget::Manifests, Fault::InternalError, None);
    let answer = client.manifest("e", "1").await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (502, "UNAVAILABLE")
    );
    sim.stop().await;
    let answer = client.manifest("e", "1").await;
    assert_eq!(answer.status, 502);
    assert!(
        String::from_utf8_lossy(&answer.body).contains("docker.io"),
        "the message names the upstream"
    );
}

#[tokio::test]
async fn tag_lists_pass_through_with_n_and_last() {
    let sim = HubSim::start().await;
    for tag in ["a", "b", "c"] {
        sim.push_image("library/t", tag, &[random_bytes(10, 1)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    let page = client.get("/v2/t/tags/list?n=2").await;
    let json: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(json["tags"], serde_json::json!(["a", "b"]));
    assert!(page.header("link").contains("last=b"), "{:?}", page.headers);
    let rest = client.get("/v2/t/tags/list?n=2&last=b").await;
    let json: serde_json::Value = serde_json::from_slice(&rest.body).unwrap();
    assert_eq!(json["tags"], serde_json::json!(["c"]));
    assert_eq!(
        client.get("/v2/nope/tags/list").await.error_code(),
        "NAME_UNKNOWN"
    );
}

#[tokio::test]
async fn credentials_are_sent_to_the_token_realm_and_never_logged() {
    let options = SimOptions {
        users: vec![("puller".into(), "s3cret".into())],
        ..SimOptions::default()
    };
    let sim = HubSim::start_with(options).await;
    let image = sim.push_image("library/p", "1", &[random_bytes(10, 1)]);
    let dir = tempfile::tempdir().unwrap();
    // The simulator's realm is on its own port, like auth.docker.io on its
    // own host: trusted with the credentials only when configured.
    let realm_host = sim.realm_url.trim_start_matches("http://").to_owned();
    let mut cfg = config(&sim.registry_url, dir.path());
    let hub = cfg.upstreams.get_mut("docker.io").unwrap();
    hub.username = Some("puller".into());
    hub.password = Some(pullthrough::config::Secret::new("s3cret"));
    hub.auth_hosts = vec![realm_host.clone()];
    assert!(!format!("{cfg:?}").contains("s3cret"));
    let proxy = Proxy::start(cfg).await;
    assert_eq!(
        Client::new(&proxy.url).pull("p", "1").await,
        image.manifest_digest
    );
    assert_eq!(
        sim.rate_limit_remaining("puller"),
        99,
        "the pull is charged to the account"
    );

    let mut wrong = config(&sim.registry_url, tempfile::tempdir().unwrap().path());
    let hub = wrong.upstreams.get_mut("docker.io").unwrap();
    hub.username = Some("puller".into());
    hub.password = Some(pullthrough::config::Secret::new("wrong"));
    hub.auth_hosts = vec![realm_host];
    let proxy = Proxy::start(wrong).await;
    let answer = Client::new(&proxy.url).manifest("p", "1").await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (403, "DENIED")
    );
}
