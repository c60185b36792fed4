//! One [`Snapshot`] of the mirror: every figure read from the collectors
//! `/metrics` renders, at one moment, plus the board's lists. Serialized
//! as-is for `/ui/status.json` and read back by `pullthrough status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::board::{Board, ErrorEntry, SAMPLE_EVERY, Sample};
use super::samples::{Samples, is_hit};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Images listed as the hottest.
const HOTTEST_SHOWN: usize = 10;
/// Errors listed.
const ERRORS_SHOWN: usize = 20;

/// Everything the status page and `pullthrough status` show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Seconds since the Unix epoch.
    pub generated_at: u64,
    pub requests: Requests,
    pub pulls: Pulls,
    /// `pullthrough_served_bytes_total` by tier.
    pub served_bytes: BTreeMap<String, u64>,
    /// Blob bytes this replica sent and those the bucket sent instead.
    #[serde(default)]
    pub blob_bytes: BlobBytes,
    pub upstreams: Vec<UpstreamStatus>,
    pub cache: Vec<CacheTier>,
    pub downloads: Downloads,
    /// The other replicas, when this one has peers.
    #[serde(default)]
    pub fleet: Option<Fleet>,
    pub hottest: Vec<HotImage>,
    /// Newest first.
    pub errors: Vec<ErrorEntry>,
    /// Oldest first, one point every `sample_every_secs`.
    pub history: Vec<Sample>,
    pub sample_every_secs: u64,
}

/// Client requests, from `pullthrough_requests_total`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    /// Every request counted, of every kind.
    pub total: u64,
    /// Manifest and blob requests a cache lookup decided (hits, misses,
    /// coalesced, revalidated, stale, reserve).
    pub lookups: u64,
    /// Of which served by a cache tier.
    pub hits: u64,
    /// `hits / lookups`; `None` before the first lookup.
    pub hit_ratio: Option<f64>,
    /// Hits by tier (`memory`, `disk`, `s3`).
    pub hits_by_tier: BTreeMap<String, u64>,
    /// Every request by outcome.
    pub by_outcome: BTreeMap<String, u64>,
    /// Answers with a status of 400 or more.
    pub errors: u64,
}

/// Counted upstream pulls spent and avoided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pulls {
    /// `pullthrough_upstream_pulls_total`.
    pub spent: u64,
    /// `pullthrough_pulls_avoided_total`.
    pub saved: u64,
    pub saved_by_reason: BTreeMap<String, u64>,
}

/// One upstream's budget and circuit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// Pulls left, as last announced; `None` when never announced.
    pub remaining: Option<i64>,
    pub limit: Option<i64>,
    /// When the budget is back: the end of a pause after a 429, else when
    /// the last announced window ends (seconds since the epoch).
    pub resets_at: Option<u64>,
    /// `plenty`, `reserve` or `spent`.
    pub standing: String,
    /// `closed`, `half-open` or `open`.
    pub circuit: String,
    pub pulls_spent: u64,
    pub pulls_saved: u64,
}

/// One cache tier's size; `None` where it is not known (S3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheTier {
    pub tier: String,
    pub bytes: Option<u64>,
    pub objects: Option<u64>,
    /// `None` when unbounded or unknown.
    pub capacity_bytes: Option<u64>,
    pub evictions: u64,
    /// `ok`, or for S3 `degraded`.
    pub state: String,
}

/// Blob bytes by who sent them, from `pullthrough_blob_answer_bytes_total`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BlobBytes {
    /// Sent by this replica, from any tier or upstream.
    pub streamed: u64,
    /// Sent by the bucket, to which the clients were redirected.
    pub redirected: u64,
}

impl BlobBytes {
    /// The share of blob bytes the bucket sent; `None` before any.
    pub fn bucket_share(&self) -> Option<f64> {
        let total = self.streamed + self.redirected;
        (total > 0).then(|| self.redirected as f64 / total as f64)
    }
}

/// Blob downloads in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Downloads {
    pub active: u64,
    pub clients: u64,
}

/// The fleet as this replica sees it (see `cluster`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub members: Vec<FleetMember>,
    /// Requests this replica answered for others, as a key's owner.
    pub served_for_peers: u64,
    /// Requests this replica sent to owners.
    pub sent_to_owners: u64,
    /// Keys fetched here because their owner could not answer.
    pub fallbacks: u64,
}

/// One member of the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetMember {
    pub url: String,
    /// `self`, `up`, `down` or `unknown` (not yet probed).
    pub state: String,
    /// Why it is down, when it is.
    pub error: Option<String>,
}

/// One of the hottest images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotImage {
    pub image: String,
    /// Manifest requests counted (never fewer than were made).
    pub requests: u64,
}

fn standing_name(gauge: i64) -> &'static str {
    match gauge {
        0 => "plenty",
        1 => "reserve",
        _ => "spent",
    }
}

fn circuit_name(gauge: i64) -> &'static str {
    match gauge {
        0 => "closed",
        1 => "half-open",
        _ => "open",
    }
}

impl Snapshot {
    /// Each tier that answered hits or served bytes, in name order, with
    /// its hits and bytes served: one row of the page's and the table's.
    pub fn tiers(&self) -> Vec<(&str, u64, u64)> {
        let hits = &self.requests.hits_by_tier;
        let mut names: Vec<&String> = hits.keys().chain(self.served_bytes.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|tier| {
                let hit = hits.get(tier).copied().unwrap_or(0);
                let served = self.served_bytes.get(tier).copied().unwrap_or(0);
                (tier.as_str(), hit, served)
            })
            .collect()
    }

