//! Requests in flight per peer address, and the response body that holds a
//! request's place until it is sent: one node (or one attacker) cannot take
//! every worker, while a node's few hundred parallel layer downloads fit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::activity::InFlight;

/// Counts requests in flight by peer address; an address's entry goes away
/// with its last request, so the map stays as small as the set of active
/// clients.
#[derive(Clone)]
pub struct PerIp {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    /// At most `max` requests in flight per address.
    pub fn new(max: usize) -> PerIp {
        PerIp {
            max,
            counts: Arc::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more request from `ip`, or `None` at the limit.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.counts();
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            ip,
            owner: self.clone(),
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.counts();
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// One request's place in its address's count; released when dropped.
pub struct Slot {
    ip: IpAddr,
    owner: PerIp,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.owner.release(self.ip);
    }
}

/// A response body that keeps its request counted (per address, and on its
/// connection) until the body is sent or dropped.
pub struct Held {
    inner: Body,
    _slot: Option<Slot>,
    _in_flight: InFlight,
}

impl Held {
    /// Wraps `inner`, holding `slot` (none for a refusal) and `in_flight`
    /// as long as it lives.
    pub fn new(inner: Body, slot: Option<Slot>, in_flight: InFlight) -> Held {
        Held {
            inner,
            _slot: slot,
            _in_flight: in_flight,
        }
    }
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_limit_and_slots_return() {
        let limit = PerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none(), "a is at its limit");
        assert!(limit.try_acquire(b).is_some(), "b is not");
        drop(first);
        assert!(limit.try_acquire(a).is_some(), "a slot came back");
    }

    #[test]
    fn an_address_without_requests_leaves_the_map() {
        let limit = PerIp::new(1);
        drop(limit.try_acquire("10.0.0.1".parse().unwrap()));
        assert!(limit.counts().is_empty());
    }
}
