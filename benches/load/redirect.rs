//! Redirects to the bucket (`--s3-redirect`): what a warm 200 MB pull
//! costs the replica when it streams the blob itself and when it answers
//! `307` with a presigned URL and the bucket sends the bytes.
//!
//! s3s-fs on loopback is the bucket. Two release replicas share it, each
//! with the blob warm both on its own disk (page cache) and in the bucket,
//! so the two differ only in `--s3-redirect`:
//!
//! * **streamed**: redirects off. Every GET is a `hit-disk` the replica
//!   sends itself, the usual warm case (a replica streaming from the bucket
//!   instead is the S3 tier section's figure).
//! * **redirected**: redirects on. Every GET is answered `307` to a
//!   presigned s3s-fs URL, which the client follows. Its disk was warmed
//!   through a `User-Agent` listed in `s3.no_redirect_user_agents`, so it
//!   looks the blob up on disk before redirecting, as a warm replica does.
//!
//! For each, [`CLIENTS`] clients pull the blob at once: `curl -L`
//! processes under `chrt --idle 0` (`SCHED_IDLE`; `nice -n 19` without
//! chrt), standing in for nodes on other machines, so their receiving only
//! uses CPU the servers leave idle. Each checks the status and that it got
//! [`BLOB`] bytes; every [`DIGEST_EVERY`]th pipes the body to `sha256sum`.
//!
//! Reported per mode: the replica's CPU time (user + system, the process's
//! CPU clock from `clock_getcpuclockid`, ns resolution, dead threads
//! included; `/proc/<pid>/stat` ticks without it) per client pull, and the
//! ratio redirected / streamed (goal: under 1%). The redirected figure is
//! the CPU used until the last client had its 307 (the clock is sampled
//! every [`SAMPLE_EVERY`]; curl's `time_redirect` says when): the minutes
//! the clients then spend reading from the bucket cost the replica only
//! its idle background work, which the whole-mode figure (also printed)
//! includes: mostly the disk scrub, which hashes the blob at its floor of
//! 1 MiB/s (some 140 MB hashed over a 140 s mode, about 0.7 ms per pull;
//! in a run by hand with 50 MB pulls, `disk.scrub_interval = "0s"` halved
//! the whole-mode figure), and closing the clients' connections. The replica's bytes
//! written per pull (`wchar` of `/proc/<pid>/io`: every `write`/`writev`,
//! its access log included; a `send` is not counted), next to the bytes of
//! its blob answers by its own metric and the size of one whole `307`
//! answer on the wire; s3s-fs's CPU per pull; the clients' total
//! throughput; and the replicas' `pullthrough_blob_answers_total{via}` and
//! `hit-disk` counters as a check.
//!
//! Caveats: on loopback the sender's system time includes much of the
//! receiving side's TCP processing, so the streamed CPU figure is higher
//! than a NIC would make it (and so the ratio lower than it would be
//! otherwise; it is far enough below 1% for that not to matter). The
//! redirected throughput is s3s-fs's (a simple file server reading in
//! small pieces), the bottleneck here; S3 itself scales out. 200 x 200 MB
//! is 40 GB per mode: on a busy 2-core machine the streamed mode took about
//! 40 s and the redirected one about 3 minutes (s3s-fs at about 0.25 GB/s),
//! nearly 4 minutes for the section. Kept at 200 clients and 200 MB all
//! the same: fewer or smaller pulls would measure a different rollout.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tempfile::TempDir;

use super::procs::{self, ChildGuard};
use super::s3tier::{self, BUCKET, S3Store};
use super::servers::Server;
use super::support::hubsim::HubSim;
use super::{Fixture, http, procstat};

/// Concurrent clients per mode.
pub const CLIENTS: usize = 200;
/// The warm blob every client pulls.
pub const BLOB: usize = 200_000_000;
/// Every this many clients, one hashes the body (the others count bytes).
const DIGEST_EVERY: usize = 50;
/// Bound on one client's pull (curl's `--max-time`) and on a whole mode.
const CLIENT_SECONDS: u64 = 400;
/// The `User-Agent` the redirecting replica streams to (its disk warm-up).
const WARM_AGENT: &str = "pullthrough-bench-warm";
/// Redirected / streamed replica CPU per pull aimed for.
const TARGET: f64 = 0.01;
/// How often the replica's CPU clock is read during a mode.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A thread reading a process's CPU clock every [`SAMPLE_EVERY`].
struct CpuSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, u64)>>,
}

