//! An upstream's pull budget: what its `ratelimit-*` headers say is left,
//! and the standing that decides how the rest is spent.
//!
//! Docker Hub counts manifest GETs per source (IP or account) in a sliding
//! window and announces `ratelimit-limit: 100;w=21600`,
//! `ratelimit-remaining: 76;w=21600` and `docker-ratelimit-source` on
//! every answer, HEADs included (which it does not count). The standing is:
//! - [`Standing::Plenty`]: tags are revalidated after their TTL as usual;
//! - [`Standing::Reserve`]: at or below the reserve, cached tags are served
//!   as they are, so pulls go only to content never seen before;
//! - [`Standing::Spent`]: no counted pull is sent until the `Retry-After`
//!   of a 429 (or the configured back-off) has passed; misses get a 429
//!   that says so, cached content keeps being served.
//!
//! The state is kept per upstream (one credential each), learnt from every
//! answer, and can be exchanged between replicas (see [`BudgetState`]).

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::{ErrorKind, UpstreamError};
use crate::clock::now_ms;
use crate::config::BudgetConfig;
use crate::metrics::Metrics;

/// What is known of one upstream's budget; also what replicas exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetState {
    /// Counted pulls allowed per window.
    pub limit: Option<u64>,
    /// Counted pulls left when last observed.
    pub remaining: Option<u64>,
    /// The window's length in seconds.
    pub window_secs: Option<u64>,
    /// Whose budget it is, as upstream names it (an IP or an account).
    pub source: Option<String>,
    /// When the figures above were read, in ms since the Unix epoch.
    pub observed_at_ms: u64,
    /// No counted pull is sent before this time (ms since the epoch).
    pub paused_until_ms: Option<u64>,
}

/// How the budget may be spent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Nothing announced, or more than the reserve left.
    Plenty,
    /// At or below the reserve: only content never seen before.
    Reserve,
    /// Nothing may be spent until the pause ends.
    Spent,
}

impl Standing {
    /// The value of the `pullthrough_upstream_budget_standing` gauge.
    fn gauge(self) -> i64 {
        match self {
            Standing::Plenty => 0,
            Standing::Reserve => 1,
            Standing::Spent => 2,
        }
    }
}

/// One upstream's budget and the policy that spends it.
pub struct Budget {
    upstream: String,
    policy: BudgetConfig,
    state: Mutex<BudgetState>,
    metrics: Metrics,
}

impl Budget {
    /// An unknown budget for `upstream`, spent by `policy`.
    pub fn new(upstream: &str, policy: BudgetConfig, metrics: Metrics) -> Self {
        Budget {
            upstream: upstream.to_owned(),
            policy,
            state: Mutex::new(BudgetState::default()),
            metrics,
        }
    }

    /// A copy of what is known now.
    pub fn state(&self) -> BudgetState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The standing now.
    pub fn standing(&self) -> Standing {
        self.standing_of(&self.lock(), now_ms())
    }

    fn standing_of(&self, state: &BudgetState, now: u64) -> Standing {
        if state.paused_until_ms.is_some_and(|until| until > now) {
            return Standing::Spent;
        }
        let (Some(limit), Some(remaining)) = (state.limit, state.remaining) else {
            return Standing::Plenty;
        };
        // A figure older than its window says nothing: the window has
        // moved on since.
        let window_ms = state.window_secs.unwrap_or(0).saturating_mul(1000);
        if window_ms > 0 && now.saturating_sub(state.observed_at_ms) > window_ms {
            return Standing::Plenty;
        }
        let reserve = limit.saturating_mul(u64::from(self.policy.reserve_percent)) / 100;
        if remaining <= reserve {
            Standing::Reserve
        } else {
            Standing::Plenty
        }
    }

    /// Learns from any answer's headers; a zero left pauses counted pulls
    /// for the back-off, since the next one would be refused.
    pub fn observe(&self, headers: &HeaderMap) {
        let Some((remaining, window)) = quota(headers, "ratelimit-remaining") else {
            return;
        };
        let limit = quota(headers, "ratelimit-limit");
        let now = now_ms();
        self.update(now, |state| {
            state.remaining = Some(remaining);
            if let Some((limit, limit_window)) = limit {
                state.limit = Some(limit);
                state.window_secs = limit_window.or(window).or(state.window_secs);
            }
            if let Some(source) = header_text(headers, "docker-ratelimit-source") {
                state.source = Some(source);
            }
            state.observed_at_ms = now;
            state.paused_until_ms = match remaining {
                0 => Some(now + self.policy.backoff.as_millis() as u64),
                _ => None,
            };
        });
    }

