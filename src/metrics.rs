//! Prometheus metrics, registered once per process in one registry.
//!
//! Request metrics are recorded by the API's logging layer from each
//! response's [`Outcome`](crate::registry::Outcome); upstream metrics by the
//! upstream client; connection metrics by the listener. Nothing else
//! records, so every figure has one source.

mod blobs;
mod cluster;
mod listener;

use std::sync::{Arc, OnceLock};

pub use blobs::BlobCollectors;
pub use cluster::ClusterCollectors;
pub use listener::ListenerCollectors;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Cheap to clone: one `Arc` around the registered collectors.
#[derive(Clone)]
pub struct Metrics(Arc<Collectors>);

/// The collectors themselves; reach them through [`Metrics`]' deref.
pub struct Collectors {
    registry: Registry,
    /// Client requests by endpoint kind, outcome and status.
    pub requests: IntCounterVec,
    /// Client request latency by endpoint kind and outcome.
    pub request_seconds: HistogramVec,
    /// `requests` with status 200, by an index the access record gives
    /// each endpoint kind and outcome.
    pub requests_ok: Resolved<prometheus::IntCounter>,
    /// `request_seconds`, by the same index.
    pub request_seconds_by: Resolved<prometheus::Histogram>,
    /// `traffic.served_bytes`, by an index the access record gives each tier.
    pub served_bytes_by: Resolved<prometheus::IntCounter>,
    /// Requests sent upstream by upstream, kind and status (or error kind).
    pub upstream_requests: IntCounterVec,
    /// Blob bytes downloaded from upstream.
    pub upstream_bytes: IntCounterVec,
    /// Content that failed its digest check and was thrown away.
    pub digest_mismatches: IntCounterVec,
    /// The last `ratelimit-remaining` an upstream announced.
    pub ratelimit_remaining: IntGaugeVec,
    /// The last `ratelimit-limit` an upstream announced.
    pub ratelimit_limit: IntGaugeVec,
    /// How an upstream's budget may be spent: 0 plenty, 1 reserve, 2 spent.
    pub budget_standing: IntGaugeVec,
    /// Manifest GETs upstream answered: what Docker Hub counts as pulls.
    pub pulls_spent: IntCounterVec,
    /// Manifest GETs answered without one upstream, by upstream and reason.
    pub pulls_avoided: IntCounterVec,
    /// Requests refused because their client spent its fair share.
    pub fair_share_refusals: IntCounterVec,
    /// 1 while the shared S3 tier is failing and being skipped.
    pub s3_degraded: prometheus::IntGauge,
    /// Parts of S3 objects read with ranged GETs, each answered with its range.
    pub s3_part_reads: prometheus::IntCounter,
    /// Upstream requests tried again after a transient failure.
    pub upstream_retries: IntCounterVec,
    /// Interrupted blob downloads continued with `Range`.
    pub upstream_resumes: IntCounterVec,
    /// Each upstream's circuit: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// Upstream fetches waiting for one of the upstream's fetch slots.
    pub upstream_waiting: IntGaugeVec,
    /// Objects a cache tier could not take, by tier and reason.
    pub cache_store_failures: IntCounterVec,
    /// What the egress policy refused or withheld, by upstream and reason.
    pub egress_refused: IntCounterVec,
    /// Size, bounds and evictions of the cache tiers.
    pub cache: CacheCollectors,
    /// What a dashboard needs beside the above.
    pub traffic: TrafficCollectors,
    /// Client connections and the listener's refusals.
    pub listener: ListenerCollectors,
    /// Blob GETs streamed or redirected to the bucket.
    pub blobs: BlobCollectors,
    /// Requests between replicas and the members seen.
    pub cluster: ClusterCollectors,
}

