//! Printing: the side-by-side table, the targets, and notes on anything that
//! makes a figure doubtful.

use super::wrk::WrkRun;

/// One server's result for one endpoint.
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

/// One endpoint on every server.
pub struct Row {
    pub label: &'static str,
    /// Report bytes/s rather than requests/s.
    pub bytes: bool,
    /// The pullthrough/nginx ratio aimed for.
    pub target: f64,
    pub pullthrough: Measured,
    pub nginx: Measured,
    /// `None` when distribution is not running.
    pub distribution: Option<Measured>,
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

    fn show(&self, m: Option<&Measured>) -> String {
        match m {
            None => "skipped".to_owned(),
            Some(m) => match self.value(m) {
                None => "failed".to_owned(),
                Some(v) if self.bytes => format!("{:.2} GB/s", v / 1e9),
                Some(v) => format!("{v:.0} r/s"),
            },
        }
    }

    fn ratio(&self, m: Option<&Measured>) -> Option<f64> {
        let value = self.value(m?)?;
        let ceiling = self.value(&self.nginx)?;
        (ceiling > 0.0).then(|| value / ceiling)
    }
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

/// Prints the table, the targets, latencies and any doubts.
pub fn print(rows: &[Row]) {
    println!();
    println!(
        "{:<18} {:>13} {:>13} {:>13} {:>9} {:>11}",
        "endpoint", "pullthrough", "nginx", "distribution", "pt/nginx", "dist/nginx"
    );
    for row in rows {
        let dist = row.distribution.as_ref();
        println!(
            "{:<18} {:>13} {:>13} {:>13} {:>9} {:>11}",
            row.label,
            row.show(Some(&row.pullthrough)),
            row.show(Some(&row.nginx)),
            row.show(dist),
            show_ratio(row.ratio(Some(&row.pullthrough))),
            show_ratio(row.ratio(dist)),
        );
    }

    println!();
    println!("targets (pullthrough / nginx; reported, never enforced: shared machines are noisy):");
    for row in rows {
        let ratio = row.ratio(Some(&row.pullthrough));
        let verdict = match ratio {
            None => "unknown (a run failed)",
            Some(r) if r >= row.target => "met",
            Some(_) => "MISSED",
        };
        println!(
            "  {:<18} >= {:.2}x   got {:>8}   {verdict}",
            row.label,
            row.target,
            show_ratio(ratio)
        );
    }

    println!();
    println!("server CPU per request (user + system; lower is better):");
    for row in rows {
        let us = |m: Option<&Measured>| {
            m.and_then(|m| m.cpu_us_per_request)
                .map_or(format!("{:>13}", "-"), |us| format!("{us:>10.1} us"))
        };
        let ratio = match (
            row.pullthrough.cpu_us_per_request,
            row.nginx.cpu_us_per_request,
        ) {
            (Some(p), Some(n)) if p > 0.0 => show_ratio(Some(n / p)),
            _ => "-".to_owned(),
        };
        println!(
            "  {:<18} {} {} {}   nginx/pt {ratio}",
            row.label,
            us(Some(&row.pullthrough)),
            us(Some(&row.nginx)),
            us(row.distribution.as_ref()),
        );
    }

    println!();
    println!("latency p50 / p99:");
    for row in rows {
        let mut cells = vec![latency(&row.pullthrough), latency(&row.nginx)];
        if let Some(d) = &row.distribution {
            cells.push(latency(d));
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

fn latency(m: &Measured) -> String {
    let Ok(run) = &m.run else {
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
            ("pullthrough", Some(&row.pullthrough)),
            ("nginx", Some(&row.nginx)),
            ("distribution", row.distribution.as_ref()),
        ];
        for (name, m) in servers {
            let Some(m) = m else { continue };
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
