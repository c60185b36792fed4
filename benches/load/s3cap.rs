//! An S3 hit through a store that caps each connection, as real S3 does
//! (on the order of 100 MB/s per connection) and gateways often do far
//! lower: a fresh replica (empty data directory) serves the 200 MB blob from
//! the bucket, reading it in parallel ranged GETs, then again with one part
//! at a time for contrast.
//!
//! The store is s3s-fs behind nginx with `limit_rate` [`CAP`] per response
//! (see [`servers::start_rate_limited_proxy`]). The bench's own client GETs
//! the blob once per fresh replica and records the time to the first byte
//! and to the last; the figure that matters is the rate as a multiple of
//! one connection's cap (target: at least [`TARGET`]x with the default
//! parts). Every GET is checked for length, pullthrough verifies the
//! digest before the last byte, and the last sample's local copy is hashed.
//!
//! Caveat: nginx paces a response as `rate x (seconds since it began + 1)`,
//! so the first second's worth of every response goes out at once. A part
//! no larger than that (8 MiB under a 16 MiB/s cap) is barely paced, which
//! flatters both rows; a lower cap, or a part size well above one second
//! of it, gives a stricter figure. nginx must buffer (the default) for
//! `limit_rate` to pace proxied responses at all.

use std::path::Path;
use std::time::Instant;

use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;

use super::procs;
use super::s3tier::{self, BUCKET, PREFIX};
use super::servers::{self, Server};
use super::support::hubsim::HubSim;
use super::{FETCH_TIMEOUT, Fixture, http};

/// The part size every replica reads with (the default).
const PART: &str = "8MiB";
/// nginx's `limit_rate` for every response from the store.
const CAP: &str = "16m";
/// The same in bytes per second (nginx's `m` is MiB).
const CAP_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// Part concurrency measured: the default, then one part at a time.
const CONCURRENCY: [usize; 2] = [8, 1];
/// Fresh replicas measured with the default parts (the one-at-a-time
/// contrast takes over ten seconds per sample, so it gets one).
const SAMPLES: usize = 3;
/// Rate, as a multiple of one connection's cap, the default parts must reach.
const TARGET: f64 = 3.0;

/// One configuration's samples.
struct Row {
    concurrency: usize,
    /// Seconds to the first byte and to the last, per fresh replica.
    samples: Vec<(f64, f64)>,
    /// Ranged part GETs each replica counted.
    part_reads: Vec<u64>,
    /// Requests the replicas sent upstream (should be none).
    upstream: u64,
}

/// Everything the capped measurement found.
pub struct CapResult {
    rows: Vec<Row>,
    size: usize,
}

/// GETs `url` through `client`, returning seconds to the first body byte
/// and to the last, and checking the length.
async fn timed_get(client: &reqwest::Client, url: &str, len: usize) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let fetch = async {
        let mut response = http::get_ok(client, url).await?;
        let (mut first, mut got) = (None, 0);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: body: {e}"))?
        {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            got += chunk.len();
        }
        if got != len {
            return Err(format!("GET {url}: {got} bytes, expected {len}"));
        }
        Ok((first.unwrap_or_default(), started.elapsed().as_secs_f64()))
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("GET {url}: no complete answer within {FETCH_TIMEOUT:?}"))?
}

/// One fresh replica at `endpoint` with `concurrency` parts: its timings
/// and its part and upstream counters. With `check`, the bytes it kept
/// locally are fetched again and hashed.
fn sample(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    sim: &HubSim,
    endpoint: &str,
    concurrency: usize,
    blob: &(String, Bytes),
    check: bool,
) -> Result<((f64, f64), u64, u64), String> {
    let parts = concurrency.to_string();
    let flags = [
        "--s3-read-concurrency",
        parts.as_str(),
        "--s3-read-part-size",
        PART,
    ];
    let replica = s3tier::start_replica(rt, binary, sim, endpoint, "pullthrough-capped", &flags)?;
    let fail = |e: String| format!("{e}; {} log:\n{}", replica.name, replica.log_tail());
    let url = format!("{}{}", replica.url, Fixture::blob_path(&blob.0));
    let times = rt
        .block_on(timed_get(&http::client(), &url, blob.1.len()))
        .map_err(fail)?;
    let count = |name: &str| s3tier::metric(rt, &replica, name, &[]) as u64;
    let part_reads = count("pullthrough_s3_part_reads_total");
    let upstream = count("pullthrough_upstream_requests_total");
    if check {
        rt.block_on(http::get_checked(
            &http::client(),
            &url,
            None,
            &blob.0,
            FETCH_TIMEOUT,
        ))
        .map_err(fail)?;
    }
    Ok((times, part_reads, upstream))
}