/// Bytes served, upstream latency and the downloads in flight.
pub struct TrafficCollectors {
    /// Body bytes of successful manifest and blob GETs, by where they came
    /// from: `memory`, `disk`, `s3`, `upstream`, or `cache` for a cached
    /// manifest served after a revalidation, as stale or from the reserve.
    pub served_bytes: IntCounterVec,
    /// Time from sending an upstream request to its response head, per hop.
    pub upstream_seconds: HistogramVec,
    /// Blob downloads running now (one per digest, however many clients).
    pub downloads_active: prometheus::IntGauge,
    /// Clients streaming a blob from a shared download now.
    pub download_clients: prometheus::IntGauge,
    /// Memory held by downloads the disk tier could not take.
    pub download_memory: prometheus::IntGauge,
    /// Clients cut off for not reading a download held in memory.
    pub followers_cut: prometheus::IntCounter,
}

impl TrafficCollectors {
    fn register(registry: &Registry) -> Self {
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pullthrough_upstream_request_duration_seconds",
                "Time from sending an upstream request to its response head, by upstream and request kind (each redirect hop on its own).",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["upstream", "kind"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_seconds.clone()))
            .expect("metric registered once");
        let int_gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        TrafficCollectors {
            served_bytes: counter(
                registry,
                "pullthrough_served_bytes_total",
                "Body bytes of successful manifest and blob GETs (from Content-Length), by the tier that answered: memory, disk, s3, peer (the replica that owns the key), upstream, cache (a cached manifest after revalidation, stale or reserve), or redirect (a blob the bucket sent through a redirect: its size or the requested range's).",
                &["tier"],
            ),
            upstream_seconds,
            downloads_active: int_gauge(
                "pullthrough_downloads_active",
                "Blob downloads running now, one per digest however many clients share it.",
            ),
            download_clients: int_gauge(
                "pullthrough_download_clients",
                "Clients streaming a blob from a shared download now.",
            ),
            download_memory: int_gauge(
                "pullthrough_download_memory_bytes",
                "Memory held by downloads the disk tier could not take (full or failing), all together; bounded by memory.max_download_bytes.",
            ),
            followers_cut: single_counter(
                registry,
                "pullthrough_download_clients_cut_total",
                "Clients cut off (their connection aborted, so they retry) for not reading a download held in memory while it waited on them.",
            ),
        }
    }
}

/// Children of a labelled metric resolved once each and kept, by an index
/// the caller gives each label set: recording then costs an index and an
/// atomic load, where `with_label_values` hashes the labels and takes the
/// vector's lock on every call. A child is created on its first use only,
/// so a label set never used never appears in `/metrics`.
pub struct Resolved<M> {
    children: Box<[OnceLock<M>]>,
}

