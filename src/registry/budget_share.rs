//! Replicas share what they know of each upstream's pull budget through
//! the shared tier, the way they share tag records: every replica behind
//! one NAT address spends the same budget, so a replica that saw it run
//! out (or recover) tells the others within `budget.share_interval`.
//!
//! One small JSON object per upstream (`state/budget/<upstream>.json`);
//! each replica reads it, adopts it when it is newer and for the same
//! source (`Budget::adopt`), and writes its own figures when they are
//! newer than what it read. Upstreams nobody has heard from are skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Registry;
use crate::cache::S3Tier;
use crate::upstream::{BudgetState, Upstream};

impl Registry {
    /// Starts exchanging budget figures every `every`, when there is a
    /// shared tier.
    pub fn spawn_budget_sharing(&self, every: Duration) {
        let Some(shared) = self.inner.cache.shared().cloned() else {
            return;
        };
        let upstreams: Vec<Arc<Upstream>> = self.inner.upstreams.iter().cloned().collect();
        tokio::spawn(async move {
            let mut written = HashMap::new();
            loop {
                for upstream in &upstreams {
                    exchange(&shared, upstream, &mut written).await;
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// One round for one upstream; `written` holds the observation time of
/// the figures this replica last wrote, per upstream.
async fn exchange(shared: &S3Tier, upstream: &Upstream, written: &mut HashMap<String, u64>) {
    let key = shared.state_key(&format!("budget/{}.json", upstream.name()));
    let theirs = match shared.get_small(&key).await {
        Some(small) => serde_json::from_slice::<BudgetState>(&small.bytes).ok(),
        None => None,
    };
    if let Some(theirs) = &theirs {
        upstream.budget().adopt(theirs);
    }
    let ours = upstream.budget().state();
    let newest_shared = theirs.map_or(0, |t| t.observed_at_ms);
    let last_written = written.get(upstream.name()).copied().unwrap_or(0);
    if ours.observed_at_ms == 0 || ours.observed_at_ms <= newest_shared.max(last_written) {
        return;
    }
    let Ok(json) = serde_json::to_vec(&ours) else {
        return;
    };
    if shared
        .put_small(&key, json.into(), Some("application/json"), false)
        .await
    {
        written.insert(upstream.name().to_owned(), ours.observed_at_ms);
    }
}
