//! The `[budget]` section: how the pull budget that upstreams announce in
//! `ratelimit-*` headers is spent (see `upstream::budget`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How counted pulls are spent when an upstream announces a limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// At or below this share of the limit (in percent), cached tags are no
    /// longer revalidated and pulls go only to content never seen before.
    pub reserve_percent: u8,
    /// The most one client may spend of an upstream's limit within its
    /// window while other clients want the budget, in percent; 0 turns
    /// fair share off.
    pub client_share_percent: u8,
    /// How long counted pulls pause after a 429 that named no
    /// `Retry-After`, or after upstream said none are left.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// While the budget is low, how often a free HEAD asks Docker Hub how
    /// much is left (it recovers gradually over its window).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How often replicas exchange what they know of the budget through
    /// the shared tier.
    #[serde(with = "humantime_serde")]
    pub share_interval: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            reserve_percent: 10,
            client_share_percent: 50,
            backoff: Duration::from_secs(60),
            probe_interval: Duration::from_secs(60),
            share_interval: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// Checks the values serde's types admit but pullthrough cannot use.
    pub(super) fn validate(&self) -> Result<(), super::ConfigError> {
        for (field, value) in [
            ("budget.reserve_percent", self.reserve_percent),
            ("budget.client_share_percent", self.client_share_percent),
        ] {
            if value > 100 {
                return Err(super::invalid(field, "must be a percentage from 0 to 100"));
            }
        }
        for (field, value) in [
            ("budget.backoff", self.backoff),
            ("budget.probe_interval", self.probe_interval),
            ("budget.share_interval", self.share_interval),
        ] {
            if value.is_zero() {
                return Err(super::invalid(field, "must be greater than zero"));
            }
        }
        Ok(())
    }
}
