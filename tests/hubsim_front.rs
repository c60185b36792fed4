//! Self-tests for the simulator's registry.k8s.io-style front and its
//! redirect faults, driven request by request like `hubsim_selftest`.

mod support;

use reqwest::StatusCode;
use support::hubsim::{Fault, FaultTarget, HubSim, SimOptions};
use support::simclient::{client, get_manifest, head_manifest, header_str, token};
use support::{random_bytes, sha256_digest};

/// The registry.k8s.io-style front: 307s to the registry under a prefix, or
/// to the CDN for blobs, with the small HTML body servers send along.
#[tokio::test]
async fn the_front_redirects_like_registry_k8s_io() {
    let sim = HubSim::start_with(SimOptions {
        front_prefix: Some("k8s-artifacts-prod/images".into()),
        ..SimOptions::default()
    })
    .await;
    let front = sim.front_url.clone().unwrap();
    let target = sim.front_repo("pause");
    assert_eq!(target, "k8s-artifacts-prod/images/pause");
    let img = sim.push_image(&target, "3.9", &[random_bytes(500, 1)]);
    let c = client();

    for (method, path, expected) in [
        ("GET", "/v2/", "/v2/".to_owned()),
        (
            "GET",
            "/v2/pause/manifests/3.9",
            format!("/v2/{target}/manifests/3.9"),
        ),
        (
            "HEAD",
            "/v2/pause/manifests/3.9",
            format!("/v2/{target}/manifests/3.9"),
        ),
        (
            "GET",
            "/v2/pause/tags/list?n=1",
            format!("/v2/{target}/tags/list?n=1"),
        ),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = c
            .request(method.clone(), format!("{front}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::TEMPORARY_REDIRECT,
            "{method} {path}"
        );
        assert_eq!(
            header_str(&resp, "location"),
            format!("{}{expected}", sim.registry_url)
        );
        if method == reqwest::Method::GET {
            assert!(resp.text().await.unwrap().contains("Temporary Redirect"));
        }
    }

    // Where it leads, the registry's own realm and the target's scope apply.
    let location = format!("{}/v2/{target}/manifests/3.9", sim.registry_url);
    let resp = c.get(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        header_str(&resp, "www-authenticate")
            .contains(&format!("scope=\"repository:{target}:pull\""))
    );
    let tok = token(&c, &sim, &target).await;
    let resp = get_manifest(&c, &sim, &target, "3.9", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header_str(&resp, "docker-content-digest"),
        img.manifest_digest
    );
    let wrong = token(&c, &sim, "pause").await;
    let resp = get_manifest(&c, &sim, &target, "3.9", &wrong).await;
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the front's name is no scope there"
    );

    // Blobs go straight to storage that refuses Authorization.
    let layer = &img.layer_digests[0];
    let resp = c
        .get(format!("{front}/v2/pause/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header_str(&resp, "location");
    assert!(location.starts_with(&format!("{}/blobs/{layer}?sig=", sim.cdn_url)));
    let refused = c.get(&location).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let resp = c.get(&location).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256_digest(&resp.bytes().await.unwrap()), *layer);
    let missing = format!("{front}/v2/pause/blobs/{}", sha256_digest(b"none"));
    assert_eq!(
        c.get(missing).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let put = c
        .put(format!("{front}/v2/pause/manifests/3.9"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let requests = sim.requests();
    assert!(
        requests.contains(&"front GET /v2/pause/tags/list?n=1".to_owned()),
        "{requests:?}"
    );
    assert!(HubSim::start().await.front_url.is_none());
}

#[tokio::test]
async fn redirect_faults() {
    let sim = HubSim::start().await;
    sim.push_image("library/r", "1", &[random_bytes(10, 1)]);
    let c = client();
    let tok = token(&c, &sim, "library/r").await;

    sim.set_fault(FaultTarget::Manifests, Fault::BareRedirect, Some(1));
    let resp = head_manifest(&c, &sim, "library/r", "1", &tok).await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert!(resp.headers().get("location").is_none());
    sim.set_fault(FaultTarget::Manifests, Fault::BareRedirect, Some(1));
    let resp = get_manifest(&c, &sim, "library/r", "1", &tok).await;
    assert_eq!(
        header_str(&resp, "content-type"),
        "text/html; charset=utf-8"
    );
    assert!(resp.text().await.unwrap().contains("Temporary Redirect"));

    sim.set_fault(FaultTarget::Blobs, Fault::RedirectLoop, Some(2));
    let digest = sha256_digest(b"anything");
    for _ in 0..2 {
        let resp = c
            .get(format!("{}/v2/library/r/blobs/{digest}", sim.registry_url))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(header_str(&resp, "location"), digest, "relative, to itself");
    }
    let resp = get_manifest(&c, &sim, "library/r", "1", &tok).await;
    assert_eq!(resp.status(), StatusCode::OK, "the faults are spent");
}
