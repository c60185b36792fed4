//! The status page in a real browser: after known traffic, headless
//! Chromium loads `/` (redirected to `/ui`), and every figure the page
//! shows equals what `/metrics` reports; the JSON form agrees too, and a
//! screenshot is saved under the test's temp dir.

mod support;

use bytes::Bytes;
use support::browser::{data_value, dump_dom, screenshot};
use support::client::Client;
use support::hubsim::HubSim;
use support::proxy::{self, Proxy};
use support::{metric_sum, random_bytes};

/// `/metrics` as a scraper sees it.
async fn scrape(proxy: &Proxy) -> String {
    reqwest::get(format!("{}/metrics", proxy.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Manifest and blob requests served by a cache tier, from `/metrics`.
fn hits(metrics: &str) -> f64 {
    let mut total = 0.0;
    for kind in ["manifest", "blob"] {
        for tier in ["hit-memory", "hit-disk", "hit-s3"] {
            total += metric_sum(
                metrics,
                "pullthrough_requests_total",
                &[("kind", kind), ("outcome", tier)],
            );
        }
    }
    total
}

fn shown(dom: &str, id: &str) -> f64 {
    let value = data_value(dom, id).unwrap_or_else(|| panic!("the page shows no #{id}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("#{id} is {value:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_in_chromium_and_matches_the_metrics() {
    let sim = HubSim::start().await;
    let layers =
        |seed: u64| -> Vec<Bytes> { (0..2).map(|n| random_bytes(64 * 1024, seed + n)).collect() };
    sim.push_image("library/alpha", "v1", &layers(10));
    sim.push_image("library/beta", "v1", &layers(20));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(proxy::config(&sim.registry_url, dir.path())).await;
    let state = &proxy.state;
    state.board.sample(&state.metrics, 1);

    let client = Client::new(&proxy.url);
    client.pull("library/alpha", "v1").await;
    // The same image by its short name: counted as one in the hottest list.
    client.pull("alpha", "v1").await;
    client.pull("library/beta", "v1").await;
    let missing = client.manifest("library/ghost", "none").await;
    assert_eq!(missing.status, 404);
    // A point of history holding the traffic above (the sampler's own
    // first tick may add an empty one).
    state.board.sample(&state.metrics, 2);

    // Downloads are stored just after they are served: wait for all
    // eight objects (two manifests, two configs, four layers) to settle.
    support::wait_until(|| proxy.metric("pullthrough_cache_objects", &[("tier", "disk")]) == 8.0)
        .await;
    let metrics = scrape(&proxy).await;
    let dom = dump_dom(&format!("{}/", proxy.url)).await;
    assert!(dom.contains("<title>pullthrough status</title>"), "{dom}");

    // The second pull of alpha was served from the cache: its manifest,
    // config and two layers at least.
    let expected_hits = hits(&metrics);
    assert!(expected_hits >= 4.0, "{metrics}");
    assert_eq!(shown(&dom, "hits"), expected_hits);
    let pairs = [
        ("pulls-spent", "pullthrough_upstream_pulls_total", vec![]),
        ("pulls-saved", "pullthrough_pulls_avoided_total", vec![]),
        (
            "remaining-docker.io",
            "pullthrough_upstream_ratelimit_remaining",
            vec![("upstream", "docker.io")],
        ),
        (
            "limit-docker.io",
            "pullthrough_upstream_ratelimit_limit",
            vec![("upstream", "docker.io")],
        ),
        (
            "bytes-disk",
            "pullthrough_cache_bytes",
            vec![("tier", "disk")],
        ),
        (
            "objects-disk",
            "pullthrough_cache_objects",
            vec![("tier", "disk")],
        ),
        (
            "bytes-memory",
            "pullthrough_cache_bytes",
            vec![("tier", "memory")],
        ),
        (
            "objects-memory",
            "pullthrough_cache_objects",
            vec![("tier", "memory")],
        ),
        (
            "served-upstream",
            "pullthrough_served_bytes_total",
            vec![("tier", "upstream")],
        ),
        (
            "served-memory",
            "pullthrough_served_bytes_total",
            vec![("tier", "memory")],
        ),
        ("downloads-active", "pullthrough_downloads_active", vec![]),
    ];
    for (id, metric, labels) in pairs {
        let expected = metric_sum(&metrics, metric, &labels);
        assert_eq!(
            shown(&dom, id),
            expected,
            "#{id} against {metric}{labels:?}"
        );
    }
    // What the traffic makes certain, beyond agreeing with /metrics.
    assert_eq!(shown(&dom, "pulls-spent"), 2.0, "one pull per tag");
    assert!(shown(&dom, "pulls-saved") >= 1.0);
    assert_eq!(
        shown(&dom, "remaining-docker.io"),
        98.0,
        "hubsim's 100, less two pulls"
    );
    assert!(shown(&dom, "served-upstream") >= 4.0 * 64.0 * 1024.0);
    assert!(
        shown(&dom, "objects-disk") >= 6.0,
        "two configs and four layers"
    );

    // The hottest images, alpha first; the error; the chart's one point.
    let alpha = dom
        .find("docker.io/library/alpha:v1")
        .expect("alpha is listed");
    let beta = dom
        .find("docker.io/library/beta:v1")
        .expect("beta is listed");
    assert!(alpha < beta, "the most requested first");
    assert!(dom.contains("/v2/library/ghost/manifests/none"));
    assert!(
        dom.contains(&missing.error_code()),
        "{}",
        missing.error_code()
    );
    assert!(dom.contains(r#"<svg id="chart""#));
    assert!(dom.contains(r#"class="lookups""#), "the chart has no bars");

    // The JSON form carries the same figures.
    let json: serde_json::Value = reqwest::get(format!("{}/ui/status.json", proxy.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["requests"]["hits"].as_f64(), Some(expected_hits));
    assert_eq!(json["pulls"]["spent"].as_f64(), Some(2.0));
    assert_eq!(json["hottest"][0]["image"], "docker.io/library/alpha:v1");
    assert_eq!(json["hottest"][0]["requests"], 2);
    // The browser asked for nothing beyond the page (no favicon), so the
    // one error is the test's own.
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["path"], "/v2/library/ghost/manifests/none");
    // The history started before the traffic, so it holds all of it.
    let charted: u64 = json["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lookups"].as_u64().unwrap())
        .sum();
    assert_eq!(Some(charted), json["requests"]["lookups"].as_u64());

    // A screenshot, kept where cargo keeps test output.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("status.png");
    let _ = std::fs::remove_file(&png);
    screenshot(&format!("{}/ui", proxy.url), &png).await;
    let image = std::fs::read(&png).unwrap();
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        image.len() > 10_000,
        "a blank screenshot: {} bytes",
        image.len()
    );
    proxy.stop().await;
}
