//! The pull budget guard: with few counted pulls left, the mirror spends
//! them only where they buy something new, keeps every cached image
//! pulling, and tells clients exactly why a miss cannot be served.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::client::Client;
use support::hubsim::{HubSim, SimImage, SimOptions};
use support::image::{Format, Image, image};
use support::proxy::{Proxy, config};
use support::random_bytes;

const TTL: Duration = Duration::from_millis(1000);

/// The simulator's rate-limit key for clients on 127.0.0.1.
const SOURCE: &str = "127.0.0.1";

/// A mirror with a 1 s TTL and no fair share (tests of the share turn it on).
async fn proxy(
    sim: &HubSim,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut pullthrough::config::Config),
) -> Proxy {
    let mut cfg = config(&sim.registry_url, dir);
    cfg.tag_ttl = TTL;
    cfg.budget.client_share_percent = 0;
    tune(&mut cfg);
    Proxy::start(cfg).await
}

fn push(sim: &HubSim, repo: &str, seed: u64) -> SimImage {
    sim.push_image(repo, "1", &[random_bytes(2000, seed)])
}

async fn after_ttl() {
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
}

fn standing(proxy: &Proxy) -> f64 {
    proxy.metric(
        "pullthrough_upstream_budget_standing",
        &[("upstream", "docker.io")],
    )
}

#[tokio::test]
async fn a_low_budget_is_spent_only_on_new_content_and_cached_images_keep_pulling() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&sim, dir.path(), |_| {}).await;
    let client = Client::new(&proxy.url);
    let repos: Vec<String> = (0..10).map(|i| format!("library/app{i}")).collect();
    let mut images: Vec<SimImage> = repos
        .iter()
        .enumerate()
        .map(|(i, r)| push(&sim, r, i as u64))
        .collect();
    for repo in &repos {
        client.pull(repo, "1").await;
    }

    // A new window with 3 counted pulls; two tags move upstream.
    sim.new_rate_window(3);
    for i in [0, 1] {
        images[i] = push(&sim, &repos[i], 100 + i as u64);
    }
    after_ttl().await;
    sim.reset_counters();
    for _round in 0..5 {
        for (repo, image) in repos.iter().zip(&images) {
            assert_eq!(client.pull(repo, "1").await, image.manifest_digest);
        }
    }
    assert_eq!(
        sim.counters().manifest_gets,
        2,
        "one counted pull per tag that moved, none for the eight that did not"
    );
    assert_eq!(sim.rate_limit_remaining(SOURCE), 1);

    // The last pull goes to content never seen before; then none is left.
    push(&sim, "library/new1", 200);
    client.pull("library/new1", "1").await;
    assert_eq!(sim.rate_limit_remaining(SOURCE), 0);
    assert_eq!(standing(&proxy), 2.0, "the budget is known to be spent");

    // A new image is refused at once, with a reason and a Retry-After,
    // and without asking upstream.
    push(&sim, "library/new2", 201);
    let gets = sim.counters().manifest_gets;
    let refused = client.manifest("library/new2", "1").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.error_code(), "TOOMANYREQUESTS");
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let message = String::from_utf8_lossy(&refused.body).to_string();
    for needle in [
        "docker.io",
        "0 of 3 left",
        "counted for 127.0.0.1",
        "resets by",
    ] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    assert_eq!(sim.counters().manifest_gets, gets, "no GET was sent");

    // Every cached image keeps pulling, past its TTL, even one whose tag
    // moved again upstream: the mirror does not learn a digest it cannot
    // deliver, so a HEAD-first client gets the cached one.
    let moved = push(&sim, &repos[2], 300);
    after_ttl().await;
    let heads = sim.counters().manifest_heads;
    let head = client.manifest_head(&repos[2], "1").await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("docker-content-digest"),
        images[2].manifest_digest
    );
    assert_ne!(head.header("docker-content-digest"), moved.manifest_digest);
    for (repo, image) in repos.iter().zip(&images) {
        assert_eq!(client.pull(repo, "1").await, image.manifest_digest);
    }
    assert_eq!(
        sim.counters().manifest_heads,
        heads,
        "no revalidation while the budget is spent"
    );
    assert!(proxy.outcomes("reserve") >= 10);
    let avoided = proxy.metric(
        "pullthrough_pulls_avoided_total",
        &[("upstream", "docker.io"), ("reason", "reserve")],
    );
    assert!(avoided >= 10.0, "{avoided}");
    let spent = proxy.metric(
        "pullthrough_upstream_pulls_total",
        &[("upstream", "docker.io")],
    );
    assert_eq!(spent, 13.0, "10 first pulls, 2 moved tags, 1 new image");
}

