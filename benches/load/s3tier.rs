//! The shared S3 tier: how fast a replica whose local disk is empty serves
//! blobs another replica already put in the bucket (`hit-s3`: streamed from
//! S3, verified, stored locally), next to the same replica serving them
//! warm from its own tiers and to nginx serving them as static files.
//!
//! The bucket is `s3s-fs` on loopback. Replica A pulls the 200 MB blob and
//! [`SMALL_BLOBS`] distinct 100 KiB blobs from the simulator, which puts
//! them in the bucket; then, [`SAMPLES`] times, a fresh replica B (new, empty
//! data directory, same bucket and prefix) GETs the 200 MB blob once and
//! every small blob once (all S3 hits), then all of them again (warm local
//! hits). Every figure below comes from the bench's own client, the same
//! for all three servers, so the ratios compare like with like; the wrk
//! table above uses more connections and is not comparable. The simulator
//! must see no request while B runs.
//!
//! s3s-fs is no fast store (it reads files in 4 KiB pieces and keeps
//! metadata in side files), so the same loads are also run against it
//! directly with the SDK: an S3 hit cannot be faster than that ceiling,
//! and on a small machine it, not pullthrough, usually sets the figure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tempfile::TempDir;

use super::procs::{self, ChildGuard, free_port, tail};
use super::servers::{self, Server};
use super::support::hubsim::HubSim;
use super::support::s3::{self, ACCESS_KEY, REGION, SECRET_KEY};
use super::{FETCH_TIMEOUT, Fixture, http, settle};

/// Distinct cold 100 KiB blobs each fresh replica fetches from S3.
pub const SMALL_BLOBS: usize = 500;
/// Fresh replicas measured; the median is reported.
const SAMPLES: usize = 3;
/// Concurrent requests (on as many kept-alive connections) for the small
/// blobs; the 200 MB blob is one GET on one connection.
const SMALL_CONCURRENCY: usize = 16;
pub(super) const BUCKET: &str = "bench-cache";
pub(super) const PREFIX: &str = "bench/";
const INSTALL: &str = "cargo install s3s-fs@0.14.1 --features binary --locked";

/// `s3s-fs` on `PATH` (or in the sbin directories), else where tests/run
/// installs it.
pub fn find_s3s_fs() -> Option<PathBuf> {
    procs::find_program("s3s-fs").or_else(|| {
        let home = std::env::var_os("HOME")?;
        let cached = PathBuf::from(home).join(".cache/pullthrough-tools/bin/s3s-fs");
        procs::is_executable(&cached).then_some(cached)
    })
}

/// Says why the S3 rows are missing and how to get them.
pub fn print_skipped() {
    println!(
        "\nS3 tier: skipped, s3s-fs is not installed (install: {INSTALL}; looked for on PATH \
         and in ~/.cache/pullthrough-tools/bin)"
    );
}

/// The blobs the S3 measurement uses: the 200 MB layer and the small set.
pub struct Blobs<'a> {
    pub large: &'a (String, Bytes),
    pub small: &'a [(String, Bytes)],
}

/// A running s3s-fs with its store in a temporary directory. Field order
/// matters: the child is stopped before its directory is deleted.
pub(super) struct S3Store {
    pub(super) endpoint: String,
    _child: ChildGuard,
    log: PathBuf,
    _dir: TempDir,
}

/// Starts s3s-fs (retrying a port taken meanwhile) with an empty `bucket`.
pub(super) fn start_store_with_bucket(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    bucket: &str,
) -> Result<S3Store, String> {
    let store = servers::with_retries(|| start_store(binary))?;
    rt.block_on(store.client().create_bucket().bucket(bucket).send())
        .map_err(|e| {
            format!(
                "creating bucket {bucket}: {}; s3s-fs log:\n{}",
                DisplayErrorContext(&e),
                store.log_tail()
            )
        })?;
    Ok(store)
}

