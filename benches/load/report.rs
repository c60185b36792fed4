//! Printing: the side-by-side table, the goals, and notes on anything that
//! makes a figure doubtful. Every figure is the median of the rounds run.

use super::wrk::WrkRun;

/// One server's result for one endpoint in one round.
pub struct Measured {
    pub run: Result<WrkRun, String>,
    /// CPU time the server used per answered request, in microseconds
    /// (less sensitive than requests per second to what else the shared
    /// machine runs), when it could be read.
    pub cpu_us_per_request: Option<f64>,
    /// Requests the simulator saw during the run, as `"<listener> METHOD
    /// path"` (none for a truly warm cache).
    pub upstream: Vec<String>,
}

/// What a row is held to (issue #20), pullthrough against nginx.
#[derive(Clone, Copy)]
pub enum Goal {
    /// CPU per request at most this many times nginx's.
    CpuAtMost(f64),
    /// Throughput at least this many times nginx's.
    ThroughputAtLeast(f64),
    /// Reported only.
    None,
}

/// One endpoint on every server, one [`Measured`] per round.
pub struct Row {
    pub label: &'static str,
    /// Report bytes/s rather than requests/s.
    pub bytes: bool,
    pub goal: Goal,
    pub pullthrough: Vec<Measured>,
    pub nginx: Vec<Measured>,
    /// Empty when distribution is not running.
    pub distribution: Vec<Measured>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

impl Row {
    fn value(&self, m: &Measured) -> Option<f64> {
        let run = m.run.as_ref().ok()?;
        Some(if self.bytes {
            run.bytes_per_sec
        } else {
            run.requests_per_sec
        })
    }

    /// The median of a server's requests/s (or bytes/s) over the rounds.
    fn median_value(&self, series: &[Measured]) -> Option<f64> {
        median(series.iter().filter_map(|m| self.value(m)).collect())
    }

    fn show(&self, series: &[Measured]) -> String {
        if series.is_empty() {
            return "skipped".to_owned();
        }
        match self.median_value(series) {
            None => "failed".to_owned(),
            Some(v) if self.bytes => format!("{:.2} GB/s", v / 1e9),
            Some(v) => format!("{v:.0} r/s"),
        }
    }

    /// The median over the rounds of `series`' value over nginx's in the
    /// same round (each pair measured back to back).
    fn ratio(&self, series: &[Measured]) -> Option<f64> {
        let ratios = series.iter().zip(&self.nginx).filter_map(|(m, n)| {
            let (value, ceiling) = (self.value(m)?, self.value(n)?);
            (ceiling > 0.0).then(|| value / ceiling)
        });
        median(ratios.collect())
    }

