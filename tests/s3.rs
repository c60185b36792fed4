//! The shared S3 tier against a real S3 API (s3s-fs): replicas with
//! separate disks act as one cache, share tag state, survive an S3 outage,
//! and refuse to start with wrong credentials; blobs are read back in
//! parallel ranged parts, verified, and read whole from a store that
//! ignores ranges.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::client::Client;
use support::hubsim::HubSim;
use support::process::{Replica, run_to_end, serve_command};
use support::quirky_s3::{Quirk, QuirkyS3};
use support::s3::{S3Server, SECRET_KEY, aws_env};
use support::{random_bytes, sha256_digest, wait_until_async};

const BUCKET: &str = "pullthrough-cache";
const PREFIX: &str = "cluster-a/";

/// A replica on the shared bucket, with its own data directory.
async fn replica(sim: &HubSim, s3: &S3Server, data: &Path, tag_ttl: &str) -> Replica {
    replica_at(sim, &s3.endpoint, data, &["--tag-ttl", tag_ttl]).await
}

/// A replica on the shared bucket through S3 `endpoint`, with `extra` flags.
async fn replica_at(sim: &HubSim, endpoint: &str, data: &Path, extra: &[&str]) -> Replica {
    let mut flags = vec![
        "--s3-bucket",
        BUCKET,
        "--s3-endpoint",
        endpoint,
        "--s3-prefix",
        PREFIX,
    ];
    flags.extend_from_slice(extra);
    Replica::start(&sim.registry_url, data, &flags, &aws_env(SECRET_KEY)).await
}

/// Where a blob lives, under the bucket prefix or a disk tier's `cache/`.
fn blob_path(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

/// Ranged part GETs a replica has made.
async fn part_reads(replica: &Replica) -> f64 {
    replica.metric("pullthrough_s3_part_reads_total", &[]).await
}

struct Cluster {
    sim: HubSim,
    s3: S3Server,
    a: Replica,
    b: Replica,
    _dir: tempfile::TempDir,
}

async fn cluster(tag_ttl: &str) -> Cluster {
    let sim = HubSim::start().await;
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&sim, &s3, &dir.path().join("a"), tag_ttl).await;
    let b = replica(&sim, &s3, &dir.path().join("b"), tag_ttl).await;
    Cluster {
        sim,
        s3,
        a,
        b,
        _dir: dir,
    }
}

impl Cluster {
    async fn blob_keys(&self) -> Vec<String> {
        self.s3.keys(BUCKET, &format!("{PREFIX}blobs/")).await
    }

    /// Pulls a one-layer image through replica A and waits until its two
    /// blobs are in the bucket; returns the layer's digest.
    async fn fill_bucket(&self, repo: &str, layer: Bytes) -> String {
        let image = self
            .sim
            .push_image(&format!("library/{repo}"), "1", &[layer]);
        Client::new(&self.a.url).pull(repo, "1").await;
        let before = self.blob_keys().await.len();
        wait_until_async(async || self.blob_keys().await.len() >= before.max(2)).await;
        let key = format!("{PREFIX}{}", blob_path(&image.layer_digests[0]));
        wait_until_async(async || self.blob_keys().await.contains(&key)).await;
        image.layer_digests[0].clone()
    }
}

