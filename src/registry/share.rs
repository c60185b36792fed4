//! Fair share: no one client may spend more than its share of an
//! upstream's counted pulls within the upstream's window while others want
//! them, so one misconfigured CI job cannot spend a whole cluster's budget.
//!
//! The share is work-conserving: it binds only while another client wants
//! the budget, that is, when another client pulled within the last
//! `DEMAND_WINDOW` and the budget is at its reserve, or when another client
//! was refused a pull within it. A lone client (one busy node, or every
//! node behind a load balancer that hides addresses) is never refused while
//! the budget lasts: a mirror's 429 sends dockerd and containerd to Docker
//! Hub themselves, from the same address, which spends the same budget and
//! leaves the image uncached.
//!
//! Only pulls a client causes are charged: joining another client's fetch,
//! and everything served from the cache, is free. A client over its share
//! may still join a fetch already running; anything else that would spend
//! a pull gets 429 `TOOMANYREQUESTS`, so cached and stale content keeps
//! flowing to it, and other clients keep pulling.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;

use crate::clock::now_ms;
use crate::upstream::{ErrorKind, Standing, Upstream, UpstreamError};

/// Who asked: the key of a client's share. An address today; an
/// authenticated client's name where client authentication names one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// The peer address of the connection.
    Address(IpAddr),
    /// A client that authenticated as this name.
    Named(Arc<str>),
    /// No connection information (in-process callers and tests).
    Unknown,
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Address(ip) => write!(f, "{ip}"),
            ClientId::Named(name) => write!(f, "{name}"),
            ClientId::Unknown => f.write_str("an unidentified client"),
        }
    }
}

impl ClientId {
    /// The client as a peer request names it to the key's owner (see
    /// `cluster`), which charges the pull to the same share.
    pub fn to_header(&self) -> Option<String> {
        match self {
            ClientId::Address(ip) => Some(format!("addr:{ip}")),
            ClientId::Named(name) => Some(format!("name:{name}")),
            ClientId::Unknown => None,
        }
    }

    /// The client a peer request names; `Unknown` for anything else.
    pub fn from_header(value: Option<&str>) -> ClientId {
        let Some(value) = value else {
            return ClientId::Unknown;
        };
        if let Some(ip) = value.strip_prefix("addr:").and_then(|ip| ip.parse().ok()) {
            return ClientId::Address(ip);
        }
        match value.strip_prefix("name:") {
            Some(name) if !name.is_empty() => ClientId::Named(name.into()),
            _ => ClientId::Unknown,
        }
    }
}

/// A window used when the upstream announced none: Docker Hub's.
const DEFAULT_WINDOW_SECS: u64 = 21_600;

/// Clients whose pulls are remembered at once; more than any cluster has.
const MAX_CLIENTS: u64 = 100_000;

/// How long a client's pull, or a refusal it met, counts as its wanting
/// the budget: about a rollout.
const DEMAND_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Clients remembered per upstream as wanting its budget; two are enough
/// to know that someone else does, the rest keep a burst of others in view.
const DEMAND_REMEMBERED: usize = 16;

/// One client's latest pull and latest refusal (ms).
#[derive(Clone, Debug)]
struct Wanted {
    client: ClientId,
    pulled_at: u64,
    refused_at: u64,
}

/// The counted pulls each client spent, per upstream, within the window.
pub(super) struct FairShare {
    percent: u8,
    /// Times (ms) of each client's recent pulls, oldest first.
    spent: Cache<(String, ClientId), Arc<Mutex<VecDeque<u64>>>>,
    /// Per upstream, the clients that wanted its budget lately, newest
    /// first; touched only by counted pulls and refusals.
    demand: Mutex<HashMap<String, Vec<Wanted>>>,
}

impl FairShare {
    /// Shares of `percent` of each upstream's limit; 0 turns them off.
    pub(super) fn new(percent: u8) -> Self {
        FairShare {
            percent,
            spent: Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(Duration::from_secs(DEFAULT_WINDOW_SECS * 4))
                .build(),
            demand: Mutex::new(HashMap::new()),
        }
    }

