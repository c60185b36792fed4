//! Load benchmark: how close a warm pullthrough comes to serving static
//! files, and how many upstream fetches a burst of cold pulls costs.
//!
//! Run with `cargo bench --bench load` (`BENCH_SECONDS=N` sets the length of
//! each wrk run, default 3; `BENCH_ROUNDS=N` the rounds of the wrk table
//! and the fresh replicas of the cold pull, default 3, every figure the
//! median of the rounds; `BENCH_BINARY=path` measures another build of
//! pullthrough, for a before and after). The wrk table, the cold pull and
//! coalescing take about two and a half minutes, the S3 rows about one
//! more, the rollout a minute or two, the fleet rollout about one and the
//! redirects about four. `BENCH_ONLY=http`, `s3`, `rollout`, `fleet` or
//! `redirect` runs only that section (`cold`, only the cold pull of
//! `http`); the rollout, the fleet rollout and the cold pull need none of
//! the programs below, the redirects need `s3s-fs` and `curl`.
//! It needs `wrk` and `nginx` (Debian packages `wrk`, `nginx-light`);
//! `docker-registry` (distribution 2.8) is optional and adds a column, and
//! `s3s-fs` (`cargo install s3s-fs@0.14.1 --features binary --locked`, or
//! what tests/run installs) is optional and adds the S3 tier rows.
//!
//! Everything runs on loopback, on ephemeral ports, against the Docker Hub
//! simulator from `tests/support` running inside this process:
//!
//! * **pullthrough** is the release binary as a subprocess, with its
//!   default `info` access log (one line per request is part of the cost),
//!   written to a file.
//! * **nginx** serves the very same bytes as static files at the same URL
//!   paths. It is the practical ceiling for answering these requests.
//! * **distribution** (if installed) runs in proxy mode in front of the
//!   same simulator: the mirror most people would otherwise deploy.
//!
//! Measured with wrk, one server after the other, same load and duration,
//! in rounds: warm manifest GETs by tag (with dockerd's Accept types) and by
//! digest and warm 100 KiB blob GETs in requests/s and in the server's CPU
//! time per request, and a warm 200 MB blob in bytes/s. Then the cold pull
//! (see `load/cold.rs`) and the goals of issue #20 side by side. Then 8
//! concurrent cold GETs of an uncached 100 MB blob count the upstream
//! fetches (target: 1) and check every client's bytes. Next, with s3s-fs,
//! fresh replicas sharing a bucket serve the 200 MB blob and many 100 KiB
//! blobs from S3 (see `load/s3tier.rs`), with no upstream request, and the
//! 200 MB blob through a store that caps each connection (`load/s3cap.rs`).
//! Then a cluster rollout: 1,000 and then 2,000 clients GET one cold 8 MB
//! layer from a fresh pullthrough while the upstream trickles it out at
//! 1 MB/s, counting upstream fetches, pullthrough's peak anonymous memory
//! and threads, and the latency of warm requests made meanwhile (see
//! `load/rollout.rs`).
//! Last, the fleet rollout: the same bursts spread round-robin over three
//! fresh replicas told of each other (`--peers`), which should cost the
//! fleet one upstream download (the layer's bytes fetched once, 1.0x) and
//! send the layer once to each replica that does not own it, with each
//! replica's memory, threads and warm latency as above (see
//! `load/fleet.rs`).
//! Then redirects to the bucket: 200 concurrent `curl` clients at idle
//! priority pull one warm 200 MB blob from a replica that streams it from
//! its disk, then from one (`--s3-redirect`) that answers 307 to a
//! presigned s3s-fs URL: the replica's CPU time and bytes written per
//! pull in each mode (target: redirected under 1% of streamed CPU), the
//! clients' total throughput and the replicas' counters (see
//! `load/redirect.rs`).
//!
//! The figures that matter are the **ratios to nginx**, not the absolute
//! numbers: wrk, the servers and the simulator share the same (often small,
//! often busy) machine, so absolute throughput says more about the machine
//! than about pullthrough, while the ratio to a known-good server on the
//! same machine at the same moment is reasonably stable. Targets are
//! printed and never enforced.

#[path = "load/ceiling.rs"]
mod ceiling;
#[path = "load/coalesce.rs"]
mod coalesce;
#[path = "load/cold.rs"]
mod cold;
#[path = "load/fleet.rs"]
mod fleet;
#[path = "load/http.rs"]
mod http;
#[path = "load/probe.rs"]
mod probe;
#[path = "load/procs.rs"]
mod procs;
#[path = "load/procstat.rs"]
mod procstat;
#[path = "load/redirect.rs"]
mod redirect;
#[path = "load/report.rs"]
mod report;
#[path = "load/rollout.rs"]
mod rollout;
#[path = "load/s3cap.rs"]
mod s3cap;
#[path = "load/s3tier.rs"]
mod s3tier;
#[path = "load/servers.rs"]
mod servers;
#[path = "../tests/support/mod.rs"]
mod support;
#[path = "load/wrk.rs"]
mod wrk;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;

