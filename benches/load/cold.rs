//! The cold pull: what every node of a rollout of a new image waits for.
//! A fresh replica (its upstream token already fetched, with a small blob)
//! pulls the 200 MB blob through the simulator's CDN, against the same
//! client fetching the blob from the CDN directly; one fresh replica per
//! round, so every pull is cold. The client runs on a thread of its own,
//! checks every byte against the blob, and times the first body byte and
//! the last.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::report::{median, verdict};
use super::servers::{self, Server};
use super::support::hubsim::HubSim;
use super::{FETCH_TIMEOUT, Fixture, http, procstat};

/// The cold pull's goals (issue #20): at least this share of the direct
/// fetch's throughput, and the first byte at most this much later.
const THROUGHPUT_GOAL: f64 = 0.85;
const FIRST_BYTE_GOAL: Duration = Duration::from_millis(2);

/// One timed fetch.
pub struct Pull {
    /// From sending the request to the first body byte.
    first_byte: Duration,
    /// From sending the request to the last body byte.
    total: Duration,
    bytes: u64,
}

/// One round: a fresh replica's pull and the direct fetch beside it.
pub struct Pair {
    direct: Pull,
    pullthrough: Pull,
    /// The replica's CPU time during its pull.
    cpu: Option<Duration>,
}

/// Every round that completed, and why the others did not.
pub struct Cold {
    pairs: Vec<Pair>,
    errors: Vec<String>,
}

/// `rounds` fresh replicas each pulling `blob` (digest and bytes), each
/// beside a direct fetch from the CDN (which goes first alternates).
pub fn run(
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    sim: &HubSim,
    token_blob: &str,
    blob: &(String, Bytes),
    rounds: usize,
) -> Cold {
    let mut cold = Cold {
        pairs: Vec::new(),
        errors: Vec::new(),
    };
    for round in 0..rounds {
        match pair(rt, binary, sim, token_blob, blob, round % 2 == 0) {
            Ok(pair) => cold.pairs.push(pair),
            Err(e) => cold.errors.push(e),
        }
        if super::procs::check_interrupted().is_err() {
            break;
        }
    }
    cold
}

fn pair(
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    sim: &HubSim,
    token_blob: &str,
    (digest, bytes): &(String, Bytes),
    direct_first: bool,
) -> Result<Pair, String> {
    let replica =
        servers::with_retries(|| servers::start_pullthrough(rt, binary, &sim.registry_url))?;
    // The token (and the connections to the registry and the CDN) first,
    // as on a node that has pulled before.
    let url = format!("{}{}", replica.url, Fixture::blob_path(token_blob));
    rt.block_on(http::get_checked(
        &http::client(),
        &url,
        None,
        token_blob,
        FETCH_TIMEOUT,
    ))?;
    let through = format!("{}{}", replica.url, Fixture::blob_path(digest));
    let direct = || timed(sim.signed_blob_url(digest), bytes.clone());
    let mut first = None;
    if direct_first {
        first = Some(direct()?);
    }
    let (pullthrough, cpu) = pull_through(&replica, through, bytes.clone())?;
    let direct = match first {
        Some(pull) => pull,
        None => direct()?,
    };
    Ok(Pair {
        direct,
        pullthrough,
        cpu,
    })
}

/// The pull through `replica`, and the CPU time it cost the replica.
fn pull_through(
    replica: &Server,
    url: String,
    expected: Bytes,
) -> Result<(Pull, Option<Duration>), String> {
    let cpu = || replica.pid().and_then(procstat::cpu_ticks);
    let before = cpu();
    let pull = timed(url, expected)?;
    let spent = match (before, cpu()) {
        (Some(before), Some(after)) => Some(Duration::from_secs_f64(
            (after - before) as f64 / procstat::ticks_per_second(),
        )),
        _ => None,
    };
    Ok((pull, spent))
}

