//! Self-tests for the Docker Hub simulator in `tests/support/hubsim`: they
//! drive it with a plain reqwest client over real sockets, so the proxy's
//! tests can trust what it does.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{StatusCode, header};
use support::hubsim::{
    Counters, DOCKER_MANIFEST_V2, Fault, FaultTarget, HubSim, OCI_INDEX, SimOptions,
};
use support::simclient::{
    client, error_code, fetch_blob_via_cdn, get_manifest, head_manifest, header_str, token,
};
use support::{random_bytes, sha256_digest};

#[test]
fn fixtures_are_deterministic() {
    assert_eq!(random_bytes(1000, 7), random_bytes(1000, 7));
    assert_ne!(random_bytes(1000, 7), random_bytes(1000, 8));
    assert_eq!(random_bytes(13, 1).len(), 13);
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[tokio::test]
async fn challenge_token_and_scoped_access() {
    let sim = HubSim::start().await;
    let img = sim.push_image("library/alpine", "3.20", &[random_bytes(1000, 1)]);
    let c = client();

    // /v2/ without a token: challenge without scope.
    let resp = c
        .get(format!("{}/v2/", sim.registry_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_str(&resp, "www-authenticate"),
        format!(
            "Bearer realm=\"{}/token\",service=\"registry.sim\"",
            sim.realm_url
        )
    );

    // Manifest without a token: challenge with the repository scope + OCI body.
    let resp = c
        .get(format!(
            "{}/v2/library/alpine/manifests/3.20",
            sim.registry_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_str(&resp, "www-authenticate"),
        format!(
            "Bearer realm=\"{}/token\",service=\"registry.sim\",scope=\"repository:library/alpine:pull\"",
            sim.realm_url
        )
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]})
    );

    // Token response shape.
    let resp = c
        .get(format!(
            "{}/token?service=registry.sim&scope=repository%3Alibrary%2Falpine%3Apull&scope=repository:other:pull,push",
            sim.realm_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.unwrap();
    let tok = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["access_token"], v["token"]);
    assert_eq!(v["expires_in"], 300);
    let issued = v["issued_at"].as_str().unwrap();
    assert!(
        issued.len() == 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{issued}"
    );

    // With the token: /v2/ and the manifest work.
    let resp = c
        .get(format!("{}/v2/", sim.registry_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_str(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );

    let resp = get_manifest(&c, &sim, "library/alpine", "3.20", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "content-type"), DOCKER_MANIFEST_V2);
    assert_eq!(
        header_str(&resp, "docker-content-digest"),
        img.manifest_digest
    );
    assert_eq!(
        header_str(&resp, "etag"),
        format!("\"{}\"", img.manifest_digest)
    );
    assert_eq!(
        header_str(&resp, "content-length"),
        img.manifest.len().to_string()
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(body, img.manifest);
    assert_eq!(sha256_digest(&body), img.manifest_digest);

    // The manifest really is a schema 2 manifest pointing at stored blobs.
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["config"]["digest"], img.config_digest.as_str());
    assert_eq!(m["layers"][0]["digest"], img.layer_digests[0].as_str());
    assert_eq!(m["layers"][0]["size"], 1000);
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    // By digest too.
    let resp = get_manifest(&c, &sim, "library/alpine", &img.manifest_digest, &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // The token is scoped: another repository is challenged, push scope was
    // reduced to pull for "other", and garbage tokens are refused.
    sim.push_image("a/b/c", "latest", &[random_bytes(10, 2)]);
    let resp = get_manifest(&c, &sim, "a/b/c", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(header_str(&resp, "www-authenticate").contains("scope=\"repository:a/b/c:pull\""));
    let resp = get_manifest(&c, &sim, "library/alpine", "3.20", "not-a-token").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let tok2 = token(&c, &sim, "a/b/c").await;
    let resp = get_manifest(&c, &sim, "a/b/c", "latest", &tok2).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let n = sim.counters();
    assert_eq!(n.tokens, 2);
    assert_eq!(n.unauthorized, 4);
    assert_eq!(n.manifest_gets, 6);
    assert_eq!(n.total, 10);

    let log = sim.requests();
    assert_eq!(log[0], "registry GET /v2/");
    assert_eq!(log[1], "registry GET /v2/library/alpine/manifests/3.20");
    assert!(
        log[2].starts_with("realm GET /token?service=registry.sim&scope="),
        "{}",
        log[2]
    );
    sim.reset_counters();
    assert_eq!(sim.counters(), Counters::default());
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn tokens_expire() {
    let sim = HubSim::start_with(SimOptions {
        token_ttl: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    sim.push_image("library/busybox", "latest", &[random_bytes(10, 3)]);
    let c = client();
    let tok = token(&c, &sim, "library/busybox").await;
    let resp = head_manifest(&c, &sim, "library/busybox", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = head_manifest(&c, &sim, "library/busybox", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn basic_auth_users_get_their_own_bucket() {
    let sim = HubSim::start_with(SimOptions {
        users: vec![("alice".into(), "s3cret".into())],
        ..Default::default()
    })
    .await;
    sim.push_image("library/alpine", "latest", &[random_bytes(10, 4)]);
    let c = client();
    let url = format!(
        "{}/token?service=registry.sim&scope=repository:library/alpine:pull",
        sim.realm_url
    );

    let resp = c
        .get(&url)
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.json::<serde_json::Value>().await.is_ok());

    let v: serde_json::Value = c
        .get(&url)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = v["token"].as_str().unwrap();
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "docker-ratelimit-source"), "alice");
    assert_eq!(sim.rate_limit_remaining("alice"), 99);
    assert_eq!(sim.rate_limit_remaining("127.0.0.1"), 100);

    // Anonymous tokens are keyed by client IP.
    let tok = token(&c, &sim, "library/alpine").await;
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(header_str(&resp, "docker-ratelimit-source"), "127.0.0.1");
    assert_eq!(sim.rate_limit_remaining("127.0.0.1"), 99);
}

#[tokio::test]
async fn blobs_redirect_to_a_cdn_that_refuses_authorization() {
    let sim = HubSim::start().await;
    let layer = random_bytes(300_000, 5);
    let img = sim.push_image("library/alpine", "latest", std::slice::from_ref(&layer));
    let digest = &img.layer_digests[0];
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;
    sim.reset_counters();

    let resp = c
        .get(format!(
            "{}/v2/library/alpine/blobs/{digest}",
            sim.registry_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header_str(&resp, "location");
    assert!(
        location.starts_with(&format!("{}/blobs/{digest}?sig=", sim.cdn_url)),
        "{location}"
    );

    // Forwarding the registry token to the CDN is refused.
    let resp = c.get(&location).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(body.contains("<Code>InvalidArgument</Code>"), "{body}");
    assert!(body.contains("Only one auth mechanism allowed"), "{body}");

    // Without it the bytes come back, announced with their length.
    let resp = c.get(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_str(&resp, "content-type"),
        "application/octet-stream"
    );
    assert_eq!(header_str(&resp, "content-length"), "300000");
    assert_eq!(resp.bytes().await.unwrap(), layer);

    // HEAD on the CDN: length, no body.
    let resp = c.head(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "content-length"), "300000");
    assert!(resp.bytes().await.unwrap().is_empty());

    // Ranges for resuming.
    let resp = c
        .get(&location)
        .header(header::RANGE, "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_str(&resp, "content-range"),
        "bytes 100000-299999/300000"
    );
    assert_eq!(resp.bytes().await.unwrap(), layer.slice(100_000..));

    // A HEAD on the registry redirects as well; unknown blobs and tampered
    // signatures are refused.
    let resp = c
        .head(format!(
            "{}/v2/library/alpine/blobs/{digest}",
            sim.registry_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let unknown = sha256_digest(b"nope");
    let resp = c
        .get(format!(
            "{}/v2/library/alpine/blobs/{unknown}",
            sim.registry_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = c
        .get(format!("{}/blobs/{digest}?sig=forged", sim.cdn_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = c
        .get(format!(
            "{}/v2/library/alpine/blobs/sha256:xyz",
            sim.registry_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let n = sim.counters();
    assert_eq!(n.blob_gets, 3);
    assert_eq!(n.blob_heads, 1);
    assert_eq!(n.cdn_gets, 4);
    assert_eq!(n.cdn_refused_with_auth, 1);
    assert_eq!(n.manifest_gets, 0);
    assert_eq!(n.total, 9);
}

#[tokio::test]
async fn rate_limit_counts_only_manifest_gets() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(2),
        ..Default::default()
    })
    .await;
    let img = sim.push_image("library/alpine", "latest", &[random_bytes(100, 6)]);
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;

    // HEADs and blob fetches are free.
    for _ in 0..3 {
        let resp = head_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_str(&resp, "ratelimit-limit"), "2;w=21600");
        assert_eq!(header_str(&resp, "ratelimit-remaining"), "2;w=21600");
        assert_eq!(header_str(&resp, "docker-ratelimit-source"), "127.0.0.1");
        assert_eq!(
            header_str(&resp, "docker-content-digest"),
            img.manifest_digest
        );
        assert_eq!(
            header_str(&resp, "content-length"),
            img.manifest.len().to_string()
        );
    }
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, &img.layer_digests[0]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sim.rate_limit_remaining("127.0.0.1"), 2);

    // A 404 GET is not charged.
    let resp = get_manifest(&c, &sim, "library/alpine", "nope", &tok).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(sim.rate_limit_remaining("127.0.0.1"), 2);

    for expected in ["1;w=21600", "0;w=21600"] {
        let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_str(&resp, "ratelimit-remaining"), expected);
    }
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header_str(&resp, "ratelimit-remaining"), "0;w=21600");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("You have reached your pull rate limit.")
    );

    // HEAD still works once spent.
    let resp = head_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "ratelimit-remaining"), "0;w=21600");
    assert_eq!(sim.rate_limit_remaining("127.0.0.1"), 0);

    let n = sim.counters();
    assert_eq!(n.manifest_gets, 4);
    assert_eq!(n.manifest_heads, 4);
    assert_eq!(n.blob_gets, 1);
}

#[tokio::test]
async fn rate_limit_headers_can_be_disabled() {
    let sim = HubSim::start_with(SimOptions {
        no_rate_limit_headers: true,
        ..Default::default()
    })
    .await;
    sim.push_image("library/alpine", "latest", &[random_bytes(100, 6)]);
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("ratelimit-remaining").is_none());
    assert!(resp.headers().get("docker-ratelimit-source").is_none());
}

#[tokio::test]
async fn accept_negotiation_and_lookups() {
    let sim = HubSim::start().await;
    let img = sim.push_image("library/alpine", "latest", &[random_bytes(100, 7)]);
    let index = Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#);
    let index_digest = sim.put_manifest("library/alpine", Some("multi"), OCI_INDEX, index.clone());
    assert_eq!(index_digest, sha256_digest(&index));
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;
    let url = format!("{}/v2/library/alpine/manifests/latest", sim.registry_url);

    // Several Accept lines, with q params; the match is on the second line.
    let resp = c
        .get(&url)
        .bearer_auth(&tok)
        .header(header::ACCEPT, "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
        .header(header::ACCEPT, "application/vnd.docker.distribution.manifest.list.v2+json;q=0.9, application/vnd.docker.distribution.manifest.v2+json; q=0.5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), img.manifest);

    // No acceptable type: MANIFEST_UNKNOWN (for HEAD too, without body).
    let resp = c
        .get(&url)
        .bearer_auth(&tok)
        .header(header::ACCEPT, "application/vnd.oci.image.manifest.v1+json")
        .header(header::ACCEPT, OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let resp = c
        .head(&url)
        .bearer_auth(&tok)
        .header(header::ACCEPT, OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // */* and no Accept at all are fine.
    for accept in [Some("*/*"), None] {
        let mut req = c.get(&url).bearer_auth(&tok);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::OK);
    }

    // The index is served with its own media type.
    let resp = c
        .get(format!(
            "{}/v2/library/alpine/manifests/multi",
            sim.registry_url
        ))
        .bearer_auth(&tok)
        .header(header::ACCEPT, OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "content-type"), OCI_INDEX);
    assert_eq!(resp.bytes().await.unwrap(), index);

    // Unknown tag, unknown repo, bad input, unsupported methods.
    let resp = get_manifest(&c, &sim, "library/alpine", "nope", &tok).await;
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    let tok_x = token(&c, &sim, "library/nothing").await;
    let resp = get_manifest(&c, &sim, "library/nothing", "latest", &tok_x).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "NAME_UNKNOWN");
    let resp = get_manifest(&c, &sim, "Library/UPPER", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c
        .get(format!("{}/v2/library/alpine/nonsense", sim.registry_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let resp = c
            .request(method, &url)
            .bearer_auth(&tok)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_code(resp).await, "UNSUPPORTED");
    }
}

#[tokio::test]
async fn tags_list_paginates_with_link() {
    let sim = HubSim::start().await;
    for tag in ["e", "b", "d", "a", "c"] {
        sim.push_image("a/b/c", tag, &[random_bytes(8, 9)]);
    }
    let c = client();
    let tok = token(&c, &sim, "a/b/c").await;
    let list = |path: String| {
        let c = c.clone();
        let tok = tok.clone();
        let base = sim.registry_url.clone();
        async move {
            let resp = c
                .get(format!("{base}{path}"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let link = resp
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned());
            let v: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(v["name"], "a/b/c");
            let tags: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
            (tags, link)
        }
    };

    let (tags, link) = list("/v2/a/b/c/tags/list".into()).await;
    assert_eq!(tags, ["a", "b", "c", "d", "e"]);
    assert_eq!(link, None);

    let (tags, link) = list("/v2/a/b/c/tags/list?n=2".into()).await;
    assert_eq!(tags, ["a", "b"]);
    let link = link.unwrap();
    assert_eq!(link, "</v2/a/b/c/tags/list?n=2&last=b>; rel=\"next\"");
    let next = link[1..link.find('>').unwrap()].to_owned();
    let (tags, link) = list(next).await;
    assert_eq!(tags, ["c", "d"]);
    let link = link.unwrap();
    let (tags, link) = list(link[1..link.find('>').unwrap()].to_owned()).await;
    assert_eq!(tags, ["e"]);
    assert_eq!(link, None);

    let (tags, link) = list("/v2/a/b/c/tags/list?n=3&last=c".into()).await;
    assert_eq!(tags, ["d", "e"]);
    assert_eq!(link, None);

    let resp = c
        .get(format!("{}/v2/a/b/c/tags/list?n=abc", sim.registry_url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sim.counters().tags_lists, 6);
}

#[tokio::test]
async fn blob_body_faults() {
    let sim = HubSim::start().await;
    let layer = random_bytes(1_000_000, 10);
    let img = sim.push_image("library/alpine", "latest", std::slice::from_ref(&layer));
    let digest = &img.layer_digests[0];
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;

    // ResetMidBody: full Content-Length promised, then the body errors.
    sim.set_fault(FaultTarget::Blobs, Fault::ResetMidBody, Some(1));
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, digest).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "content-length"), "1000000");
    assert!(resp.bytes().await.is_err(), "reset body must fail");
    // times = 1: the next one is clean.
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, digest).await;
    assert_eq!(resp.bytes().await.unwrap(), layer);

    // TruncatedBody: a well-formed but short response.
    sim.set_fault(FaultTarget::Blobs, Fault::TruncatedBody, Some(1));
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, digest).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_str(&resp, "content-length"), "500000");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body, layer.slice(..500_000));

    // WrongBytes: right length, wrong content.
    sim.set_fault(FaultTarget::All, Fault::WrongBytes, Some(1));
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, digest).await;
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), layer.len());
    assert_ne!(body, layer);
    assert_ne!(sha256_digest(&body), *digest);

    // Body faults skip HEADs (they stay armed) and status faults hit the
    // registry blob endpoint, not the CDN.
    sim.set_fault(FaultTarget::Blobs, Fault::TruncatedBody, Some(1));
    let resp = c
        .head(format!(
            "{}/v2/library/alpine/blobs/{digest}",
            sim.registry_url
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    let location = header_str(&resp, "location");
    assert_eq!(
        c.head(&location).send().await.unwrap().status(),
        StatusCode::OK
    );
    let resp = c.get(&location).send().await.unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), 500_000);

    sim.set_fault(FaultTarget::Blobs, Fault::ServiceUnavailable, None);
    for _ in 0..3 {
        let resp = c
            .get(format!(
                "{}/v2/library/alpine/blobs/{digest}",
                sim.registry_url
            ))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        c.get(&location).send().await.unwrap().status(),
        StatusCode::OK
    );
    sim.clear_faults();
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, digest).await;
    assert_eq!(resp.bytes().await.unwrap(), layer);
}