    /// The median over the rounds of pullthrough's CPU per request over
    /// nginx's in the same round.
    fn cpu_ratio(&self) -> Option<f64> {
        let ratios = self
            .pullthrough
            .iter()
            .zip(&self.nginx)
            .filter_map(|(p, n)| {
                let (p, n) = (p.cpu_us_per_request?, n.cpu_us_per_request?);
                (n > 0.0).then(|| p / n)
            });
        median(ratios.collect())
    }
}

/// The median CPU per request of a server over the rounds.
fn median_cpu(series: &[Measured]) -> Option<f64> {
    median(series.iter().filter_map(|m| m.cpu_us_per_request).collect())
}

/// A ratio with two significant digits for small values (0.0021x).
fn show_ratio(ratio: Option<f64>) -> String {
    match ratio {
        None => "-".to_owned(),
        Some(r) if r >= 0.1 => format!("{r:.2}x"),
        Some(r) if r >= 0.01 => format!("{r:.3}x"),
        Some(r) => format!("{r:.4}x"),
    }
}

/// Prints the table, the goals, CPU per request, latencies and any doubts.
pub fn print(rows: &[Row], rounds: usize) {
    println!();
    println!("medians of {rounds} rounds:");
    println!(
        "{:<18} {:>13} {:>13} {:>13} {:>9} {:>11}",
        "endpoint", "pullthrough", "nginx", "distribution", "pt/nginx", "dist/nginx"
    );
    for row in rows {
        println!(
            "{:<18} {:>13} {:>13} {:>13} {:>9} {:>11}",
            row.label,
            row.show(&row.pullthrough),
            row.show(&row.nginx),
            row.show(&row.distribution),
            show_ratio(row.ratio(&row.pullthrough)),
            show_ratio(row.ratio(&row.distribution)),
        );
    }

    println!();
    println!("server CPU per request (user + system; lower is better):");
    println!(
        "  {:<18} {:>13} {:>13} {:>13} {:>9}",
        "endpoint", "pullthrough", "nginx", "distribution", "pt/nginx"
    );
    for row in rows {
        let us = |series: &[Measured]| {
            median_cpu(series).map_or(format!("{:>13}", "-"), |us| format!("{us:>10.1} us"))
        };
        println!(
            "  {:<18} {} {} {} {:>9}",
            row.label,
            us(&row.pullthrough),
            us(&row.nginx),
            us(&row.distribution),
            show_ratio(row.cpu_ratio()),
        );
    }

    println!();
    println!("latency p50 / p99 (first round):");
    for row in rows {
        let mut cells = vec![latency(row.pullthrough.first()), latency(row.nginx.first())];
        if let Some(d) = row.distribution.first() {
            cells.push(latency(Some(d)));
        }
        println!("  {:<18} {}", row.label, cells.join("  "));
    }

    let notes = notes(rows);
    if !notes.is_empty() {
        println!();
        println!("notes:");
        for note in notes {
            println!("  - {note}");
        }
    }
}

/// The warm goals (pullthrough against nginx), one line per row that has
/// one; `None` when a figure is missing.
pub fn print_goals(rows: &[Row]) {
    for row in rows {
        let (measured, wanted, met) = match row.goal {
            Goal::None => continue,
            Goal::CpuAtMost(max) => {
                let r = row.cpu_ratio();
                (
                    r,
                    format!("CPU/request <= {max:.2}x nginx"),
                    r.map(|r| r <= max),
                )
            }
            Goal::ThroughputAtLeast(min) => {
                let r = row.ratio(&row.pullthrough);
                (
                    r,
                    format!("throughput >= {min:.2}x nginx"),
                    r.map(|r| r >= min),
                )
            }
        };
        println!(
            "  {:<18} {:<30} got {:>8}   {}",
            row.label,
            wanted,
            show_ratio(measured),
            verdict(met)
        );
    }
}

/// `met`, `MISSED`, or `unknown` when a figure is missing.
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "unknown (a run failed)",
    }
}

fn latency(m: Option<&Measured>) -> String {
    let Some(Ok(run)) = m.map(|m| &m.run) else {
        return format!("{:>21}", "-");
    };
    let ms = |d: Option<std::time::Duration>| {
        d.map_or("?".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1e3))
    };
    format!("{:>21}", format!("{} / {} ms", ms(run.p50), ms(run.p99)))
}

fn notes(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    for row in rows {
        let servers = [
            ("pullthrough", &row.pullthrough),
            ("nginx", &row.nginx),
            ("distribution", &row.distribution),
        ];
        for (name, m) in servers
            .iter()
            .flat_map(|(name, s)| s.iter().map(move |m| (name, m)))
        {
            match &m.run {
                Err(e) => notes.push(format!("{name}, {}: run failed: {e}", row.label)),
                Ok(run) => {
                    if let Some(p) = run.problems() {
                        notes.push(format!("{name}, {}: {p}", row.label));
                    }
                }
            }
            if !m.upstream.is_empty() {
                notes.push(format!(
                    "{name}, {}: {} upstream requests during the run, not served from its cache \
                     alone: {}",
                    row.label,
                    m.upstream.len(),
                    summarise(&m.upstream)
                ));
            }
        }
    }
    notes
}

/// The most frequent request kinds (query strings dropped), with counts.
pub fn summarise(requests: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for request in requests {
        let kind = request.split('?').next().unwrap_or(request);
        match counts.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((kind.to_owned(), 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let shown: Vec<String> = counts
        .iter()
        .take(3)
        .map(|(kind, n)| format!("{n}x `{kind}`"))
        .collect();
    let more = counts.len().saturating_sub(3);
    if more > 0 {
        format!("{} and {more} more kinds", shown.join(", "))
    } else {
        shown.join(", ")
    }
}