use report::{Goal, Measured, Row};
use servers::{Server, StaticFile};
use support::hubsim::{DOCKER_MANIFEST_V2, HubSim};

const REPO: &str = "library/bench";
const TAG: &str = "latest";
const SMALL_BLOB: usize = 100 * 1024;
const LARGE_BLOB: usize = 200_000_000;
const COLD_BLOB: usize = 100_000_000;
const COLD_CLIENTS: usize = 8;
/// Bound on any single fetch the bench itself makes.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// The manifest types dockerd accepts, sent on one line (as containerd
/// does; wrk cannot repeat a header). pullthrough keys its tag cache by
/// this set, so warm-up and wrk send the same one.
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws, \
application/json";

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets`
    // runs this in the unoptimised test profile without it, where a load
    // test would take minutes and measure nothing useful.
    if !std::env::args().any(|a| a == "--bench") {
        println!("load bench: skipped outside `cargo bench` (run: cargo bench --bench load)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if procs::check_interrupted().is_err() => {
            eprintln!("load bench interrupted; servers stopped, temporary files removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\nload bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The external programs the bench drives.
struct Tools {
    wrk: PathBuf,
    nginx: PathBuf,
    distribution: Option<PathBuf>,
}

/// Finds the tools, or says exactly which are missing and how to get them.
fn find_tools() -> Result<Tools, String> {
    let wrk = procs::find_program("wrk");
    let nginx = procs::find_program("nginx");
    let distribution = procs::find_program("docker-registry");
    if distribution.is_none() {
        println!(
            "docker-registry (distribution 2.8) is not installed: the distribution column is \
             skipped (Debian: apt-get install docker-registry)"
        );
    }
    match (wrk, nginx) {
        (Some(wrk), Some(nginx)) => Ok(Tools {
            wrk,
            nginx,
            distribution,
        }),
        (wrk, nginx) => {
            let missing: Vec<&str> = [
                wrk.is_none().then_some("wrk (Debian package `wrk`)"),
                nginx
                    .is_none()
                    .then_some("nginx (Debian package `nginx-light`)"),
            ]
            .into_iter()
            .flatten()
            .collect();
            Err(format!(
                "missing required program(s), looked for on PATH and in /usr/sbin, /sbin: {}",
                missing.join(", ")
            ))
        }
    }
}

/// Seconds per wrk run: `BENCH_SECONDS`, default 3.
fn bench_seconds() -> Result<u64, String> {
    whole_number("BENCH_SECONDS", 3)
}

/// Rounds of the wrk table and fresh replicas of the cold pull:
/// `BENCH_ROUNDS`, default 3; every figure is the median of the rounds.
fn bench_rounds() -> Result<usize, String> {
    whole_number("BENCH_ROUNDS", 3).map(|n| n as usize)
}

/// The whole number >= 1 in the environment variable `name`, or `default`.
fn whole_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("{name} must be a whole number >= 1, not {v:?}")),
        },
    }
}

/// What the simulator serves.
struct Fixture {
    manifest: Bytes,
    manifest_digest: String,
    small: (String, Bytes),
    large: (String, Bytes),
    /// Never fetched before the coalescing measurement: one per proxy.
    cold_pullthrough: String,
    cold_distribution: String,
    /// Distinct 100 KiB blobs for the S3 tier measurement (none when
    /// s3s-fs is missing).
    s3_small: Vec<(String, Bytes)>,
}

impl Fixture {
    fn manifest_path() -> String {
        format!("/v2/{REPO}/manifests/{TAG}")
    }

    fn manifest_digest_path(digest: &str) -> String {
        format!("/v2/{REPO}/manifests/{digest}")
    }

    fn blob_path(digest: &str) -> String {
        format!("/v2/{REPO}/blobs/{digest}")
    }
}

/// Seeds `library/bench:latest` (a small config plus the 100 KiB and
/// 200 MB layers), the two cold 100 MB blobs and `s3_small` distinct
/// 100 KiB blobs.
fn seed(sim: &HubSim, s3_small: usize) -> Fixture {
    let small = support::random_bytes(SMALL_BLOB, 1);
    let large = support::random_bytes(LARGE_BLOB, 2);
    let image = sim.push_image(REPO, TAG, &[small.clone(), large.clone()]);
    Fixture {
        manifest: image.manifest,
        manifest_digest: image.manifest_digest,
        small: (image.layer_digests[0].clone(), small),
        large: (image.layer_digests[1].clone(), large),
        cold_pullthrough: sim.put_blob(support::random_bytes(COLD_BLOB, 3)),
        cold_distribution: sim.put_blob(support::random_bytes(COLD_BLOB, 4)),
        s3_small: (0..s3_small as u64)
            .map(|i| {
                let bytes = support::random_bytes(SMALL_BLOB, 1000 + i);
                (sim.put_blob(bytes.clone()), bytes)
            })
            .collect(),
    }
}

/// Fetches the manifest by tag and each blob once through `server`,
/// checking the bytes; for distribution, also waits until it has stored
/// the blobs itself (it does so in the background, after the answer).
fn warm(rt: &tokio::runtime::Runtime, server: &Server, fx: &Fixture) -> Result<(), String> {
    let client = http::client();
    let base = &server.url;
    rt.block_on(async {
        let url = format!("{base}{}", Fixture::manifest_path());
        http::get_checked(
            &client,
            &url,
            Some(ACCEPT),
            &fx.manifest_digest,
            FETCH_TIMEOUT,
        )
        .await?;
        for (digest, _) in [&fx.small, &fx.large] {
            let url = format!("{base}{}", Fixture::blob_path(digest));
            http::get_checked(&client, &url, None, digest, FETCH_TIMEOUT).await?;
        }
        Ok::<_, String>(())
    })
    .map_err(|e| format!("warming {}: {e}", server.name))?;
    if server.name == "distribution" {
        for (digest, _) in [&fx.small, &fx.large] {
            wait_for_distribution(server, digest)?;
        }
    }
    Ok(())
}

/// Waits until distribution has stored `digest` (see
/// [`servers::distribution_has_blob`]).
fn wait_for_distribution(server: &Server, digest: &str) -> Result<(), String> {
    let deadline = Instant::now() + FETCH_TIMEOUT;
    while !servers::distribution_has_blob(server, REPO, digest) {
        procs::check_interrupted()?;
        if Instant::now() > deadline {
            return Err(format!(
                "distribution did not store {digest} within {FETCH_TIMEOUT:?}; its log:\n{}",
                server.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// One endpoint and how hard to load it.
struct Scenario {
    label: &'static str,
    path: String,
    load: wrk::Load,
    bytes: bool,
    goal: Goal,
}

fn scenarios(fx: &Fixture, seconds: u64) -> Vec<Scenario> {
    let load = |connections, timeout, headers: &[&str]| wrk::Load {
        threads: 2,
        connections,
        seconds,
        timeout: Duration::from_secs(timeout),
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
    };
    let accept = format!("Accept: {ACCEPT}");
    vec![
        Scenario {
            label: "manifest by tag",
            path: Fixture::manifest_path(),
            load: load(32, 5, &[&accept]),
            bytes: false,
            goal: Goal::CpuAtMost(1.5),
        },
        Scenario {
            label: "manifest by digest",
            path: Fixture::manifest_digest_path(&fx.manifest_digest),
            load: load(32, 5, &[&accept]),
            bytes: false,
            goal: Goal::None,
        },
        Scenario {
            label: "100 KiB blob",
            path: Fixture::blob_path(&fx.small.0),
            load: load(32, 5, &[]),
            bytes: false,
            goal: Goal::CpuAtMost(1.0),
        },
        Scenario {
            label: "200 MB blob",
            path: Fixture::blob_path(&fx.large.0),
            load: load(4, 60, &[]),
            bytes: true,
            goal: Goal::ThroughputAtLeast(1.0),
        },
    ]
}

/// Runs wrk for `scenario` against `server` (after an unreported 1 s
/// warm-up run when `warm_up`), recording the upstream requests the simulator sees
/// meanwhile, including stragglers the server still sends after wrk stopped
/// (so they are not blamed on the next run).
fn measure(
    tools: &Tools,
    sim: &HubSim,
    scenario: &Scenario,
    server: &Server,
    warm_up: bool,
) -> Measured {
    let url = format!("{}{}", server.url, scenario.path);
    let output = server
        .dir()
        .join(format!("wrk-{}.txt", scenario.label.replace(' ', "-")));
    if warm_up {
        let load = wrk::Load {
            seconds: 1,
            ..scenario.load.clone()
        };
        let _ = wrk::run(&tools.wrk, &url, &load, &output);
    }
    settle(sim);
    let seen = sim.requests().len();
    let cpu = || server.pid().and_then(procstat::cpu_ticks);
    let before = cpu();
    let run = wrk::run(&tools.wrk, &url, &scenario.load, &output);
    let cpu_us_per_request = match (before, cpu(), &run) {
        (Some(before), Some(after), Ok(run)) if run.requests > 0 => {
            let tick_us = 1e6 / procstat::ticks_per_second();
            Some((after - before) as f64 * tick_us / run.requests as f64)
        }
        _ => None,
    };
    settle(sim);
    let upstream: Vec<String> = sim.requests().into_iter().skip(seen).collect();
    match &run {
        Ok(r) => println!(
            "  {:<18} {:<13} {:>10.0} r/s {:>9.1} MB/s",
            scenario.label,
            server.name,
            r.requests_per_sec,
            r.bytes_per_sec / 1e6
        ),
        Err(e) => println!("  {:<18} {:<13} failed: {e}", scenario.label, server.name),
    }
    Measured {
        run,
        cpu_us_per_request,
        upstream,
    }
}

/// Waits (up to 5 s) until the simulator has seen no request for 250 ms.
fn settle(sim: &HubSim) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = sim.counters().total;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = sim.counters().total;
        if now == last {
            return;
        }
        last = now;
    }
}

/// Which sections run: `BENCH_ONLY` unset (or empty) runs them all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    All,
    Http,
    S3,
    Rollout,
    Fleet,
    Redirect,
    Cold,
}

fn only() -> Result<Only, String> {
    match std::env::var("BENCH_ONLY") {
        Err(_) => Ok(Only::All),
        Ok(v) => match v.trim() {
            "" => Ok(Only::All),
            "http" => Ok(Only::Http),
            "s3" => Ok(Only::S3),
            "rollout" => Ok(Only::Rollout),
            "fleet" => Ok(Only::Fleet),
            "redirect" => Ok(Only::Redirect),
            "cold" => Ok(Only::Cold),
            _ => Err(format!(
                "BENCH_ONLY must be `http`, `s3`, `rollout`, `fleet`, `redirect` or `cold` (or \
                 unset for every section), not {v:?}"
            )),
        },
    }
}

fn run() -> Result<(), String> {
    let only = only()?;
    let seconds = bench_seconds()?;
    let rounds = bench_rounds()?;
    procs::raise_open_files_limit()?;
    let binary = procs::pullthrough_binary()?;
    // The simulator only does real work on cold misses: one worker thread.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    procs::handle_signals(&rt);
    println!("pullthrough: {}", binary.display());
    if matches!(only, Only::All | Only::Http | Only::S3) {
        nginx_rows(&rt, &binary, only, seconds, rounds)?;
    }
    if only == Only::Cold {
        // The cold pull alone (also part of `http`), for quick comparisons.
        let sim = rt.block_on(HubSim::start());
        let fx = seed(&sim, 0);
        let cold = cold::run(&rt, &binary, &sim, &fx.small.0, &fx.large, rounds);
        cold::print(&cold);
        cold::print_goals(&cold);
    }
    if matches!(only, Only::All | Only::Rollout) {
        // Only pullthrough takes part; the other servers are stopped.
        rollout::run(&rt, &binary, procs::find_program("nginx").as_deref())?;
    }
    if matches!(only, Only::All | Only::Fleet) {
        fleet::run(&rt, &binary)?;
    }
    if matches!(only, Only::All | Only::Redirect) {
        redirect::run(&rt, &binary)?;
    }
    Ok(())
}

/// The sections compared with nginx: the wrk table, coalescing and the
/// S3 tier.
fn nginx_rows(
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    only: Only,
    seconds: u64,
    rounds: usize,
) -> Result<(), String> {
    let tools = find_tools()?;
    let s3s_fs = s3tier::find_s3s_fs();
    let sim = rt.block_on(HubSim::start());
    let s3_small = s3s_fs.as_ref().map_or(0, |_| s3tier::SMALL_BLOBS);
    let fx = seed(&sim, s3_small);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "load bench: {seconds} s per run, {cores} cores shared by wrk, the servers and the simulator"
    );

    let mut files = vec![
        StaticFile {
            path: Fixture::manifest_path(),
            bytes: &fx.manifest,
        },
        StaticFile {
            path: Fixture::manifest_digest_path(&fx.manifest_digest),
            bytes: &fx.manifest,
        },
        StaticFile {
            path: Fixture::blob_path(&fx.small.0),
            bytes: &fx.small.1,
        },
        StaticFile {
            path: Fixture::blob_path(&fx.large.0),
            bytes: &fx.large.1,
        },
    ];
    // The S3 measurement compares with nginx serving the same small blobs.
    files.extend(fx.s3_small.iter().map(|(digest, bytes)| StaticFile {
        path: Fixture::blob_path(digest),
        bytes,
    }));
    let nginx = servers::with_retries(|| {
        servers::start_nginx(rt, &tools.nginx, &files, DOCKER_MANIFEST_V2)
    })?;
    warm(rt, &nginx, &fx)?;
    if matches!(only, Only::All | Only::Http) {
        http_rows(rt, &tools, &sim, &fx, &nginx, binary, (seconds, rounds))?;
    }
    if only == Only::Http {
        return Ok(());
    }
    match &s3s_fs {
        None => s3tier::print_skipped(),
        Some(s3s_fs) => {
            // The other servers sit idle meanwhile; they have nothing to do
            // with this measurement but the nginx baseline.
            let blobs = s3tier::Blobs {
                large: &fx.large,
                small: &fx.s3_small,
            };
            let result = s3tier::run(rt, s3s_fs, binary, &sim, &nginx, &blobs);
            procs::check_interrupted()?;
            s3tier::print(&result);
            let result = s3cap::run(rt, s3s_fs, &tools.nginx, binary, &sim, &fx.large);
            procs::check_interrupted()?;
            s3cap::print(&result);
        }
    }
    Ok(())
}

/// The wrk table (pullthrough, nginx and distribution warm), the cold
/// pull against a direct fetch, the goals, and the coalescing rows.
fn http_rows(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    sim: &HubSim,
    fx: &Fixture,
    nginx: &Server,
    binary: &std::path::Path,
    (seconds, rounds): (u64, usize),
) -> Result<(), String> {
    let pullthrough =
        servers::with_retries(|| servers::start_pullthrough(rt, binary, &sim.registry_url))?;
    warm(rt, &pullthrough, fx)?;
    let distribution = tools.distribution.as_ref().and_then(|binary| {
        let started =
            servers::with_retries(|| servers::start_distribution(rt, binary, &sim.registry_url))
                .and_then(|server| warm(rt, &server, fx).map(|()| server));
        started
            .map_err(|e| println!("distribution skipped: {e}"))
            .ok()
    });

    println!(
        "\nwrk -t2, {seconds} s each (after 1 s of warm-up in the first round), {rounds} rounds \
         (32 connections; 4 for the 200 MB blob; distribution in the first round only):"
    );
    let scenarios = scenarios(fx, seconds);
    let mut rows: Vec<Row> = scenarios
        .iter()
        .map(|scenario| Row {
            label: scenario.label,
            bytes: scenario.bytes,
            goal: scenario.goal,
            pullthrough: Vec::new(),
            nginx: Vec::new(),
            distribution: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        let first = round == 0;
        for (scenario, row) in scenarios.iter().zip(&mut rows) {
            // Which server goes first alternates, so neither always
            // inherits the other's leftovers (page cache, TIME_WAIT).
            if round % 2 == 0 {
                row.pullthrough
                    .push(measure(tools, sim, scenario, &pullthrough, first));
                row.nginx.push(measure(tools, sim, scenario, nginx, first));
            } else {
                row.nginx.push(measure(tools, sim, scenario, nginx, first));
                row.pullthrough
                    .push(measure(tools, sim, scenario, &pullthrough, first));
            }
            if let Some(server) = distribution.as_ref().filter(|_| first) {
                row.distribution
                    .push(measure(tools, sim, scenario, server, true));
            }
            procs::check_interrupted()?;
        }
    }
    report::print(&rows, rounds);

    println!(
        "\ncold: a fresh replica (token fetched) pulls the {} MB blob, against the same client fetching it \
         from the simulator's CDN directly, {rounds} replicas:",
        LARGE_BLOB / 1_000_000
    );
    let cold = cold::run(rt, binary, sim, &fx.small.0, &fx.large, rounds);
    procs::check_interrupted()?;
    cold::print(&cold);

    println!("\ngoals (issue #20; medians; reported, never enforced: shared machines are noisy):");
    report::print_goals(&rows);
    cold::print_goals(&cold);

    println!(
        "\ncoalescing: {COLD_CLIENTS} concurrent cold GETs of an uncached {} MB blob (target: 1 upstream fetch)",
        COLD_BLOB / 1_000_000
    );
    let result = coalesce::run(rt, sim, &pullthrough, &fx.cold_pullthrough);
    coalesce::print("pullthrough", &result);
    procs::check_interrupted()?;
    if let Some(server) = &distribution {
        let result = coalesce::run(rt, sim, server, &fx.cold_distribution);
        coalesce::print("distribution", &result);
    }
    procs::check_interrupted()
}
