//! Reading the Prometheus collectors back: the status page takes every
//! figure from the samples `/metrics` renders, through these helpers.

use std::collections::BTreeMap;

use prometheus::proto::{Metric, MetricFamily};

/// The outcomes of manifest and blob requests that a cache lookup decided.
const LOOKUP_OUTCOMES: [&str; 5] = ["miss", "coalesced", "revalidated", "stale", "reserve"];

/// Whether a request outcome was served by a cache tier.
pub(super) fn is_hit(outcome: &str) -> bool {
    outcome.starts_with("hit-")
}

/// Whether a request with these labels counts in the hit ratio.
fn is_lookup(kind: &str, outcome: &str) -> bool {
    matches!(kind, "manifest" | "blob") && (is_hit(outcome) || LOOKUP_OUTCOMES.contains(&outcome))
}

/// One gathering of every collector.
pub(super) struct Samples(Vec<MetricFamily>);

impl Samples {
    pub(super) fn new(families: Vec<MetricFamily>) -> Self {
        Samples(families)
    }

    fn series(&self, name: &str) -> impl Iterator<Item = &Metric> {
        self.0
            .iter()
            .filter(move |f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
    }

    /// A counter's or gauge's value (whichever the series is).
    fn value(metric: &Metric) -> f64 {
        metric.get_counter().get_value() + metric.get_gauge().get_value()
    }

    /// The value of `label` on a series, or "".
    pub(super) fn label<'m>(metric: &'m Metric, label: &str) -> &'m str {
        metric
            .get_label()
            .iter()
            .find(|l| l.name() == label)
            .map_or("", |l| l.value())
    }

    /// The sum of `name` over the series `keep` accepts.
    pub(super) fn sum(&self, name: &str, keep: impl Fn(&Metric) -> bool) -> u64 {
        self.series(name)
            .filter(|m| keep(m))
            .map(Self::value)
            .sum::<f64>()
            .max(0.0) as u64
    }

    /// `name` summed by the value of `label`.
    pub(super) fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for metric in self.series(name) {
            *out.entry(Self::label(metric, label).to_owned())
                .or_insert(0.0) += Self::value(metric);
        }
        out.into_iter()
            .map(|(k, v)| (k, v.max(0.0) as u64))
            .collect()
    }

    /// The series of `name` whose `label` is `value`, if it exists.
    pub(super) fn get(&self, name: &str, label: &str, value: &str) -> Option<i64> {
        self.series(name)
            .find(|m| Self::label(m, label) == value)
            .map(|m| Self::value(m) as i64)
    }

    /// `pullthrough_requests_total` split as the hit ratio needs it:
    /// lookups, hits among them, and error answers of any kind.
    pub(super) fn lookup_totals(&self) -> (u64, u64, u64) {
        let requests = "pullthrough_requests_total";
        let lookups = self.sum(requests, |m| {
            is_lookup(Self::label(m, "kind"), Self::label(m, "outcome"))
        });
        let hits = self.sum(requests, |m| {
            is_lookup(Self::label(m, "kind"), Self::label(m, "outcome"))
                && is_hit(Self::label(m, "outcome"))
        });
        let errors = self.sum(requests, |m| {
            Self::label(m, "status")
                .parse::<u16>()
                .is_ok_and(|s| s >= 400)
        });
        (lookups, hits, errors)
    }
}
