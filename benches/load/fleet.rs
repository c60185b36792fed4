//! Fleet rollout: the cluster rollout of `rollout`, played against three
//! pullthrough replicas told of each other (`--peers`, `--advertise` and a
//! shared `PULLTHROUGH_CLUSTER_SECRET`), with the clients spread
//! round-robin over them. Each key has one owner among the replicas, and
//! only the owner fetches it upstream; the other two ask the owner and
//! stream its answer to their clients. So the whole fleet should cost what
//! one pull costs: one upstream download of the layer (its bytes fetched
//! once, 1.0x the layer), the layer sent twice between replicas (once to
//! each replica that does not own it), and on each replica memory and
//! threads that do not grow with the number of clients.
//!
//! Each fleet size gets a fresh fleet and its own never-fetched layer. The
//! bursts, the prober (on the first replica) and the sampling of each
//! replica's `RssAnon` and `Threads` are those of `rollout`; the fleet is
//! used only once every replica counts the two others as up (a replica
//! that started first found the others not yet listening, and passes them
//! over until its next probe).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::probe::Timings;
use super::procstat::{self, Peak, Sampler};
use super::rollout::{self, Warm};
use super::servers::{self, Server};
use super::support::hubsim::{HubSim, SimOptions};
use super::support::metric_sum;
use super::{Fixture, probe, procs, report};

/// Replicas in the fleet, by name.
const REPLICAS: [&str; 3] = ["replica-0", "replica-1", "replica-2"];
/// The cluster secret the replicas share.
const SECRET: &str = "bench-fleet-secret-0123456789";
/// How long the replicas get to count each other as up; they probe every
/// 2 s.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// Upstream bytes aimed for, as a multiple of the layer.
const UPSTREAM_BYTES_TARGET: f64 = 1.05;
/// Log lines of each replica shown when something is off.
const LOG_LINES: usize = 8;

/// One replica's peer counters (from `/metrics`) at one moment.
#[derive(Clone, Copy, Default)]
struct PeerCounters {
    /// Blob bytes received from owners.
    received: f64,
    /// Blob requests sent to owners, and those answered.
    sent: f64,
    sent_ok: f64,
    /// Blob requests answered for other replicas.
    served: f64,
    /// Keys fetched locally because an owner could not answer.
    fallbacks: f64,
    /// Members this replica counts as up (itself not included).
    up: f64,
}

impl PeerCounters {
    fn read(text: &str) -> PeerCounters {
        let blob = [("kind", "blob")];
        PeerCounters {
            received: metric_sum(text, "pullthrough_peer_received_bytes_total", &[]),
            sent: metric_sum(text, "pullthrough_peer_requests_sent_total", &blob),
            sent_ok: metric_sum(
                text,
                "pullthrough_peer_requests_sent_total",
                &[("kind", "blob"), ("result", "ok")],
            ),
            served: metric_sum(text, "pullthrough_peer_requests_served_total", &blob),
            fallbacks: metric_sum(text, "pullthrough_peer_fallbacks_total", &[]),
            up: metric_sum(text, "pullthrough_cluster_members", &[("state", "up")]),
        }
    }

    /// What happened between `self` and `later` (`up` as it is later).
    fn until(&self, later: &PeerCounters) -> PeerCounters {
        PeerCounters {
            received: later.received - self.received,
            sent: later.sent - self.sent,
            sent_ok: later.sent_ok - self.sent_ok,
            served: later.served - self.served,
            fallbacks: later.fallbacks - self.fallbacks,
            up: later.up,
        }
    }
}

/// What one replica did during a burst.
struct Replica {
    name: &'static str,
    clients: usize,
    errors: usize,
    idle_anon: u64,
    peak: Peak,
    peer: PeerCounters,
}

