//! Runs `wrk` against one URL and parses its summary.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::procs::ChildGuard;

/// The shape of one load run.
#[derive(Clone, Debug)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u64,
    /// wrk's per-request timeout; a slower answer counts as a timeout error.
    pub timeout: Duration,
    /// Extra request headers, as `Name: value`.
    pub headers: Vec<String>,
}

/// What one wrk run measured.
#[derive(Clone, Debug, Default)]
pub struct WrkRun {
    /// Completed requests per second.
    pub requests_per_sec: f64,
    /// Response bytes (headers and bodies, including partly read bodies)
    /// per second.
    pub bytes_per_sec: f64,
    /// Completed requests.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts together.
    pub socket_errors: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl WrkRun {
    /// A one-line warning when the run is not clean, else `None`.
    pub fn problems(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.requests == 0 {
            problems.push("no request completed".to_owned());
        }
        if self.non_2xx > 0 {
            problems.push(format!("{} non-2xx answers", self.non_2xx));
        }
        if self.socket_errors > 0 {
            problems.push(format!("{} socket errors", self.socket_errors));
        }
        (!problems.is_empty()).then(|| problems.join(", "))
    }
}

/// Runs `wrk` with `load` against `url`; wrk's whole output goes to
/// `output` (kept for inspection) and is parsed from there.
pub fn run(wrk: &Path, url: &str, load: &Load, output: &Path) -> Result<WrkRun, String> {
    let out = std::fs::File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(wrk);
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg(format!("--timeout={}s", load.timeout.as_secs().max(1)))
        .arg("--latency");
    for header in &load.headers {
        command.arg("-H").arg(header);
    }
    command
        .arg(url)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let child = ChildGuard::spawn("wrk", &mut command)?;
    let bound = Duration::from_secs(load.seconds) + load.timeout + Duration::from_secs(15);
    let status = child.wait_timeout(bound)?;
    let text = std::fs::read_to_string(output).unwrap_or_default();
    if !status.success() {
        return Err(format!("wrk failed ({status}):\n{text}"));
    }
    parse(&text).ok_or_else(|| format!("cannot parse wrk's output:\n{text}"))
}

/// Parses wrk 4's summary.
pub fn parse(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut seen_rps = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.requests_per_sec = v.trim().parse().ok()?;
            seen_rps = true;
        } else if let Some(v) = line.strip_prefix("Transfer/sec:") {
            run.bytes_per_sec = binary_size(v.trim())?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            run.socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50 = duration(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99 = duration(v.trim());
        } else if line.contains(" requests in ") {
            run.requests = line.split_whitespace().next()?.parse().ok()?;
        }
    }
    seen_rps.then_some(run)
}

/// wrk's sizes: `1.65MB`, `709.09KB`, `12.00B` (binary multiples).
fn binary_size(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// wrk's latencies: `241.00us`, `2.92ms`, `1.20s`, `1.00m`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let seconds = number.parse::<f64>().ok()?
        * match unit {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
    Some(Duration::from_secs_f64(seconds))
}