/// A registry that announces no budget but answers 429 with Retry-After
/// (as ghcr.io and quay.io do).
#[tokio::test]
async fn an_upstream_429_pauses_counted_pulls_for_its_retry_after() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(1),
        retry_after: Some(2),
        no_rate_limit_headers: true,
        ..SimOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&sim, dir.path(), |_| {}).await;
    let client = Client::new(&proxy.url);
    push(&sim, "library/a", 1);
    push(&sim, "library/b", 2);
    client.pull("library/a", "1").await;

    // Upstream says 429 with Retry-After: 2, and that is what the client hears.
    let refused = client.manifest("library/b", "1").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), "2");
    let gets = sim.counters().manifest_gets;
    let again = client.manifest("library/b", "1").await;
    assert_eq!(again.status, 429);
    assert_eq!(
        sim.counters().manifest_gets,
        gets,
        "within the Retry-After nothing is asked upstream"
    );

    sim.new_rate_window(10);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client.pull("library/b", "1").await;
}

#[tokio::test]
async fn a_lone_client_is_never_refused_while_the_budget_lasts() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(3),
        ..SimOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let default_share = pullthrough::config::Config::default()
        .budget
        .client_share_percent;
    assert_eq!(default_share, 50, "fair share is on by default");
    let proxy = proxy(&sim, dir.path(), |c| {
        c.budget.client_share_percent = default_share;
    })
    .await;
    for i in 0..4 {
        push(&sim, &format!("library/lone{i}"), 40 + i);
    }
    let node = Client::new(&proxy.url);
    // Past its share of 2, with one pull left and nobody else asking: served.
    for i in 0..3 {
        node.pull(&format!("library/lone{i}"), "1").await;
    }
    assert_eq!(sim.rate_limit_remaining(SOURCE), 0);
    let spent = node.manifest("library/lone3", "1").await;
    assert_eq!(spent.status, 429, "the budget itself is spent");
    let message = String::from_utf8_lossy(&spent.body).to_string();
    assert!(!message.contains("fair share"), "{message}");
    let refusals = proxy.metric(
        "pullthrough_fair_share_refusals_total",
        &[("upstream", "docker.io")],
    );
    assert_eq!(refusals, 0.0);
}

#[tokio::test]
async fn one_client_spending_its_share_does_not_stop_another() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(10),
        ..SimOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&sim, dir.path(), |c| {
        c.budget.client_share_percent = 40;
        c.budget.reserve_percent = 30;
    })
    .await;
    let address = |ip: &str| Some(ip.parse::<IpAddr>().unwrap());
    let ci_job = Client::from_address(&proxy.url, address("127.0.0.2"));
    let node = Client::from_address(&proxy.url, address("127.0.0.3"));
    for i in 0..8 {
        push(&sim, &format!("library/img{i}"), i);
    }
    for i in 0..3 {
        node.pull(&format!("library/img{i}"), "1").await;
    }
    // Its share of 4 spent while plenty is left, the job pulls on; once
    // the budget is at its reserve with the node pulling, it is refused.
    for i in 3..7 {
        ci_job.pull(&format!("library/img{i}"), "1").await;
    }
    assert_eq!(sim.rate_limit_remaining(SOURCE), 3, "at the reserve");
    let refused = ci_job.manifest("library/img7", "1").await;
    assert_eq!(
        refused.status, 429,
        "a fifth pull is over a 40% share of 10"
    );
    assert!(refused.header("retry-after").parse::<u64>().unwrap() > 0);
    let message = String::from_utf8_lossy(&refused.body).to_string();
    assert!(
        message.contains("127.0.0.2 has spent its fair share"),
        "{message}"
    );
    assert!(message.contains("(4 per 6h)"), "{message}");

    node.pull("library/img7", "1").await;
    ci_job.pull("library/img0", "1").await;
    assert_eq!(
        proxy.metric(
            "pullthrough_fair_share_refusals_total",
            &[("upstream", "docker.io")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_low_budget_is_probed_for_free_until_it_recovers() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(2),
        ..SimOptions::default()
    })
    .await;
    push(&sim, "ratelimitpreview/test", 0);
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&sim, dir.path(), |c| {
        c.budget.probe_interval = Duration::from_millis(200);
        c.budget.backoff = Duration::from_millis(100);
    })
    .await;
    let client = Client::new(&proxy.url);
    let image = push(&sim, "library/a", 1);
    client.pull("library/a", "1").await;
    assert_eq!(
        standing(&proxy),
        0.0,
        "1 of 2 left is above the reserve (0)"
    );
    push(&sim, "library/b", 2);
    client.pull("library/b", "1").await;
    assert_eq!(standing(&proxy), 2.0, "none left");

    sim.new_rate_window(100);
    support::wait_until(|| standing(&proxy) == 0.0).await;
    let probes = sim
        .requests()
        .iter()
        .filter(|r| r.contains("HEAD /v2/ratelimitpreview/test/manifests/latest"))
        .count();
    assert!(probes >= 1);
    assert_eq!(
        sim.rate_limit_remaining(SOURCE),
        100,
        "probes are not counted"
    );

    // Revalidation resumes: a moved tag is seen again.
    let moved = push(&sim, "library/a", 3);
    after_ttl().await;
    assert_ne!(moved.manifest_digest, image.manifest_digest);
    assert_eq!(client.pull("library/a", "1").await, moved.manifest_digest);
}

