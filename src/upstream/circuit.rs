//! One circuit breaker per upstream, so a dead registry costs one timeout
//! per cool-down instead of one per request.
//!
//! - **Closed:** requests go out; consecutive outage failures (connect
//!   errors, timeouts, resets, 5xx: see [`UpstreamError::is_outage`]) are
//!   counted, and any other answer (a 404 or a 429 included: the upstream
//!   is up) resets the count.
//! - **Open:** after `threshold` such failures in a row, every request
//!   fails at once with [`ErrorKind::CircuitOpen`], a transient error, so
//!   the registry layer serves what it has cached and an uncached request
//!   gets a quick 503 naming the upstream and when it is tried again.
//! - **Half-open:** once the cool-down has passed, one request goes out as
//!   a probe while the others still fail fast. Its success closes the
//!   circuit; its failure opens it for another cool-down. A probe dropped
//!   before it settled (its caller went away) lets the next request probe.
//!
//! The state sits behind a `std` mutex held for a few comparisons, never
//! across an `.await`.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use super::error::{ErrorKind, UpstreamError};

/// An upstream's circuit breaker.
pub(super) struct Circuit {
    upstream: String,
    threshold: u32,
    cooldown: Duration,
    phase: Mutex<Phase>,
    /// `pullthrough_upstream_circuit_state` for this upstream.
    gauge: IntGauge,
}

#[derive(Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant, last: String },
    HalfOpen { probing: bool },
}

impl Phase {
    fn gauge_value(&self) -> i64 {
        match self {
            Phase::Closed { .. } => 0,
            Phase::HalfOpen { .. } => 1,
            Phase::Open { .. } => 2,
        }
    }
}

/// Leave to send one request; settle it with the result.
pub(super) struct Ticket<'a> {
    circuit: &'a Circuit,
    probe: bool,
    settled: bool,
}

impl Circuit {
    /// A closed circuit that opens after `threshold` outage failures in a
    /// row and stays open for `cooldown`.
    pub(super) fn new(upstream: &str, threshold: u32, cooldown: Duration, gauge: IntGauge) -> Self {
        gauge.set(0);
        Circuit {
            upstream: upstream.to_owned(),
            threshold: threshold.max(1),
            cooldown,
            phase: Mutex::new(Phase::Closed { failures: 0 }),
            gauge,
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: &mut Phase, next: Phase) {
        self.gauge.set(next.gauge_value());
        *phase = next;
    }

    /// The error to fail a request with at once while the circuit is open
    /// (or a probe is out); takes no probe, unlike [`Self::admit`].
    pub(super) fn check(&self) -> Result<(), UpstreamError> {
        match &*self.phase() {
            Phase::Open { until, last } if Instant::now() < *until => {
                let wait = until.saturating_duration_since(Instant::now());
                Err(self.open_error(Some((wait, last))))
            }
            Phase::HalfOpen { probing: true } => Err(self.open_error(None)),
            _ => Ok(()),
        }
    }

    /// Leave to send a request now, or the error to fail it with at once.
    pub(super) fn admit(&self) -> Result<Ticket<'_>, UpstreamError> {
        let mut phase = self.phase();
        let probe = match &*phase {
            Phase::Closed { .. } => false,
            Phase::Open { until, .. } if Instant::now() >= *until => {
                self.set(&mut phase, Phase::HalfOpen { probing: true });
                true
            }
            Phase::HalfOpen { probing: false } => {
                *phase = Phase::HalfOpen { probing: true };
                true
            }
            Phase::Open { until, last } => {
                let wait = until.saturating_duration_since(Instant::now());
                return Err(self.open_error(Some((wait, last))));
            }
            Phase::HalfOpen { probing: true } => return Err(self.open_error(None)),
        };
        Ok(Ticket {
            circuit: self,
            probe,
            settled: false,
        })
    }

    /// The fast failure, with a `Retry-After` of when the next probe may go.
    fn open_error(&self, open: Option<(Duration, &String)>) -> UpstreamError {
        let wait = open.map_or(Duration::from_secs(1), |(wait, _)| wait);
        let detail = match open {
            Some((wait, last)) => format!(
                "the circuit for upstream {} is open after {} consecutive failures \
                 (last: {last}); it is tried again in {}s",
                self.upstream,
                self.threshold,
                wait.as_secs_f64().ceil() as u64
            ),
            None => format!(
                "the circuit for upstream {} is open; a probe request is testing it now",
                self.upstream
            ),
        };
        UpstreamError::new(&self.upstream, ErrorKind::CircuitOpen, detail).with_retry_after(wait)
    }

