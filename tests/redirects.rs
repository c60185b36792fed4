//! A registry.k8s.io-style upstream, as the simulator's front plays it:
//! every manifest and tag request redirected to another registry under
//! another path, with its own realm and scope; blobs redirected to storage
//! that refuses `Authorization`. Pulled through pullthrough cold, warm and
//! after the tag's TTL, and by the real clients (skopeo, containerd's ctr).

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use pullthrough::config::UpstreamConfig;
use support::client::Client;
use support::daemons::{Containerd, default_hosts_dir, run_ok};
use support::docs::snippet;
use support::hubsim::{HubSim, SimOptions};
use support::image::{Format, Image, image};
use support::proxy::{Proxy, config};
use support::registry::require;
use support::sha256_digest;

/// Where the front sends `pause`: the registry names it `<PREFIX>/pause`.
const PREFIX: &str = "k8s-artifacts-prod/images";
const K8S: &str = "registry.k8s.io";
/// A tag TTL short enough to wait out.
const TTL: Duration = Duration::from_secs(1);
/// A tag TTL no real client's pull outlasts.
const LONG: Duration = Duration::from_secs(300);

/// The simulator with a front as registry.k8s.io, `pause:3.9` on it, and
/// pullthrough in front.
struct K8s {
    sim: HubSim,
    proxy: Proxy,
    pause: Image,
    _dir: tempfile::TempDir,
}

async fn k8s(tag_ttl: Duration) -> K8s {
    let sim = HubSim::start_with(SimOptions {
        front_prefix: Some(PREFIX.into()),
        ..SimOptions::default()
    })
    .await;
    let pause = image(Format::Oci, "amd64", &[40_000, 3_000], 31);
    put_image(&sim, "3.9", &pause);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    let mut upstream = UpstreamConfig::new(sim.front_url.as_deref().unwrap());
    upstream.tag_ttl = Some(tag_ttl);
    cfg.upstreams.insert(K8S.into(), upstream);
    let proxy = Proxy::start(cfg).await;
    K8s {
        sim,
        proxy,
        pause,
        _dir: dir,
    }
}

/// Stores `image` where the front's redirects lead, tagged `tag`.
fn put_image(sim: &HubSim, tag: &str, image: &Image) {
    sim.put_blob(image.config.clone());
    for layer in &image.layers {
        sim.put_blob(layer.clone());
    }
    let repo = sim.front_repo("pause");
    let media_type = image.format.manifest_type();
    sim.put_manifest(&repo, Some(tag), media_type, image.manifest.clone());
}

impl K8s {
    /// `127.0.0.1:<port>` of pullthrough.
    fn mirror(&self) -> String {
        self.proxy.url.trim_start_matches("http://").to_owned()
    }

    /// Requests on one simulator listener whose line contains `text`.
    fn seen(&self, listener: &str, text: &str) -> usize {
        let prefix = format!("{listener} ");
        let requests = self.sim.requests();
        let hits = requests.iter().filter(|r| r.starts_with(&prefix));
        hits.filter(|r| r.contains(text)).count()
    }
}

#[tokio::test]
async fn a_cold_pull_follows_every_redirect_and_a_warm_pull_asks_nothing() {
    let k = k8s(LONG).await;
    let client = Client::new(&k.proxy.url);
    let name = format!("{K8S}/pause");

    assert_eq!(client.pull(&name, "3.9").await, k.pause.digest);
    // The tag by a free HEAD, the manifest by digest, both redirected.
    let by_digest = format!("/v2/pause/manifests/{}", k.pause.digest);
    assert_eq!(k.seen("front", "HEAD /v2/pause/manifests/3.9"), 1);
    assert_eq!(k.seen("front", &format!("GET {by_digest}")), 1);
    let target = format!("GET /v2/{PREFIX}/pause/manifests/{}", k.pause.digest);
    assert_eq!(k.seen("registry", &target), 1, "{:?}", k.sim.requests());
    // The token was for the scope the target named, not pullthrough's name.
    assert!(k.seen("realm", "k8s-artifacts-prod") >= 1);
    assert_eq!(k.seen("realm", "repository%3Apause%3A"), 0);
    let counters = k.sim.counters();
    assert_eq!(counters.cdn_refused_with_auth, 0);
    assert_eq!(counters.cdn_gets, 1 + k.pause.layers.len() as u64);

    k.sim.reset_counters();
    assert_eq!(client.pull(&name, "3.9").await, k.pause.digest);
    let head = client.manifest_head(&name, "3.9").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("docker-content-digest"), k.pause.digest);
    assert_eq!(k.sim.counters().total, 0, "{:?}", k.sim.requests());

    let tags = client.get(&format!("/v2/{name}/tags/list")).await;
    assert_eq!(tags.status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(listed["tags"], serde_json::json!(["3.9"]));
}

