//! Cluster rollout: a fleet of nodes pulls the same new layer in the same
//! second. Each client opens its own connection and GETs one cold 8 MB
//! layer while the simulator's CDN trickles it out at 1 MB/s, so every
//! client joins the one download and waits on it. A pull-through cache
//! should then cost what one pull costs: one upstream fetch, memory and
//! threads that do not grow with the number of clients, and warm requests
//! (from the memory tier and from disk) answered as fast as when idle.
//!
//! Each fleet size gets a fresh pullthrough process (its idle figures are
//! not skewed by the previous burst) and its own never-fetched layer. The
//! process's `RssAnon` and `Threads` are sampled from `/proc` every 20 ms;
//! a prober on its own thread times sequential warm GETs, each on a fresh
//! connection, first idle and then during the burst. The same burst is then
//! played against nginx (see `ceiling`), the practical ceiling.
//!
//! The fleet rollout (`fleet`) plays the same bursts against three
//! replicas, with the constants and helpers made public here.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::probe::{self, Target, Timings};
use super::procstat::{self, Peak, Sampler};
use super::servers::{self, Server};
use super::support::hubsim::{HubSim, SimOptions};
use super::{Fixture, ceiling, http, procs, report};

/// Clients per burst, one burst each.
pub const FLEETS: [usize; 2] = [1_000, 2_000];
/// The cold layer every client of a burst asks for.
pub const LAYER: usize = 8_000_000;
/// The CDN's pace: the download takes 8 s, long enough for all to join.
pub const UPSTREAM_BYTES_PER_SEC: u64 = 1_000_000;
/// Warm blob answered from the memory tier (under its 1 MiB object limit).
pub const MEMORY_BLOB: usize = 64 * 1024;
/// Warm blob answered from disk (over the memory tier's object limit).
pub const DISK_BLOB: usize = 4 * 1024 * 1024;
/// Prober rounds (one GET of each warm blob) before the burst.
pub const IDLE_ROUNDS: usize = 200;
/// Most prober rounds during the burst, and the pause between two.
pub const BURST_ROUNDS: usize = 300;
pub const BURST_PAUSE: Duration = Duration::from_millis(20);
/// How often `/proc/<pid>/status` is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Bound on one client's whole answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);
/// Worker threads of the clients' runtime (they check every byte).
const CLIENT_THREADS: usize = 2;
/// File descriptors each side needs besides one per client.
pub const SPARE_FILES: u64 = 512;
pub const ANON_TARGET: u64 = 256 * 1024 * 1024;
pub const THREADS_TARGET: u64 = 100;
pub const P99_TARGET: f64 = 2.0;

/// What one burst cost.
struct Fleet {
    clients: usize,
    upstream_fetches: u64,
    clients_ok: usize,
    errors: Vec<String>,
    elapsed: Duration,
    idle_anon: u64,
    peak: Peak,
    idle: Timings,
    burst: Timings,
    /// `hit-memory` and `hit-disk` answers pullthrough counted for the idle
    /// probes, to show each warm blob came from the tier it stands for.
    idle_hits: (u64, u64),
    /// What explains an upstream fetch count other than 1.
    notes: Vec<String>,
}

/// Runs one burst per fleet size against fresh pullthrough processes in
/// front of a throttled simulator of its own, printing each as it ends.
pub fn run(
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    nginx: Option<&std::path::Path>,
) -> Result<(), String> {
    let sim = rt.block_on(HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(UPSTREAM_BYTES_PER_SEC),
        ..SimOptions::default()
    }));
    let memory = seed_blob(&sim, MEMORY_BLOB, 70);
    let disk = seed_blob(&sim, DISK_BLOB, 71);
    let warm = [(memory.0.as_str(), &memory.1), (disk.0.as_str(), &disk.1)];
    let open_files = procs::raise_open_files_limit()?;
    println!(
        "\ncluster rollout: N clients, each on its own connection, GET one cold {} MB layer \
         (upstream {:.1} MB/s) while one prober makes sequential warm GETs on fresh connections \
         of a {} KiB blob (memory tier) and a {} MiB blob (disk); open files limit {open_files}",
        LAYER / 1_000_000,
        UPSTREAM_BYTES_PER_SEC as f64 / 1e6,
        MEMORY_BLOB / 1024,
        DISK_BLOB / (1024 * 1024),
    );
    println!(
        "  targets: 1 upstream fetch; RssAnon growth < {} MiB at {}; < {THREADS_TARGET} threads; \
         warm p99 during the burst < {P99_TARGET}x idle p99",
        ANON_TARGET >> 20,
        FLEETS[FLEETS.len() - 1]
    );
    for (i, clients) in FLEETS.into_iter().enumerate() {
        procs::check_interrupted()?;
        if clients as u64 + SPARE_FILES > open_files {
            println!("  {clients} clients: skipped, the open files limit is {open_files}");
            continue;
        }
        let layer = super::support::random_bytes(LAYER, 72 + i as u64);
        match run_fleet(rt, binary, &sim, clients, &layer, [&memory.0, &disk.0]) {
            Ok(fleet) => print(&fleet),
            Err(e) => println!("  {clients} clients: failed: {e}"),
        }
        let Some(nginx) = nginx else {
            continue;
        };
        let plan = ceiling::Plan {
            clients,
            layer: &layer,
            bytes_per_sec: UPSTREAM_BYTES_PER_SEC,
            warm,
            rounds: (IDLE_ROUNDS, BURST_ROUNDS, BURST_PAUSE),
        };
        let client_rt = clients_runtime()?;
        let ceiling = ceiling::run(rt, nginx, &plan, |url| {
            burst(&client_rt, &[url.to_owned()], &layer, clients)
        });
        match ceiling {
            Ok(ceiling) => print_ceiling(&ceiling, clients),
            Err(e) => println!("    nginx, the same burst: failed: {e}"),
        }
    }
    if nginx.is_none() {
        println!("  nginx is not installed: no ceiling to compare with (Debian: nginx-light)");
    }
    Ok(())
}

