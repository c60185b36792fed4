//! The Grafana dashboard in `deploy/` asks only for metrics pullthrough
//! exports: every metric name in its PromQL is found in `/metrics` of a
//! running proxy after traffic that fills every series the dashboard
//! reads (pulls, repeats, an eviction). And the dashboard covers what the
//! operations issue asks a dashboard to show.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use support::client::Client;
use support::hubsim::HubSim;
use support::proxy::{self, Proxy};
use support::random_bytes;

const DASHBOARD: &str = include_str!("../deploy/grafana-dashboard.json");

/// Every `expr` in the dashboard, wherever it is nested.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `pullthrough_*` names a query uses.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("pullthrough_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The names `/metrics` exports samples for (a histogram's `_bucket`,
/// `_sum` and `_count` each), plus each histogram's own name.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            names.insert(typed.split(' ').next().unwrap_or("").to_owned());
        } else if !line.starts_with('#') {
            names.insert(line.split(['{', ' ']).next().unwrap_or("").to_owned());
        }
    }
    names
}

#[test]
fn every_panel_has_a_query_and_the_issue_is_covered() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for panel in panels {
        let mut found = Vec::new();
        queries(panel, &mut found);
        assert!(!found.is_empty(), "panel {} has no query", panel["title"]);
    }
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    let used: BTreeSet<String> = all.iter().flat_map(|q| metric_names(q)).collect();
    for needed in [
        "pullthrough_requests_total",
        "pullthrough_served_bytes_total",
        "pullthrough_cache_bytes",
        "pullthrough_cache_objects",
        "pullthrough_cache_evictions_total",
        "pullthrough_pulls_avoided_total",
        "pullthrough_upstream_pulls_total",
        "pullthrough_upstream_request_duration_seconds_bucket",
        "pullthrough_downloads_active",
        "pullthrough_download_clients",
        "pullthrough_upstream_ratelimit_remaining",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy::config(&sim.registry_url, dir.path());
    // A disk tier of one MiB and short protection, so four images of half
    // a MiB each evict something.
    config.memory.max_bytes = ByteSize::kib(64);
    config.memory.max_object_bytes = ByteSize::kib(16);
    config.disk.max_bytes = Some(ByteSize::mib(1));
    config.disk.pull_hold = Duration::from_millis(200);
    config.tag_ttl = Duration::from_millis(200);
    let proxy = Proxy::start(config).await;
    let client = Client::new(&proxy.url);
    for n in 0..4u64 {
        let layers: Vec<Bytes> = (0..2)
            .map(|i| random_bytes(256 * 1024, n * 10 + i))
            .collect();
        let repo = format!("library/app{n}");
        sim.push_image(&repo, "v1", &layers);
        client.pull(&repo, "v1").await;
        // Pulled again at once: a pull saved.
        client.pull(&repo, "v1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    support::wait_until_async(async || {
        proxy.metric("pullthrough_cache_evictions_total", &[]) > 0.0
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", proxy.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = exported(&metrics);
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    assert!(!all.is_empty());
    for query in &all {
        let names = metric_names(query);
        assert!(
            !names.is_empty(),
            "a query reads no pullthrough metric: {query}"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{name} (in {query}) is not in /metrics:\n{metrics}"
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_download_gauges_count_one_download_and_each_client_of_it() {
    let sim = HubSim::start_with(support::hubsim::SimOptions {
        cdn_bytes_per_sec: Some(1024 * 1024),
        ..Default::default()
    })
    .await;
    let digest = sim.put_blob(random_bytes(1536 * 1024, 7));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(proxy::config(&sim.registry_url, dir.path())).await;
    let pulls: Vec<_> = (0..3)
        .map(|_| {
            let (client, digest) = (Client::new(&proxy.url), digest.clone());
            tokio::spawn(async move { client.blob("library/big", &digest).await.unwrap() })
        })
        .collect();
    let gauges = || {
        let text = proxy.state.metrics.render();
        (
            support::metric_sum(&text, "pullthrough_downloads_active", &[]),
            support::metric_sum(&text, "pullthrough_download_clients", &[]),
        )
    };
    // All three stream from the one download while it is under way.
    support::wait_until(|| gauges() == (1.0, 3.0)).await;
    for pull in pulls {
        let answer = pull.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body_digest(), digest);
    }
    support::wait_until(|| gauges() == (0.0, 0.0)).await;
    proxy.stop().await;
}
