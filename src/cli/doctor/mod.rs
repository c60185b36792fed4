//! `pullthrough doctor`: the troubleshooting runbook as a command. It
//! checks, for the configuration `serve` would use, each enabled upstream
//! (DNS, TCP, TLS, `/v2/` with the token flow, the live pull budget, the
//! clock against upstream's `Date`), the shared S3 tier (a put, get and
//! delete of a probe object), the data directory (writable, room left
//! against the disk cap) and, with peers, the fleet (every member answers
//! with the cluster secret, and this replica is one of them). It prints one line per check, with a fix hint
//! under each failure, and reports whether all passed.
//!
//! The checks use the crate's own upstream client and S3 tier, so they
//! exercise the code paths a pull takes, not a copy of them.

mod fleet;
mod storage;
mod upstream;

use std::io::{self, Write};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not applicable, or not run because an earlier check failed.
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked: an upstream's name, `s3` or `data`.
    pub subject: String,
    /// Which check: `dns`, `tcp`, `tls`, `v2`, `budget`, `clock`, ...
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about a failure.
    pub hint: Option<String>,
}

impl Check {
    fn pass(subject: &str, name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            subject: subject.to_owned(),
            name,
            verdict: Verdict::Pass,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(
        subject: &str,
        name: &'static str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            subject: subject.to_owned(),
            name,
            verdict: Verdict::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    fn skip(subject: &str, name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            subject: subject.to_owned(),
            name,
            verdict: Verdict::Skip,
            detail: detail.into(),
            hint: None,
        }
    }

    /// Writes the line, and the hint under a failure.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mark = match self.verdict {
            Verdict::Pass => "✓",
            Verdict::Fail => "✗",
            Verdict::Skip => "·",
        };
        writeln!(
            out,
            "{mark} {:<18} {:<7} {}",
            self.subject, self.name, self.detail
        )?;
        if let Some(hint) = &self.hint {
            writeln!(out, "    fix: {hint}")?;
        }
        Ok(())
    }
}

/// Runs every check for `config`, only for the upstream named `only` when
/// given, writing each line as it completes; true when none failed.
pub async fn run(config: &Config, only: Option<&str>, out: &mut impl Write) -> io::Result<bool> {
    let mut failed = 0;
    let mut total = 0;
    let mut report = |check: Check, out: &mut dyn Write| -> io::Result<()> {
        total += 1;
        failed += usize::from(check.verdict == Verdict::Fail);
        let mut buffer = Vec::new();
        check.write(&mut buffer)?;
        out.write_all(&buffer)?;
        out.flush()
    };
    let metrics = Metrics::new();
    if let Some(name) = only
        && !config.upstreams.get(name).is_some_and(|u| u.enabled)
    {
        let known: Vec<&str> = config
            .upstreams
            .iter()
            .filter(|(_, u)| u.enabled)
            .map(|(n, _)| n.as_str())
            .collect();
        report(
            Check::fail(
                name,
                "config",
                "no enabled upstream has this name",
                format!("use one of: {}", known.join(", ")),
            ),
            out,
        )?;
    }
    match Upstreams::from_config(config, &metrics) {
        Ok(upstreams) => {
            for upstream in upstreams
                .iter()
                .filter(|u| only.is_none_or(|n| n == u.name()))
            {
                let credentials = config
                    .upstreams
                    .get(upstream.name())
                    .is_some_and(|u| u.username.is_some() && u.password.is_some());
                for check in upstream::checks(upstream, config, credentials).await {
                    report(check, out)?;
                }
            }
        }
        Err(e) => report(
            Check::fail(
                "upstreams",
                "config",
                e.to_string(),
                "fix the upstream URLs and default_upstream in the configuration (`pullthrough config` prints it)",
            ),
            out,
        )?,
    }
    for check in storage::s3_checks(config, &metrics).await {
        report(check, out)?;
    }
    for check in storage::data_dir_checks(config).await {
        report(check, out)?;
    }
    for check in fleet::checks(config, &metrics).await {
        report(check, out)?;
    }
    writeln!(
        out,
        "\n{total} checks, {failed} failed{}",
        if failed == 0 {
            ""
        } else {
            ": see the fix lines above"
        }
    )?;
    Ok(failed == 0)
}
