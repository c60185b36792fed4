//! Sampling a process's anonymous memory and thread count from
//! `/proc/<pid>/status` while a load runs, to catch the peak rather than
//! whatever is left when the load ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// One reading of `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// `RssAnon`: resident anonymous memory (heap, stacks), in bytes.
    pub anon_bytes: u64,
    /// `Threads`.
    pub threads: u64,
}

/// Reads `/proc/<pid>/status` once.
pub fn read(pid: u32) -> Result<Status, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse(&text).ok_or_else(|| format!("{path} has no RssAnon or Threads line"))
}

/// The `RssAnon` (in kB) and `Threads` lines of a status file.
fn parse(text: &str) -> Option<Status> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    };
    Some(Status {
        anon_bytes: field("RssAnon:")? * 1024,
        threads: field("Threads:")?,
    })
}

/// CPU time (user and system, in clock ticks) that `pid` and its direct
/// children (nginx's workers) have used so far.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis, from the state
        // (field 3): the parent is field 4, utime 14 and stime 15.
        let Some((head, rest)) = text.rsplit_once(')') else {
            continue;
        };
        let own = head.split_whitespace().next().and_then(|p| p.parse().ok());
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let parent = fields.get(1).and_then(|p| p.parse().ok());
        if own == Some(pid) || parent == Some(pid) {
            let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            total += tick(11)? + tick(12)?;
        }
    }
    Some(total)
}

/// Clock ticks per second, the unit of [`cpu_ticks`].
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    }
}

/// The highest values a [`Sampler`] saw, each on its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peak {
    pub anon_bytes: u64,
    pub threads: u64,
    pub samples: usize,
}

/// A thread reading a process's status every `every` until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Peak>,
}

impl Sampler {
    /// Starts sampling `pid`. Readings that fail (the process is gone) are
    /// skipped; [`Peak::samples`] says how many succeeded.
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = Peak::default();
            while !flag.load(Ordering::SeqCst) {
                if let Ok(status) = read(pid) {
                    peak.anon_bytes = peak.anon_bytes.max(status.anon_bytes);
                    peak.threads = peak.threads.max(status.threads);
                    peak.samples += 1;
                }
                std::thread::sleep(every);
            }
            peak
        });
        Sampler { stop, thread }
    }

    /// Stops sampling and returns the peaks.
    pub fn finish(self) -> Peak {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}