/// Stores `len` seeded random bytes in the simulator; returns the digest
/// and the bytes.
pub fn seed_blob(sim: &HubSim, len: usize, seed: u64) -> (String, Bytes) {
    let bytes: Bytes = super::support::random_bytes(len, seed);
    (sim.put_blob(bytes.clone()), bytes)
}

pub fn target(server: &Server, digest: &str) -> Target {
    Target {
        url: format!("{}{}", server.url, Fixture::blob_path(digest)),
        digest: digest.to_owned(),
    }
}

/// One burst of `clients` GETs of the cold `layer` against a fresh
/// pullthrough, with `warm` (the memory and the disk blob) probed idle
/// first and then during the burst.
fn run_fleet(
    rt: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    sim: &HubSim,
    clients: usize,
    layer: &Bytes,
    warm: [&str; 2],
) -> Result<Fleet, String> {
    let server =
        servers::with_retries(|| servers::start_pullthrough(rt, binary, &sim.registry_url))?;
    let pid = server.pid().ok_or("pullthrough exited after start-up")?;
    let Warm {
        targets,
        idle,
        idle_hits,
    } = probe_idle(rt, &server, warm)?;
    let client_rt = clients_runtime()?;
    let idle_anon = procstat::read(pid)?.anon_bytes;

    sim.reset_counters();
    let sampler = Sampler::start(pid, SAMPLE_EVERY);
    let prober = probe::Background::start(targets, BURST_ROUNDS, BURST_PAUSE);
    let started = Instant::now();
    let layer_url = target(&server, &sim.put_blob(layer.clone())).url;
    let results = burst(&client_rt, &[layer_url], layer, clients);
    let elapsed = started.elapsed();
    let burst = prober.finish();
    let peak = sampler.finish();
    // A late duplicate fetch would show up within moments.
    std::thread::sleep(Duration::from_millis(200));
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    let upstream = sim.requests();
    let upstream_fetches = sim.counters().cdn_gets;
    let mut notes = Vec::new();
    if upstream_fetches != 1 {
        notes.push(format!(
            "upstream requests: {}",
            report::summarise(&upstream)
        ));
        notes.extend(
            server
                .log_warnings(10)
                .into_iter()
                .map(|l| format!("pullthrough log: {l}")),
        );
    }
    Ok(Fleet {
        clients,
        upstream_fetches,
        clients_ok: clients - errors.len(),
        errors,
        elapsed,
        idle_anon,
        peak,
        idle,
        burst,
        idle_hits,
        notes,
    })
}

/// The warm blobs' targets on `server`, and their idle timings.
pub struct Warm {
    pub targets: Vec<Target>,
    pub idle: Timings,
    /// `hit-memory` and `hit-disk` answers `server` counted for the idle
    /// probes, to show each warm blob came from the tier it stands for.
    pub idle_hits: (u64, u64),
}

/// Warms `warm` (the memory and the disk blob) on `server`, then probes
/// them `IDLE_ROUNDS` times while nothing else goes on.
pub fn probe_idle(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    warm: [&str; 2],
) -> Result<Warm, String> {
    let targets: Vec<Target> = warm.iter().map(|d| target(server, d)).collect();
    // Twice: the second answer comes from wherever the first one put it.
    let warming = probe::run(&targets, 2);
    if let Some(e) = warming.errors.first() {
        return Err(format!("warming: {e}"));
    }
    let before = tier_hits(rt, server)?;
    let idle = probe::run(&targets, IDLE_ROUNDS);
    // The last answer may be counted just after its client has read it.
    std::thread::sleep(Duration::from_millis(100));
    let after = tier_hits(rt, server)?;
    Ok(Warm {
        targets,
        idle,
        idle_hits: (
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        ),
    })
}

/// The runtime the burst's clients run on.
pub fn clients_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .on_thread_start(lowest_priority)
        .enable_all()
        .build()
        .map_err(|e| format!("clients' runtime: {e}"))
}

