//! Shared fixtures for the integration tests and benches.
//!
//! Included with `mod support;` from `tests/*.rs` or with
//! `#[path = "../tests/support/mod.rs"] mod support;` from benches, so it only
//! depends on crates from `Cargo.toml`; only `proxy` and `reads` use the
//! `pullthrough` crate.
#![allow(dead_code)]

pub mod artifact;
pub mod browser;
pub mod cfn;
pub mod client;
pub mod credentials;
pub mod daemons;
pub mod disk;
pub mod docs;
pub mod faulty_s3;
pub mod fleet;
pub mod hostile;
pub mod hubsim;
pub mod iam;
pub mod image;
pub mod kube;
pub mod process;
pub mod proxy;
pub mod quirky_s3;
pub mod reads;
pub mod registry;
pub mod s3;
pub mod simclient;
pub mod tap;
pub mod tls;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// A program tests/run installs: from PATH, else from
/// `~/.cache/pullthrough-tools/bin`, where tests/run puts it. Missing, the
/// test fails naming tests/run: these tests are never skipped.
pub fn installed_tool(name: &str) -> std::path::PathBuf {
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let cached = home.join(".cache/pullthrough-tools/bin").join(name);
    assert!(
        cached.is_file(),
        "{name} is not installed: run tests/run, which installs it"
    );
    cached
}

/// A validator tests/run installs at a pinned version, always from
/// `~/.cache/pullthrough-tools/bin`: another version on PATH has other
/// rules and schemas, and what the suite checked must not depend on it.
/// Missing, the test fails naming tests/run: these tests are never skipped.
pub fn pinned_tool(name: &str) -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let pinned = home.join(".cache/pullthrough-tools/bin").join(name);
    assert!(
        pinned.is_file(),
        "{name} is not installed at {}: run tests/run, which installs it",
        pinned.display()
    );
    pinned
}

/// The python of the tools' virtualenv, where tests/run installs the
/// pinned Python packages the tests import (oras); missing, the test fails
/// naming tests/run.
pub fn venv_python() -> std::path::PathBuf {
    let home = std::env::var_os("HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_default();
    let python = home.join(".cache/pullthrough-tools/venv/bin/python");
    assert!(
        python.is_file(),
        "no virtualenv at {}: run tests/run, which makes it",
        python.display()
    );
    python
}

/// Every `.rs` file under `dir`, for the tests that read the source.
pub fn source_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(source_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

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