/// The tag list comes back named as the client asked, and its next page
/// linked on the client's path, by prefix or by `ns`, not on the path the
/// redirect led to (which this mirror does not route).
#[tokio::test]
async fn the_tag_list_pages_on_the_clients_path_through_the_redirect() {
    let k = k8s(LONG).await;
    for tag in ["3.7", "3.8"] {
        put_image(&k.sim, tag, &k.pause);
    }
    let client = Client::new(&k.proxy.url);
    for (first, ns) in [
        (format!("/v2/{K8S}/pause/tags/list?n=2"), ""),
        (
            format!("/v2/pause/tags/list?n=2&ns={K8S}"),
            "&ns=registry.k8s.io",
        ),
    ] {
        let page = client.get(&first).await;
        assert_eq!(page.status, 200);
        let listed: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        assert_eq!(listed["tags"], serde_json::json!(["3.7", "3.8"]));
        let name = if ns.is_empty() {
            format!("{K8S}/pause")
        } else {
            "pause".into()
        };
        assert_eq!(listed["name"], name.as_str());
        let next = format!("/v2/{name}/tags/list?n=2&last=3.8{ns}");
        assert_eq!(page.header("link"), format!("<{next}>; rel=\"next\""));

        let rest = client.get(&next).await;
        assert_eq!(rest.status, 200);
        let listed: serde_json::Value = serde_json::from_slice(&rest.body).unwrap();
        assert_eq!(listed["tags"], serde_json::json!(["3.9"]));
        assert_eq!(rest.header("link"), "", "the last page");
    }
}

#[tokio::test]
async fn after_the_ttl_a_tag_is_revalidated_through_the_redirect_and_a_move_is_seen() {
    let k = k8s(TTL).await;
    let client = Client::new(&k.proxy.url);
    let name = format!("{K8S}/pause");
    assert_eq!(client.pull(&name, "3.9").await, k.pause.digest);

    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    k.sim.reset_counters();
    assert_eq!(client.pull(&name, "3.9").await, k.pause.digest);
    let counters = k.sim.counters();
    assert_eq!(counters.manifest_heads, 1, "{:?}", k.sim.requests());
    assert_eq!(counters.manifest_gets, 0, "an unchanged tag costs no pull");
    assert_eq!(counters.cdn_gets, 0);
    assert!(k.proxy.outcomes("revalidated") >= 1);

    let moved = image(Format::Oci, "amd64", &[5_000], 32);
    put_image(&k.sim, "3.9", &moved);
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    assert_eq!(client.pull(&name, "3.9").await, moved.digest);
}

#[tokio::test]
async fn skopeo_copies_through_the_redirects() {
    let k = k8s(LONG).await;
    let out = tempfile::tempdir().unwrap();
    let copy = |dest: &str| {
        let dest = out.path().join(dest);
        let source = format!("docker://{}/{K8S}/pause:3.9", k.mirror());
        async move {
            let mut skopeo = Command::new(require("skopeo"));
            skopeo.args(["--insecure-policy", "copy", "--src-tls-verify=false"]);
            skopeo.arg(source).arg(format!("dir:{}", dest.display()));
            run_ok(skopeo).await;
            let manifest = std::fs::read(dest.join("manifest.json")).unwrap();
            (sha256_digest(&manifest), dest)
        }
    };
    let (digest, dest) = copy("cold").await;
    assert_eq!(digest, k.pause.digest);
    let layer = &k.pause.layers[0];
    let layer_file = dest.join(sha256_digest(layer).trim_start_matches("sha256:"));
    assert_eq!(Bytes::from(std::fs::read(layer_file).unwrap()), *layer);

    k.sim.reset_counters();
    assert_eq!(copy("warm").await.0, k.pause.digest);
    assert_eq!(k.sim.counters().total, 0, "{:?}", k.sim.requests());
}

#[tokio::test]
async fn containerd_pulls_through_the_redirects() {
    let k = k8s(LONG).await;
    let hosts = default_hosts_dir(&snippet("docs/deploy.md", "containerd-hosts", &k.mirror()));
    let reference = format!("{K8S}/pause:3.9");

    let containerd = Containerd::start().await;
    containerd.pull(hosts.path(), &reference).await;
    assert_eq!(containerd.digest(&reference).await, k.pause.digest);
    assert_eq!(k.sim.counters().cdn_refused_with_auth, 0);

    k.sim.reset_counters();
    let fresh = Containerd::start().await;
    fresh.pull(hosts.path(), &reference).await;
    assert_eq!(fresh.digest(&reference).await, k.pause.digest);
    assert_eq!(k.sim.counters().total, 0, "{:?}", k.sim.requests());
}
