//! The OCI distribution-spec conformance suite's pull workflow
//! (`conformance/01_pull_test.go`), every status code and header it names,
//! asked of pullthrough in front of the simulator that holds the content
//! its setup would push. A reference that is neither a tag nor a digest is
//! a 404 (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`) for HEAD and GET alike, as
//! distribution answers, without asking upstream.

mod support;

use bytes::Bytes;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use support::client::{Answer, Client};
use support::hubsim::{HubSim, OCI_MANIFEST};
use support::image::{Format, Image, image};
use support::proxy::{Proxy, config};
use support::sha256_digest;

/// The suite's `<name>`.
const NAME: &str = "conformance/pull";
/// The suite's `nonexistentManifest`.
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
/// The suite's tag for `manifests[0]`.
const TAG: &str = "tagtest0";

/// What the suite's setup pushes: two manifests (only the first tagged)
/// over their configs and a layer.
struct Pushed {
    sim: HubSim,
    proxy: Proxy,
    client: Client,
    manifests: [Image; 2],
    _dir: tempfile::TempDir,
}

async fn pushed() -> Pushed {
    let sim = HubSim::start().await;
    let manifests = [
        image(Format::Oci, "amd64", &[2_000], 41),
        image(Format::Oci, "arm64", &[2_000], 42),
    ];
    for (i, m) in manifests.iter().enumerate() {
        sim.put_blob(m.config.clone());
        for layer in &m.layers {
            sim.put_blob(layer.clone());
        }
        let tag = (i == 0).then_some(TAG);
        sim.put_manifest(NAME, tag, OCI_MANIFEST, m.manifest.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    Pushed {
        sim,
        proxy,
        client,
        manifests,
        _dir: dir,
    }
}

impl Pushed {
    async fn ask(&self, method: &str, path: &str, accept_oci: bool) -> Answer {
        let mut headers = HeaderMap::new();
        if accept_oci {
            headers.insert(ACCEPT, HeaderValue::from_static(OCI_MANIFEST));
        }
        let url = format!("/v2/{NAME}/{path}");
        self.client.send(method, &url, headers).await.unwrap()
    }
}

/// The suite's `dummyDigest`: `godigest.FromString("hello world")`.
fn dummy_digest() -> String {
    sha256_digest(b"hello world")
}

/// A HEAD answer has no body; a GET error answer is OCI JSON with `code`.
fn expect_error(answer: &Answer, method: &str, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{method}");
    if method == "HEAD" {
        assert!(answer.body.is_empty(), "a HEAD answer has no body");
    } else {
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(answer.error_code(), code);
    }
}

#[tokio::test]
async fn pull_blobs() {
    let p = pushed().await;
    let config = &p.manifests[0].config;
    let digest = sha256_digest(config);
    for method in ["HEAD", "GET"] {
        let missing = p
            .ask(method, &format!("blobs/{}", dummy_digest()), false)
            .await;
        expect_error(&missing, method, 404, "BLOB_UNKNOWN");

        let existing = p.ask(method, &format!("blobs/{digest}"), false).await;
        assert_eq!(existing.status, 200, "{method}");
        assert_eq!(existing.header("docker-content-digest"), digest);
        let expected = if method == "GET" {
            config.clone()
        } else {
            Bytes::new()
        };
        assert_eq!(existing.body, expected);
    }
}

#[tokio::test]
async fn pull_manifests() {
    let p = pushed().await;
    for method in ["HEAD", "GET"] {
        let missing = p
            .ask(method, &format!("manifests/{NONEXISTENT_MANIFEST}"), false)
            .await;
        expect_error(&missing, method, 404, "MANIFEST_UNKNOWN");

        for m in &p.manifests {
            let by_digest = p
                .ask(method, &format!("manifests/{}", m.digest), true)
                .await;
            assert_eq!(by_digest.status, 200, "{method}");
            assert_eq!(by_digest.header("docker-content-digest"), m.digest);
        }
        let by_tag = p.ask(method, &format!("manifests/{TAG}"), true).await;
        assert_eq!(by_tag.status, 200, "{method}");
        assert_eq!(
            by_tag.header("docker-content-digest"),
            p.manifests[0].digest
        );
        if method == "GET" {
            assert_eq!(by_tag.body, p.manifests[0].manifest);
            assert_eq!(by_tag.header("content-type"), OCI_MANIFEST);
        }
    }
}

#[tokio::test]
async fn invalid_references_are_unknown_for_head_and_get_without_asking_upstream() {
    let p = pushed().await;
    let manifests = [
        NONEXISTENT_MANIFEST,
        "sha256:totallywrong",
        "-leading-dash",
        "sha256:abc",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ];
    let blobs = [
        "sha256:totallywrong",
        "notadigest",
        "sha256:XYZ",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ];
    for method in ["HEAD", "GET"] {
        for reference in manifests {
            let answer = p.ask(method, &format!("manifests/{reference}"), true).await;
            expect_error(&answer, method, 404, "MANIFEST_UNKNOWN");
        }
        for reference in blobs {
            let answer = p.ask(method, &format!("blobs/{reference}"), false).await;
            expect_error(&answer, method, 404, "BLOB_UNKNOWN");
        }
    }
    assert_eq!(p.sim.counters().total, 0);
    assert_eq!(p.proxy.outcomes("miss"), 0);
}

#[tokio::test]
async fn teardown_deletes_are_refused_as_the_suite_allows() {
    let p = pushed().await;
    let m = &p.manifests[0];
    let mut targets = vec![format!("manifests/{}", m.digest)];
    targets.push(format!("blobs/{}", sha256_digest(&m.config)));
    targets.push(format!("blobs/{}", sha256_digest(&m.layers[0])));
    for target in targets {
        let answer = p.ask("DELETE", &target, false).await;
        expect_error(&answer, "DELETE", 405, "UNSUPPORTED");
    }
    assert_eq!(p.sim.counters().total, 0);
}
