//! The checks of where pullthrough keeps things: the shared S3 tier and
//! the data directory.

use std::path::{Path, PathBuf};

use bytesize::ByteSize;

use super::Check;
use crate::cache::S3Tier;
use crate::cache::evict::{Bounds, FsUsage};
use crate::config::Config;
use crate::metrics::Metrics;

/// Below this much room nothing useful fits: one typical layer.
const TOO_SMALL: u64 = 64 * 1024 * 1024;

fn size(n: u64) -> String {
    ByteSize::b(n).display().iec().to_string()
}

/// Connects as `serve` would, then writes, reads and deletes a probe object.
pub(super) async fn s3_checks(config: &Config, metrics: &Metrics) -> Vec<Check> {
    if !config.s3.enabled() {
        return vec![Check::skip(
            "s3",
            "access",
            "no bucket configured: the shared tier is off",
        )];
    }
    let bucket = &config.s3.bucket;
    let tier = match S3Tier::connect(&config.s3, metrics).await {
        Ok(tier) => tier,
        Err(e) => {
            return vec![Check::fail(
                "s3",
                "access",
                e.to_string(),
                "S3 refused the bucket check: check the credentials (the task role, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), the region (--s3-region) and that the bucket exists; the role needs s3:ListBucket on it",
            )];
        }
    };
    if tier.is_degraded() {
        return vec![Check::fail(
            "s3",
            "access",
            format!("bucket {bucket:?}: S3 did not answer"),
            "S3 is unreachable: check --s3-endpoint and --s3-region, the egress to S3 (a VPC endpoint or NAT), and any proxy",
        )];
    }
    let probe = format!("{}-{}", std::process::id(), crate::status::now_secs());
    match tier.probe_access(&probe).await {
        Ok(key) => {
            let access = Check::pass(
                "s3",
                "access",
                format!("put, get and delete of {bucket}/{key}"),
            );
            vec![access, redirect_check(&tier, &probe).await]
        }
        Err(e) => {
            let arn = format!("arn:aws:s3:::{}*", tier.location());
            let hint = match e.call {
                "DeleteObject" => format!(
                    "only doctor deletes: allow s3:DeleteObject on {arn}, or ignore this and delete the probe object"
                ),
                call => format!("the role needs s3:{call} on {arn} (see the README's IAM policy)"),
            };
            vec![Check::fail("s3", "access", e.to_string(), hint)]
        }
    }
}

/// With `s3.redirect` on: a presigned URL made here can be fetched with no
/// credentials, as nodes will fetch blobs.
async fn redirect_check(tier: &S3Tier, probe: &str) -> Check {
    if !tier.redirects() {
        return Check::skip(
            "s3",
            "redirect",
            "s3.redirect is off: every blob is streamed by the replicas",
        );
    }
    match tier.probe_redirect(probe).await {
        Ok(host) => Check::pass(
            "s3",
            "redirect",
            format!(
                "a presigned URL for {host} fetched from here without credentials; nodes must reach {host} too"
            ),
        ),
        Err(e) => Check::fail(
            "s3",
            "redirect",
            e.to_string(),
            "nodes are sent to this URL for warm blobs: check s3.public_endpoint (the name nodes reach the bucket by), the route to S3 (a gateway endpoint in the nodes' route tables), and that the bucket policy admits requests through it (aws:SourceVpce); or turn s3.redirect off",
        ),
    }
}

/// The data directory: writable, and room against the disk cap.
pub(super) async fn data_dir_checks(config: &Config) -> Vec<Check> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || data_dir(&config))
        .await
        .unwrap_or_else(|e| {
            vec![Check::fail(
                "data",
                "write",
                e.to_string(),
                "the check itself failed",
            )]
        })
}

fn data_dir(config: &Config) -> Vec<Check> {
    let dir = &config.data_dir;
    let shown = dir.display().to_string();
    let mut checks = Vec::new();
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let probe = dir.join(format!(".doctor-{}", std::process::id()));
        std::fs::write(&probe, b"doctor")?;
        std::fs::remove_file(&probe)
    });
    match written {
        Ok(()) => checks.push(Check::pass("data", "write", format!("{shown} takes writes"))),
        Err(e) => checks.push(Check::fail(
            "data",
            "write",
            format!("{shown}: {e}"),
            "the data directory must be a directory pullthrough's user can write: check the volume mount and its owner, or set --data-dir (PULLTHROUGH_DATA_DIR)",
        )),
    }
    let Some(existing) = dir.ancestors().find(|p| p.is_dir()) else {
        checks.push(Check::skip(
            "data",
            "space",
            "no existing directory to measure",
        ));
        return checks;
    };
    let fs = match FsUsage::of(existing) {
        Ok(fs) => fs,
        Err(e) => {
            checks.push(Check::fail(
                "data",
                "space",
                e.to_string(),
                "statvfs failed on the data directory's file system",
            ));
            return checks;
        }
    };
    let cached = cached_bytes(&dir.join("cache"));
    let limits = Bounds::new(&config.disk).limits(cached, Some(fs));
    let cap = if limits.cap == u64::MAX {
        "unbounded".to_owned()
    } else {
        size(limits.cap)
    };
    let used_percent = fs.used as f64 * 100.0 / fs.total.max(1) as f64;
    let detail = format!(
        "{} free of {} ({used_percent:.0}% used); the cache holds {}, may hold {cap}",
        size(fs.available),
        size(fs.total),
        size(cached)
    );
    let max_bytes = config.disk.max_bytes.map(|b| b.as_u64());
    let check = if fs.available < TOO_SMALL {
        Check::fail(
            "data",
            "space",
            detail,
            "the file system is full: give the volume more room, or lower disk.max_bytes / disk.max_percent so eviction keeps room free",
        )
    } else if max_bytes.is_some_and(|m| m > fs.total) {
        Check::fail(
            "data",
            "space",
            detail,
            format!(
                "disk.max_bytes ({}) is more than the file system holds ({}): lower it, or rely on disk.max_percent",
                size(max_bytes.unwrap_or(0)),
                size(fs.total)
            ),
        )
    } else if limits.cap < TOO_SMALL {
        Check::fail(
            "data",
            "space",
            detail,
            format!(
                "other files fill the disk beyond disk.max_percent ({}%): the cache will be evicted to nothing; free space, use a volume of its own, or raise the percentage",
                config.disk.max_percent
            ),
        )
    } else {
        Check::pass("data", "space", detail)
    };
    checks.push(check);
    checks
}

/// Bytes of the cached objects under the disk tier's `root`.
fn cached_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![root.join("blobs"), root.join("manifests")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
