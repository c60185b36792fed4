//! OCI 1.1 referrers through pullthrough: relayed from an upstream with the
//! API (the simulator's) and cached with the tag TTL, served stale when
//! upstream is gone; answered by pullthrough from the referrers tag schema
//! for an upstream without it (distribution 2.8's `docker-registry`), as
//! the distribution-spec's "Listing Referrers" and "Referrers Tag Schema"
//! sections say.

mod support;

use std::time::Duration;

use bytes::Bytes;
use pullthrough::config::UpstreamConfig;
use serde_json::Value;
use support::artifact::{
    EMPTY, OCI_INDEX, OCI_MANIFEST, artifact, descriptor, referrers_index, referrers_tag,
};
use support::client::{Answer, Client};
use support::hubsim::{HubSim, SimOptions};
use support::image::{Format, image};
use support::proxy::{Proxy, config};
use support::registry::DockerRegistry;

const TTL: Duration = Duration::from_secs(1);
const SIG: &str = "application/vnd.example.signature";
const SBOM: &str = "application/vnd.example.sbom";
/// `SIG` as it travels in a query.
const SIG_QUERY: &str = "application%2Fvnd.example.signature";

/// The digests an index answer lists, sorted.
fn listed(answer: &Answer) -> Vec<String> {
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.header("content-type"), OCI_INDEX);
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut digests: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    digests.sort();
    digests
}

fn sorted(mut digests: Vec<String>) -> Vec<String> {
    digests.sort();
    digests
}

#[tokio::test]
async fn an_upstream_with_the_api_is_relayed_cached_refreshed_and_served_stale() {
    let sim = HubSim::start_with(SimOptions {
        referrers_api: true,
        ..SimOptions::default()
    })
    .await;
    let app = image(Format::Oci, "amd64", &[1_000], 60);
    sim.put_manifest("org/app", Some("1.0"), OCI_MANIFEST, app.manifest.clone());
    let sig = artifact(OCI_MANIFEST, &app.manifest, SIG, 1);
    let sbom = artifact(OCI_MANIFEST, &app.manifest, SBOM, 2);
    let sig_digest = sim.put_manifest("org/app", None, OCI_MANIFEST, sig);
    let sbom_digest = sim.put_manifest("org/app", None, OCI_MANIFEST, sbom);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    let mut hub = UpstreamConfig::new(&sim.registry_url);
    hub.tag_ttl = Some(TTL);
    cfg.upstreams.insert("docker.io".into(), hub);
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);
    let path = format!("/v2/org/app/referrers/{}", app.digest);

    let all = client.get(&path).await;
    assert_eq!(
        listed(&all),
        sorted(vec![sig_digest.clone(), sbom_digest.clone()])
    );
    assert!(all.headers.get("oci-filters-applied").is_none());
    let filtered = client
        .get(&format!("{path}?artifactType={SIG_QUERY}"))
        .await;
    assert_eq!(listed(&filtered), vec![sig_digest.clone()]);
    assert_eq!(filtered.header("oci-filters-applied"), "artifactType");
    // The filter went upstream as the client sent it.
    let forwarded = format!("/referrers/{}?artifactType={SIG_QUERY}", app.digest);
    assert!(
        sim.requests().iter().any(|r| r.ends_with(&forwarded)),
        "{:?}",
        sim.requests()
    );

    // Within the TTL: from memory, upstream hears nothing.
    sim.reset_counters();
    assert_eq!(listed(&client.get(&path).await).len(), 2);
    assert_eq!(sim.counters().total, 0, "{:?}", sim.requests());

    // Past it: asked again, and a new referrer shows.
    let att = artifact(OCI_MANIFEST, &app.manifest, SBOM, 3);
    let att_digest = sim.put_manifest("org/app", None, OCI_MANIFEST, att);
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    assert_eq!(
        listed(&client.get(&path).await),
        sorted(vec![sig_digest, sbom_digest, att_digest])
    );

    // Upstream gone: the cached answer, stale.
    sim.stop().await;
    tokio::time::sleep(TTL + Duration::from_millis(300)).await;
    assert_eq!(listed(&client.get(&path).await).len(), 3);
    assert!(proxy.outcomes("stale") >= 1);

    // A digest that does not parse is the spec's 400.
    let bad = client.get("/v2/org/app/referrers/sha256:zz").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error_code(), "DIGEST_INVALID");
}