/// The clients stand in for nodes on other machines: on this shared
/// machine their threads run under `SCHED_IDLE`, so their receiving and
/// checking of gigabytes only uses CPU that the server and the prober leave
/// idle (a waking normal thread preempts an idle-class one at once, where a
/// nice-19 thread may first run out its slice).
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: only changes the calling thread's scheduling class (`pid` 0
    // names the calling thread on Linux); `param` outlives the call.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}

/// `clients` concurrent GETs of `layer`, each on its own connection, spread
/// round-robin over `urls` (client `i` asks `urls[i % urls.len()]`), each
/// comparing the body with `layer` as it streams in. The results are in
/// the clients' order.
pub fn burst(
    rt: &tokio::runtime::Runtime,
    urls: &[String],
    layer: &Bytes,
    clients: usize,
) -> Vec<Result<u64, String>> {
    let client = http::client();
    rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let url = urls[i % urls.len()].clone();
                let (client, layer) = (client.clone(), layer.clone());
                tokio::spawn(async move {
                    http::get_compared(&client, &url, &layer, CLIENT_TIMEOUT).await
                })
            })
            .collect();
        let mut results = Vec::with_capacity(clients);
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|e| Err(format!("client task: {e}"))),
            );
        }
        results
    })
}

/// pullthrough's own count of `hit-memory` and `hit-disk` answers so far.
fn tier_hits(rt: &tokio::runtime::Runtime, server: &Server) -> Result<(u64, u64), String> {
    let text = server.metrics(rt)?;
    let count = |outcome| {
        super::support::metric_sum(&text, "pullthrough_requests_total", &[("outcome", outcome)])
            as u64
    };
    Ok((count("hit-memory"), count("hit-disk")))
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print(f: &Fleet) {
    println!(
        "  {} clients: {} upstream fetch(es); {}/{} clients with correct bytes; wall {:.2} s",
        f.clients,
        f.upstream_fetches,
        f.clients_ok,
        f.clients,
        f.elapsed.as_secs_f64()
    );
    println!(
        "    pullthrough: RssAnon peak +{:.1} MiB over {:.1} MiB idle; peak {} threads ({} samples)",
        mib(f.peak.anon_bytes.saturating_sub(f.idle_anon)),
        mib(f.idle_anon),
        f.peak.threads,
        f.peak.samples
    );
    print_warm(&f.idle, &f.burst, f.idle_hits);
    for note in &f.notes {
        println!("    {note}");
    }
    for e in f.errors.iter().take(5) {
        println!("    client error: {e}");
    }
    if f.errors.len() > 5 {
        println!("    ... and {} more client errors", f.errors.len() - 5);
    }
}

fn print_ceiling(c: &ceiling::Ceiling, clients: usize) {
    println!(
        "    nginx, the same burst (the layer a static file sent at {:.1} MB/s to each client): \
         {}/{clients} clients with correct bytes; wall {:.2} s",
        UPSTREAM_BYTES_PER_SEC as f64 / 1e6,
        c.clients_ok,
        c.elapsed.as_secs_f64()
    );
    for (i, label) in ["memory", "disk"].into_iter().enumerate() {
        print_latency(label, &c.idle.seconds[i], &c.burst.seconds[i]);
    }
    for e in c.idle.errors.iter().chain(&c.burst.errors).take(3) {
        println!("    warm request error: {e}");
    }
}

/// Each warm blob's idle and in-burst percentiles and p99 ratio, a note
/// if a blob was not answered from its tier when idle, and the first
/// failed warm requests.
pub fn print_warm(idle: &Timings, burst: &Timings, idle_hits: (u64, u64)) {
    for (i, (label, hits)) in [("memory", idle_hits.0), ("disk", idle_hits.1)]
        .into_iter()
        .enumerate()
    {
        print_latency(label, &idle.seconds[i], &burst.seconds[i]);
        if hits != IDLE_ROUNDS as u64 {
            println!(
                "      note: pullthrough counted {hits} of the {IDLE_ROUNDS} idle {label} probes as hit-{label}"
            );
        }
    }
    for e in idle.errors.iter().chain(&burst.errors).take(3) {
        println!("    warm request error: {e}");
    }
}

/// One warm blob's idle and in-burst percentiles, and the p99 ratio.
fn print_latency(label: &str, idle: &[f64], burst: &[f64]) {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{:.2} ms", s * 1e3));
    let (idle_p99, burst_p99) = (
        probe::percentile(idle, 99.0),
        probe::percentile(burst, 99.0),
    );
    let ratio = match (idle_p99, burst_p99) {
        (Some(i), Some(b)) if i > 0.0 => format!("{:.1}x", b / i),
        _ => "-".to_owned(),
    };
    println!(
        "    warm {label:<6} idle p50 {} p99 {} (n={}); during burst p50 {} p99 {} (n={}); p99 {ratio} idle",
        ms(probe::percentile(idle, 50.0)),
        ms(idle_p99),
        idle.len(),
        ms(probe::percentile(burst, 50.0)),
        ms(burst_p99),
        burst.len(),
    );
}
