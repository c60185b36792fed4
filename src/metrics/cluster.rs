//! The fleet's collectors: what replicas ask of each other, and how many
//! members each one sees up (see `cluster`).

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Registry};

use super::{counter, gauge};

/// What the peer client and the peer path record.
pub struct ClusterCollectors {
    /// Peer requests this replica answered for other replicas, by kind.
    pub served: IntCounterVec,
    /// Requests sent to owners, by kind and result.
    pub sent: IntCounterVec,
    /// Keys fetched here because their owner could not answer, by reason.
    pub fallbacks: IntCounterVec,
    /// Members by state: `self`, `up`, `down`, `unknown`.
    pub members: IntGaugeVec,
    /// Blob bytes received from owners.
    pub received_bytes: IntCounter,
}

impl ClusterCollectors {
    pub(super) fn register(registry: &Registry) -> Self {
        let received_bytes = IntCounter::new(
            "pullthrough_peer_received_bytes_total",
            "Blob bytes this replica received from the replicas that own them.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(received_bytes.clone()))
            .expect("metric registered once");
        ClusterCollectors {
            served: counter(
                registry,
                "pullthrough_peer_requests_served_total",
                "Requests this replica answered for other replicas (as the keys' owner), by kind: blob, manifest, tag, hello.",
                &["kind"],
            ),
            sent: counter(
                registry,
                "pullthrough_peer_requests_sent_total",
                "Requests sent to the replica that owns a key, by kind and result: ok, answered (the owner's answer about the content, such as not found), or why the owner could not answer.",
                &["kind", "result"],
            ),
            fallbacks: counter(
                registry,
                "pullthrough_peer_fallbacks_total",
                "Keys this replica fetched itself because their owner could not answer, by reason: connect, timeout, status, refused, broken (mid-stream; resumed from upstream), invalid.",
                &["reason"],
            ),
            members: gauge(
                registry,
                "pullthrough_cluster_members",
                "Replicas in the fleet as this one sees them, by state: self, up, down, unknown (not yet probed).",
                &["state"],
            ),
            received_bytes,
        }
    }
}