    /// Takes a snapshot now.
    pub fn take(registry: &Registry, metrics: &Metrics, board: &Board) -> Snapshot {
        registry.refresh_cache_gauges();
        let samples = Samples::new(metrics.gather());
        let now = super::now_secs();
        Snapshot {
            generated_at: now,
            requests: requests(&samples),
            pulls: Pulls {
                spent: samples.sum("pullthrough_upstream_pulls_total", |_| true),
                saved: samples.sum("pullthrough_pulls_avoided_total", |_| true),
                saved_by_reason: samples.by_label("pullthrough_pulls_avoided_total", "reason"),
            },
            served_bytes: samples.by_label("pullthrough_served_bytes_total", "tier"),
            blob_bytes: blob_bytes(&samples),
            upstreams: upstreams(registry, &samples, now),
            cache: cache(registry, &samples),
            downloads: Downloads {
                active: samples.sum("pullthrough_downloads_active", |_| true),
                clients: samples.sum("pullthrough_download_clients", |_| true),
            },
            fleet: fleet(registry, &samples),
            hottest: board
                .hottest(HOTTEST_SHOWN)
                .into_iter()
                .map(|(image, requests)| HotImage { image, requests })
                .collect(),
            errors: board.errors().into_iter().take(ERRORS_SHOWN).collect(),
            history: board.history(),
            sample_every_secs: SAMPLE_EVERY.as_secs(),
        }
    }
}

fn blob_bytes(samples: &Samples) -> BlobBytes {
    let via = samples.by_label("pullthrough_blob_answer_bytes_total", "via");
    let of = |how: &str| via.get(how).copied().unwrap_or(0);
    BlobBytes {
        streamed: of("stream"),
        redirected: of("redirect"),
    }
}

fn requests(samples: &Samples) -> Requests {
    let (lookups, hits, errors) = samples.lookup_totals();
    let by_outcome = samples.by_label("pullthrough_requests_total", "outcome");
    let hits_by_tier = by_outcome
        .iter()
        .filter(|(outcome, _)| is_hit(outcome))
        .map(|(outcome, n)| (outcome.trim_start_matches("hit-").to_owned(), *n))
        .collect();
    Requests {
        total: by_outcome.values().sum(),
        lookups,
        hits,
        hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
        hits_by_tier,
        by_outcome,
        errors,
    }
}

fn upstreams(registry: &Registry, samples: &Samples, now: u64) -> Vec<UpstreamStatus> {
    registry
        .upstreams()
        .iter()
        .map(|upstream| {
            let name = upstream.name();
            let gauge = |metric: &str| samples.get(metric, "upstream", name);
            let state = upstream.budget().state();
            let paused = state
                .paused_until_ms
                .map(|ms| ms / 1000)
                .filter(|s| *s > now);
            let window_end = state
                .window_secs
                .filter(|_| state.observed_at_ms > 0)
                .map(|w| state.observed_at_ms / 1000 + w);
            let standing = gauge("pullthrough_upstream_budget_standing").unwrap_or(0);
            UpstreamStatus {
                name: name.to_owned(),
                remaining: gauge("pullthrough_upstream_ratelimit_remaining"),
                limit: gauge("pullthrough_upstream_ratelimit_limit"),
                resets_at: paused.or(window_end),
                standing: standing_name(standing).to_owned(),
                circuit: circuit_name(gauge("pullthrough_upstream_circuit_state").unwrap_or(0))
                    .to_owned(),
                pulls_spent: samples.sum("pullthrough_upstream_pulls_total", |m| {
                    Samples::label(m, "upstream") == name
                }),
                pulls_saved: samples.sum("pullthrough_pulls_avoided_total", |m| {
                    Samples::label(m, "upstream") == name
                }),
            }
        })
        .collect()
}

fn fleet(registry: &Registry, samples: &Samples) -> Option<Fleet> {
    let members = registry.cluster()?.members();
    let all = |_: &_| true;
    Some(Fleet {
        members: members
            .into_iter()
            .map(|m| FleetMember {
                url: m.url,
                state: m.state.to_owned(),
                error: m.error,
            })
            .collect(),
        served_for_peers: samples.sum("pullthrough_peer_requests_served_total", |m| {
            Samples::label(m, "kind") != "hello"
        }),
        sent_to_owners: samples.sum("pullthrough_peer_requests_sent_total", all),
        fallbacks: samples.sum("pullthrough_peer_fallbacks_total", all),
    })
}

fn cache(registry: &Registry, samples: &Samples) -> Vec<CacheTier> {
    let known = |metric: &str, tier: &str| {
        samples
            .get(metric, "tier", tier)
            .filter(|v| (0..i64::MAX / 2).contains(v))
            .map(|v| v as u64)
    };
    let evictions = |tier: &str| {
        samples.sum("pullthrough_cache_evictions_total", |m| {
            Samples::label(m, "tier") == tier
        })
    };
    let mut tiers: Vec<CacheTier> = ["memory", "disk"]
        .into_iter()
        .map(|tier| CacheTier {
            tier: tier.to_owned(),
            bytes: known("pullthrough_cache_bytes", tier).or(Some(0)),
            objects: known("pullthrough_cache_objects", tier).or(Some(0)),
            capacity_bytes: known("pullthrough_cache_capacity_bytes", tier),
            evictions: evictions(tier),
            state: "ok".to_owned(),
        })
        .collect();
    let s3 = registry.shared_tier_state();
    if s3 != "off" {
        // What the bucket holds is not known without listing it: nothing
        // is invented. A lifecycle rule bounds it (see the README).
        tiers.push(CacheTier {
            tier: "s3".to_owned(),
            bytes: None,
            objects: None,
            capacity_bytes: None,
            evictions: 0,
            state: s3.to_owned(),
        });
    }
    tiers
}