#[tokio::test]
async fn cdn_bandwidth_limit_paces_blob_bodies() {
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(1_000_000),
        ..Default::default()
    })
    .await;
    let layer = random_bytes(500_000, 11);
    let img = sim.push_image("library/alpine", "latest", std::slice::from_ref(&layer));
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;

    let started = Instant::now();
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, &img.layer_digests[0]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), layer);
    // In 64 KiB chunks, the last leaves once the 458,752 bytes before it
    // would have taken 1 MB/s: at least 0.45 s.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "unthrottled: {took:?}");

    // Body faults still apply to a throttled body.
    sim.set_fault(FaultTarget::Blobs, Fault::TruncatedBody, Some(1));
    let resp = fetch_blob_via_cdn(&c, &sim, "library/alpine", &tok, &img.layer_digests[0]).await;
    assert_eq!(resp.bytes().await.unwrap(), layer.slice(..250_000));
}

#[tokio::test]
async fn manifest_faults() {
    let sim = HubSim::start().await;
    let img = sim.push_image("library/alpine", "latest", &[random_bytes(100, 11)]);
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;

    // Status faults, consumed in order, `times` respected.
    sim.set_fault(FaultTarget::Manifests, Fault::InternalError, Some(2));
    sim.set_fault(FaultTarget::Manifests, Fault::TooManyRequests, Some(1));
    let resp = head_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_code(resp).await, "UNKNOWN");
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(resp).await, "TOOMANYREQUESTS");
    assert_eq!(
        sim.rate_limit_remaining("127.0.0.1"),
        100,
        "faults are not charged"
    );
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sim.rate_limit_remaining("127.0.0.1"), 99);

    // Blobs faults do not touch manifests.
    sim.set_fault(FaultTarget::Blobs, Fault::InternalError, None);
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    sim.clear_faults();

    // Slow: delays the headers, once.
    sim.set_fault(
        FaultTarget::Manifests,
        Fault::Slow(Duration::from_millis(400)),
        Some(1),
    );
    let start = Instant::now();
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(resp.bytes().await.unwrap(), img.manifest);
    let start = Instant::now();
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(start.elapsed() < Duration::from_millis(400));

    // Body faults on manifests; a HEAD leaves them armed.
    sim.set_fault(FaultTarget::Manifests, Fault::WrongBytes, Some(1));
    let resp = head_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(
        header_str(&resp, "docker-content-digest"),
        img.manifest_digest
    );
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), img.manifest.len());
    assert_ne!(body, img.manifest);

    sim.set_fault(FaultTarget::Manifests, Fault::ResetMidBody, Some(1));
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.is_err());

    sim.set_fault(FaultTarget::Manifests, Fault::TruncatedBody, Some(1));
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    let body = resp.bytes().await.unwrap();
    assert_eq!(body, img.manifest.slice(..img.manifest.len() / 2));

    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.bytes().await.unwrap(), img.manifest);

    // A 401 never consumes a fault.
    sim.set_fault(FaultTarget::Manifests, Fault::ServiceUnavailable, Some(1));
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", "bogus").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_listeners_and_pooled_connections() {
    let sim = HubSim::start().await;
    sim.push_image("library/alpine", "latest", &[random_bytes(100, 12)]);
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;
    let resp = get_manifest(&c, &sim, "library/alpine", "latest", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.bytes().await.unwrap();
    let registry = sim.registry_url.clone();

    sim.stop().await;
    // The pooled keep-alive connection is dead and the port refuses new ones.
    let err = c
        .get(format!("{registry}/v2/library/alpine/manifests/latest"))
        .bearer_auth(&tok)
        .send()
        .await;
    assert!(err.is_err(), "request after stop must fail: {err:?}");
    let fresh = client().get(format!("{registry}/v2/")).send().await;
    assert!(fresh.is_err());

    // Dropping works the same way.
    let sim = HubSim::start().await;
    let url = format!("{}/v2/", sim.registry_url);
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    drop(sim);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(c.get(&url).send().await.is_err());
}

#[tokio::test]
async fn stop_kills_in_flight_responses() {
    let sim = HubSim::start().await;
    sim.push_image("library/alpine", "latest", &[random_bytes(100, 13)]);
    let c = client();
    let tok = token(&c, &sim, "library/alpine").await;
    sim.set_fault(
        FaultTarget::Manifests,
        Fault::Slow(Duration::from_secs(10)),
        None,
    );
    let url = format!("{}/v2/library/alpine/manifests/latest", sim.registry_url);
    let in_flight = tokio::spawn(async move { c.get(url).bearer_auth(tok).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    sim.stop().await;
    let result = tokio::time::timeout(Duration::from_secs(3), in_flight)
        .await
        .expect("in-flight request must end soon after stop")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
}