impl CpuSampler {
    fn start(pid: Option<u32>, started: Instant) -> CpuSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Some(ns) = pid.and_then(cpu_ns) {
                    samples.push((started.elapsed().as_secs_f64(), ns));
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        CpuSampler { stop, thread }
    }

    /// Stops it: (seconds since the start, CPU ns) of every reading.
    fn finish(self) -> Vec<(f64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// One client's result, as curl reported it.
struct Pull {
    bytes: u64,
    redirects: u32,
    seconds: f64,
    /// When, after the clients were started, it had its redirect (when it
    /// followed one): its start plus curl's `time_redirect`.
    redirected_at: Option<f64>,
    /// `Some` for the clients that hashed the body.
    digest: Option<String>,
}

/// Cumulative figures of a process, read before and after a mode.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_ns: Option<u64>,
    wchar: Option<u64>,
}

fn usage(pid: Option<u32>) -> Usage {
    Usage {
        cpu_ns: pid.and_then(cpu_ns),
        wchar: pid.and_then(wchar),
    }
}

/// `after - before` of one figure, when both were read.
fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// CPU time (user + system) `pid` has used, in ns: its CPU-time clock,
/// else `/proc/<pid>/stat` (10 ms ticks).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write to the locals passed, which outlive them.
    let read = unsafe {
        libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut now) == 0
    };
    if read {
        return Some(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64);
    }
    let ticks = procstat::cpu_ticks(pid)?;
    Some((ticks as f64 * 1e9 / procstat::ticks_per_second()) as u64)
}

/// `wchar` of `/proc/<pid>/io`: bytes the process passed to `write`-like
/// calls.
fn wchar(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("wchar:"))?
        .trim()
        .parse()
        .ok()
}

/// What one mode measured.
struct Mode {
    label: &'static str,
    pulls: Vec<Result<Pull, String>>,
    wall: Duration,
    replica: (Usage, Usage),
    /// The replica's CPU time from the start until the last client had
    /// its 307 (sampled every [`SAMPLE_EVERY`]), and that window in s.
    answering: Option<(u64, f64)>,
    store_cpu: Option<u64>,
    /// Deltas of the replica's counters: blob answers streamed and
    /// redirected, their bytes, and `hit-disk` answers.
    streamed: u64,
    redirected: u64,
    streamed_bytes: u64,
    redirected_bytes: u64,
    disk_hits: u64,
}

/// Everything the section found.
pub struct RedirectResult {
    modes: Vec<Mode>,
    /// The bytes of one whole `307` answer (status line, headers), read
    /// raw from the socket, and where it pointed.
    redirect_answer: usize,
    location: String,
    idle: &'static str,
    digest: String,
}

