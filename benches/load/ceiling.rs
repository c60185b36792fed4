//! The rollout's practical ceiling: the same burst against nginx, which
//! serves the layer as a static file sent to each client at the upstream's
//! pace, and the two warm blobs at full speed. What warm requests cost
//! during such a burst on this machine at best, next to what they cost
//! with pullthrough (see `rollout`).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Fixture;
use super::probe::{self, Target, Timings};
use super::servers::{self, StaticFile};
use super::support::hubsim::DOCKER_MANIFEST_V2;

/// Where nginx serves the layer.
const LAYER_PATH: &str = "/v2/library/rollout/blobs/layer";

/// What one burst against nginx measured.
pub struct Ceiling {
    pub clients_ok: usize,
    pub elapsed: Duration,
    pub idle: Timings,
    pub burst: Timings,
}

/// One burst to play against nginx.
pub struct Plan<'a> {
    pub clients: usize,
    pub layer: &'a Bytes,
    /// Each client's pace for the layer.
    pub bytes_per_sec: u64,
    /// Digest and bytes of the memory and the disk blob.
    pub warm: [(&'a str, &'a Bytes); 2],
    /// Prober rounds idle, rounds during the burst, and the pause between.
    pub rounds: (usize, usize, Duration),
}

/// Plays `plan` against a fresh nginx: the warm blobs probed idle, then
/// during `burst`, which gets the layer's URL and runs the clients.
pub fn run(
    rt: &tokio::runtime::Runtime,
    nginx: &Path,
    plan: &Plan<'_>,
    burst: impl FnOnce(&str) -> Vec<Result<u64, String>>,
) -> Result<Ceiling, String> {
    let Plan {
        clients,
        layer,
        bytes_per_sec,
        warm,
        rounds,
    } = *plan;
    let mut files = vec![StaticFile {
        path: LAYER_PATH.to_owned(),
        bytes: layer,
    }];
    files.extend(warm.iter().map(|(digest, bytes)| StaticFile {
        path: Fixture::blob_path(digest),
        bytes,
    }));
    let rate = bytes_per_sec.to_string();
    let server = servers::with_retries(|| {
        servers::start_nginx_paced(
            rt,
            nginx,
            &files,
            DOCKER_MANIFEST_V2,
            Some((LAYER_PATH, &rate)),
            clients + 512,
        )
    })?;
    let targets: Vec<Target> = warm
        .iter()
        .map(|(digest, _)| Target {
            url: format!("{}{}", server.url, Fixture::blob_path(digest)),
            digest: (*digest).to_owned(),
        })
        .collect();
    let (idle_rounds, burst_rounds, pause) = rounds;
    probe::run(&targets, 2);
    let idle = probe::run(&targets, idle_rounds);
    let prober = probe::Background::start(targets, burst_rounds, pause);
    let started = Instant::now();
    let results = burst(&format!("{}{LAYER_PATH}", server.url));
    let elapsed = started.elapsed();
    let burst = prober.finish();
    Ok(Ceiling {
        clients_ok: results.iter().filter(|r| r.is_ok()).count(),
        elapsed,
        idle,
        burst,
    })
}