impl<M> Resolved<M> {
    /// Room for label sets `0..len`.
    pub fn new(len: usize) -> Self {
        Resolved {
            children: (0..len).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The child at `index`, resolved by `resolve` the first time;
    /// `None` for an index beyond the room.
    pub fn get(&self, index: usize, resolve: impl FnOnce() -> M) -> Option<&M> {
        Some(self.children.get(index)?.get_or_init(resolve))
    }
}

/// Holds a gauge one higher for as long as it lives, however it ends.
pub struct GaugeHeld(prometheus::IntGauge);

impl GaugeHeld {
    /// Raises `gauge` by one until the value is dropped.
    pub fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        GaugeHeld(gauge.clone())
    }
}

impl Drop for GaugeHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The cache tiers' size and evictions, labelled by `tier`.
pub struct CacheCollectors {
    /// Bytes held.
    pub bytes: IntGaugeVec,
    /// Objects held.
    pub objects: IntGaugeVec,
    /// Bytes the tier may hold now (the disk tier's cap).
    pub capacity: IntGaugeVec,
    /// Objects evicted to keep the tier within its bounds.
    pub evictions: IntCounterVec,
    /// Bytes of the objects evicted.
    pub evicted_bytes: IntCounterVec,
    /// Held objects evicted all the same: the tier was over its cap and
    /// nothing unheld was left.
    pub holds_broken: IntCounterVec,
    /// Objects found damaged (not matching their digest) and deleted.
    pub corrupt: IntCounterVec,
    /// Bytes the disk scrub has hashed again.
    pub scrubbed_bytes: prometheus::IntCounter,
}

impl CacheCollectors {
    fn register(registry: &Registry) -> Self {
        CacheCollectors {
            bytes: gauge(
                registry,
                "pullthrough_cache_bytes",
                "Bytes held by each cache tier.",
                &["tier"],
            ),
            objects: gauge(
                registry,
                "pullthrough_cache_objects",
                "Objects held by each cache tier.",
                &["tier"],
            ),
            capacity: gauge(
                registry,
                "pullthrough_cache_capacity_bytes",
                "Bytes each cache tier may hold now; eviction keeps it below.",
                &["tier"],
            ),
            evictions: counter(
                registry,
                "pullthrough_cache_evictions_total",
                "Objects evicted to keep a cache tier within its bounds.",
                &["tier"],
            ),
            evicted_bytes: counter(
                registry,
                "pullthrough_cache_evicted_bytes_total",
                "Bytes of the objects evicted from each cache tier.",
                &["tier"],
            ),
            holds_broken: counter(
                registry,
                "pullthrough_cache_holds_broken_total",
                "Objects evicted although an image being pulled held them: the tier was over its cap and nothing else was left to evict.",
                &["tier"],
            ),
            corrupt: counter(
                registry,
                "pullthrough_cache_corrupt_total",
                "Objects found damaged in a cache tier (their bytes do not match their digest, or are short) and deleted; the request fetched a good copy.",
                &["tier"],
            ),
            scrubbed_bytes: single_counter(
                registry,
                "pullthrough_cache_scrubbed_bytes_total",
                "Bytes of the disk tier hashed again by its background scrub (one pass per disk.scrub_interval).",
            ),
        }
    }
}

impl std::ops::Deref for Metrics {
    type Target = Collectors;
    fn deref(&self) -> &Collectors {
        &self.0
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

/// A counter without labels, registered.
fn single_counter(registry: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c = prometheus::IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// Label sets [`Resolved`] keeps for the request metrics; more than the
/// endpoint kinds times the outcomes. Beyond it, labels are looked up.
const RESOLVED_ROOM: usize = 128;

impl Metrics {
    /// Registers every collector in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "pullthrough_requests_total",
            "Client requests by endpoint kind, outcome and HTTP status.",
            &["kind", "outcome", "status"],
        );
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pullthrough_request_duration_seconds",
                "Time to the response head, by endpoint kind and outcome.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(request_seconds.clone()))
            .expect("metric registered once");
        let upstream_requests = counter(
            &registry,
            "pullthrough_upstream_requests_total",
            "Requests sent to upstream registries, by kind and status or error.",
            &["upstream", "kind", "status"],
        );
        let upstream_bytes = counter(
            &registry,
            "pullthrough_upstream_blob_bytes_total",
            "Blob bytes downloaded from upstream registries.",
            &["upstream"],
        );
        let digest_mismatches = counter(
            &registry,
            "pullthrough_digest_mismatches_total",
            "Downloads discarded because their bytes did not match their digest, by object kind.",
            &["kind"],
        );
        let ratelimit_remaining = gauge(
            &registry,
            "pullthrough_upstream_ratelimit_remaining",
            "Pulls left in the upstream's window, from its ratelimit-remaining header.",
            &["upstream"],
        );
        let ratelimit_limit = gauge(
            &registry,
            "pullthrough_upstream_ratelimit_limit",
            "The upstream's pull limit per window, from its ratelimit-limit header.",
            &["upstream"],
        );
        let budget_standing = gauge(
            &registry,
            "pullthrough_upstream_budget_standing",
            "How the upstream's pull budget may be spent: 0 plenty, 1 at the reserve (no revalidation), 2 spent (cached content only).",
            &["upstream"],
        );
        let pulls_spent = counter(
            &registry,
            "pullthrough_upstream_pulls_total",
            "Manifest GETs answered by the upstream: the pulls Docker Hub counts.",
            &["upstream"],
        );
        let pulls_avoided = counter(
            &registry,
            "pullthrough_pulls_avoided_total",
            "Client manifest GETs answered without a counted upstream pull, by reason: cached, revalidated (a free HEAD), coalesced, reserve, stale, peer (answered by the replica that owns it, which counts its own pull if it made one).",
            &["upstream", "reason"],
        );
        let fair_share_refusals = counter(
            &registry,
            "pullthrough_fair_share_refusals_total",
            "Requests refused with 429 because their client had spent its share of the upstream's budget.",
            &["upstream"],
        );
        let s3_degraded = prometheus::IntGauge::new(
            "pullthrough_s3_degraded",
            "1 while the shared S3 tier is failing and skipped; 0 when healthy or not configured.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(s3_degraded.clone()))
            .expect("metric registered once");
        let s3_part_reads = prometheus::IntCounter::new(
            "pullthrough_s3_part_reads_total",
            "Ranged GETs that read a part of a blob from the S3 tier (several run at once per blob).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(s3_part_reads.clone()))
            .expect("metric registered once");
        let upstream_retries = counter(
            &registry,
            "pullthrough_upstream_retries_total",
            "Upstream requests retried after a transient failure, by request kind.",
            &["upstream", "kind"],
        );
        let upstream_resumes = counter(
            &registry,
            "pullthrough_upstream_resumes_total",
            "Interrupted blob downloads resumed with a Range request.",
            &["upstream"],
        );
        let circuit_state = gauge(
            &registry,
            "pullthrough_upstream_circuit_state",
            "Each upstream's circuit breaker: 0 closed, 1 half-open, 2 open.",
            &["upstream"],
        );
        let upstream_waiting = gauge(
            &registry,
            "pullthrough_upstream_fetches_waiting",
            "Upstream fetches queued for one of the upstream's concurrent fetch slots.",
            &["upstream"],
        );
        let egress_refused = counter(
            &registry,
            "pullthrough_egress_refused_total",
            "Egress refused by policy, by upstream and reason: credentials_withheld (a foreign token realm was asked anonymously), redirect_scheme, redirect_downgrade, redirect_address, realm_scheme, realm_address (a token realm on another origin), repository_denied.",
            &["upstream", "reason"],
        );
        let cache_store_failures = counter(
            &registry,
            "pullthrough_cache_store_failures_total",
            "Downloads a cache tier could not hold (streamed through uncached), by tier and reason.",
            &["tier", "reason"],
        );
        let cache = CacheCollectors::register(&registry);
        let traffic = TrafficCollectors::register(&registry);
        let listener = ListenerCollectors::register(&registry);
        let blobs = BlobCollectors::register(&registry, &traffic.served_bytes);
        let cluster = ClusterCollectors::register(&registry);
        Metrics(Arc::new(Collectors {
            registry,
            requests,
            request_seconds,
            requests_ok: Resolved::new(RESOLVED_ROOM),
            request_seconds_by: Resolved::new(RESOLVED_ROOM),
            served_bytes_by: Resolved::new(RESOLVED_ROOM),
            upstream_requests,
            upstream_bytes,
            digest_mismatches,
            ratelimit_remaining,
            ratelimit_limit,
            budget_standing,
            pulls_spent,
            pulls_avoided,
            fair_share_refusals,
            s3_degraded,
            s3_part_reads,
            upstream_retries,
            upstream_resumes,
            circuit_state,
            upstream_waiting,
            cache_store_failures,
            cache,
            egress_refused,
            traffic,
            listener,
            blobs,
            cluster,
        }))
    }

    /// Every sample now: what `/metrics` renders and the status page reads.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.gather(), &mut out)
            .expect("encode metrics");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