/// The programs the clients need, or why the section is skipped.
struct ClientTools {
    curl: PathBuf,
    /// `chrt --idle 0` or `nice -n 19`.
    idle: (PathBuf, [&'static str; 2]),
}

fn client_tools() -> Result<ClientTools, String> {
    let curl = procs::find_program("curl").ok_or("curl is not installed (Debian: curl)")?;
    let idle = match procs::find_program("chrt") {
        Some(chrt) => (chrt, ["--idle", "0"]),
        None => (
            procs::find_program("nice").ok_or("neither chrt nor nice is installed")?,
            ["-n", "19"],
        ),
    };
    Ok(ClientTools { curl, idle })
}

/// Runs the section and prints it.
pub fn run(rt: &tokio::runtime::Runtime, binary: &Path) -> Result<(), String> {
    println!(
        "\nredirects to the bucket: {CLIENTS} concurrent clients GET one warm {} MB blob, streamed \
         by a replica vs redirected (307) to a presigned URL of the bucket (s3s-fs on loopback)",
        BLOB / 1_000_000
    );
    let Some(s3s_fs) = s3tier::find_s3s_fs() else {
        println!("  skipped: s3s-fs is not installed (see the S3 tier section)");
        return Ok(());
    };
    let tools = match client_tools() {
        Ok(tools) => tools,
        Err(e) => {
            println!("  skipped: {e}");
            return Ok(());
        }
    };
    let open_files = procs::raise_open_files_limit()?;
    if (CLIENTS as u64) * 4 + 256 > open_files {
        println!("  skipped: the open files limit is {open_files}");
        return Ok(());
    }
    let started = Instant::now();
    let result = measure(rt, &s3s_fs, binary, &tools);
    procs::check_interrupted()?;
    print(&result, started.elapsed());
    Ok(())
}

fn measure(
    rt: &tokio::runtime::Runtime,
    s3s_fs: &Path,
    binary: &Path,
    tools: &ClientTools,
) -> Result<RedirectResult, String> {
    let sim = rt.block_on(HubSim::start());
    let bytes: Bytes = super::support::random_bytes(BLOB, 90);
    let digest = sim.put_blob(bytes.clone());
    let blob = (digest.clone(), bytes);
    let store = s3tier::start_store_with_bucket(rt, s3s_fs, BUCKET)?;
    let work = tempfile::Builder::new()
        .prefix("bench-redirect-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let path = Fixture::blob_path(&digest);

    // The streaming replica pulls the blob from the simulator: on its disk
    // and, once uploaded, in the bucket.
    let streamer = s3tier::start_replica(rt, binary, &sim, &store.endpoint, "pt-stream", &[])?;
    let url = format!("{}{path}", streamer.url);
    rt.block_on(http::get_checked(
        &http::client(),
        &url,
        None,
        &digest,
        super::FETCH_TIMEOUT,
    ))
    .map_err(|e| format!("warming {}: {e}", streamer.name))?;
    s3tier::wait_for_bucket(rt, &store, &[&blob])?;
    s3tier::wait_for_local(&streamer, &[&blob])?;

    // The redirecting replica streams to WARM_AGENT: an S3 hit, kept on
    // its disk.
    let config = work.path().join("redirect.toml");
    std::fs::write(
        &config,
        format!("[s3]\nno_redirect_user_agents = [\"{WARM_AGENT}\"]\n"),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let config = config.to_string_lossy().into_owned();
    let flags = ["--s3-redirect", "--config", config.as_str()];
    let redirector =
        s3tier::start_replica(rt, binary, &sim, &store.endpoint, "pt-redirect", &flags)?;
    let warm_client = reqwest::Client::builder()
        .no_proxy()
        .user_agent(WARM_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("reqwest client: {e}"))?;
    let url = format!("{}{path}", redirector.url);
    rt.block_on(http::get_checked(
        &warm_client,
        &url,
        None,
        &digest,
        super::FETCH_TIMEOUT,
    ))
    .map_err(|e| format!("warming {}: {e}", redirector.name))?;
    s3tier::wait_for_local(&redirector, &[&blob])?;
    // One redirect, read raw: its size on the wire and where it points.
    let (redirect_answer, location) = raw_redirect(&redirector, &path)
        .map_err(|e| format!("{e}; {} log:\n{}", redirector.name, redirector.log_tail()))?;
    if !location.starts_with(&store.endpoint) {
        return Err(format!(
            "{} redirected to {location}, not to the bucket at {}",
            redirector.name, store.endpoint
        ));
    }

    let mut modes = Vec::new();
    for (label, server) in [("streamed", &streamer), ("redirected", &redirector)] {
        procs::check_interrupted()?;
        std::thread::sleep(Duration::from_secs(1));
        let mode = run_mode(rt, tools, &work, label, server, &store, &path, &digest)
            .map_err(|e| format!("{label}: {e}; {} log:\n{}", server.name, server.log_tail()))?;
        modes.push(mode);
    }
    let upstream = super::support::metric_sum(
        &redirector.metrics(rt).unwrap_or_default(),
        "pullthrough_upstream_requests_total",
        &[],
    );
    if upstream > 0.0 {
        return Err(format!(
            "{} sent {upstream} requests upstream: the blob was not warm",
            redirector.name
        ));
    }
    Ok(RedirectResult {
        modes,
        redirect_answer,
        location,
        idle: if tools.idle.1[0] == "--idle" {
            "chrt --idle 0 (SCHED_IDLE)"
        } else {
            "nice -n 19"
        },
        digest,
    })
}

/// GETs `path` from `server` on a raw connection with an ordinary client's
/// `User-Agent`; returns the whole answer's length in bytes and its
/// `Location`, failing unless it is a 307.
fn raw_redirect(server: &Server, path: &str) -> Result<(usize, String), String> {
    let addr = server.url.trim_start_matches("http://");
    let mut stream =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    if !status.contains(" 307 ") {
        let head: String = text.chars().take(400).collect();
        return Err(format!(
            "{}: GET {path} answered `{status}`, not a 307:\n{head}",
            server.name
        ));
    }
    let location = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .ok_or_else(|| format!("{}: a 307 without a Location", server.name))?;
    Ok((answer.len(), location))
}

/// `CLIENTS` concurrent pulls of `path` from `server`, with the figures
/// around them.
#[allow(clippy::too_many_arguments)]
fn run_mode(
    rt: &tokio::runtime::Runtime,
    tools: &ClientTools,
    work: &TempDir,
    label: &'static str,
    server: &Server,
    store: &S3Store,
    path: &str,
    digest: &str,
) -> Result<Mode, String> {
    let counters = |server: &Server| -> Result<[u64; 5], String> {
        let text = server.metrics(rt)?;
        let sum =
            |name, labels: &[(&str, &str)]| super::support::metric_sum(&text, name, labels) as u64;
        Ok([
            sum("pullthrough_blob_answers_total", &[("via", "stream")]),
            sum("pullthrough_blob_answers_total", &[("via", "redirect")]),
            sum("pullthrough_blob_answer_bytes_total", &[("via", "stream")]),
            sum(
                "pullthrough_blob_answer_bytes_total",
                &[("via", "redirect")],
            ),
            sum("pullthrough_requests_total", &[("outcome", "hit-disk")]),
        ])
    };
    let url = format!("{}{path}", server.url);
    let dir = work.path().join(label);
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let counted = counters(server)?;
    let store_before = store.pid().and_then(cpu_ns);
    let before = usage(server.pid());
    let started = Instant::now();
    let sampler = CpuSampler::start(server.pid(), started);
    let pulls = pull_all(tools, &url, &dir, started);
    let wall = started.elapsed();
    let after = usage(server.pid());
    let samples = sampler.finish();
    let pulls = pulls?;
    // The CPU the replica had used by the first sample after the last
    // client got its 307: the redirects' cost without the idle seconds
    // that follow while the clients read from the bucket.
    let last_redirect = pulls
        .iter()
        .flatten()
        .filter_map(|p| p.redirected_at)
        .max_by(f64::total_cmp);
    let answering = last_redirect.and_then(|at| {
        let (t, ns) = samples.iter().find(|(t, _)| *t >= at)?;
        Some((ns.checked_sub(before.cpu_ns?)?, *t))
    });
    let store_cpu = delta(store_before, store.pid().and_then(cpu_ns));
    let now = counters(server)?;
    let d = |i: usize| now[i].saturating_sub(counted[i]);
    let pulls = pulls
        .into_iter()
        .map(|p| {
            p.and_then(|p| {
                if let Some(got) = &p.digest
                    && got != digest
                {
                    return Err(format!("body hashes to {got}"));
                }
                Ok(p)
            })
        })
        .collect();
    Ok(Mode {
        label,
        pulls,
        wall,
        replica: (before, after),
        answering,
        store_cpu,
        streamed: d(0),
        redirected: d(1),
        streamed_bytes: d(2),
        redirected_bytes: d(3),
        disk_hits: d(4),
    })
}

/// Starts every client at once and waits for them all; each client's
/// result in order.
fn pull_all(
    tools: &ClientTools,
    url: &str,
    dir: &Path,
    started: Instant,
) -> Result<Vec<Result<Pull, String>>, String> {
    let figures =
        "%{http_code} %{size_download} %{num_redirects} %{time_total} %{time_redirect}\\n";
    let max_time = CLIENT_SECONDS.to_string();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let out = dir.join(format!("{i}.out"));
        let err = dir.join(format!("{i}.err"));
        let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut command = Command::new(&tools.idle.0);
        command.args(tools.idle.1);
        let curl = [
            "-sS",
            "-L",
            "--noproxy",
            "*",
            "--max-time",
            max_time.as_str(),
        ];
        if i % DIGEST_EVERY == 0 {
            // The figures go to stderr, the body's hash to stdout.
            let script = format!(
                "\"$0\" {} -w '%{{stderr}}{figures}' \"$1\" | sha256sum",
                curl.map(|a| format!("'{a}'")).join(" ")
            );
            command
                .args(["sh", "-c", &script])
                .arg(&tools.curl)
                .arg(url);
        } else {
            command
                .arg(&tools.curl)
                .args(curl)
                .args(["-o", "/dev/null", "-w", figures, url]);
        }
        command
            .stdout(Stdio::from(file(&out)?))
            .stderr(Stdio::from(file(&err)?));
        let at = started.elapsed().as_secs_f64();
        clients.push((i, at, ChildGuard::spawn("curl", &mut command)?));
    }
    let deadline = Instant::now() + Duration::from_secs(CLIENT_SECONDS + 20);
    let mut results = Vec::with_capacity(CLIENTS);
    for (i, at, client) in clients {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = client.wait_timeout(left.max(Duration::from_millis(1)));
        procs::check_interrupted()?;
        let out = std::fs::read_to_string(dir.join(format!("{i}.out"))).unwrap_or_default();
        let err = std::fs::read_to_string(dir.join(format!("{i}.err"))).unwrap_or_default();
        let result = status.and_then(|status| {
            let (line, digest) = if i % DIGEST_EVERY == 0 {
                let hash = out.split_whitespace().next().unwrap_or_default();
                (err.lines().last(), Some(format!("sha256:{hash}")))
            } else {
                (out.lines().last(), None)
            };
            parse(line.unwrap_or_default(), digest, at)
                .map_err(|e| format!("client {i} ({status}): {e}; stderr: {}", err.trim()))
        });
        results.push(result);
    }
    Ok(results)
}

/// curl's figures line: status, body bytes, redirects followed, seconds.
/// `at`: when it was started, in seconds after the first.
fn parse(line: &str, digest: Option<String>, at: f64) -> Result<Pull, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [code, bytes, redirects, seconds, redirect_time] = fields[..] else {
        return Err(format!("unexpected output {line:?}"));
    };
    let bad = || format!("unexpected output {line:?}");
    if code != "200" {
        return Err(format!("final status {code}"));
    }
    let bytes: u64 = bytes.parse().map_err(|_| bad())?;
    if bytes != BLOB as u64 {
        return Err(format!("{bytes} bytes, expected {BLOB}"));
    }
    let redirects = redirects.parse().map_err(|_| bad())?;
    let redirect_time: f64 = redirect_time.parse().map_err(|_| bad())?;
    Ok(Pull {
        bytes,
        redirects,
        seconds: seconds.parse().map_err(|_| bad())?,
        redirected_at: (redirects > 0).then_some(at + redirect_time),
        digest,
    })
}

fn ms(ns: Option<u64>, per: usize) -> String {
    match ns {
        None => "-".to_owned(),
        Some(ns) => {
            let ms = ns as f64 / 1e6 / per.max(1) as f64;
            if ms >= 10.0 {
                format!("{ms:.1} ms")
            } else {
                format!("{ms:.3} ms")
            }
        }
    }
}

fn size(bytes: f64) -> String {
    if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else if bytes >= 1e3 {
        format!("{:.1} kB", bytes / 1e3)
    } else {
        format!("{bytes:.0} B")
    }
}

fn print(result: &Result<RedirectResult, String>, took: Duration) {
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            println!("  failed: {e}");
            return;
        }
    };
    println!(
        "  clients: curl -L under {}, one process each ({} of them hash the body); \
         both replicas hold the blob on their disk and in the bucket",
        r.idle,
        CLIENTS.div_ceil(DIGEST_EVERY)
    );
    println!(
        "  streamed: --s3-redirect off, the replica sends it from its disk; redirected: \
         --s3-redirect, a 307 to s3s-fs"
    );
    println!(
        "  {:<11} {:>10} {:>8} {:>8} {:>11} {:>13} {:>13} {:>13} {:>13}",
        "mode",
        "clients ok",
        "digests",
        "wall",
        "throughput",
        "replica CPU",
        "replica wchar",
        "blob bytes",
        "s3s-fs CPU"
    );
    println!(
        "  {:<11} {:>10} {:>8} {:>8} {:>11} {:>13} {:>13} {:>13} {:>13}",
        "", "", "", "", "(clients)", "per pull", "per pull", "per pull", "per pull"
    );
    for m in &r.modes {
        let ok: Vec<&Pull> = m.pulls.iter().filter_map(|p| p.as_ref().ok()).collect();
        let hashed = ok.iter().filter(|p| p.digest.is_some()).count();
        let received: u64 = ok.iter().map(|p| p.bytes).sum();
        let (before, after) = m.replica;
        let wchar = delta(before.wchar, after.wchar);
        println!(
            "  {:<11} {:>10} {:>8} {:>8} {:>11} {:>13} {:>13} {:>13} {:>13}",
            m.label,
            format!("{}/{CLIENTS}", ok.len()),
            format!("{hashed}/{}", CLIENTS.div_ceil(DIGEST_EVERY)),
            format!("{:.1} s", m.wall.as_secs_f64()),
            format!("{:.2} GB/s", received as f64 / m.wall.as_secs_f64() / 1e9),
            ms(delta(before.cpu_ns, after.cpu_ns), CLIENTS),
            wchar.map_or("-".to_owned(), |w| size(w as f64 / CLIENTS as f64)),
            size(m.streamed_bytes as f64 / CLIENTS as f64),
            ms(m.store_cpu, CLIENTS),
        );
    }
    for m in &r.modes {
        let errors: Vec<&String> = m.pulls.iter().filter_map(|p| p.as_ref().err()).collect();
        if let Some(first) = errors.first() {
            println!(
                "  {}: {} of {CLIENTS} clients failed, first: {first}",
                m.label,
                errors.len()
            );
        }
        let mut seconds: Vec<f64> = m.pulls.iter().flatten().map(|p| p.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        let redirects: Vec<u32> = m.pulls.iter().flatten().map(|p| p.redirects).collect();
        if let (Some(first), Some(last)) = (seconds.first(), seconds.last()) {
            println!(
                "  {}: each pull {first:.1} s to {last:.1} s (median {:.1} s); redirects followed \
                 per client: {}..{}",
                m.label,
                seconds[seconds.len() / 2],
                redirects.iter().min().unwrap_or(&0),
                redirects.iter().max().unwrap_or(&0)
            );
        }
    }
    let cpu = |m: &Mode| delta(m.replica.0.cpu_ns, m.replica.1.cpu_ns);
    if let [streamed, redirected] = &r.modes[..] {
        let whole = match (cpu(streamed), cpu(redirected)) {
            (Some(s), Some(d)) if s > 0 => format!("{:.3}%", d as f64 / s as f64 * 100.0),
            _ => "unknown".to_owned(),
        };
        match (cpu(streamed), redirected.answering) {
            (Some(s), Some((d, window))) if s > 0 => {
                let ratio = d as f64 / s as f64;
                println!(
                    "  replica CPU per pull, redirected / streamed: {:.3}% (target: < {:.0}%, {}); \
                     redirected CPU counted until the last client had its 307 ({window:.2} s in: \
                     {} per pull); over the whole {:.0} s of the mode, idle time included: {whole}",
                    ratio * 100.0,
                    TARGET * 100.0,
                    if ratio < TARGET { "met" } else { "MISSED" },
                    ms(Some(d), CLIENTS),
                    redirected.wall.as_secs_f64(),
                );
            }
            _ => println!(
                "  replica CPU per pull, redirected / streamed: over the whole mode {whole}"
            ),
        }
        let short: String = r.location.chars().take(60).collect();
        println!(
            "  one whole 307 answer is {} on the wire (Location: {short}...); wchar also counts \
             the replica's access log lines",
            size(r.redirect_answer as f64)
        );
        let verdict = |ok: bool| if ok { "as expected" } else { "UNEXPECTED" };
        let n = CLIENTS as u64;
        println!(
            "  replicas' counters: streamed via=stream +{}, via=redirect +{}, hit-disk +{} ({}); \
             redirected via=redirect +{} ({} per pull), via=stream +{}, hit-disk +{} ({})",
            streamed.streamed,
            streamed.redirected,
            streamed.disk_hits,
            verdict(streamed.streamed == n && streamed.redirected == 0 && streamed.disk_hits == n),
            redirected.redirected,
            size(redirected.redirected_bytes as f64 / n as f64),
            redirected.streamed,
            redirected.disk_hits,
            verdict(redirected.redirected == n && redirected.streamed == 0),
        );
    }
    println!(
        "  note: the redirected throughput is s3s-fs's on this machine (a simple file server, the \
         bottleneck here); S3 scales out. Blob {}; section took {:.0} s",
        r.digest,
        took.as_secs_f64()
    );
}
