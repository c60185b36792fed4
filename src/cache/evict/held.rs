//! Holds kept across a restart: a replica restarted in the middle of a
//! rollout (a deploy of pullthrough itself, an OOM kill) would otherwise
//! forget which images are being pulled until their manifests are served
//! again, and could evict a layer the next wave of nodes needs.
//!
//! The holds are saved in `holds.json` in the tier's root, by the eviction
//! thread after a pass when they changed (so at most every 30 s) and when
//! the tier closes; a crash loses at most that much. Expired holds are
//! dropped on load. A damaged file is ignored: holds are a hint, never a
//! reason not to start.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use crate::digest::Digest;

/// The file holds are kept in, in the tier's root.
pub(super) const HOLDS_FILE: &str = "holds.json";

/// The holds saved in `path` that still run at `now_ms`.
pub(super) fn load(path: &Path, now_ms: u64) -> HashMap<Digest, u64> {
    let Ok(text) = std::fs::read(path) else {
        return HashMap::new();
    };
    let saved: HashMap<String, u64> = serde_json::from_slice(&text).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable holds");
        HashMap::new()
    });
    saved
        .into_iter()
        .filter(|(_, until)| *until > now_ms)
        .filter_map(|(digest, until)| Some((digest.parse().ok()?, until)))
        .collect()
}

/// Saves `holds` to `path` (through a temporary file and a rename, so a
/// crash leaves the old holds or the new).
pub(super) fn save(path: &Path, holds: &HashMap<Digest, u64>) -> io::Result<()> {
    let saved: HashMap<&str, u64> = holds.iter().map(|(d, u)| (d.as_str(), *u)).collect();
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, serde_json::to_vec(&saved)?)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_come_back_without_the_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HOLDS_FILE);
        let (running, ended): (Digest, Digest) = (
            format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            format!("sha256:{}", "b".repeat(64)).parse().unwrap(),
        );
        let holds = HashMap::from([(running.clone(), 2_000), (ended, 500)]);
        save(&path, &holds).unwrap();
        assert_eq!(load(&path, 1_000), HashMap::from([(running, 2_000)]));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path, 1_000).is_empty(), "ignored, not fatal");
        assert!(load(&dir.path().join("none"), 1_000).is_empty());
    }
}