    fn record(&self, failure: Option<&UpstreamError>, probe: bool) {
        let mut phase = self.phase();
        match (failure, &*phase) {
            (None, Phase::Closed { .. }) => *phase = Phase::Closed { failures: 0 },
            (None, _) => {
                tracing::info!(upstream = %self.upstream, "upstream answers again; circuit closed");
                self.set(&mut phase, Phase::Closed { failures: 0 });
            }
            (Some(e), Phase::Closed { failures }) => {
                let failures = failures + 1;
                if failures >= self.threshold {
                    self.open(&mut phase, e, failures);
                } else {
                    *phase = Phase::Closed { failures };
                }
            }
            (Some(e), Phase::HalfOpen { .. }) if probe => self.open(&mut phase, e, self.threshold),
            // A request sent before the circuit opened, or beside a probe.
            (Some(_), Phase::Open { .. } | Phase::HalfOpen { .. }) => {}
        }
    }

    fn open(&self, phase: &mut Phase, error: &UpstreamError, failures: u32) {
        tracing::warn!(
            upstream = %self.upstream, failures, cooldown = ?self.cooldown, error = %error,
            "upstream is failing; circuit open, requests fail fast until a probe succeeds"
        );
        let next = Phase::Open {
            until: Instant::now() + self.cooldown,
            last: error.detail.clone(),
        };
        self.set(phase, next);
    }
}

impl Ticket<'_> {
    /// Records how the request went; only outage failures count against
    /// the upstream.
    pub(super) fn settle<T>(mut self, result: &Result<T, UpstreamError>) {
        self.settled = true;
        let failure = result.as_ref().err().filter(|e| e.is_outage());
        self.circuit.record(failure, self.probe);
    }
}

impl Drop for Ticket<'_> {
    /// A probe whose caller went away proves nothing: the next request probes.
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut phase = self.circuit.phase();
            if matches!(*phase, Phase::HalfOpen { probing: true }) {
                *phase = Phase::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(cooldown: Duration) -> Circuit {
        let gauge = IntGauge::new("circuit_state", "test").unwrap();
        Circuit::new("hub", 3, cooldown, gauge)
    }

    fn fail(kind: ErrorKind) -> Result<(), UpstreamError> {
        Err(UpstreamError::new("hub", kind, "boom"))
    }

    #[test]
    fn opens_after_consecutive_outages_only() {
        let c = circuit(Duration::from_secs(60));
        for _ in 0..2 {
            c.admit().unwrap().settle(&fail(ErrorKind::Connect));
        }
        c.admit().unwrap().settle(&fail(ErrorKind::NotFound));
        c.admit().unwrap().settle(&fail(ErrorKind::RateLimited));
        c.admit().unwrap().settle(&fail(ErrorKind::Status(503)));
        c.admit().unwrap().settle(&fail(ErrorKind::Timeout));
        assert_eq!(c.gauge.get(), 0, "a 404 broke the run: still closed");
        c.admit().unwrap().settle(&fail(ErrorKind::Status(500)));
        assert_eq!(c.gauge.get(), 2);
        let err = c.admit().err().unwrap();
        assert_eq!(err.kind, ErrorKind::CircuitOpen);
        assert!(err.is_transient());
        assert!(
            err.retry_after
                .is_some_and(|w| w <= Duration::from_secs(60))
        );
        assert!(
            err.detail.contains("circuit for upstream hub is open")
                && err.detail.contains("tried again in 60s"),
            "{}",
            err.detail
        );
    }

    #[test]
    fn after_the_cooldown_one_probe_decides() {
        let c = circuit(Duration::from_millis(1));
        for _ in 0..3 {
            c.admit().unwrap().settle(&fail(ErrorKind::Connect));
        }
        std::thread::sleep(Duration::from_millis(5));
        let probe = c.admit().unwrap();
        assert_eq!(c.gauge.get(), 1, "half-open");
        assert!(c.admit().is_err(), "only one probe at a time");
        probe.settle(&fail(ErrorKind::Timeout));
        assert_eq!(c.gauge.get(), 2, "a failed probe opens it again");

        std::thread::sleep(Duration::from_millis(5));
        let dropped = c.admit().unwrap();
        drop(dropped);
        let probe = c
            .admit()
            .expect("a dropped probe lets the next one through");
        probe.settle(&Ok::<(), UpstreamError>(()));
        assert_eq!(c.gauge.get(), 0, "closed");
        c.admit().unwrap().settle(&fail(ErrorKind::Connect));
        c.admit().unwrap().settle(&fail(ErrorKind::Connect));
        assert!(c.admit().is_ok(), "the failure count started over");
    }
}