#[tokio::test]
async fn a_pull_through_one_replica_serves_the_other_with_no_upstream_request() {
    let c = cluster("5m").await;
    // 20 MB goes up in multipart; the small ones in one PUT.
    let image = c.sim.push_image(
        "library/shared",
        "1",
        &[random_bytes(20_000_000, 1), random_bytes(5_000, 2)],
    );
    assert_eq!(
        Client::new(&c.a.url).pull("shared", "1").await,
        image.manifest_digest
    );
    wait_until_async(async || c.blob_keys().await.len() == 3).await;

    c.sim.reset_counters();
    // A blob HEAD on a replica without the blob is answered from the bucket.
    let layer = &image.layer_digests[0];
    let head = Client::new(&c.b.url)
        .send(
            "HEAD",
            &format!("/v2/library/shared/blobs/{layer}"),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, "20000000")
    );
    assert_eq!(
        Client::new(&c.b.url).pull("shared", "1").await,
        image.manifest_digest
    );
    assert_eq!(
        c.sim.counters().total,
        0,
        "B found everything in the bucket"
    );
    assert!(
        c.b.metric("pullthrough_requests_total", &[("outcome", "hit-s3")])
            .await
            >= 3.0
    );
    for key in c.blob_keys().await {
        let bytes = c.s3.get(BUCKET, &key).await;
        let hex = key.rsplit('/').next().unwrap();
        assert_eq!(
            support::sha256_digest(&bytes),
            format!("sha256:{hex}"),
            "{key} holds verified bytes"
        );
    }
    assert_eq!(c.a.health().await.unwrap()["s3"], "ok");
}

#[tokio::test]
async fn simultaneous_cold_pulls_through_two_replicas_store_one_object_per_digest() {
    let c = cluster("5m").await;
    let image = c.sim.push_image(
        "library/race",
        "1",
        &[random_bytes(12_000_000, 3), random_bytes(1_000, 4)],
    );
    let (a, b) = (Client::new(&c.a.url), Client::new(&c.b.url));
    let (from_a, from_b) = tokio::join!(a.pull("race", "1"), b.pull("race", "1"));
    assert_eq!(
        (from_a, from_b),
        (image.manifest_digest.clone(), image.manifest_digest.clone())
    );
    wait_until_async(async || c.blob_keys().await.len() == 3).await;
    let mut keys = c.blob_keys().await;
    keys.dedup();
    assert_eq!(keys.len(), 3, "one object per digest: {keys:?}");
    let manifests = c.s3.keys(BUCKET, &format!("{PREFIX}manifests/")).await;
    assert_eq!(manifests.len(), 1);
}