#[tokio::test]
async fn an_upstream_without_the_api_gets_the_tag_schema_fallback() {
    let registry = DockerRegistry::start().await;
    let app = image(Format::Oci, "amd64", &[1_000], 61);
    let other = image(Format::Oci, "amd64", &[1_000], 62);
    registry.push_image("org/app", Some("1.0"), &app).await;
    registry.push_image("org/app", Some("2.0"), &other).await;
    registry
        .push_blob("org/app", Bytes::from_static(EMPTY))
        .await;
    // What a client without the API does: push the artifacts, then the
    // index of them under the `<alg>-<ref>` tag.
    let sig = artifact(OCI_MANIFEST, &app.manifest, SIG, 1);
    let sbom = artifact(OCI_MANIFEST, &app.manifest, SBOM, 2);
    let mut descriptors = Vec::new();
    for a in [&sig, &sbom] {
        let digest = support::sha256_digest(a);
        registry
            .push_manifest("org/app", &digest, OCI_MANIFEST, a.clone())
            .await;
        descriptors.push(descriptor(a));
    }
    let tag = referrers_tag(&app.digest);
    let index = referrers_index(&descriptors);
    registry
        .push_manifest("org/app", &tag, OCI_INDEX, index.clone())
        .await;

    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&registry.url, dir.path())).await;
    let client = Client::new(&proxy.url);
    let (sig_digest, sbom_digest) = (support::sha256_digest(&sig), support::sha256_digest(&sbom));

    // Upstream 404s the endpoint; pullthrough answers from the tag.
    let path = format!("/v2/org/app/referrers/{}", app.digest);
    let all = client.get(&path).await;
    assert_eq!(listed(&all), sorted(vec![sig_digest.clone(), sbom_digest]));
    let filtered = client
        .get(&format!("{path}?artifactType={SIG_QUERY}"))
        .await;
    assert_eq!(listed(&filtered), vec![sig_digest]);
    assert_eq!(filtered.header("oci-filters-applied"), "artifactType");

    // No tag for the other image: an empty index, never a 404.
    let none = client
        .get(&format!("/v2/org/app/referrers/{}", other.digest))
        .await;
    assert!(listed(&none).is_empty());

    // The tag schema is a plain tag through the mirror, like cosign's
    // `.sig` and `.att` tags.
    let by_tag = client.manifest("org/app", &tag).await;
    assert_eq!(by_tag.status, 200);
    assert_eq!(by_tag.body, index);
    let cosign_tag = format!("{tag}.sig");
    registry
        .push_manifest("org/app", &cosign_tag, OCI_MANIFEST, sig.clone())
        .await;
    let cosign = client.manifest("org/app", &cosign_tag).await;
    assert_eq!(cosign.status, 200);
    assert_eq!(cosign.body, sig);
}

/// The upstream with the API, an image and two referrers of it, pages of
/// `page` descriptors (`None`: one page), and pullthrough in front with a
/// long TTL on `dir`.
async fn with_referrers(
    page: Option<usize>,
    dir: &std::path::Path,
) -> (HubSim, Proxy, String, Vec<String>) {
    let sim = HubSim::start_with(SimOptions {
        referrers_api: true,
        referrers_page: page,
        ..SimOptions::default()
    })
    .await;
    let app = image(Format::Oci, "amd64", &[1_000], 61);
    sim.put_manifest("org/app", Some("1.0"), OCI_MANIFEST, app.manifest.clone());
    let referrers = [(SIG, 1), (SBOM, 2)]
        .into_iter()
        .map(|(kind, seed)| {
            let made = artifact(OCI_MANIFEST, &app.manifest, kind, seed);
            sim.put_manifest("org/app", None, OCI_MANIFEST, made)
        })
        .collect();
    let proxy = Proxy::start(config(&sim.registry_url, dir)).await;
    (sim, proxy, app.digest, referrers)
}

/// Answers are kept on disk: after a restart, within the TTL, upstream is
/// not asked; with upstream gone, the answer is still served.
#[tokio::test]
async fn an_answer_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, proxy, digest, referrers) = with_referrers(None, dir.path()).await;
    let path = format!("/v2/org/app/referrers/{digest}");
    assert_eq!(
        listed(&Client::new(&proxy.url).get(&path).await),
        sorted(referrers.clone())
    );
    // Saved in the background: wait for the file before stopping.
    let saved = dir.path().join("tags/referrers");
    support::wait_until(|| std::fs::read_dir(&saved).unwrap().count() == 1).await;
    proxy.stop().await;

    sim.reset_counters();
    let proxy = Proxy::start(config(&sim.registry_url, dir.path())).await;
    let again = Client::new(&proxy.url).get(&path).await;
    assert_eq!(listed(&again), sorted(referrers.clone()));
    assert_eq!(sim.counters().total, 0, "{:?}", sim.requests());
    assert_eq!(proxy.outcomes("hit-disk"), 1);
}

/// An upstream that pages its answer: each page cached on its own, and
/// the next page linked on the client's path (with its `ns`), never on
/// upstream's.
#[tokio::test]
async fn a_paged_answer_links_on_through_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, proxy, digest, referrers) = with_referrers(Some(1), dir.path()).await;
    let client = Client::new(&proxy.url);
    for (first, ns) in [
        (format!("/v2/org/app/referrers/{digest}"), ""),
        (
            format!("/v2/org/app/referrers/{digest}?ns=docker.io"),
            "&ns=docker.io",
        ),
    ] {
        let page = client.get(&first).await;
        assert_eq!(page.status, 200);
        let next = format!("/v2/org/app/referrers/{digest}?next=1{ns}");
        assert_eq!(page.header("link"), format!("<{next}>; rel=\"next\""));
        let rest = client.get(&next).await;
        assert_eq!(rest.status, 200);
        assert_eq!(rest.header("link"), "", "the last page");
        let mut both = listed(&page);
        both.extend(listed(&rest));
        assert_eq!(sorted(both), sorted(referrers.clone()));
    }
    // Each page asked once: the second round came from the cache.
    let asked = |text: &str| sim.requests().iter().filter(|r| r.contains(text)).count();
    assert_eq!(
        asked(&format!("/referrers/{digest}?next=1")),
        1,
        "{:?}",
        sim.requests()
    );
}