    /// Notes that `client` pulled from `upstream` (`pulled`) or was
    /// refused a pull, now.
    fn note(&self, upstream: &Upstream, client: &ClientId, pulled: bool) {
        let now = now_ms();
        let mut demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = demand.entry(upstream.name().to_owned()).or_default();
        let mut entry = match wanted.iter().position(|w| w.client == *client) {
            Some(at) => wanted.remove(at),
            None => Wanted {
                client: client.clone(),
                pulled_at: 0,
                refused_at: 0,
            },
        };
        match pulled {
            true => entry.pulled_at = now,
            false => entry.refused_at = now,
        }
        wanted.insert(0, entry);
        wanted.truncate(DEMAND_REMEMBERED);
    }

    /// Notes that `client` was refused a pull of `upstream`'s, by its
    /// budget or by its share: it wants the budget.
    pub(super) fn refused(&self, upstream: &Upstream, client: &ClientId) {
        if self.percent > 0 {
            self.note(upstream, client, false);
        }
    }

    /// Whether a client other than `client` wants `upstream`'s budget now.
    fn others_want(&self, upstream: &Upstream, client: &ClientId) -> bool {
        let since = now_ms().saturating_sub(DEMAND_WINDOW_MS);
        let low = upstream.budget().standing() != Standing::Plenty;
        let demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        demand.get(upstream.name()).is_some_and(|wanted| {
            wanted.iter().any(|w| {
                w.client != *client && (w.refused_at > since || (low && w.pulled_at > since))
            })
        })
    }

    /// The share and window of `upstream`, when it announced a limit.
    fn allowance(&self, upstream: &Upstream) -> Option<(usize, u64)> {
        if self.percent == 0 {
            return None;
        }
        let state = upstream.budget().state();
        let limit = state.limit?;
        let share = limit.saturating_mul(u64::from(self.percent)).div_ceil(100);
        let window_ms = state
            .window_secs
            .unwrap_or(DEFAULT_WINDOW_SECS)
            .saturating_mul(1000);
        Some((
            usize::try_from(share.max(1)).unwrap_or(usize::MAX),
            window_ms,
        ))
    }

    /// `Err` when `client` has spent its share of `upstream`'s pulls and
    /// another client wants them: a 429 saying whose share, how big, and
    /// when a pull frees up.
    pub(super) fn check(
        &self,
        upstream: &Upstream,
        client: &ClientId,
    ) -> Result<(), UpstreamError> {
        let Some((share, window_ms)) = self.allowance(upstream) else {
            return Ok(());
        };
        let Some(spent) = self
            .spent
            .get(&(upstream.name().to_owned(), client.clone()))
        else {
            return Ok(());
        };
        let now = now_ms();
        let oldest = {
            let mut spent = spent.lock().unwrap_or_else(|e| e.into_inner());
            while spent.front().is_some_and(|&t| t + window_ms <= now) {
                spent.pop_front();
            }
            if spent.len() < share {
                return Ok(());
            }
            spent.front().copied().unwrap_or(now)
        };
        if !self.others_want(upstream, client) {
            return Ok(());
        }
        self.note(upstream, client, false);
        let wait = Duration::from_millis((oldest + window_ms).saturating_sub(now));
        let detail = format!(
            "{client} has spent its fair share of this upstream's pulls ({share} per {}); other clients still pull, and cached images still pull; try new content again in {}s",
            humantime::format_duration(Duration::from_secs(window_ms / 1000)),
            wait.as_secs().max(1)
        );
        Err(
            UpstreamError::new(upstream.name(), ErrorKind::RateLimited, detail)
                .with_retry_after(wait),
        )
    }

    /// Charges `client` one pull of `upstream`'s.
    pub(super) fn charge(&self, upstream: &Upstream, client: &ClientId) {
        let Some((share, _)) = self.allowance(upstream) else {
            return;
        };
        self.note(upstream, client, true);
        let spent = self.spent.get_with(
            (upstream.name().to_owned(), client.clone()),
            Default::default,
        );
        let mut spent = spent.lock().unwrap_or_else(|e| e.into_inner());
        spent.push_back(now_ms());
        // Only the newest `share` times can ever matter.
        while spent.len() > share {
            spent.pop_front();
        }
    }
}