#[tokio::test]
async fn replicas_revalidate_a_tag_once_per_ttl_between_them() {
    let c = cluster("1s").await;
    c.sim
        .push_image("library/ttl", "1", &[random_bytes(100, 5)]);
    let (a, b) = (Client::new(&c.a.url), Client::new(&c.b.url));
    a.pull("ttl", "1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.pull("ttl", "1").await;
    assert_eq!(
        c.sim.counters().manifest_heads - c.sim.counters().unauthorized.min(1),
        1,
        "B took A's answer"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.sim.reset_counters();
    a.manifest("ttl", "1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.manifest("ttl", "1").await;
    let counters = c.sim.counters();
    assert_eq!(
        counters.manifest_heads, 1,
        "one revalidation for both replicas"
    );
    assert_eq!(counters.manifest_gets, 0);
}

#[tokio::test]
async fn pulls_keep_working_while_s3_is_down_and_the_bucket_catches_up() {
    let mut c = cluster("5m").await;
    let before = c
        .sim
        .push_image("library/before", "1", &[random_bytes(1_000, 6)]);
    let during = c
        .sim
        .push_image("library/during", "1", &[random_bytes(2_000, 7)]);
    let (a, b) = (Client::new(&c.a.url), Client::new(&c.b.url));
    a.pull("before", "1").await;
    wait_until_async(async || c.blob_keys().await.len() == 2).await;

    c.s3.stop();
    assert_eq!(
        a.pull("during", "1").await,
        during.manifest_digest,
        "a cold pull goes upstream"
    );
    assert_eq!(
        a.pull("before", "1").await,
        before.manifest_digest,
        "a warm pull is local"
    );
    assert_eq!(
        b.pull("before", "1").await,
        before.manifest_digest,
        "B falls back to upstream"
    );
    assert_eq!(c.a.health().await.unwrap()["status"], "degraded");
    assert_eq!(c.a.metric("pullthrough_s3_degraded", &[]).await, 1.0);

    c.s3.resume().await;
    // The blobs A fetched during the outage reach the bucket without help.
    wait_until_async(async || c.blob_keys().await.len() == 4).await;
    assert_eq!(c.a.health().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn wrong_s3_credentials_stop_start_up_with_a_clear_error() {
    let sim = HubSim::start().await;
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--s3-bucket", BUCKET, "--s3-endpoint", &s3.endpoint];
    let (command, _) = serve_command(
        &sim.registry_url,
        dir.path(),
        &flags,
        &aws_env("not-the-secret"),
    );
    let output = run_to_end(command, Duration::from_secs(30)).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(BUCKET) && stderr.contains("credentials"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-the-secret"),
        "the secret is never printed"
    );
}

#[tokio::test]
async fn a_replica_reads_a_large_blob_from_the_bucket_in_parallel_ranged_parts() {
    let c = cluster("5m").await;
    let layer = random_bytes(30_000_000, 11);
    let digest = c.fill_bucket("parts", layer.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pullthrough.toml");
    std::fs::write(
        &config,
        "[s3]\nread_part_size = \"1MiB\"\nread_concurrency = 4\n",
    )
    .unwrap();
    let r = replica_at(
        &c.sim,
        &c.s3.endpoint,
        &dir.path().join("r"),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    c.sim.reset_counters();

    let client = Client::new(&r.url);
    let answer = client.blob("library/parts", &digest).await.unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body == layer, "the blob's bytes, in order");
    let parts = 30_000_000u64.div_ceil(1024 * 1024) as f64;
    assert_eq!(part_reads(&r).await, parts, "one ranged GET per 1 MiB part");
    assert_eq!(
        r.metric("pullthrough_requests_total", &[("outcome", "hit-s3")])
            .await,
        1.0
    );
    assert_eq!(c.sim.counters().total, 0, "nothing went upstream");

    // Verified and kept locally: the next GET reads no part again.
    let local = dir.path().join("r/cache").join(blob_path(&digest));
    wait_until_async(async || local.is_file()).await;
    let again = client.blob("library/parts", &digest).await.unwrap();
    assert_eq!(again.body_digest(), digest);
    assert_eq!(part_reads(&r).await, parts);
}

#[tokio::test]
async fn a_corrupted_object_in_the_bucket_fails_verification_and_is_never_kept() {
    let c = cluster("5m").await;
    let digest = c.fill_bucket("corrupt", random_bytes(5_000_000, 12)).await;
    // s3s-fs keeps the object as a plain file: damage a later part of it.
    let file =
        c.s3.object_file(BUCKET, &format!("{PREFIX}{}", blob_path(&digest)));
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 5_000_000);
    for b in &mut bytes[3_000_000..3_000_100] {
        *b ^= 0xFF;
    }
    std::fs::write(&file, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let flags = ["--s3-read-part-size", "1MiB"];
    let r = replica_at(&c.sim, &c.s3.endpoint, &dir.path().join("r"), &flags).await;
    let client = Client::new(&r.url);
    let first = client.blob("library/corrupt", &digest).await;
    assert!(
        first.is_err(),
        "the client's body breaks off instead of completing with bad bytes"
    );
    assert!(part_reads(&r).await >= 5.0, "it was read in ranged parts");
    assert_eq!(
        r.metric("pullthrough_digest_mismatches_total", &[]).await,
        1.0
    );
    let local = dir.path().join("r/cache").join(blob_path(&digest));
    assert!(!local.exists(), "nothing is cached locally");

    // The damaged object was deleted from the bucket and counted, so the
    // next request fetches a good copy from upstream, and the one after
    // that is a hit.
    let corrupt = r
        .metric("pullthrough_cache_corrupt_total", &[("tier", "s3")])
        .await;
    assert_eq!(corrupt, 1.0);
    assert!(
        !c.blob_keys()
            .await
            .iter()
            .any(|k| k.ends_with(blob_path(&digest).as_str()))
    );
    let next = client.blob("library/corrupt", &digest).await.unwrap();
    assert_eq!((next.status, next.body_digest()), (200, digest.clone()));
    support::wait_until_async(async || local.is_file()).await;
    let downloads = c.sim.counters().cdn_gets;
    let after = client.blob("library/corrupt", &digest).await.unwrap();
    assert_eq!((after.status, after.body_digest()), (200, digest.clone()));
    assert_eq!(c.sim.counters().cdn_gets, downloads, "a hit");
    assert_eq!(sha256_digest(&std::fs::read(&local).unwrap()), digest);
}

#[tokio::test]
async fn a_corrupted_manifest_in_the_bucket_is_deleted_and_fetched_again_in_the_same_request() {
    let c = cluster("5m").await;
    // Damaged two ways: replaced through the S3 API by bytes that are not
    // the manifest, and edited under s3s-fs so that it fails the checksum
    // the store keeps for it (which is damage, not an outage).
    for (n, edit_file) in [(1, false), (2, true)] {
        let repo = format!("library/badmanifest{n}");
        let image = c.sim.push_image(&repo, "1", &[random_bytes(1000, 14 + n)]);
        Client::new(&c.a.url).pull(&repo[8..], "1").await;
        let key = format!(
            "{PREFIX}manifests/sha256/{}/{}",
            &image.manifest_digest[7..9],
            &image.manifest_digest[7..]
        );
        support::wait_until_async(async || c.s3.keys(BUCKET, &key).await.len() == 1).await;
        let mut bytes = c.s3.get(BUCKET, &key).await.to_vec();
        bytes[10] ^= 0x20;
        if edit_file {
            std::fs::write(c.s3.object_file(BUCKET, &key), &bytes).unwrap();
        } else {
            c.s3.put(BUCKET, &key, bytes.into()).await;
        }

        let answer = Client::new(&c.b.url)
            .manifest(&repo, &image.manifest_digest)
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body_digest(),
            image.manifest_digest,
            "a good copy, in the same request"
        );
        let corrupt =
            c.b.metric("pullthrough_cache_corrupt_total", &[("tier", "s3")])
                .await;
        assert_eq!(corrupt, n as f64);
        // Deleted, and replaced by the good copy fetched.
        let healed = async || {
            c.s3.keys(BUCKET, &key).await.len() == 1
                && c.s3.get(BUCKET, &key).await == image.manifest
        };
        support::wait_until_async(healed).await;
        assert_eq!(c.b.health().await.unwrap()["s3"], "ok", "not degraded");
    }
}

#[tokio::test]
async fn a_store_that_ignores_ranges_is_read_in_one_stream() {
    let c = cluster("5m").await;
    let layer = random_bytes(6_000_000, 13);
    let digest = c.fill_bucket("rangeless", layer.clone()).await;
    let proxy = QuirkyS3::start(&c.s3, Quirk::IgnoresRange).await;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--s3-read-part-size", "1MiB"];
    let r = replica_at(&c.sim, &proxy.endpoint, &dir.path().join("r"), &flags).await;
    c.sim.reset_counters();

    let answer = Client::new(&r.url)
        .blob("library/rangeless", &digest)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body == layer, "the blob's bytes");
    assert_eq!(proxy.bent(), 1, "one ranged GET, answered whole");
    assert_eq!(part_reads(&r).await, 0.0, "no part was read as a range");
    assert_eq!(c.sim.counters().total, 0, "nothing went upstream");
    assert_eq!(r.health().await.unwrap()["s3"], "ok");
}

#[tokio::test]
async fn an_empty_blob_in_the_bucket_is_served() {
    let c = cluster("5m").await;
    let empty = sha256_digest(b"");
    c.s3.put(
        BUCKET,
        &format!("{PREFIX}{}", blob_path(&empty)),
        Bytes::new(),
    )
    .await;
    let answer = Client::new(&c.b.url)
        .blob("library/empty", &empty)
        .await
        .unwrap();
    assert_eq!((answer.status, answer.body.len()), (200, 0));
    assert_eq!(answer.body_digest(), empty);
    assert_eq!(c.sim.counters().total, 0, "found in the bucket");
    assert_eq!(c.b.health().await.unwrap()["s3"], "ok");
}

/// A referrers answer one replica got is in the bucket, and the other
/// replica serves it without asking upstream.
#[tokio::test]
async fn a_referrers_answer_is_shared_through_the_bucket() {
    use support::artifact::{OCI_MANIFEST, artifact};
    use support::hubsim::SimOptions;
    use support::image::{Format, image};

    let sim = HubSim::start_with(SimOptions {
        referrers_api: true,
        ..SimOptions::default()
    })
    .await;
    let app = image(Format::Oci, "amd64", &[1_000], 62);
    sim.put_manifest("org/app", Some("1"), OCI_MANIFEST, app.manifest.clone());
    let sig = artifact(
        OCI_MANIFEST,
        &app.manifest,
        "application/vnd.example.sig",
        1,
    );
    let sig_digest = sim.put_manifest("org/app", None, OCI_MANIFEST, sig);
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&sim, &s3, &dir.path().join("a"), "5m").await;
    let b = replica(&sim, &s3, &dir.path().join("b"), "5m").await;
    let path = format!("/v2/org/app/referrers/{}", app.digest);

    let first = Client::new(&a.url).get(&path).await;
    assert_eq!(first.status, 200);
    assert!(String::from_utf8_lossy(&first.body).contains(&sig_digest));
    let shared = format!("{PREFIX}tags/referrers/");
    wait_until_async(async || s3.keys(BUCKET, &shared).await.len() == 1).await;
    sim.reset_counters();
    let second = Client::new(&b.url).get(&path).await;
    assert_eq!(second.body, first.body);
    assert_eq!(sim.counters().total, 0, "{:?}", sim.requests());
}

/// Upstream breaking a download off more often than its resumes allow
/// does not fail a blob the bucket holds: the rest comes from the bucket,
/// even while this replica skips the bucket after a failure.
#[tokio::test]
async fn a_download_upstream_breaks_off_is_finished_from_the_bucket() {
    use support::faulty_s3::{FaultyS3, S3Fault};
    use support::hubsim::{Fault, FaultTarget};

    let sim = HubSim::start().await;
    let layer = random_bytes(6 << 20, 63);
    let digest = sim.put_blob(layer.clone());
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let faulty = FaultyS3::start(&s3).await;
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&sim, &s3, &dir.path().join("a"), "5m").await;
    let b = replica_at(&sim, &faulty.endpoint, &dir.path().join("b"), &[]).await;
    let got = Client::new(&a.url)
        .blob("library/x", &digest)
        .await
        .unwrap();
    assert_eq!(got.body_digest(), digest);
    let key = format!("{PREFIX}{}", blob_path(&digest));
    wait_until_async(async || s3.keys(BUCKET, &key).await.contains(&key)).await;

    // B's bucket fails once, so B skips it and goes upstream, which then
    // resets every body (more often than B resumes).
    faulty.set(S3Fault::Failing);
    let unknown = format!("sha256:{}", "0".repeat(64));
    let missing = Client::new(&b.url)
        .blob("library/x", &unknown)
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    faulty.set(S3Fault::None);
    assert_eq!(
        b.metric("pullthrough_s3_degraded", &[]).await,
        1.0,
        "skipped"
    );
    sim.set_fault(FaultTarget::Blobs, Fault::ResetMidBody, Some(10));
    let before = sim.counters().cdn_gets;

    let got = Client::new(&b.url)
        .blob("library/x", &digest)
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body_digest(), digest, "whole and right");
    assert!(sim.counters().cdn_gets > before, "upstream was tried first");
    assert!(part_reads(&b).await >= 1.0, "the rest came from the bucket");
}
