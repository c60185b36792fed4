//! The resilient exchange: every upstream request takes one of its
//! upstream's fetch slots, passes its circuit breaker, and is retried on a
//! transient failure.
//!
//! - **Fetch slots:** at most `max_concurrent_fetches` distinct fetches run
//!   per upstream (the single-flights already make identical requests one);
//!   more wait in the order they came (tokio's semaphore is fair). A blob
//!   download keeps its slot until its body ends, and its resumes reuse it.
//! - **Retries:** every request pullthrough sends upstream is idempotent
//!   (GET or HEAD), so a connect error, a timeout, a reset before the answer
//!   or a 502/503/504 is tried again, up to `attempts` tries in all, after an
//!   exponential backoff with full jitter (a random pause up to
//!   `min(cap, base * 2^n)`), and never past the request's own deadline:
//!   the time a client waits on its answer. A 429, any other 4xx and an
//!   answer that breaks the protocol are final. Only the head of a blob GET
//!   is retried; an interrupted body is resumed instead (see `resume`).
//! - **Circuit breaker:** each try asks the upstream's [`Circuit`] first and
//!   reports back to it, so a dead upstream fails requests at once.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use reqwest::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::Upstream;
use super::circuit::Circuit;
use super::error::{ErrorKind, UpstreamError};
use super::exchange::Ask;
use crate::config::ResilienceConfig;
use crate::metrics::Metrics;

/// One of an upstream's concurrent fetch slots, held until the fetch ends.
pub(super) type Slot = OwnedSemaphorePermit;

/// An upstream's defences against its own failures.
pub(super) struct Resilience {
    circuit: Circuit,
    slots: Arc<Semaphore>,
    /// `pullthrough_upstream_fetches_waiting` for this upstream.
    waiting: IntGauge,
    attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    /// Resumes allowed per interrupted blob download.
    pub max_resumes: u32,
}

impl Resilience {
    /// The defences of upstream `name`, as `config` sets them.
    pub(super) fn new(name: &str, config: &ResilienceConfig, metrics: &Metrics) -> Self {
        let gauge = metrics.circuit_state.with_label_values(&[name]);
        Resilience {
            circuit: Circuit::new(
                name,
                config.circuit_failures,
                config.circuit_cooldown,
                gauge,
            ),
            slots: Arc::new(Semaphore::new(config.max_concurrent_fetches)),
            waiting: metrics.upstream_waiting.with_label_values(&[name]),
            attempts: config.attempts.max(1),
            backoff_base: config.backoff_base,
            backoff_cap: config.backoff_cap,
            max_resumes: config.max_resumes,
        }
    }
}

/// Counts a queued fetch in the waiting gauge for as long as it waits.
struct Waiting<'a>(&'a IntGauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The pause before retry number `retry` (1 for the first): a uniformly
/// random time up to `min(cap, base * 2^(retry-1))` ("full jitter").
fn backoff(retry: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(
            1u32.checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(cap);
    ceiling.mul_f64(rand::random::<f64>())
}

impl Upstream {
    /// Takes one of the upstream's fetch slots (in turn), then sends `ask`
    /// through [`Self::send_retrying`]. Keep the slot until the answer is read.
    pub(super) async fn fetch(&self, ask: Ask<'_>) -> Result<(Response, Slot), UpstreamError> {
        let started = Instant::now();
        let deadline = started + self.request_timeout;
        // An open circuit fails at once, without queueing behind others.
        self.resilience.circuit.check()?;
        let slot = self.slot(ask.bounded.then_some(deadline)).await?;
        let response = self.send_retrying(&ask, deadline).await?;
        Ok((response, slot))
    }

    /// A fetch slot, waiting in order, for no longer than `deadline`.
    async fn slot(&self, deadline: Option<Instant>) -> Result<Slot, UpstreamError> {
        let slots = self.resilience.slots.clone();
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        self.resilience.waiting.inc();
        let _waiting = Waiting(&self.resilience.waiting);
        let acquire = slots.acquire_owned();
        let acquired = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, acquire).await.ok(),
            None => Some(acquire.await),
        };
        match acquired {
            Some(Ok(slot)) => Ok(slot),
            Some(Err(_)) => Err(self.error(ErrorKind::Invalid, "fetch slots closed")),
            None => Err(self.error(
                ErrorKind::Timeout,
                "every fetch slot of this upstream stayed busy for the whole request timeout",
            )),
        }
    }

    /// Sends `ask` through the circuit breaker, retrying transient
    /// failures with backoff until `deadline`. Requests bounded by the
    /// request timeout (all but blob GETs) give up at `deadline` even
    /// mid-try.
    pub(super) async fn send_retrying(
        &self,
        ask: &Ask<'_>,
        deadline: Instant,
    ) -> Result<Response, UpstreamError> {
        let r = &self.resilience;
        let mut tries = 1;
        let mut last_error = None;
        loop {
            // A circuit that opened during the retries ends them.
            let ticket = match r.circuit.admit() {
                Ok(ticket) => ticket,
                Err(open) => return Err(last_error.unwrap_or(open)),
            };
            let result = if ask.bounded {
                match tokio::time::timeout_at(deadline, self.send(ask.clone())).await {
                    Ok(result) => result,
                    Err(_) => Err(self.error(
                        ErrorKind::Timeout,
                        format!("{} took longer than the request timeout", ask.path),
                    )),
                }
            } else {
                self.send(ask.clone()).await
            };
            ticket.settle(&result);
            let error = match result {
                Err(e) if e.is_retryable() && tries < r.attempts => e,
                other => return other,
            };
            let pause = backoff(tries, r.backoff_base, r.backoff_cap);
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(upstream = %self.name, path = ask.path, error = %error, ?pause, "retrying upstream request");
            self.metrics
                .upstream_retries
                .with_label_values(&[&self.name, ask.kind])
                .inc();
            tokio::time::sleep(pause).await;
            last_error = Some(error);
            tries += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_has_full_jitter_under_a_doubling_ceiling() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        for retry in 1..=8u32 {
            let ceiling = (base * 2u32.pow(retry - 1)).min(cap);
            let pauses: Vec<_> = (0..200).map(|_| backoff(retry, base, cap)).collect();
            assert!(pauses.iter().all(|p| *p <= ceiling), "retry {retry}");
            let low = pauses.iter().filter(|p| **p < ceiling / 2).count();
            assert!(
                (40..=160).contains(&low),
                "retry {retry}: {low} of 200 pauses below half the ceiling"
            );
        }
        assert!(
            backoff(40, base, cap) <= cap,
            "no overflow for many retries"
        );
    }
}