/// Runs the capped measurement (see the module documentation).
pub fn run(
    rt: &tokio::runtime::Runtime,
    s3s_fs: &Path,
    nginx: &Path,
    binary: &Path,
    sim: &HubSim,
    blob: &(String, Bytes),
) -> Result<CapResult, String> {
    let store = servers::with_retries(|| s3tier::start_store(s3s_fs))?;
    let client = store.client();
    let key = format!("{PREFIX}{}", s3tier::blob_path(&blob.0));
    rt.block_on(async {
        client.create_bucket().bucket(BUCKET).send().await?;
        client
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(blob.1.clone().into())
            .send()
            .await?;
        Ok::<_, aws_sdk_s3::Error>(())
    })
    .map_err(|e| {
        format!(
            "putting the blob in the bucket: {}; s3s-fs log:\n{}",
            DisplayErrorContext(&e),
            store.log_tail()
        )
    })?;
    let capped: Server = servers::with_retries(|| {
        servers::start_rate_limited_proxy(rt, nginx, &store.endpoint, CAP)
    })?;
    let mut rows = Vec::new();
    for concurrency in CONCURRENCY {
        let samples = if concurrency == 1 { 1 } else { SAMPLES };
        let mut row = Row {
            concurrency,
            samples: Vec::new(),
            part_reads: Vec::new(),
            upstream: 0,
        };
        for i in 0..samples {
            procs::check_interrupted()?;
            let check = i + 1 == samples;
            let (times, parts, upstream) =
                sample(rt, binary, sim, &capped.url, concurrency, blob, check)?;
            row.samples.push(times);
            row.part_reads.push(parts);
            row.upstream += upstream;
        }
        rows.push(row);
    }
    Ok(CapResult {
        rows,
        size: blob.1.len(),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints the capped rows.
pub fn print(result: &Result<CapResult, String>) {
    println!(
        "\nS3 hit through a per-connection cap: nginx limit_rate {CAP} ({:.1} MB/s per connection) \
         in front of s3s-fs;",
        CAP_BYTES / 1e6
    );
    println!(
        "a fresh replica GETs the 200 MB blob once (bench client, one connection; median of the \
         samples):"
    );
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            println!("  failed: {e}");
            return;
        }
    };
    for row in &r.rows {
        let rates: Vec<f64> = row
            .samples
            .iter()
            .map(|(_, total)| r.size as f64 / total)
            .collect();
        let rate = median(rates.clone());
        let first = median(row.samples.iter().map(|(first, _)| *first).collect());
        let label = format!("{} part(s) of {PART} in flight", row.concurrency);
        let verdict = match row.concurrency {
            1 => String::new(),
            _ if rate / CAP_BYTES >= TARGET => format!("   (target >= {TARGET}x: met)"),
            _ => format!("   (target >= {TARGET}x: MISSED)"),
        };
        println!(
            "  {label:<30} {:>7.1} MB/s = {:>5.2}x the cap   first byte {:>6.1} ms{verdict}",
            rate / 1e6,
            rate / CAP_BYTES,
            first * 1e3,
        );
        let list: Vec<String> = rates.iter().map(|v| format!("{:.1}", v / 1e6)).collect();
        let parts: Vec<String> = row.part_reads.iter().map(u64::to_string).collect();
        println!(
            "  {:<30} samples {} MB/s; ranged part GETs per replica: {}; upstream requests: {}",
            "",
            list.join(" / "),
            parts.join(" / "),
            row.upstream
        );
    }
}