/// Replicas behind one address spend one budget: what one learns, the
/// others know within the share interval, through the shared tier.
#[tokio::test]
async fn replicas_share_what_they_know_of_the_budget() {
    use support::process::Replica;
    use support::s3::{S3Server, SECRET_KEY, aws_env};

    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(1),
        ..SimOptions::default()
    })
    .await;
    let s3 = S3Server::start().await;
    s3.create_bucket("budget").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pullthrough.toml");
    std::fs::write(
        &file,
        "[budget]\nshare_interval = \"200ms\"\nclient_share_percent = 0\n",
    )
    .unwrap();
    let env = aws_env(SECRET_KEY);
    let flags = [
        "--config",
        file.to_str().unwrap(),
        "--s3-bucket",
        "budget",
        "--s3-endpoint",
        &s3.endpoint,
    ];
    let a = Replica::start(&sim.registry_url, &dir.path().join("a"), &flags, &env).await;
    let b = Replica::start(&sim.registry_url, &dir.path().join("b"), &flags, &env).await;
    push(&sim, "library/a", 1);
    push(&sim, "library/b", 2);
    Client::new(&a.url).pull("library/a", "1").await;
    assert_eq!(sim.rate_limit_remaining(SOURCE), 0);

    let labels = [("upstream", "docker.io")];
    support::wait_until_async(async || {
        b.metric("pullthrough_upstream_budget_standing", &labels)
            .await
            == 2.0
    })
    .await;
    let gets = sim.counters().manifest_gets;
    let refused = Client::new(&b.url).manifest("library/b", "1").await;
    assert_eq!(refused.status, 429);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("0 of 1 left"),
        "B knows what A learnt"
    );
    assert_eq!(sim.counters().manifest_gets, gets);
}

/// Puts a real (unpackable) single-arch image under `repo:1`.
fn push_real(sim: &HubSim, repo: &str, seed: u64) -> Image {
    let image = image(Format::Docker, "amd64", &[20_000], seed);
    sim.put_blob(image.config.clone());
    for layer in &image.layers {
        sim.put_blob(layer.clone());
    }
    sim.put_manifest(
        repo,
        Some("1"),
        Format::Docker.manifest_type(),
        image.manifest.clone(),
    );
    image
}

/// containerd resolves a tag with a HEAD and then GETs the digest: with
/// the budget spent, the mirror must not tell it a digest it cannot
/// deliver. It gets the previous image, not a 429.
#[tokio::test]
async fn containerd_pulls_the_previous_image_of_a_moved_tag_while_the_budget_is_spent() {
    use support::daemons::Containerd;

    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(1),
        ..SimOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(&sim, dir.path(), |_| {}).await;
    let before = push_real(&sim, "library/web", 1);
    let hosts = tempfile::tempdir().unwrap();
    std::fs::create_dir(hosts.path().join("docker.io")).unwrap();
    std::fs::write(
        hosts.path().join("docker.io/hosts.toml"),
        format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            proxy.url
        ),
    )
    .unwrap();
    let containerd = Containerd::start().await;
    containerd
        .pull(hosts.path(), "docker.io/library/web:1")
        .await;
    assert_eq!(sim.rate_limit_remaining(SOURCE), 0);

    let moved = push_real(&sim, "library/web", 2);
    assert_ne!(moved.digest, before.digest);
    after_ttl().await;
    let fresh = Containerd::start().await;
    fresh.pull(hosts.path(), "docker.io/library/web:1").await;
    assert_eq!(fresh.digest("docker.io/library/web:1").await, before.digest);
    assert!(proxy.outcomes("reserve") >= 1);
}