/// What one burst cost the fleet.
struct Burst {
    clients: usize,
    upstream_fetches: u64,
    upstream_bytes: u64,
    clients_ok: usize,
    errors: Vec<String>,
    elapsed: Duration,
    /// From the first replica's start to every replica counting the others
    /// as up.
    formed: Duration,
    replicas: Vec<Replica>,
    idle: Timings,
    burst: Timings,
    idle_hits: (u64, u64),
    /// What explains figures off their goal.
    notes: Vec<String>,
}

impl Burst {
    /// Bytes the replicas received from owners, in all.
    fn between_replicas(&self) -> f64 {
        self.replicas.iter().map(|r| r.peer.received).sum()
    }

    /// Anything a healthy fleet would not show: more than one download,
    /// failed clients, owners that could not answer, replicas that lost
    /// sight of each other.
    fn misbehaved(&self) -> bool {
        let others = (REPLICAS.len() - 1) as f64;
        self.upstream_fetches != 1
            || self.upstream_bytes as f64 > rollout::LAYER as f64 * UPSTREAM_BYTES_TARGET
            || !self.errors.is_empty()
            || self.replicas.iter().any(|r| {
                r.peer.fallbacks > 0.0 || r.peer.sent != r.peer.sent_ok || r.peer.up != others
            })
    }
}

/// Runs one burst per fleet size (those of `rollout`) against fresh
/// fleets in front of a throttled simulator of its own, printing each as
/// it ends.
pub fn run(rt: &tokio::runtime::Runtime, binary: &Path) -> Result<(), String> {
    let sim = rt.block_on(HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(rollout::UPSTREAM_BYTES_PER_SEC),
        ..SimOptions::default()
    }));
    let memory = rollout::seed_blob(&sim, rollout::MEMORY_BLOB, 80);
    let disk = rollout::seed_blob(&sim, rollout::DISK_BLOB, 81);
    let open_files = procs::raise_open_files_limit()?;
    println!(
        "\nfleet rollout: {} replicas told of each other; N clients, each on its own connection, \
         spread round-robin over them, GET one cold {} MB layer (upstream {:.1} MB/s) while one \
         prober makes sequential warm GETs on fresh connections of a {} KiB blob (memory tier) \
         and a {} MiB blob (disk) from {}; open files limit {open_files}",
        REPLICAS.len(),
        rollout::LAYER / 1_000_000,
        rollout::UPSTREAM_BYTES_PER_SEC as f64 / 1e6,
        rollout::MEMORY_BLOB / 1024,
        rollout::DISK_BLOB / (1024 * 1024),
        REPLICAS[0],
    );
    println!(
        "  targets: 1 upstream download, upstream bytes <= {UPSTREAM_BYTES_TARGET:.2}x the layer \
         (goal 1.00x); per replica RssAnon growth < {} MiB at {} and < {} threads; warm p99 \
         during the burst < {}x idle p99",
        rollout::ANON_TARGET >> 20,
        rollout::FLEETS[rollout::FLEETS.len() - 1],
        rollout::THREADS_TARGET,
        rollout::P99_TARGET,
    );
    for (i, clients) in rollout::FLEETS.into_iter().enumerate() {
        procs::check_interrupted()?;
        if clients as u64 + rollout::SPARE_FILES > open_files {
            println!("  {clients} clients: skipped, the open files limit is {open_files}");
            continue;
        }
        let layer = super::support::random_bytes(rollout::LAYER, 82 + i as u64);
        match run_burst(rt, binary, &sim, clients, &layer, [&memory.0, &disk.0]) {
            Ok(burst) => print(&burst),
            Err(e) => println!("  {clients} clients: failed: {e}"),
        }
    }
    Ok(())
}