/// Starts s3s-fs on a free port and waits until it accepts connections.
pub(super) fn start_store(binary: &Path) -> Result<S3Store, String> {
    let dir = tempfile::Builder::new()
        .prefix("bench-s3-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let port = free_port()?;
    let log = dir.path().join("s3s-fs.log");
    let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&data)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let mut child = ChildGuard::spawn("s3s-fs", &mut command)?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        procs::check_interrupted()?;
        if let Some(status) = child.exited() {
            return Err(format!(
                "s3s-fs exited during start-up ({status}); its log:\n{}",
                tail(&log, 15)
            ));
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "s3s-fs did not listen on {addr} within 10 s; its log:\n{}",
                tail(&log, 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(S3Store {
        endpoint: format!("http://{addr}"),
        _child: child,
        log,
        _dir: dir,
    })
}

impl S3Store {
    /// A client with the store's credentials, path-style.
    pub(super) fn client(&self) -> Client {
        s3::client(&self.endpoint, ACCESS_KEY, SECRET_KEY)
    }

    pub(super) fn log_tail(&self) -> String {
        tail(&self.log, 15)
    }

    /// The s3s-fs process's id (for its CPU time).
    pub(super) fn pid(&self) -> Option<u32> {
        self._child.id()
    }
}

/// Every object under `prefix` with its size.
async fn list(client: &Client, prefix: &str) -> Result<HashMap<String, i64>, String> {
    let mut objects = HashMap::new();
    let mut token = None;
    // Bounded, in case a store keeps saying "truncated" without moving on.
    for _ in 0..100 {
        let out = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| format!("listing the bucket: {}", DisplayErrorContext(&e)))?;
        for object in out.contents() {
            if let Some(key) = object.key() {
                objects.insert(key.to_owned(), object.size().unwrap_or(-1));
            }
        }
        match out.next_continuation_token() {
            Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(objects)
}

/// Where pullthrough keeps a blob, under its disk tier (`<data-dir>/cache`)
/// or the bucket prefix.
pub(super) fn blob_path(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

/// Reads the object of `digest` straight from the store with the SDK (no
/// pullthrough involved), checking its length.
async fn direct_get(client: &Client, digest: &str, len: usize) -> Result<(), String> {
    let key = format!("{PREFIX}{}", blob_path(digest));
    let out = client
        .get_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .map_err(|e| format!("GetObject {key}: {}", DisplayErrorContext(&e)))?;
    let mut body = out.body;
    let mut got = 0;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| format!("GetObject {key}: body: {e}"))?
    {
        got += chunk.len();
    }
    if got != len {
        return Err(format!("GetObject {key}: {got} bytes, expected {len}"));
    }
    Ok(())
}

/// Seconds to read every blob straight from the store, `concurrency` at a
/// time: the ceiling the store itself sets on this machine.
fn timed_direct(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    blobs: &[&(String, Bytes)],
    concurrency: usize,
) -> Result<f64, String> {
    let started = Instant::now();
    let results: Vec<Result<(), String>> = rt.block_on(
        futures_util::stream::iter(
            blobs
                .iter()
                .map(|(digest, bytes)| direct_get(client, digest, bytes.len())),
        )
        .buffer_unordered(concurrency)
        .collect(),
    );
    let elapsed = started.elapsed().as_secs_f64();
    match results.into_iter().find_map(Result::err) {
        None => Ok(elapsed),
        Some(e) => Err(e),
    }
}

/// Waits until every blob is in the bucket at its full size (replicas
/// upload after answering the client).
pub(super) fn wait_for_bucket(
    rt: &tokio::runtime::Runtime,
    store: &S3Store,
    blobs: &[&(String, Bytes)],
) -> Result<(), String> {
    let client = store.client();
    let deadline = Instant::now() + FETCH_TIMEOUT;
    loop {
        procs::check_interrupted()?;
        let objects = rt.block_on(list(&client, &format!("{PREFIX}blobs/")))?;
        let missing = blobs
            .iter()
            .filter(|(digest, bytes)| {
                objects.get(&format!("{PREFIX}{}", blob_path(digest)))
                    != Some(&(bytes.len() as i64))
            })
            .count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{missing} of {} blobs still not in the bucket after {FETCH_TIMEOUT:?}; s3s-fs log:\n{}",
                blobs.len(),
                store.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `server` has every blob in its own data directory (it
/// stores S3 hits after answering), so the warm pass finds them there.
pub(super) fn wait_for_local(server: &Server, blobs: &[&(String, Bytes)]) -> Result<(), String> {
    let data = server.dir().join("data/cache");
    let deadline = Instant::now() + FETCH_TIMEOUT;
    loop {
        procs::check_interrupted()?;
        let missing = blobs
            .iter()
            .filter(|(digest, _)| !data.join(blob_path(digest)).is_file())
            .count();
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not store {missing} blobs locally within {FETCH_TIMEOUT:?}; its log:\n{}",
                server.name,
                server.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A replica on the bench bucket at S3 `endpoint` with an empty data
/// directory, and `extra` flags.
pub(super) fn start_replica(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    sim: &HubSim,
    endpoint: &str,
    name: &'static str,
    extra: &[&str],
) -> Result<Server, String> {
    let flags: Vec<String> = [
        "--s3-bucket",
        BUCKET,
        "--s3-endpoint",
        endpoint,
        "--s3-prefix",
        PREFIX,
    ]
    .iter()
    .chain(extra)
    .map(|f| (*f).to_owned())
    .collect();
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    servers::with_retries(|| {
        servers::start_pullthrough_with(rt, binary, &sim.registry_url, name, &flags, &env)
    })
}

/// A client that keeps connections alive (unlike [`http::client`]), so the
/// small-blob figures measure requests rather than TCP handshakes.
fn pooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(SMALL_CONCURRENCY)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("reqwest client")
}

/// GETs `url` and reads the body to the end without hashing it (so the
/// client's own hashing does not cap the figure; pullthrough verifies
/// every blob before the final byte, and [`check`] hashes afterwards).
async fn fetch(client: &reqwest::Client, url: &str, len: usize) -> Result<(), String> {
    let fetch = async {
        let mut response = super::http::get_ok(client, url).await?;
        let mut got = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: body: {e}"))?
        {
            got += chunk.len();
        }
        if got != len {
            return Err(format!("GET {url}: {got} bytes, expected {len}"));
        }
        Ok(())
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("GET {url}: no complete answer within {FETCH_TIMEOUT:?}"))?
}

/// Seconds to GET every blob once through `base`, `concurrency` at a time.
fn timed(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    base: &str,
    blobs: &[&(String, Bytes)],
    concurrency: usize,
) -> Result<f64, String> {
    let started = Instant::now();
    let results: Vec<Result<(), String>> = rt.block_on(
        futures_util::stream::iter(blobs.iter().map(|(digest, bytes)| {
            let url = format!("{base}{}", Fixture::blob_path(digest));
            async move { fetch(client, &url, bytes.len()).await }
        }))
        .buffer_unordered(concurrency)
        .collect(),
    );
    let elapsed = started.elapsed().as_secs_f64();
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    match errors.first() {
        None => Ok(elapsed),
        Some(first) => Err(format!(
            "{} of {} GETs failed, first: {first}",
            errors.len(),
            blobs.len()
        )),
    }
}

/// Fetches each blob once through `base`, hashing it (untimed).
fn check(
    rt: &tokio::runtime::Runtime,
    base: &str,
    blobs: &[&(String, Bytes)],
) -> Result<(), String> {
    let client = http::client();
    rt.block_on(async {
        for (digest, _) in blobs {
            let url = format!("{base}{}", Fixture::blob_path(digest));
            http::get_checked(&client, &url, None, digest, FETCH_TIMEOUT).await?;
        }
        Ok(())
    })
}

/// `name`'s sample in `/metrics`, summed over series with every label.
pub(super) fn metric(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    name: &str,
    labels: &[&str],
) -> f64 {
    let url = format!("{}/metrics", server.url);
    let text = rt.block_on(async {
        let response = http::client()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    });
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn hits_s3(rt: &tokio::runtime::Runtime, server: &Server) -> u64 {
    metric(
        rt,
        server,
        "pullthrough_requests_total",
        &["outcome=\"hit-s3\""],
    ) as u64
}

/// One fresh replica's figures, in seconds.
struct Sample {
    large_s3: f64,
    small_s3: f64,
    large_warm: f64,
    small_warm: f64,
    /// `hit-s3` answers the replica counted after the cold pass.
    hits: u64,
    /// ... and during the warm pass (should be none).
    warm_hits: u64,
    /// Requests the replica itself sent upstream (its own metric).
    upstream: u64,
}

/// Everything the S3 measurement found.
pub struct S3Result {
    samples: Vec<Sample>,
    /// s3s-fs read directly, same loads: seconds for the 200 MB blob, for
    /// the small set.
    store_alone: Vec<(f64, f64)>,
    /// nginx, same client: seconds for the 200 MB blob, for the small set.
    nginx: Vec<(f64, f64)>,
    /// What the simulator saw while the fresh replicas ran.
    upstream: Vec<String>,
    large: usize,
    small: usize,
}

/// Runs the S3 measurement (see the module documentation).
pub fn run(
    rt: &tokio::runtime::Runtime,
    s3s_fs: &Path,
    binary: &Path,
    sim: &HubSim,
    nginx: &Server,
    blobs: &Blobs<'_>,
) -> Result<S3Result, String> {
    let store = start_store_with_bucket(rt, s3s_fs, BUCKET)?;
    let large = [blobs.large];
    let small: Vec<&(String, Bytes)> = blobs.small.iter().collect();
    let all: Vec<&(String, Bytes)> = large.iter().chain(&small).copied().collect();

    // Replica A fetches everything from the simulator and fills the bucket.
    {
        let a = start_replica(rt, binary, sim, &store.endpoint, "pullthrough-a", &[])?;
        check(rt, &a.url, &large).map_err(|e| format!("filling the bucket: {e}"))?;
        let client = pooled_client();
        timed(rt, &client, &a.url, &small, SMALL_CONCURRENCY)
            .map_err(|e| format!("filling the bucket: {e}"))?;
        wait_for_bucket(rt, &store, &all)?;
    }

    let direct = store.client();
    let mut store_alone = Vec::new();
    for _ in 0..SAMPLES {
        procs::check_interrupted()?;
        let large = timed_direct(rt, &direct, &large, 1)?;
        let small = timed_direct(rt, &direct, &small, SMALL_CONCURRENCY)?;
        store_alone.push((large, small));
    }

    settle(sim);
    let seen = sim.requests().len();
    let client = pooled_client();
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        procs::check_interrupted()?;
        let b = start_replica(rt, binary, sim, &store.endpoint, "pullthrough-b", &[])?;
        let fail = |e: String| format!("{e}; {} log:\n{}", b.name, b.log_tail());
        let large_s3 = timed(rt, &client, &b.url, &large, 1).map_err(fail)?;
        // Its local copy (fsync included) before the next measurement.
        wait_for_local(&b, &large)?;
        let small_s3 = timed(rt, &client, &b.url, &small, SMALL_CONCURRENCY).map_err(fail)?;
        wait_for_local(&b, &small)?;
        let hits = hits_s3(rt, &b);
        let large_warm = timed(rt, &client, &b.url, &large, 1).map_err(fail)?;
        let small_warm = timed(rt, &client, &b.url, &small, SMALL_CONCURRENCY).map_err(fail)?;
        let warm_hits = hits_s3(rt, &b).saturating_sub(hits);
        let upstream = metric(rt, &b, "pullthrough_upstream_requests_total", &[]) as u64;
        if samples.len() + 1 == SAMPLES {
            check(rt, &b.url, &all[..2]).map_err(fail)?;
        }
        samples.push(Sample {
            large_s3,
            small_s3,
            large_warm,
            small_warm,
            hits,
            warm_hits,
            upstream,
        });
    }
    settle(sim);
    let upstream = sim.requests().into_iter().skip(seen).collect();

    let mut nginx_times = Vec::new();
    for _ in 0..SAMPLES {
        procs::check_interrupted()?;
        let large = timed(rt, &client, &nginx.url, &large, 1)?;
        let small = timed(rt, &client, &nginx.url, &small, SMALL_CONCURRENCY)?;
        nginx_times.push((large, small));
    }
    Ok(S3Result {
        samples,
        store_alone,
        nginx: nginx_times,
        upstream,
        large: blobs.large.1.len(),
        small: blobs.small.len(),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}x", value / base)
    } else {
        "-".to_owned()
    }
}

/// Prints the S3 rows, their baselines and what the replicas counted.
pub fn print(result: &Result<S3Result, String>) {
    println!(
        "\nS3 tier: a fresh replica (empty data directory) serving blobs another replica put in \
         the bucket"
    );
    println!(
        "(s3s-fs on loopback; the bench's own client for every figure, the 200 MB blob on one \
         connection,"
    );
    println!(
        "{SMALL_BLOBS} distinct 100 KiB blobs {SMALL_CONCURRENCY} at a time; median of \
         {SAMPLES} fresh replicas; not comparable with the wrk table):"
    );
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            println!("  failed: {e}");
            return;
        }
    };
    let gbps = |seconds: f64| r.large as f64 / seconds / 1e9;
    let rps = |seconds: f64| r.small as f64 / seconds;
    let large_s3: Vec<f64> = r.samples.iter().map(|s| gbps(s.large_s3)).collect();
    let small_s3: Vec<f64> = r.samples.iter().map(|s| rps(s.small_s3)).collect();
    let large_warm = median(r.samples.iter().map(|s| gbps(s.large_warm)).collect());
    let small_warm = median(r.samples.iter().map(|s| rps(s.small_warm)).collect());
    let large_nginx = median(r.nginx.iter().map(|n| gbps(n.0)).collect());
    let small_nginx = median(r.nginx.iter().map(|n| rps(n.1)).collect());
    let (large, small) = (median(large_s3.clone()), median(small_s3.clone()));
    println!(
        "  {:<36} {:>10}   ratio to pullthrough warm local: {:>6}   ratio to nginx: {:>6}",
        "200 MB blob (S3 hit, cold local)",
        format!("{large:.2} GB/s"),
        ratio(large, large_warm),
        ratio(large, large_nginx),
    );
    println!(
        "  {:<36} {:>10}   ratio to pullthrough warm local: {:>6}   ratio to nginx: {:>6}",
        "100 KiB blobs (S3 hit, cold local)",
        format!("{small:.0} r/s"),
        ratio(small, small_warm),
        ratio(small, small_nginx),
    );
    let list = |values: &[f64], digits: usize| {
        values
            .iter()
            .map(|v| format!("{v:.digits$}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "  samples, S3 hit: {} GB/s; {} r/s",
        list(&large_s3, 2),
        list(&small_s3, 0)
    );
    println!(
        "  baselines, same client: pullthrough warm local {large_warm:.2} GB/s, \
         {small_warm:.0} r/s; nginx {large_nginx:.2} GB/s, {small_nginx:.0} r/s"
    );
    let alone_large = median(r.store_alone.iter().map(|a| gbps(a.0)).collect());
    let alone_small = median(r.store_alone.iter().map(|a| rps(a.1)).collect());
    println!(
        "  s3s-fs alone (the SDK's GetObject, same loads; the store's ceiling on this machine): \
         {alone_large:.2} GB/s, {alone_small:.0} r/s; S3 hit / s3s-fs alone: {}, {}",
        ratio(large, alone_large),
        ratio(small, alone_small)
    );
    let expected = 1 + r.small as u64;
    let hits: Vec<String> = r.samples.iter().map(|s| s.hits.to_string()).collect();
    let all_hits = r
        .samples
        .iter()
        .all(|s| s.hits == expected && s.warm_hits == 0);
    let warm: u64 = r.samples.iter().map(|s| s.warm_hits).sum();
    println!(
        "  hit-s3 answers counted by each fresh replica: {} of {expected} cold GETs, {warm} in \
         the warm passes{}",
        hits.join(" / "),
        if all_hits { "" } else { "   UNEXPECTED" }
    );
    let own: u64 = r.samples.iter().map(|s| s.upstream).sum();
    println!(
        "  upstream (simulator) requests during the S3 measurements: {} (target: 0{}); \
         the replicas' own upstream counter: {own}",
        r.upstream.len(),
        if r.upstream.is_empty() {
            ", met"
        } else {
            ", MISSED"
        }
    );
    for request in r.upstream.iter().take(5) {
        println!("    {request}");
    }
}
