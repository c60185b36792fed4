//! Chaos soak: three replicas and one bucket, for a bounded time, while
//! everything around them fails on a schedule: the bucket answers slowly,
//! throttles, and resets connections mid-body (a faulty proxy in front of
//! s3s-fs); upstream flaps, then goes away for a while; one replica is
//! killed with SIGKILL and started again on its port and data; another's
//! disk (a small tmpfs) fills up. Clients pull images cached before the
//! chaos began, and new ones pushed during it, through replicas picked at
//! random, checking every byte against its digest.
//!
//! What no client may ever see: a complete `200` with wrong bytes, or any
//! failure on content that was cached before the chaos began. A request
//! refused by the killed replica, or cut off when it died, is tried again
//! on another replica, as a node behind a load balancer would: counted,
//! not failed. New content may fail while upstream is down: counted apart.
//!
//! `CHAOS_SECS` sets the length of the chaos (default 48); run with
//! `--nocapture` to see the figures: requests, what went wrong by kind,
//! faults met, and each replica's peak `RssAnon`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use support::client::{Client, DOCKERD_ACCEPT};
use support::disk::{Tmpfs, assert_objects_whole};
use support::faulty_s3::{FaultyS3, S3Fault};
use support::fleet::{Fleet, data_dir, url};
use support::hubsim::{Fault, FaultTarget, HubSim, SimImage, SimOptions};
use support::process::rss_anon;
use support::random_bytes;
use support::registry::free_port;
use support::s3::{S3Server, SECRET_KEY, aws_env};

const REPLICAS: usize = 3;
const CLIENTS: usize = 8;
const WARM_IMAGES: u64 = 10;
/// The replica killed with SIGKILL and started again.
const KILLED: usize = 1;
/// The replica whose data directory is a small tmpfs that fills.
const FILLED: usize = 2;
const BUCKET: &str = "chaos";
/// A new image upstream this often; clients pull the newest as new content.
const NEW_IMAGE_EVERY: Duration = Duration::from_secs(1);

