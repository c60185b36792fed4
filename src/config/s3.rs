//! The shared tier's settings: the bucket every replica uses, how blobs
//! are read back from it, and whether nodes are sent to it directly
//! (redirects to presigned URLs, see `cache::s3::redirect`).

use std::ops::RangeInclusive;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, render, repository_glob};

/// The shared tier: one bucket for every replica. Credentials come from the
/// standard AWS chain (environment, profile, ECS task role, IMDS), never
/// from this file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// The bucket; empty turns the tier off.
    pub bucket: String,
    /// Key prefix for every object, such as `pullthrough/`.
    pub prefix: String,
    /// AWS region; else from `AWS_REGION` and the usual chain.
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO and others), addressed path-style.
    pub endpoint: Option<String>,
    /// Bound on each S3 operation other than streaming a body, and on a
    /// body's silence.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Blobs are read in ranged GETs of this size: one connection to S3 is
    /// far slower than several.
    #[serde(serialize_with = "render::exact_size")]
    pub read_part_size: ByteSize,
    /// Ranged GETs in flight for one blob; memory per read is bounded by
    /// this times `read_part_size`.
    pub read_concurrency: usize,
    /// Answer a blob GET for a blob the bucket holds with a redirect to a
    /// presigned URL, so its bytes go from the bucket to the node and not
    /// through the replica. Off by default.
    pub redirect: bool,
    /// Blobs smaller than this are served by the replica even with
    /// `redirect` on: a second round trip costs them more than it saves.
    #[serde(serialize_with = "render::exact_size")]
    pub redirect_min_size: ByteSize,
    /// How long a presigned URL is valid; never longer than the
    /// credentials that sign it have left.
    #[serde(with = "humantime_serde")]
    pub redirect_expiry: Duration,
    /// The endpoint URLs are presigned for, when nodes reach the bucket
    /// under another name than the replicas do (an interface endpoint,
    /// MinIO behind another DNS name); else `endpoint`, else AWS's own.
    pub public_endpoint: Option<String>,
    /// Requests whose `User-Agent` contains one of these are streamed even
    /// with `redirect` on (a client that cannot follow redirects).
    pub no_redirect_user_agents: Vec<String>,
    /// `<upstream>/<repository>` globs (`docker.io/library/*`, `ghcr.io/**`)
    /// whose blobs are streamed even with `redirect` on.
    pub no_redirect_repositories: Vec<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            region: None,
            endpoint: None,
            timeout: Duration::from_secs(5),
            read_part_size: ByteSize::mib(8),
            read_concurrency: 8,
            redirect: false,
            redirect_min_size: ByteSize::mib(1),
            redirect_expiry: Duration::from_secs(15 * 60),
            public_endpoint: None,
            no_redirect_user_agents: Vec::new(),
            no_redirect_repositories: Vec::new(),
        }
    }
}

/// Bounds on `s3.read_part_size`: smaller parts cost more requests than
/// they save, larger ones hold more memory per read.
const READ_PART_SIZE: RangeInclusive<u64> = 64 * 1024..=1024 * 1024 * 1024;
/// Bounds on `s3.read_concurrency`.
const READ_CONCURRENCY: RangeInclusive<usize> = 1..=64;
/// Bounds on `s3.redirect_expiry`: a client must have time to follow the
/// URL, and SigV4 refuses presigned URLs valid for more than seven days.
const REDIRECT_EXPIRY: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600);

impl S3Config {
    /// Whether the shared tier is configured.
    pub fn enabled(&self) -> bool {
        !self.bucket.is_empty()
    }

    /// Checks what serde's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redirect && !self.enabled() {
            return Err(invalid(
                "s3.redirect",
                "needs s3.bucket: redirects point into the shared tier",
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        if !(3..=63).contains(&self.bucket.len()) {
            return Err(invalid("s3.bucket", "must be 3 to 63 characters"));
        }
        for (field, endpoint) in [
            ("s3.endpoint", &self.endpoint),
            ("s3.public_endpoint", &self.public_endpoint),
        ] {
            if let Some(endpoint) = endpoint {
                match reqwest::Url::parse(endpoint) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                    _ => return Err(invalid(field, "must be an http:// or https:// URL")),
                }
            }
        }
        if self.timeout.is_zero() {
            return Err(invalid("s3.timeout", "must be greater than zero"));
        }
        if !READ_PART_SIZE.contains(&self.read_part_size.0) {
            return Err(invalid("s3.read_part_size", "must be from 64KiB to 1GiB"));
        }
        if !READ_CONCURRENCY.contains(&self.read_concurrency) {
            return Err(invalid("s3.read_concurrency", "must be from 1 to 64"));
        }
        if !REDIRECT_EXPIRY.contains(&self.redirect_expiry) {
            return Err(invalid(
                "s3.redirect_expiry",
                "must be from 1 minute to 7 days",
            ));
        }
        if self.no_redirect_user_agents.iter().any(String::is_empty) {
            return Err(invalid(
                "s3.no_redirect_user_agents",
                "an empty string would match every client: set s3.redirect = false instead",
            ));
        }
        for pattern in &self.no_redirect_repositories {
            repository_glob(pattern).map_err(|e| invalid("s3.no_redirect_repositories", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, refused_naming_fields};

    #[test]
    fn redirects_are_off_by_default_and_checked_when_on() {
        let c = Config::default();
        assert!(!c.s3.redirect);
        assert_eq!(c.s3.redirect_min_size.0, 1 << 20);
        assert_eq!(c.s3.redirect_expiry.as_secs(), 900);
        let on = Config::from_toml("[s3]\nbucket = \"mirror\"\nredirect = true\n").unwrap();
        assert!(on.validate().is_ok());
        refused_naming_fields("[s3]\nredirect = true\n", &[("", "s3.redirect")]);
        refused_naming_fields(
            "[s3]\nbucket = \"mirror\"\n",
            &[
                ("redirect_expiry = \"10s\"", "s3.redirect_expiry"),
                ("redirect_expiry = \"8days\"", "s3.redirect_expiry"),
                ("public_endpoint = \"s3.internal\"", "s3.public_endpoint"),
                (
                    "no_redirect_user_agents = [\"\"]",
                    "s3.no_redirect_user_agents",
                ),
                (
                    "no_redirect_repositories = [\"a/[\"]",
                    "s3.no_redirect_repositories",
                ),
            ],
        );
    }
}
