//! The listener's collectors: open connections, connections closed by a
//! timeout, and requests refused by a limit, so an operator sees when the
//! `[listen_limits]` bite.

use prometheus::{IntCounterVec, IntGauge, Registry};

use super::counter;

/// What the listener records; see [`crate::listen`].
pub struct ListenerCollectors {
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Connections closed for overstaying a deadline, by `reason`
    /// (`header_timeout`, `idle_timeout`, `write_stalled`).
    pub connections_closed: IntCounterVec,
    /// Requests refused by a limit, by `reason` (`per_ip_limit`).
    pub requests_refused: IntCounterVec,
}

impl ListenerCollectors {
    pub(super) fn register(registry: &Registry) -> Self {
        let connections_open = IntGauge::new(
            "pullthrough_connections_open",
            "Client connections open now (at most listen_limits.max_connections).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections_open.clone()))
            .expect("metric registered once");
        ListenerCollectors {
            connections_open,
            connections_closed: counter(
                registry,
                "pullthrough_connections_closed_total",
                "Client connections closed for overstaying a deadline: header_timeout (a head or TLS handshake too slow), idle_timeout, or write_stalled (a response left unread).",
                &["reason"],
            ),
            requests_refused: counter(
                registry,
                "pullthrough_requests_refused_total",
                "Client requests refused by a listener limit, by reason (per_ip_limit).",
                &["reason"],
            ),
        }
    }
}
