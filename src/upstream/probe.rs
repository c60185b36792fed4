//! Learning the budget without spending it: Docker Hub answers a HEAD of
//! `ratelimitpreview/test` with the caller's `ratelimit-*` headers, and
//! does not count it. Probed while the budget is low, every
//! `budget.probe_interval`: Docker Hub's window slides, so the budget comes
//! back gradually, and a replica that no longer revalidates tags would
//! otherwise not see it. (A restarted replica learns the budget from its
//! first answer, or from the shared tier.)

use std::sync::Arc;
use std::time::Duration;

use super::{Standing, Upstream, UpstreamError, Upstreams};
use crate::reference::RepoName;

/// The repository Docker documents for reading one's limit for free.
const PROBE_REPO: &str = "ratelimitpreview/test";

/// Any manifest type will do: only the headers are read.
const PROBE_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json";

impl Upstream {
    /// Whether this upstream has a free way to read its budget.
    pub fn can_probe_budget(&self) -> bool {
        self.library_namespace
    }

    /// Reads the budget with a HEAD that is not counted; the answer's
    /// headers update [`Upstream::budget`] like any other answer's.
    pub async fn probe_budget(&self) -> Result<(), UpstreamError> {
        let repo = RepoName::parse(PROBE_REPO).expect("a valid repository name");
        self.head_manifest(&repo, "latest", PROBE_ACCEPT)
            .await
            .map(|_| ())
    }
}

impl Upstreams {
    /// Starts one probing task per upstream that can be probed.
    pub fn spawn_budget_probes(&self, interval: Duration) {
        for upstream in self.by_name.values().filter(|u| u.can_probe_budget()) {
            tokio::spawn(probe_while_low(upstream.clone(), interval));
        }
    }
}

async fn probe_while_low(upstream: Arc<Upstream>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if upstream.budget().standing() != Standing::Plenty
            && let Err(e) = upstream.probe_budget().await
        {
            tracing::debug!(upstream = upstream.name(), error = %e, "budget probe failed");
        }
    }
}