/// GETs `url` on a thread and runtime of its own, comparing each piece
/// with `expected` as it arrives.
fn timed(url: String, expected: Bytes) -> Result<Pull, String> {
    let fetch = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(async { tokio::time::timeout(FETCH_TIMEOUT, fetch(&url, &expected)).await })
            .map_err(|_| format!("GET {url}: no complete answer within {FETCH_TIMEOUT:?}"))?
    };
    std::thread::spawn(fetch)
        .join()
        .map_err(|_| "the client thread panicked".to_owned())?
}

async fn fetch(url: &str, expected: &Bytes) -> Result<Pull, String> {
    let client = http::client();
    let started = Instant::now();
    let mut response = http::get_ok(&client, url).await?;
    let (bytes, first_byte) = http::read_compared(url, &mut response, expected, started).await?;
    Ok(Pull {
        first_byte: first_byte.unwrap_or_default(),
        total: started.elapsed(),
        bytes,
    })
}

impl Pair {
    /// The pull's throughput over the direct fetch's.
    fn ratio(&self) -> f64 {
        self.direct.total.as_secs_f64() / self.pullthrough.total.as_secs_f64()
    }

    /// How much later the pull's first byte came, in ms (negative: sooner).
    fn first_byte_later_ms(&self) -> f64 {
        (self.pullthrough.first_byte.as_secs_f64() - self.direct.first_byte.as_secs_f64()) * 1e3
    }
}

impl Cold {
    fn median_ratio(&self) -> Option<f64> {
        median(self.pairs.iter().map(Pair::ratio).collect())
    }

    fn median_first_byte_later_ms(&self) -> Option<f64> {
        median(self.pairs.iter().map(Pair::first_byte_later_ms).collect())
    }
}

fn gbps(pull: &Pull) -> f64 {
    pull.bytes as f64 / pull.total.as_secs_f64() / 1e9
}

/// One line per round, then the medians.
pub fn print(cold: &Cold) {
    for pair in &cold.pairs {
        let cpu = pair
            .cpu
            .map_or("-".to_owned(), |cpu| format!("{:.2} s", cpu.as_secs_f64()));
        println!(
            "  direct {:.2} GB/s, first byte {:.2} ms   pullthrough {:.2} GB/s, first byte {:.2} ms \
             (CPU {cpu})   {:.2}x, {:+.2} ms",
            gbps(&pair.direct),
            pair.direct.first_byte.as_secs_f64() * 1e3,
            gbps(&pair.pullthrough),
            pair.pullthrough.first_byte.as_secs_f64() * 1e3,
            pair.ratio(),
            pair.first_byte_later_ms(),
        );
    }
    for e in &cold.errors {
        println!("  failed: {e}");
    }
    let show = |v: Option<f64>, unit: &str| v.map_or("-".to_owned(), |v| format!("{v:.2}{unit}"));
    println!(
        "  median: {} of the direct fetch's throughput, first byte {} ms later",
        show(cold.median_ratio(), "x"),
        show(cold.median_first_byte_later_ms(), ""),
    );
}

/// The cold pull's two goals.
pub fn print_goals(cold: &Cold) {
    let ratio = cold.median_ratio();
    println!(
        "  {:<18} {:<30} got {:>8}   {}",
        "cold 200 MB",
        format!("throughput >= {THROUGHPUT_GOAL:.2}x direct"),
        ratio.map_or("-".to_owned(), |r| format!("{r:.2}x")),
        verdict(ratio.map(|r| r >= THROUGHPUT_GOAL)),
    );
    let later = cold.median_first_byte_later_ms();
    let goal_ms = FIRST_BYTE_GOAL.as_secs_f64() * 1e3;
    println!(
        "  {:<18} {:<30} got {:>8}   {}",
        "cold first byte",
        format!("at most {goal_ms:.0} ms after direct"),
        later.map_or("-".to_owned(), |l| format!("{l:+.2} ms")),
        verdict(later.map(|l| l <= goal_ms)),
    );
}