    /// Learns from a 429: no counted pull until its `Retry-After`, or the
    /// back-off when it names none. Returns how long that is.
    pub fn refused(&self, headers: &HeaderMap) -> Duration {
        let now = now_ms();
        let wait = retry_after(headers, SystemTime::now()).unwrap_or(self.policy.backoff);
        self.observe(headers);
        self.update(now, |state| {
            state.remaining = Some(0);
            state.observed_at_ms = now;
            state.paused_until_ms = Some(now + wait.as_millis() as u64);
        });
        wait
    }

    /// Takes a replica's newer figures for the same source.
    pub fn adopt(&self, theirs: &BudgetState) {
        let now = now_ms();
        self.update(now, |ours| {
            let same_source = ours.source.is_none() || ours.source == theirs.source;
            if same_source && theirs.observed_at_ms > ours.observed_at_ms {
                *ours = theirs.clone();
            }
        });
    }

    /// Applies `change` and reports the standing it leads to: gauges always,
    /// a WARN when the reserve is reached or the budget recovers.
    fn update(&self, now: u64, change: impl FnOnce(&mut BudgetState)) {
        let mut state = self.lock();
        let before = self.standing_of(&state, now);
        change(&mut state);
        let after = self.standing_of(&state, now);
        let labels = [self.upstream.as_str()];
        if let Some(remaining) = state.remaining {
            self.metrics
                .ratelimit_remaining
                .with_label_values(&labels)
                .set(gauge_value(remaining));
        }
        if let Some(limit) = state.limit {
            self.metrics
                .ratelimit_limit
                .with_label_values(&labels)
                .set(gauge_value(limit));
        }
        self.metrics
            .budget_standing
            .with_label_values(&labels)
            .set(after.gauge());
        if before == after {
            return;
        }
        let (upstream, summary) = (&self.upstream, describe(&state));
        match after {
            Standing::Plenty => {
                tracing::warn!(upstream, summary, "upstream pull budget recovered")
            }
            Standing::Reserve => tracing::warn!(
                upstream,
                summary,
                "upstream pull budget at its reserve: cached tags are served without revalidation"
            ),
            Standing::Spent => tracing::warn!(
                upstream,
                summary,
                "upstream pull budget spent: only cached content is served"
            ),
        }
    }

    /// Refuses a counted pull while the budget is spent, with the error a
    /// client sees: which upstream, whose budget, and when it resets.
    pub fn admit(&self) -> Result<(), UpstreamError> {
        let state = self.lock();
        let now = now_ms();
        if self.standing_of(&state, now) != Standing::Spent {
            return Ok(());
        }
        let wait = Duration::from_millis(state.paused_until_ms.unwrap_or(now).saturating_sub(now));
        Err(self.spent_error(&state, wait))
    }

    /// The error for a pull the budget does not allow (or upstream refused).
    pub fn spent_error(&self, state: &BudgetState, wait: Duration) -> UpstreamError {
        // Whole seconds, rounded up: what `Retry-After` can say, and never
        // an invitation to come back a moment too early.
        let wait = Duration::from_secs(wait.as_millis().div_ceil(1000).max(1) as u64);
        let detail = format!(
            "pull limit reached ({}); cached images still pull; new content can be fetched again in {}s{}",
            describe(state),
            wait.as_secs(),
            reset_by(state)
                .map(|at| format!(", and the window resets by {at}"))
                .unwrap_or_default()
        );
        UpstreamError::new(&self.upstream, ErrorKind::RateLimited, detail).with_retry_after(wait)
    }
}

/// `left 0 of 100 per 21600s, for source 203.0.113.7`, as far as known.
fn describe(state: &BudgetState) -> String {
    let mut text = match (state.remaining, state.limit) {
        (Some(left), Some(limit)) => format!("{left} of {limit} left"),
        (Some(left), None) => format!("{left} left"),
        _ => "no figures announced".to_owned(),
    };
    if let Some(window) = state.window_secs {
        text.push_str(&format!(
            " per {}",
            humantime::format_duration(Duration::from_secs(window))
        ));
    }
    if let Some(source) = &state.source {
        text.push_str(&format!(", counted for {source}"));
    }
    text
}

/// When the window that held the last observation is over at the latest.
fn reset_by(state: &BudgetState) -> Option<String> {
    let window = state.window_secs?;
    let at_ms = state
        .observed_at_ms
        .checked_add(window.checked_mul(1000)?)?;
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(at_ms))?;
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let text = headers.get(name)?.to_str().ok()?.trim();
    (!text.is_empty() && text.len() <= 128).then(|| text.to_owned())
}

