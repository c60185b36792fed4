//! Warm blobs sent to the bucket (`s3.redirect`): a blob GET for a blob the
//! bucket holds is answered with a redirect to a presigned URL that works
//! without any other credentials, on a real S3 API (s3s-fs) reached at
//! another host (a tap on 127.0.0.2 that records what reached it). And
//! every case where a redirect would be wrong streams as before: redirects
//! off, a HEAD, a small blob, a blob whose upload is still running, a
//! degraded bucket, credentials about to expire.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::client::{Answer, Client};
use support::credentials::CredentialsEndpoint;
use support::faulty_s3::{FaultyS3, S3Fault};
use support::hubsim::HubSim;
use support::process::Replica;
use support::s3::{S3Server, SECRET_KEY, aws_env};
use support::tap::BucketTap;
use support::{random_bytes, sha256_digest, wait_until_async};

const BUCKET: &str = "pullthrough-cache";
const PREFIX: &str = "mirror/";
const REPO: &str = "library/app";

struct World {
    sim: HubSim,
    s3: S3Server,
    tap: BucketTap,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let sim = HubSim::start().await;
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let tap = BucketTap::start(&s3.endpoint).await;
    World {
        sim,
        s3,
        tap,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl World {
    /// A replica named `name` on the bucket through `endpoint`, presigning
    /// for the tap, with `extra` flags and the test S3's static keys (or
    /// the environment `env`).
    async fn replica_via(
        &self,
        name: &str,
        endpoint: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Replica {
        let mut flags = vec![
            "--s3-bucket",
            BUCKET,
            "--s3-endpoint",
            endpoint,
            "--s3-prefix",
            PREFIX,
            "--s3-public-endpoint",
            &self.tap.endpoint,
        ];
        flags.extend_from_slice(extra);
        let env = if env.is_empty() {
            aws_env(SECRET_KEY)
        } else {
            env.to_vec()
        };
        let data = self.dir.path().join(name);
        Replica::start(&self.sim.registry_url, &data, &flags, &env).await
    }

    async fn replica(&self, name: &str, extra: &[&str]) -> Replica {
        self.replica_via(name, &self.s3.endpoint.clone(), extra, &[])
            .await
    }

    /// Waits until the bucket holds blob `digest` (uploads follow downloads).
    async fn until_in_bucket(&self, digest: &str) {
        let key = blob_key(digest);
        wait_until_async(async || self.s3.keys(BUCKET, &key).await.contains(&key)).await;
    }
}

fn blob_key(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{PREFIX}blobs/sha256/{}/{hex}", &hex[..2])
}

async fn get(replica: &Replica, digest: &str) -> Answer {
    Client::new(&replica.url).blob(REPO, digest).await.unwrap()
}

async fn send(replica: &Replica, method: &str, digest: &str, range: Option<&str>) -> Answer {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(range) = range {
        headers.insert("range", range.parse().unwrap());
    }
    let path = format!("/v2/{REPO}/blobs/{digest}");
    Client::new(&replica.url)
        .send(method, &path, headers)
        .await
        .unwrap()
}

/// Follows a redirect as a client does: a plain GET of the URL, with no
/// credentials of any kind, and the client's `Range`.
async fn follow(location: &str, range: Option<&str>) -> (u16, Bytes) {
    let mut request = reqwest::Client::new().get(location);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.bytes().await.unwrap())
}

async fn redirected(replica: &Replica) -> f64 {
    let labels = [("via", "redirect")];
    replica
        .metric("pullthrough_blob_answers_total", &labels)
        .await
}

async fn streamed(replica: &Replica) -> f64 {
    let labels = [("via", "stream")];
    replica
        .metric("pullthrough_blob_answers_total", &labels)
        .await
}

fn assert_streamed(answer: &Answer, bytes: &Bytes) {
    assert_eq!(answer.status, 200, "{:?}", answer.headers);
    assert!(answer.headers.get("location").is_none());
    assert_eq!(answer.body, *bytes);
}

#[tokio::test]
async fn warm_blobs_go_from_the_bucket_and_everything_else_as_before() {
    let w = world().await;
    let layer = random_bytes(3 << 20, 1);
    let small = random_bytes(100 << 10, 2);
    let digest = w.sim.put_blob(layer.clone());
    let small_digest = w.sim.put_blob(small.clone());
    let a = w.replica("a", &["--s3-redirect"]).await;

    // Cold: not in the bucket yet, so streamed while it is fetched.
    assert_streamed(&get(&a, &digest).await, &layer);
    w.until_in_bucket(&digest).await;

    // Warm: sent to the bucket, at the other host, with the digest.
    let answer = get(&a, &digest).await;
    assert_eq!(answer.status, 307, "{:?}", answer.headers);
    assert_eq!(answer.header("docker-content-digest"), digest);
    let location = answer.header("location").to_owned();
    assert!(location.starts_with(&w.tap.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let (status, body) = follow(&location, None).await;
    assert_eq!((status, sha256_digest(&body)), (200, digest.clone()));

    // A range is asked of the bucket as it was of the mirror.
    let answer = send(&a, "GET", &digest, Some("bytes=1000-1999")).await;
    assert_eq!(answer.status, 307);
    // The URL is signed once and handed out again while it has time left.
    assert_eq!(answer.header("location"), location);
    let (status, body) = follow(answer.header("location"), Some("bytes=1000-1999")).await;
    assert_eq!((status, body), (206, layer.slice(1000..2000)));

    // A HEAD and a small blob are answered by the mirror itself.
    let head = send(&a, "HEAD", &digest, None).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), layer.len().to_string());
    assert!(head.headers.get("location").is_none());
    assert_streamed(&get(&a, &small_digest).await, &small);
    w.until_in_bucket(&small_digest).await;
    assert_streamed(&get(&a, &small_digest).await, &small);

    // What reached the bucket: the two GETs above, never a credential.
    let key = blob_key(&digest);
    let gets = w.tap.gets();
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(gets.iter().all(|g| g.contains(&key)), "{gets:#?}");
    assert!(w.tap.with_authorization().is_empty());
    assert_eq!((redirected(&a).await, streamed(&a).await), (2.0, 3.0));
    let bytes = a
        .metric(
            "pullthrough_blob_answer_bytes_total",
            &[("via", "redirect")],
        )
        .await;
    assert_eq!(bytes, (layer.len() + 1000) as f64);
    // The status page's share of blob bytes the bucket sent.
    let status: serde_json::Value = reqwest::get(format!("{}/ui/status.json", a.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = &status["blob_bytes"];
    assert_eq!(sent["redirected"], layer.len() as u64 + 1000);
    assert_eq!(
        sent["streamed"],
        layer.len() as u64 + 2 * small.len() as u64
    );
    let page = reqwest::get(format!("{}/ui", a.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="bucket-share""#), "{page}");

    // Another replica, its disk empty, sends the node to the bucket too,
    // and asks nothing upstream.
    let fetched = w.sim.counters().cdn_gets;
    let b = w.replica("b", &["--s3-redirect"]).await;
    assert_eq!(get(&b, &digest).await.status, 307);
    assert_eq!(w.sim.counters().cdn_gets, fetched);

    // Redirects off (the default): nothing changes, the bytes come through.
    let c = w.replica("c", &[]).await;
    assert_streamed(&get(&c, &digest).await, &layer);
    assert_eq!(redirected(&c).await, 0.0);
}

#[tokio::test]
async fn excluded_clients_and_repositories_are_streamed() {
    let w = world().await;
    let layer = random_bytes(2 << 20, 3);
    let digest = w.sim.put_blob(layer.clone());
    let config = w.dir.path().join("pullthrough.toml");
    std::fs::write(
        &config,
        "[s3]\nredirect = true\nno_redirect_user_agents = [\"old-puller/\"]\n\
         no_redirect_repositories = [\"docker.io/library/private-*\"]\n",
    )
    .unwrap();
    let a = w
        .replica("a", &["--config", config.to_str().unwrap()])
        .await;
    assert_streamed(&get(&a, &digest).await, &layer);
    w.until_in_bucket(&digest).await;
    assert_eq!(get(&a, &digest).await.status, 307);

    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("user-agent", "Old-Puller/2.1 (linux)".parse().unwrap());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let client = Client::new(&a.url);
    assert_streamed(&client.send("GET", &path, headers).await.unwrap(), &layer);
    let private = client.blob("library/private-app", &digest).await.unwrap();
    assert_streamed(&private, &layer);
    assert_eq!(redirected(&a).await, 1.0);
}

#[tokio::test]
async fn a_blob_whose_upload_is_still_running_is_streamed() {
    let w = world().await;
    // Three parts of a multipart upload, each request to the bucket held
    // up a second: the object appears only when the upload completes.
    let layer = random_bytes(20 << 20, 4);
    let digest = w.sim.put_blob(layer.clone());
    let slow = FaultyS3::start(&w.s3).await;
    let a = w
        .replica_via("a", &slow.endpoint.clone(), &["--s3-redirect"], &[])
        .await;
    slow.set(S3Fault::Slow(Duration::from_secs(1)));
    assert_streamed(&get(&a, &digest).await, &layer);
    // The upload is under way now: the blob is streamed, not redirected
    // to an object that is not there.
    assert_streamed(&get(&a, &digest).await, &layer);
    assert!(
        !w.s3
            .keys(BUCKET, &blob_key(&digest))
            .await
            .contains(&blob_key(&digest)),
        "the upload finished too soon to show anything"
    );
    w.until_in_bucket(&digest).await;
    slow.set(S3Fault::None);
    wait_until_async(async || get(&a, &digest).await.status == 307).await;
    assert!(w.tap.with_authorization().is_empty());
}

#[tokio::test]
async fn a_degraded_bucket_means_streaming() {
    let mut w = world().await;
    let layer = random_bytes(2 << 20, 5);
    let other = random_bytes(2 << 20, 6);
    let digest = w.sim.put_blob(layer.clone());
    let other_digest = w.sim.put_blob(other.clone());
    let a = w.replica("a", &["--s3-redirect"]).await;
    assert_streamed(&get(&a, &digest).await, &layer);
    w.until_in_bucket(&digest).await;
    assert_eq!(get(&a, &digest).await.status, 307);

    // The bucket stops answering; the next miss finds out.
    w.s3.stop();
    assert_streamed(&get(&a, &other_digest).await, &other);
    assert_eq!(a.metric("pullthrough_s3_degraded", &[]).await, 1.0);
    assert_streamed(&get(&a, &digest).await, &layer);

    // Back, and past the backoff: a request's HEAD finds it healthy.
    w.s3.resume().await;
    wait_until_async(async || get(&a, &digest).await.status == 307).await;
    assert_eq!(a.metric("pullthrough_s3_degraded", &[]).await, 0.0);
}

#[tokio::test]
async fn a_url_never_outlives_the_credentials_that_sign_it() {
    let w = world().await;
    let layer = random_bytes(2 << 20, 7);
    let digest = w.sim.put_blob(layer.clone());
    w.s3.put(BUCKET, &blob_key(&digest), layer.clone()).await;

    // A task role's credentials with 90 s left: a URL would have less than
    // the minute a client is given, so none is handed out.
    let ending = CredentialsEndpoint::start(Duration::from_secs(90)).await;
    let env = ending.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = w
        .replica_via("a", &w.s3.endpoint.clone(), &["--s3-redirect"], &env)
        .await;
    assert_streamed(&get(&a, &digest).await, &layer);
    assert_eq!(redirected(&a).await, 0.0);

    // Ten minutes left: the URL lives nine (a minute's margin), not the
    // configured fifteen, and carries the session token.
    let later = CredentialsEndpoint::start(Duration::from_secs(600)).await;
    let env = later.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let b = w
        .replica_via("b", &w.s3.endpoint.clone(), &["--s3-redirect"], &env)
        .await;
    let answer = get(&b, &digest).await;
    assert_eq!(answer.status, 307);
    let location = answer.header("location");
    let expires: u64 = location
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("X-Amz-Expires="))
        .and_then(|v| v.parse().ok())
        .expect("an expiry in the URL");
    assert!((500..=540).contains(&expires), "{location}");
    assert!(location.contains("X-Amz-Security-Token="), "{location}");
    let (status, body) = follow(location, None).await;
    assert_eq!((status, sha256_digest(&body)), (200, digest));
}

#[tokio::test]
async fn warming_takes_a_redirect_as_warm_and_fetches_nothing_from_the_bucket() {
    let w = world().await;
    let layer = random_bytes(2 << 20, 8);
    w.sim.push_image(REPO, "1", std::slice::from_ref(&layer));
    let digest = sha256_digest(&layer);
    let a = w.replica("a", &["--s3-redirect"]).await;
    let warm = || async {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pullthrough"));
        command.args(["warm", "--url", &a.url, "app:1"]);
        let out = support::process::run_to_end(command, Duration::from_secs(60)).await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    // Cold: the layer is fetched and streamed to the warmer.
    let out = warm().await;
    assert!(out.contains("0 failures"), "{out}");
    w.until_in_bucket(&digest).await;
    // Warm in the bucket: the mirror's redirect is the answer.
    let out = warm().await;
    assert!(out.contains("0 failures"), "{out}");
    assert_eq!(redirected(&a).await, 1.0);
    assert!(w.tap.requests().is_empty(), "{:#?}", w.tap.requests());
}