/// One step of the chaos.
#[derive(Clone, Copy, Debug)]
enum Step {
    S3(S3Fault),
    /// These upstream faults, each for the next `n` requests it hits.
    Upstream(&'static [(FaultTarget, Fault, usize)]),
    /// Every upstream request fails with 503 until `OutageEnds`.
    Outage,
    OutageEnds,
    Kill,
    Restart,
    FillDisk,
    FreeDisk,
}

/// Upstream flapping: errors, and bodies cut off, a few at a time.
const FLAPS: &[(FaultTarget, Fault, usize)] = &[
    (FaultTarget::Manifests, Fault::ServiceUnavailable, 3),
    (FaultTarget::Blobs, Fault::ResetAtPercent(50), 3),
    (FaultTarget::All, Fault::InternalError, 2),
    (FaultTarget::Blobs, Fault::ResetMidBody, 2),
];

/// The schedule: one line a phase, phases of equal length. The bucket
/// and upstream never fail in the same phase, nor in phases next to each
/// other (a download begun in one phase may end in the next): with both
/// failing, cached content that no replica holds on its disk any more has
/// no source left.
const SCHEDULE: [&[Step]; 12] = [
    &[],
    &[Step::S3(S3Fault::Slow(Duration::from_millis(400)))],
    &[Step::S3(S3Fault::Failing)],
    &[Step::S3(S3Fault::ResettingBodies)],
    &[Step::S3(S3Fault::None), Step::Kill],
    &[Step::Upstream(FLAPS), Step::Restart],
    &[Step::FillDisk],
    &[Step::S3(S3Fault::ResettingBodies)],
    &[Step::S3(S3Fault::None)],
    &[Step::Outage],
    &[Step::OutageEnds],
    &[Step::S3(S3Fault::Failing), Step::FreeDisk],
];

/// What the clients saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    wrong_bytes: AtomicU64,
    cached_errors: AtomicU64,
    new_errors: AtomicU64,
    /// Failures and retries, by what happened.
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn note(&self, kind: String) {
        *self.kinds.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// Everything the clients share.
struct Load {
    /// A client per replica; the killed one's is replaced when it is
    /// killed, so that no connection to the dead process is used again.
    replicas: Vec<Mutex<Client>>,
    warm: Vec<SimImage>,
    newest: Mutex<Option<SimImage>>,
    /// Odd while the killed replica is being killed; a request it was
    /// answering saw this change, or odd, when it broke.
    kills: AtomicU64,
    tally: Tally,
    began: Instant,
}

/// Why a GET has no answer to check.
fn broken(error: &reqwest::Error) -> &'static str {
    match error {
        e if e.is_timeout() => "timed out",
        e if e.is_body() || e.is_decode() => "body cut off",
        e if e.is_request() => "no answer",
        _ => "broken",
    }
}

impl Load {
    /// GETs `path` from replica `first`, and from the next one whenever
    /// the one asked refuses the connection (down) or was killed while it
    /// answered: a load balancer's retry. The status and the body's
    /// digest, or why there is none.
    async fn get(
        &self,
        first: usize,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<(u16, String), String> {
        for attempt in 0..REPLICAS {
            let replica = (first + attempt) % REPLICAS;
            let kills = self.kills.load(Ordering::SeqCst);
            let client = self.replicas[replica].lock().unwrap().clone();
            self.tally.requests.fetch_add(1, Ordering::Relaxed);
            let sent = client.send("GET", path, headers.clone()).await;
            let killed = |now: u64| replica == KILLED && (now != kills || now % 2 == 1);
            match sent {
                Ok(answer) => return Ok((answer.status, answer.body_digest())),
                Err(e) if e.is_connect() => {
                    self.tally
                        .note(format!("retried: replica {replica} refused"));
                }
                Err(_) if killed(self.kills.load(Ordering::SeqCst)) => {
                    self.tally.note("retried: cut off by the kill".to_owned());
                }
                Err(e) => {
                    self.tally
                        .note(format!("{}: replica {replica}", broken(&e)));
                    return Err(format!("{} at replica {replica}: {e:?}", broken(&e)));
                }
            }
        }
        Err("every replica refused".to_owned())
    }

    /// Pulls `image` through replica `first` as a client does (manifest by
    /// tag, then config and layers), checking every answer's digest;
    /// stops at the first failure.
    async fn pull(&self, first: usize, image: &SimImage, cached: bool) {
        let mut accept = HeaderMap::new();
        for value in DOCKERD_ACCEPT {
            accept.append(ACCEPT, HeaderValue::from_static(value));
        }
        let repo = &image.repo;
        let mut wanted = vec![(
            format!("/v2/{repo}/manifests/{}", image.tag),
            &image.manifest_digest,
        )];
        for digest in std::iter::once(&image.config_digest).chain(&image.layer_digests) {
            wanted.push((format!("/v2/{repo}/blobs/{digest}"), digest));
        }
        for (path, digest) in wanted {
            let (failure, detail) = match self.get(first, &path, &accept).await {
                Ok((200, got)) if got == *digest => continue,
                Ok((200, got)) => {
                    self.tally.wrong_bytes.fetch_add(1, Ordering::Relaxed);
                    ("wrong bytes".to_owned(), got)
                }
                Ok((status, _)) => (format!("status {status}"), String::new()),
                Err(why) => ("no answer".to_owned(), why),
            };
            let (what, count) = match cached {
                true => ("cached", &self.tally.cached_errors),
                false => ("new", &self.tally.new_errors),
            };
            count.fetch_add(1, Ordering::Relaxed);
            self.tally.note(format!("{what} failed: {failure}"));
            if cached {
                let at = self.began.elapsed().as_secs_f64();
                eprintln!("chaos: {at:>5.1} s cached {path} via {first}: {failure} {detail}");
            }
            return;
        }
    }
}

/// A small deterministic generator, one per client.
fn next(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

/// Fills the file system of `dir` with a ballast file, up to the last
/// byte it takes.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut ballast = std::fs::File::create(dir.join("ballast")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while ballast.write_all(&chunk).is_ok() {}
    let _ = ballast.write_all(&chunk[..1]);
}

/// Runs the schedule over `fleet` and the stores, one phase every
/// `phase`; starts again any replica it killed.
async fn chaos(fleet: &mut Fleet, hub: &HubSim, s3: &FaultyS3, load: &Load, phase: Duration) {
    let start = tokio::time::Instant::now();
    for (n, steps) in SCHEDULE.iter().enumerate() {
        tokio::time::sleep_until(start + phase * n as u32).await;
        eprintln!(
            "chaos: {:>5.1} s {steps:?}",
            load.began.elapsed().as_secs_f64()
        );
        for step in *steps {
            match *step {
                Step::S3(fault) => s3.set(fault),
                Step::Upstream(faults) => {
                    for (target, fault, times) in faults {
                        hub.set_fault(*target, *fault, Some(*times));
                    }
                }
                Step::Outage => hub.set_fault(FaultTarget::All, Fault::ServiceUnavailable, None),
                Step::OutageEnds => hub.clear_faults(),
                Step::Kill => {
                    let fresh = Client::pooled(&fleet.replicas[KILLED].url);
                    *load.replicas[KILLED].lock().unwrap() = fresh;
                    load.kills.fetch_add(1, Ordering::SeqCst);
                    fleet.kill(KILLED).await;
                    load.kills.fetch_add(1, Ordering::SeqCst);
                }
                Step::Restart => fleet.restart(KILLED).await,
                Step::FillDisk => fill(&data_dir(fleet.dir.path(), FILLED)),
                Step::FreeDisk => {
                    std::fs::remove_file(data_dir(fleet.dir.path(), FILLED).join("ballast"))
                        .unwrap();
                }
            }
        }
    }
    tokio::time::sleep_until(start + phase * SCHEDULE.len() as u32).await;
    s3.set(S3Fault::None);
    hub.clear_faults();
}

/// Checks every object under `prefix` in the bucket against its name.
async fn assert_bucket_whole(s3: &S3Server, prefix: &str) -> usize {
    let keys = s3.keys(BUCKET, prefix).await;
    for key in &keys {
        let hex = key.rsplit('/').next().unwrap();
        let bytes = s3.get(BUCKET, key).await;
        assert_eq!(
            support::sha256_digest(&bytes),
            format!("sha256:{hex}"),
            "{key} in the bucket is whole"
        );
    }
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_never_serves_wrong_bytes_nor_fails_cached_content() {
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    let began = Instant::now();
    let hub = Arc::new(
        HubSim::start_with(SimOptions {
            rate_limit: Some(u32::MAX),
            ..SimOptions::default()
        })
        .await,
    );
    // Layers on disk (above the memory tier's 1 MiB), two read from the
    // bucket in many parts, and small ones kept in memory.
    let warm: Vec<SimImage> = (0..WARM_IMAGES)
        .map(|i| {
            let big = if i < 2 { 5 << 20 } else { 1536 << 10 };
            let layers = [random_bytes(big, i), random_bytes(16 << 10, 100 + i)];
            hub.push_image("library/warm", &format!("w{i}"), &layers)
        })
        .collect();
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let faulty = FaultyS3::start(&s3).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pullthrough.toml");
    // Bounded S3 calls and a short circuit cool-down, so that a phase
    // lasts seconds, not the defaults' tens of seconds.
    let toml = "[s3]\ntimeout = \"2s\"\n[resilience]\ncircuit_cooldown = \"2s\"\n";
    std::fs::write(&config, toml).unwrap();
    let filled = data_dir(dir.path(), FILLED);
    std::fs::create_dir(&filled).unwrap();
    let tmpfs = Tmpfs::mount(&filled, "size=96m");
    let ports: Vec<u16> = (0..REPLICAS).map(|_| free_port()).collect();
    let members: Vec<String> = ports.iter().map(|p| url(*p)).collect();
    let flags = [
        "--config",
        config.to_str().unwrap(),
        "--tag-ttl",
        "2s",
        "--s3-bucket",
        BUCKET,
        "--s3-endpoint",
        &faulty.endpoint,
        "--s3-read-part-size",
        "256KiB",
        // Smaller than the cached images: replicas evict them and read
        // them again from the bucket, through its faults, all along.
        "--disk-max-bytes",
        "12MiB",
    ];
    let env = aws_env(SECRET_KEY);
    let mut fleet = Fleet::start_in(dir, &ports, &members, &hub.registry_url, &flags, &env).await;
    fleet.formed().await;

    // Each cached image pulled once, through one replica, and in the
    // bucket before the chaos begins.
    let replicas: Vec<Client> = members.iter().map(|m| Client::pooled(m)).collect();
    for (i, image) in warm.iter().enumerate() {
        replicas[i % REPLICAS].pull(&image.repo, &image.tag).await;
    }
    let uploaded = async || {
        s3.keys(BUCKET, "blobs/").await.len() >= warm.len() * 3
            && s3.keys(BUCKET, "manifests/").await.len() >= warm.len()
    };
    support::wait_until_async(uploaded).await;
    let warmed = began.elapsed();

    let load = Arc::new(Load {
        replicas: replicas.into_iter().map(Mutex::new).collect(),
        warm,
        newest: Mutex::new(None),
        kills: AtomicU64::new(0),
        tally: Tally::default(),
        began: Instant::now(),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let pusher = {
        let (hub, load) = (hub.clone(), load.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let layer = random_bytes(256 << 10, 1_000_000 + n);
                let image = hub.push_image("library/new", &format!("n{n}"), &[layer]);
                *load.newest.lock().unwrap() = Some(image);
                // Keeps the simulator's request log from growing.
                hub.reset_counters();
                tokio::time::sleep(NEW_IMAGE_EVERY).await;
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|id| {
            let load = load.clone();
            tokio::spawn(async move {
                let mut state = id;
                while tokio::time::Instant::now() < deadline {
                    let replica = next(&mut state) as usize % REPLICAS;
                    let newest = load.newest.lock().unwrap().clone();
                    match (next(&mut state) % 5, newest) {
                        (0, Some(image)) => load.pull(replica, &image, false).await,
                        _ => {
                            let i = next(&mut state) as usize % load.warm.len();
                            load.pull(replica, &load.warm[i], true).await;
                        }
                    }
                }
            })
        })
        .collect();
    let pids: Arc<Vec<AtomicU64>> = Arc::new(
        fleet
            .replicas
            .iter()
            .map(|r| AtomicU64::new(r.pid().into()))
            .collect(),
    );
    let peaks: Arc<Vec<AtomicU64>> = Arc::new((0..REPLICAS).map(|_| AtomicU64::new(0)).collect());
    let sampler = {
        let (pids, peaks) = (pids.clone(), peaks.clone());
        tokio::spawn(async move {
            loop {
                for (pid, peak) in pids.iter().zip(peaks.iter()) {
                    if let Some(rss) = rss_anon(pid.load(Ordering::SeqCst) as u32) {
                        peak.fetch_max(rss, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let phase = Duration::from_secs(secs) / SCHEDULE.len() as u32;
    chaos(&mut fleet, &hub, &faulty, &load, phase).await;
    pids[KILLED].store(fleet.replicas[KILLED].pid().into(), Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    pusher.await.unwrap();
    sampler.abort();
    let soaked = began.elapsed() - warmed;

    // Afterwards, every replica serves every cached image whole, the
    // killed one included; nothing damaged is left on a disk or in the
    // bucket.
    for image in &load.warm {
        for replica in &load.replicas {
            let replica = replica.lock().unwrap().clone();
            replica.pull(&image.repo, &image.tag).await;
        }
    }
    let on_disk: Vec<usize> = (0..REPLICAS)
        .map(|i| assert_objects_whole(&data_dir(fleet.dir.path(), i).join("cache")))
        .collect();
    let in_bucket =
        assert_bucket_whole(&s3, "blobs/").await + assert_bucket_whole(&s3, "manifests/").await;

    let tally = &load.tally;
    let kinds = tally.kinds.lock().unwrap().clone();
    let (s3_requests, s3_faulted) = faulty.counts();
    let mib = |b: &AtomicU64| b.load(Ordering::SeqCst) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "chaos: warm-up {warmed:.1?}, chaos {secs} s ({soaked:.1?} with the last pulls), {CLIENTS} clients, {} requests",
        tally.requests.load(Ordering::SeqCst)
    );
    eprintln!(
        "chaos: wrong bytes {}, errors on cached content {}, failed pulls of new content {}",
        tally.wrong_bytes.load(Ordering::SeqCst),
        tally.cached_errors.load(Ordering::SeqCst),
        tally.new_errors.load(Ordering::SeqCst)
    );
    eprintln!("chaos: by kind {kinds:?}");
    eprintln!("chaos: S3 requests {s3_requests}, {s3_faulted} of them faulted");
    eprintln!("chaos: objects whole on each disk {on_disk:?}, in the bucket {in_bucket}");
    let peaks: Vec<String> = peaks.iter().map(|p| format!("{:.1}", mib(p))).collect();
    eprintln!("chaos: peak RssAnon per replica (MiB) {peaks:?}");
    for name in [
        "pullthrough_cache_corrupt_total",
        "pullthrough_peer_fallbacks_total",
        "pullthrough_upstream_retries_total",
        "pullthrough_upstream_resumes_total",
    ] {
        eprintln!("chaos: {name} {}", fleet.metric(name, &[]).await);
    }

    if std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
        // For a failed run: the replicas' logs outlive the test.
        let kept = fleet.dir.path().with_extension("kept");
        let _ = std::fs::create_dir(&kept);
        for i in 0..REPLICAS {
            let log = data_dir(fleet.dir.path(), i).with_extension("log");
            let _ = std::fs::copy(&log, kept.join(format!("replica-{i}.log")));
        }
        eprintln!("chaos: logs kept in {}", kept.display());
    }
    assert_eq!(tally.wrong_bytes.load(Ordering::SeqCst), 0, "{kinds:?}");
    assert_eq!(tally.cached_errors.load(Ordering::SeqCst), 0, "{kinds:?}");
    for replica in (0..REPLICAS).filter(|r| *r != KILLED) {
        let refused = format!("retried: replica {replica} refused");
        assert!(!kinds.contains_key(&refused), "{refused}: {kinds:?}");
    }
    assert!(tally.requests.load(Ordering::SeqCst) > 100, "the load ran");
    fleet.replicas.clear();
    drop(tmpfs);
}