/// Parses `76;w=21600` into 76 and the window, 21600 seconds. Any value
/// that is not a plain number (or overflows) is ignored.
pub fn quota(headers: &HeaderMap, name: &str) -> Option<(u64, Option<u64>)> {
    let text = headers.get(name)?.to_str().ok()?;
    let mut parts = text.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let window = parts.find_map(|p| {
        let (key, value) = p.split_once('=')?;
        (key.trim() == "w").then(|| value.trim().parse().ok())?
    });
    Some((count, window))
}

/// `Retry-After` as seconds or an HTTP date, relative to `now`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        // A day is the longest pause any registry asks for; more is a bug.
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .min(Duration::from_secs(86_400)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn budget() -> Budget {
        Budget::new("docker.io", BudgetConfig::default(), Metrics::new())
    }

    #[test]
    fn reads_docker_hub_headers() {
        let b = budget();
        b.observe(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "76;w=21600"),
            ("docker-ratelimit-source", "203.0.113.7"),
        ]));
        let s = b.state();
        assert_eq!(
            (s.limit, s.remaining, s.window_secs, s.source.as_deref()),
            (Some(100), Some(76), Some(21600), Some("203.0.113.7"))
        );
        assert_eq!(b.standing(), Standing::Plenty);
        let gauge = |g: &prometheus::IntGaugeVec| g.with_label_values(&["docker.io"]).get();
        assert_eq!(gauge(&b.metrics.ratelimit_remaining), 76);
        assert_eq!(gauge(&b.metrics.ratelimit_limit), 100);
    }

    #[test]
    fn the_reserve_and_a_spent_budget_are_told_apart() {
        let b = budget();
        let seen = |left: &str| {
            b.observe(&headers(&[
                ("ratelimit-limit", "100;w=21600"),
                ("ratelimit-remaining", left),
            ]))
        };
        seen("11;w=21600");
        assert_eq!(b.standing(), Standing::Plenty);
        seen("10;w=21600");
        assert_eq!(b.standing(), Standing::Reserve);
        assert!(b.admit().is_ok(), "new content may still be fetched");
        seen("0;w=21600");
        assert_eq!(b.standing(), Standing::Spent);
        let e = b.admit().unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
        assert!(e.detail.contains("0 of 100 left per 6h"), "{}", e.detail);
        assert!(e.detail.contains("resets by"), "{}", e.detail);
    }

    #[test]
    fn a_refusal_pauses_for_its_retry_after() {
        let b = budget();
        let wait = b.refused(&headers(&[("retry-after", "7")]));
        assert_eq!(wait, Duration::from_secs(7));
        assert_eq!(b.standing(), Standing::Spent);
        let e = b.admit().unwrap_err();
        assert!(e.retry_after.unwrap() <= Duration::from_secs(7));
        let when = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let h = headers(&[("retry-after", &when)]);
        let wait = retry_after(&h, SystemTime::now()).unwrap();
        assert!((Duration::from_secs(118)..=Duration::from_secs(120)).contains(&wait));
    }

    #[test]
    fn hostile_headers_neither_panic_nor_count() {
        for junk in [
            "99999999999999999999999999;w=1",
            "18446744073709551615;w=18446744073709551615",
            "-1",
            ";;;",
            "",
            "w=5",
        ] {
            let b = budget();
            b.observe(&headers(&[
                ("ratelimit-limit", junk),
                ("ratelimit-remaining", junk),
            ]));
            let _ = b.standing();
            let _ = b.admit();
            let _ = describe(&b.state());
            let _ = reset_by(&b.state());
        }
        let h = headers(&[("retry-after", "99999999999999999999")]);
        assert_eq!(retry_after(&h, SystemTime::now()), None);
        let h = headers(&[("retry-after", "18446744073709551615")]);
        assert_eq!(
            retry_after(&h, SystemTime::now()),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn a_replica_adopts_only_newer_figures_for_its_own_source() {
        let b = budget();
        b.observe(&headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "50;w=21600"),
            ("docker-ratelimit-source", "a"),
        ]));
        let mut theirs = b.state();
        theirs.remaining = Some(3);
        theirs.observed_at_ms += 1;
        let other = BudgetState {
            source: Some("b".into()),
            ..theirs.clone()
        };
        b.adopt(&other);
        assert_eq!(b.state().remaining, Some(50));
        b.adopt(&theirs);
        assert_eq!(b.state().remaining, Some(3));
        assert_eq!(b.standing(), Standing::Reserve);
    }
}
