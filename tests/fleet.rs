//! The fleet is one cache: replicas told of each other fetch each key once
//! for all of them, however clients are spread over them, and a replica
//! that is missing, killed or refused never costs more than fetching the
//! key itself. Real processes on loopback in front of the Docker Hub
//! simulator; the shared bucket is s3s-fs.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use support::client::Client;
use support::fleet::{Fleet, SECRET, url};
use support::hubsim::{HubSim, SimOptions};
use support::process::Replica;
use support::quirky_s3::{Quirk, QuirkyS3};
use support::random_bytes;
use support::registry::free_port;
use support::s3::{S3Server, SECRET_KEY, aws_env};

/// A simulator whose CDN sends each body at `bytes_per_sec`, so that
/// downloads overlap.
async fn slow_hub(bytes_per_sec: u64) -> HubSim {
    HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(bytes_per_sec),
        ..SimOptions::default()
    })
    .await
}

/// GETs `path` from `base`; the body, or why there is none (a refused or
/// aborted transfer, or another status).
async fn get(http: &reqwest::Client, base: &str, path: &str) -> Result<Bytes, String> {
    let response = http
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    response.bytes().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_clients_on_three_replicas_cost_one_download() {
    let hub = slow_hub(4 << 20).await;
    let layer = random_bytes(8 << 20, 16);
    let image = hub.push_image("library/fleet", "1", std::slice::from_ref(&layer));
    let fleet = Fleet::start(3, &hub.registry_url, &[], &[]).await;
    let path = format!("/v2/library/fleet/blobs/{}", image.layer_digests[0]);
    let http = reqwest::Client::new();
    let pulls = (0..300).map(|i| {
        let (http, path) = (http.clone(), path.clone());
        let base = fleet.replicas[i % 3].url.clone();
        async move { get(&http, &base, &path).await }
    });
    let bodies = join_all(pulls).await;
    for body in &bodies {
        assert!(
            body.as_ref().is_ok_and(|b| *b == layer),
            "{:?}",
            body.as_ref().err()
        );
    }
    let counters = hub.counters();
    assert_eq!(counters.cdn_gets, 1, "one upstream download for the fleet");
    assert!(counters.cdn_bytes <= layer.len() as u64 * 105 / 100);
    // The two replicas that do not own the layer each asked its owner once.
    let asked = fleet
        .metric(
            "pullthrough_peer_requests_sent_total",
            &[("kind", "blob"), ("result", "ok")],
        )
        .await;
    assert_eq!(asked, 2.0);
    let served = fleet
        .metric(
            "pullthrough_peer_requests_served_total",
            &[("kind", "blob")],
        )
        .await;
    assert_eq!(served, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_tag_costs_one_pull_and_its_revalidation_one_head() {
    let hub = HubSim::start().await;
    let layer = random_bytes(4096, 17);
    hub.push_image("library/fresh", "1", &[layer]);
    let fleet = Fleet::start(3, &hub.registry_url, &["--tag-ttl", "2s"], &[]).await;
    let clients: Vec<Client> = fleet.replicas.iter().map(|r| Client::new(&r.url)).collect();
    let ask_all = || {
        join_all((0..300).map(|i| {
            let client = &clients[i % 3];
            async move { client.manifest("fresh", "1").await }
        }))
    };
    let digests: Vec<String> = ask_all()
        .await
        .iter()
        .map(|a| {
            assert_eq!(a.status, 200, "{:?}", a.body);
            a.header("docker-content-digest").to_owned()
        })
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    // Each replica meets its own first 401 challenge: count what upstream
    // answered, as the fleet counts it and as the limit was charged.
    let answered = async |kind: &str| {
        let labels = [("kind", kind), ("status", "200")];
        fleet
            .metric("pullthrough_upstream_requests_total", &labels)
            .await
    };
    assert_eq!(
        100 - hub.rate_limit_remaining("127.0.0.1"),
        1,
        "one counted pull for the fleet"
    );
    assert_eq!(answered("manifest_get").await, 1.0);
    assert_eq!(
        answered("manifest_head").await,
        1.0,
        "one tag check for the fleet"
    );

    tokio::time::sleep(Duration::from_millis(2500)).await;
    for answer in ask_all().await {
        assert_eq!(answer.status, 200);
    }
    assert_eq!(
        answered("manifest_head").await,
        2.0,
        "one revalidation for the fleet"
    );
    assert_eq!(
        answered("manifest_get").await,
        1.0,
        "an unchanged tag costs no pull"
    );
    assert_eq!(100 - hub.rate_limit_remaining("127.0.0.1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_owner_killed_mid_download_costs_at_most_a_second_download() {
    let hub = slow_hub(2 << 20).await;
    let layer = random_bytes(8 << 20, 18);
    let image = hub.push_image("library/killed", "1", std::slice::from_ref(&layer));
    let mut fleet = Fleet::start(3, &hub.registry_url, &[], &[]).await;
    let path = format!("/v2/library/killed/blobs/{}", image.layer_digests[0]);
    let http = reqwest::Client::new();
    let urls: Vec<String> = fleet.replicas.iter().map(|r| r.url.clone()).collect();
    let pulls = tokio::spawn({
        let (http, path, urls) = (http.clone(), path.clone(), urls.clone());
        async move {
            let pulls = (0..30).map(|i| {
                let (http, path, base) = (http.clone(), path.clone(), urls[i % 3].clone());
                async move { (i % 3, get(&http, &base, &path).await) }
            });
            join_all(pulls).await
        }
    });
    // The owner is the replica the other two asked; kill it once a
    // second of the download has passed.
    let mut owner = None;
    for _ in 0..100 {
        for (i, replica) in fleet.replicas.iter().enumerate() {
            let served = replica
                .metric(
                    "pullthrough_peer_requests_served_total",
                    &[("kind", "blob")],
                )
                .await;
            if served >= 2.0 {
                owner = Some(i);
            }
        }
        if owner.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owner = owner.expect("two replicas asked the layer's owner");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = fleet.replicas[owner].pid();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        fleet.replicas[owner]
            .exited(Duration::from_secs(5))
            .await
            .is_some()
    );

    let survivors: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    for (served_by, body) in pulls.await.unwrap() {
        match body {
            Ok(bytes) => assert!(bytes == layer, "a complete answer has the layer's bytes"),
            // Cut off: the killed replica's own clients, or a clean abort.
            Err(e) => {
                let again = get(&http, &urls[survivors[served_by % 2]], &path).await;
                assert!(
                    again.is_ok_and(|b| b == layer),
                    "a retry after {e:?} is served"
                );
            }
        }
    }
    // The survivors' streams from the owner broke, and each asked
    // upstream for the rest of the layer from where its stream stopped.
    let broken = fleet
        .metric("pullthrough_peer_fallbacks_total", &[("reason", "broken")])
        .await;
    assert!(broken >= 2.0, "{broken} broken streams");
    let resumed = fleet
        .metric(
            "pullthrough_upstream_requests_total",
            &[("kind", "blob_resume")],
        )
        .await;
    assert!(resumed >= 2.0, "{resumed} ranged requests");
    let counters = hub.counters();
    assert!(
        counters.cdn_bytes <= 2 * layer.len() as u64,
        "upstream sent {} bytes for a layer of {}",
        counters.cdn_bytes,
        layer.len()
    );
    for i in survivors {
        assert_eq!(
            get(&http, &urls[i], &path).await.ok(),
            Some(layer.clone()),
            "replica {i} has the layer: {}",
            fleet.log(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_does_not_exist_costs_nothing_but_its_probe() {
    let hub = HubSim::start().await;
    let layers = [random_bytes(300_000, 19), random_bytes(200_000, 20)];
    hub.push_image("library/lonely", "1", &layers);
    let (me, ghost) = (free_port(), free_port());
    let fleet =
        Fleet::start_listing(&[me], &[url(me), url(ghost)], &hub.registry_url, &[], &[]).await;
    Client::new(&fleet.replicas[0].url)
        .pull("lonely", "1")
        .await;
    let counters = hub.counters();
    assert_eq!(100 - hub.rate_limit_remaining("127.0.0.1"), 1);
    assert_eq!(counters.cdn_gets, 3, "config and two layers, once each");
    let down = fleet
        .metric("pullthrough_cluster_members", &[("state", "down")])
        .await;
    assert_eq!(down, 1.0, "the missing member is seen down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_path_answers_only_the_cluster_secret() {
    let hub = HubSim::start().await;
    let layer = random_bytes(1000, 21);
    let image = hub.push_image("library/guarded", "1", &[layer]);
    let fleet = Fleet::start(1, &hub.registry_url, &[], &[]).await;
    let base = &fleet.replicas[0].url;
    let http = reqwest::Client::new();
    let blob = format!(
        "{base}/_pullthrough/peer/v2/library/guarded/blobs/{}?ns=docker.io",
        image.layer_digests[0]
    );
    let before = hub.counters().total;
    for auth in [
        None,
        Some("Bearer wrong-secret-0123456789"),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        let mut request = http.get(&blob);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }
    assert_eq!(
        hub.counters().total,
        before,
        "a refused peer request reaches no upstream"
    );
    let allowed = http.get(&blob).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(allowed.status(), 200);

    // A replica without peers has no peer path at all.
    let dir = tempfile::tempdir().unwrap();
    let alone = Replica::start(&hub.registry_url, &dir.path().join("alone"), &[], &[]).await;
    let hello = format!("{}/_pullthrough/peer/hello", alone.url);
    let response = http.get(&hello).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_bucket_a_layer_just_fetched_elsewhere_costs_no_second_download() {
    let hub = slow_hub(16 << 20).await;
    let s3 = S3Server::start().await;
    s3.create_bucket("fleet-cache").await;
    let layer = random_bytes(24 << 20, 22);
    hub.push_image("library/bucketed", "1", &[layer]);
    let flags = ["--s3-bucket", "fleet-cache", "--s3-endpoint", &s3.endpoint];
    let fleet = Fleet::start(2, &hub.registry_url, &flags, &aws_env(SECRET_KEY)).await;
    // A pulls the image; B pulls it the moment A is done, whether or not
    // A's (or the owner's) upload to the bucket has finished.
    Client::new(&fleet.replicas[0].url)
        .pull("bucketed", "1")
        .await;
    Client::new(&fleet.replicas[1].url)
        .pull("bucketed", "1")
        .await;
    let counters = hub.counters();
    assert_eq!(
        counters.cdn_gets, 2,
        "config and layer, once each for the fleet"
    );
    assert_eq!(100 - hub.rate_limit_remaining("127.0.0.1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_and_doctor_name_each_member_and_its_state() {
    let hub = HubSim::start().await;
    let (me, ghost) = (free_port(), free_port());
    let members = [url(me), url(ghost)];
    let fleet = Fleet::start_listing(&[me], &members, &hub.registry_url, &[], &[]).await;
    let status = format!("{}/ui/status.json", url(me));
    let seen = async || {
        let json: serde_json::Value = reqwest::get(&status).await.unwrap().json().await.unwrap();
        let mut states: Vec<String> = json["fleet"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{} {}",
                    m["url"].as_str().unwrap(),
                    m["state"].as_str().unwrap()
                )
            })
            .collect();
        states.sort();
        let mut expected = [format!("{} self", url(me)), format!("{} down", url(ghost))];
        expected.sort();
        states == expected
    };
    support::wait_until_async(seen).await;
    let page = reqwest::get(format!("{}/ui", url(me)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h2>Fleet</h2>") && page.contains(&url(ghost)));

    let peers = members.join(",");
    let mut doctor = std::process::Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    doctor
        .args([
            "doctor",
            "--only",
            "docker.io",
            "--peers",
            &peers,
            "--advertise",
            &url(me),
        ])
        .arg("--upstream")
        .arg(format!("docker.io={}", hub.registry_url))
        .arg("--data-dir")
        .arg(fleet.dir.path().join("doctor"))
        .env("PULLTHROUGH_CLUSTER_SECRET", SECRET);
    let output = support::process::run_to_end(doctor, Duration::from_secs(60)).await;
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a member down fails the doctor:\n{out}"
    );
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line(&format!("{} peer", url(me))).starts_with('✓'), "{out}");
    assert!(
        line(&format!("{} peer", url(ghost))).starts_with('✗'),
        "{out}"
    );
    assert!(line("cluster            self").starts_with('✓'), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_ignores_conditional_writes_keeps_every_object_whole() {
    let hub = slow_hub(8 << 20).await;
    let s3 = S3Server::start().await;
    s3.create_bucket("garage").await;
    let store = QuirkyS3::start(&s3, Quirk::IgnoresConditionalWrites).await;
    // Two replicas that cannot ask each other (as when the owner is
    // unreachable) fetch and upload the same image at once, small
    // objects and a multipart layer alike; the store overwrites.
    let layer = random_bytes(20 << 20, 23);
    hub.push_image("library/garage", "1", &[layer]);
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--s3-bucket", "garage", "--s3-endpoint", &store.endpoint];
    let env = aws_env(SECRET_KEY);
    let a = Replica::start(&hub.registry_url, &dir.path().join("a"), &flags, &env).await;
    let b = Replica::start(&hub.registry_url, &dir.path().join("b"), &flags, &env).await;
    let (to_a, to_b) = (Client::new(&a.url), Client::new(&b.url));
    let (first, second) = tokio::join!(to_a.pull("garage", "1"), to_b.pull("garage", "1"));
    assert_eq!(first, second);
    let uploaded = async || s3.keys("garage", "blobs/").await.len() == 2;
    support::wait_until_async(uploaded).await;
    // Both replicas downloaded the layer at once, and both uploaded it;
    // the last write lands some time after the first.
    // The store settles (no request in flight, parts included, and none
    // for 2 s), and the replicas stop: no write of theirs lands while the
    // fleet reads.
    support::wait_until_async(async || store.bent() >= 2).await;
    store.settled(Duration::from_secs(2)).await;
    drop((a, b));

    // A fleet on the same store reads everything back, whole: an object
    // concurrent overwrites left damaged (such a store allows it) is
    // found, deleted and fetched again, and nothing else is fetched.
    hub.reset_counters();
    let fleet = Fleet::start(2, &hub.registry_url, &flags, &env).await;
    for replica in &fleet.replicas {
        assert_eq!(Client::new(&replica.url).pull("garage", "1").await, first);
    }
    let healed = fleet
        .metric("pullthrough_cache_corrupt_total", &[("tier", "s3")])
        .await;
    // A damaged tag record or manifest (it fails the store's checksum) is
    // counted too, and costs no blob fetch.
    let fetched = hub.counters().cdn_gets as f64;
    assert!(
        fetched <= healed,
        "only damaged objects were fetched again: {fetched} blobs, {healed} damaged"
    );
    let whole = async || {
        let keys = s3.keys("garage", "blobs/").await;
        let mut all = keys.len() == 2;
        for key in keys {
            let hex = key.rsplit('/').next().unwrap().to_owned();
            all &= support::sha256_digest(&s3.get("garage", &key).await) == format!("sha256:{hex}");
        }
        all
    };
    support::wait_until_async(whole).await;
}