/// Starts one replica per name on ports chosen beforehand, each told of
/// all of them and of its own URL.
fn start_fleet(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    upstream: &str,
) -> Result<Vec<Server>, String> {
    let mut ports = Vec::new();
    while ports.len() < REPLICAS.len() {
        let port = procs::free_port()?;
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let peers = urls.join(",");
    let env = [("PULLTHROUGH_CLUSTER_SECRET", SECRET)];
    REPLICAS
        .iter()
        .zip(ports.iter().zip(&urls))
        .map(|(name, (port, url))| {
            let extra = [
                "--peers".to_owned(),
                peers.clone(),
                "--advertise".to_owned(),
                url.clone(),
            ];
            servers::start_pullthrough_on(rt, binary, upstream, name, *port, &extra, &env)
        })
        .collect()
}

/// Waits until every replica counts every other one as up.
fn wait_formed(rt: &tokio::runtime::Runtime, fleet: &[Server]) -> Result<(), String> {
    let others = (fleet.len() - 1) as f64;
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        procs::check_interrupted()?;
        let mut waiting = Vec::new();
        for server in fleet {
            let text = server.metrics(rt)?;
            let up = metric_sum(&text, "pullthrough_cluster_members", &[("state", "up")]);
            if up != others {
                waiting.push(format!("{} counts {up} up", server.name));
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the fleet did not form within {FORM_TIMEOUT:?} ({}); {}",
                waiting.join(", "),
                log_excerpts(fleet)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every replica's peer counters, in the fleet's order.
fn peer_counters(
    rt: &tokio::runtime::Runtime,
    fleet: &[Server],
) -> Result<Vec<PeerCounters>, String> {
    fleet
        .iter()
        .map(|s| s.metrics(rt).map(|t| PeerCounters::read(&t)))
        .collect()
}

/// One burst of `clients` GETs of the cold `layer` spread over a fresh
/// fleet, with `warm` (the memory and the disk blob) probed on the first
/// replica idle first and then during the burst.
fn run_burst(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    sim: &HubSim,
    clients: usize,
    layer: &Bytes,
    warm: [&str; 2],
) -> Result<Burst, String> {
    let starting = Instant::now();
    let fleet = servers::with_retries(|| start_fleet(rt, binary, &sim.registry_url))?;
    wait_formed(rt, &fleet)?;
    let formed = starting.elapsed();
    let pids = fleet
        .iter()
        .map(|s| s.pid().ok_or(format!("{} exited after start-up", s.name)))
        .collect::<Result<Vec<u32>, String>>()?;
    let Warm {
        targets,
        idle,
        idle_hits,
    } = rollout::probe_idle(rt, &fleet[0], warm)?;
    let client_rt = rollout::clients_runtime()?;
    let before = peer_counters(rt, &fleet)?;
    let idle_anon = pids
        .iter()
        .map(|pid| procstat::read(*pid).map(|s| s.anon_bytes))
        .collect::<Result<Vec<u64>, String>>()?;

    sim.reset_counters();
    let samplers: Vec<Sampler> = pids
        .iter()
        .map(|pid| Sampler::start(*pid, rollout::SAMPLE_EVERY))
        .collect();
    let prober = probe::Background::start(targets, rollout::BURST_ROUNDS, rollout::BURST_PAUSE);
    let started = Instant::now();
    let path = Fixture::blob_path(&sim.put_blob(layer.clone()));
    let urls: Vec<String> = fleet.iter().map(|s| format!("{}{path}", s.url)).collect();
    let results = rollout::burst(&client_rt, &urls, layer, clients);
    let elapsed = started.elapsed();
    let burst = prober.finish();
    let peaks: Vec<Peak> = samplers.into_iter().map(Sampler::finish).collect();
    // A late duplicate fetch would show up within moments.
    std::thread::sleep(Duration::from_millis(200));
    let after = peer_counters(rt, &fleet)?;
    let counters = sim.counters();

    let mut replicas = Vec::new();
    for (i, server) in fleet.iter().enumerate() {
        let mine = results.iter().skip(i).step_by(fleet.len());
        replicas.push(Replica {
            name: server.name,
            clients: mine.clone().count(),
            errors: mine.filter(|r| r.is_err()).count(),
            idle_anon: idle_anon[i],
            peak: peaks[i],
            peer: before[i].until(&after[i]),
        });
    }
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    let mut burst = Burst {
        clients,
        upstream_fetches: counters.cdn_gets,
        upstream_bytes: counters.cdn_bytes,
        clients_ok: clients - errors.len(),
        errors,
        elapsed,
        formed,
        replicas,
        idle,
        burst,
        idle_hits,
        notes: Vec::new(),
    };
    if burst.misbehaved() {
        burst.notes.push(format!(
            "upstream requests: {}",
            report::summarise(&sim.requests())
        ));
        burst.notes.push(log_excerpts(&fleet));
    }
    Ok(burst)
}

/// Each replica's first warnings and errors, and where a copy of every
/// replica's whole log is kept (the fleet's directories go with it).
fn log_excerpts(fleet: &[Server]) -> String {
    let mut text = match keep_logs(fleet) {
        Ok(dir) => format!("replica logs kept in {}", dir.display()),
        Err(e) => format!("replica logs not kept: {e}"),
    };
    for server in fleet {
        let lines = server.log_warnings(LOG_LINES);
        let _ = write!(
            text,
            "\n      {}: {} warning(s)/error(s) shown",
            server.name,
            lines.len()
        );
        for line in lines {
            let _ = write!(text, "\n        | {line}");
        }
    }
    text
}

/// Copies every replica's log into a new directory that outlives the bench.
fn keep_logs(fleet: &[Server]) -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix("bench-fleet-logs-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory: {e}"))?
        .keep();
    for server in fleet {
        let to = dir.join(format!("{}.log", server.name));
        std::fs::copy(server.log_path(), &to)
            .map_err(|e| format!("{} to {}: {e}", server.log_path().display(), to.display()))?;
    }
    Ok(dir)
}

fn print(b: &Burst) {
    let layer = rollout::LAYER as f64;
    println!(
        "  {} clients: {} upstream download(s), upstream bytes {:.2}x the layer; {}/{} clients \
         with correct bytes; wall {:.2} s (fleet formed in {:.1} s)",
        b.clients,
        b.upstream_fetches,
        b.upstream_bytes as f64 / layer,
        b.clients_ok,
        b.clients,
        b.elapsed.as_secs_f64(),
        b.formed.as_secs_f64(),
    );
    let sum = |f: fn(&PeerCounters) -> f64| b.replicas.iter().map(|r| f(&r.peer)).sum::<f64>();
    println!(
        "    between replicas: {:.1} MB received from owners = {:.2}x the layer (goal {}.00x, \
         once to each non-owner); blob requests to owners {} ({} answered), served {}; \
         fallbacks {}",
        b.between_replicas() / 1e6,
        b.between_replicas() / layer,
        REPLICAS.len() - 1,
        sum(|p| p.sent),
        sum(|p| p.sent_ok),
        sum(|p| p.served),
        sum(|p| p.fallbacks),
    );
    for r in &b.replicas {
        let role = if r.peer.served > 0.0 { " (owner)" } else { "" };
        println!(
            "    {}{role}: {} clients, {} errors; RssAnon peak +{:.1} MiB over {:.1} MiB idle; \
             peak {} threads ({} samples); {:.1} MB from owners; sees {} up",
            r.name,
            r.clients,
            r.errors,
            rollout::mib(r.peak.anon_bytes.saturating_sub(r.idle_anon)),
            rollout::mib(r.idle_anon),
            r.peak.threads,
            r.peak.samples,
            r.peer.received / 1e6,
            r.peer.up,
        );
    }
    rollout::print_warm(&b.idle, &b.burst, b.idle_hits);
    for note in &b.notes {
        println!("    {note}");
    }
    for e in b.errors.iter().take(5) {
        println!("    client error: {e}");
    }
    if b.errors.len() > 5 {
        println!("    ... and {} more client errors", b.errors.len() - 5);
    }
}
