//! The disk tier's bounds: how much of its file system the cache may use,
//! and the watermarks eviction works between (see `cache::evict`).

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// How large the disk tier may grow. The cap is the smaller of `max_bytes`
/// (the cache's own bytes) and what keeps the whole file system at most
/// `max_percent` full; eviction starts at `high_watermark` percent of the
/// cap and stops at `low_watermark` percent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiskConfig {
    /// Bytes the cached objects may take in all; unset: no fixed cap, only
    /// `max_percent`.
    #[serde(serialize_with = "super::render::exact_size_opt")]
    pub max_bytes: Option<ByteSize>,
    /// The file system, counting every user of it, is kept at most this
    /// full by evicting cached objects; 100 turns the percentage form off.
    pub max_percent: u8,
    /// Percent of the cap at which eviction starts.
    pub high_watermark: u8,
    /// Percent of the cap at which eviction stops.
    pub low_watermark: u8,
    /// Tag records kept on disk; the least recently used go first.
    pub max_tag_records: u64,
    /// How long serving a manifest keeps it and everything it references
    /// from eviction (at least the tag's TTL when asked by tag): the time
    /// a rollout has to fetch the layers. 15 minutes by default: a rolling
    /// deployment's waves, each waiting on health checks, fit with room to
    /// spare. Holds yield to the cap when nothing else is left to evict.
    #[serde(with = "humantime_serde")]
    pub pull_hold: Duration,
    /// Every cached file is hashed again once per this interval, slowly
    /// and at the lowest priority, to find damage that nothing else shows
    /// (see `cache::scrub`); `0s` turns the scrub off.
    #[serde(with = "humantime_serde")]
    pub scrub_interval: Duration,
}

impl Default for DiskConfig {
    /// 80% of the file system, like kubelet's image garbage collection
    /// thresholds: a fresh install never fills its disk.
    fn default() -> Self {
        DiskConfig {
            max_bytes: None,
            max_percent: 80,
            high_watermark: 95,
            low_watermark: 85,
            max_tag_records: 100_000,
            pull_hold: Duration::from_secs(15 * 60),
            scrub_interval: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl DiskConfig {
    /// Checks the ranges serde's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_bytes.is_some_and(|b| b.as_u64() == 0) {
            return Err(invalid("disk.max_bytes", "must be greater than zero"));
        }
        if !(1..=100).contains(&self.max_percent) {
            return Err(invalid("disk.max_percent", "must be from 1 to 100"));
        }
        if !(1..=100).contains(&self.high_watermark) {
            return Err(invalid("disk.high_watermark", "must be from 1 to 100"));
        }
        if self.low_watermark == 0 || self.low_watermark >= self.high_watermark {
            return Err(invalid(
                "disk.low_watermark",
                "must be above 0 and below disk.high_watermark",
            ));
        }
        if self.pull_hold.is_zero() {
            return Err(invalid("disk.pull_hold", "must be greater than zero"));
        }
        if self.max_tag_records == 0 {
            return Err(invalid("disk.max_tag_records", "must be greater than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, refused_naming_fields};
    use super::*;

    #[test]
    fn sizes_and_percentages_come_from_the_file() {
        let c = Config::from_toml(
            "[disk]\nmax_bytes = \"20GiB\"\nmax_percent = 90\nlow_watermark = 70",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.disk.max_bytes, Some(ByteSize::gib(20)));
        assert_eq!((c.disk.max_percent, c.disk.high_watermark), (90, 95));
        assert_eq!(c.disk.low_watermark, 70);
    }

    #[test]
    fn bad_bounds_name_their_field() {
        refused_naming_fields(
            "[disk]\n",
            &[
                ("max_bytes = \"0B\"", "disk.max_bytes"),
                ("max_percent = 0", "disk.max_percent"),
                ("max_percent = 101", "disk.max_percent"),
                ("low_watermark = 95", "disk.low_watermark"),
                ("high_watermark = 120", "disk.high_watermark"),
                ("max_tag_records = 0", "disk.max_tag_records"),
                ("pull_hold = \"0s\"", "disk.pull_hold"),
            ],
        );
    }
}
