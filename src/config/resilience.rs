//! The `[resilience]` section: how each upstream's failures are absorbed
//! (see `upstream::retry`, `upstream::circuit`, `upstream::resume`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// How each upstream's failures are absorbed: transient failures are
/// retried, interrupted blob bodies resumed, a dead upstream is cut off by
/// its circuit breaker, and distinct fetches are bounded per upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResilienceConfig {
    /// Tries per idempotent upstream request, the first included; 1 turns
    /// retries off.
    pub attempts: u32,
    /// The first retry waits up to this long (full jitter), doubling after.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// No retry waits longer than this.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Resumes with `Range` allowed per interrupted blob download.
    pub max_resumes: u32,
    /// Consecutive failures (connect, timeout, 5xx) that open an upstream's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit fails requests at once before one probe.
    #[serde(with = "humantime_serde")]
    pub circuit_cooldown: Duration,
    /// Distinct upstream fetches at once per upstream; more wait in order.
    pub max_concurrent_fetches: usize,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            max_resumes: 3,
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
            max_concurrent_fetches: 64,
        }
    }
}

impl ResilienceConfig {
    /// Checks the values serde's types admit but pullthrough cannot use.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("resilience.attempts", self.attempts as usize),
            (
                "resilience.circuit_failures",
                self.circuit_failures as usize,
            ),
            (
                "resilience.max_concurrent_fetches",
                self.max_concurrent_fetches,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if self.backoff_base > self.backoff_cap {
            return Err(invalid(
                "resilience.backoff_base",
                "must not exceed resilience.backoff_cap",
            ));
        }
        if self.circuit_cooldown.is_zero() {
            return Err(invalid(
                "resilience.circuit_cooldown",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}
