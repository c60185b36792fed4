//! Shared fixtures for the integration tests and benches.
//!
//! Included with `mod support;` from `tests/*.rs` or with
//! `#[path = "../tests/support/mod.rs"] mod support;` from benches, so it only
//! depends on crates from `Cargo.toml`; only `proxy` uses the `pullthrough` crate.
#![allow(dead_code)]

pub mod artifact;
pub mod browser;
pub mod client;
pub mod daemons;
pub mod disk;
pub mod docs;
pub mod faulty_s3;
pub mod fleet;
pub mod hostile;
pub mod hubsim;
pub mod image;
pub mod process;
pub mod proxy;
pub mod quirky_s3;
pub mod registry;
pub mod s3;
pub mod simclient;
pub mod tls;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes: the same `(len, seed)` always gives the
/// same content, different seeds give different content (and so different
/// digests). Uses SplitMix64 so the output never changes with a `rand` upgrade.
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut state = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// The OCI digest of `bytes`, as `"sha256:<lowercase hex>"`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Polls `condition` every 10 ms for up to 5 s; panics if it never holds.
pub async fn wait_until(mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

/// Polls an async `condition` every 50 ms for up to 20 s; panics if it
/// never holds.
pub async fn wait_until_async(mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if condition().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("condition not met within 20 s");
}

/// A sample from Prometheus text `exposition`, summed over the series named
/// `name` whose labels include every `label="value"` in `labels`.
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
