//! What upstream sends in place of a manifest never reaches the cache: a
//! redirect's body, an HTML page answered 200, a truncated JSON file, an
//! endless redirect. Each is a 502 naming the upstream, nothing is stored,
//! and once upstream is fixed the next request gets the real manifest.

mod support;

use bytes::Bytes;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use support::client::{Answer, Client};
use support::hubsim::{Fault, FaultTarget, HubSim, OCI_MANIFEST, SimImage};
use support::proxy::{Proxy, config};
use support::random_bytes;

const HTML: &str = "<html><head><title>Sign in</title></head><body>Welcome</body></html>";

struct World {
    sim: HubSim,
    proxy: Proxy,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let client = Client::new(&proxy.url);
    World {
        sim,
        proxy,
        client,
        _dir: dir,
    }
}

impl World {
    /// `method` on a manifest, accepting any media type (as `crane` and
    /// `curl` do), so the simulator serves whatever the tag holds.
    async fn ask(&self, method: &str, repo: &str, reference: &str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.client.send(method, &path, headers).await.unwrap()
    }

    /// Asks for `repo:reference` and expects a 502 that names the upstream,
    /// with nothing stored.
    async fn refused(&self, repo: &str, reference: &str) {
        let answer = self.ask("GET", repo, reference).await;
        assert_eq!(
            answer.status,
            502,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.error_code(), "UNAVAILABLE");
        let message = String::from_utf8_lossy(&answer.body).into_owned();
        assert!(message.contains("upstream docker.io"), "{message}");
        assert_eq!(answer.header("content-type"), "application/json");
        assert_eq!(self.proxy.cached_files(), 0, "nothing is stored");
    }

    /// The real image's manifest comes through, byte-exact, and is stored.
    async fn served(&self, repo: &str, reference: &str, image: &SimImage) {
        let answer = self.client.manifest(repo, reference).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, image.manifest);
        assert_eq!(
            answer.header("docker-content-digest"),
            image.manifest_digest
        );
        support::wait_until(|| self.proxy.cached_files() >= 1).await;
    }
}

#[tokio::test]
async fn an_html_page_answered_200_is_not_a_manifest() {
    let w = world().await;
    let html = Bytes::from_static(HTML.as_bytes());
    w.sim
        .put_manifest("library/web", Some("1"), "text/html", html.clone());
    let head = w.ask("HEAD", "web", "1").await;
    assert_eq!(head.status, 502, "a HEAD is refused on its Content-Type");
    w.refused("web", "1").await;
    // Labelled as a manifest, an HTML body is refused on its bytes.
    let labelled = w
        .sim
        .put_manifest("library/web", Some("2"), OCI_MANIFEST, html);
    w.refused("web", "2").await;
    w.refused("web", &labelled).await;

    let image = w.sim.push_image("library/web", "1", &[random_bytes(10, 1)]);
    w.served("web", "1", &image).await;
}

#[tokio::test]
async fn a_truncated_json_is_not_a_manifest_even_when_its_digest_matches() {
    let w = world().await;
    let image = w.sim.push_image("library/cut", "1", &[random_bytes(10, 2)]);
    let half = image.manifest.slice(..image.manifest.len() / 2);
    let cut = w
        .sim
        .put_manifest("library/cut", Some("1"), OCI_MANIFEST, half);
    w.refused("cut", "1").await;
    w.refused("cut", &cut).await;

    // Upstream is fixed: the tag points at the real manifest again.
    w.sim.put_manifest(
        "library/cut",
        Some("1"),
        support::hubsim::DOCKER_MANIFEST_V2,
        image.manifest.clone(),
    );
    w.served("cut", "1", &image).await;
}

#[tokio::test]
async fn a_redirect_that_cannot_be_followed_is_not_a_manifest() {
    let w = world().await;
    let image = w
        .sim
        .push_image("library/bare", "1", &[random_bytes(10, 3)]);
    // The HEAD of the tag, then the GET by digest, answer a bare 307.
    w.sim
        .set_fault(FaultTarget::Manifests, Fault::BareRedirect, Some(1));
    w.refused("bare", "1").await;
    w.sim
        .set_fault(FaultTarget::Manifests, Fault::BareRedirect, Some(1));
    w.refused("bare", &image.manifest_digest).await;
    assert_eq!(
        w.proxy.metric(
            "pullthrough_upstream_requests_total",
            &[("kind", "manifest_get"), ("status", "307")]
        ),
        1.0
    );
    w.served("bare", "1", &image).await;
}

#[tokio::test]
async fn an_endless_redirect_stops_at_the_hop_limit() {
    let w = world().await;
    let image = w
        .sim
        .push_image("library/loop", "1", &[random_bytes(10, 4)]);
    w.sim
        .set_fault(FaultTarget::Manifests, Fault::RedirectLoop, None);
    w.refused("loop", "1").await;
    let heads = w.sim.counters().manifest_heads;
    assert!(
        (2..=10).contains(&heads),
        "a bounded number of hops, each to the same URL: {heads}"
    );
    let requests = w.sim.requests();
    let looped = requests
        .iter()
        .filter(|r| r.ends_with("HEAD /v2/library/loop/manifests/1"));
    assert_eq!(
        looped.count() as u64,
        heads,
        "a relative Location: {requests:?}"
    );

    w.sim.clear_faults();
    w.served("loop", "1", &image).await;
}
