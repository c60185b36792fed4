//! Whether the disk tier can take writes: a real write in its `tmp/`
//! directory, and the room left on its file system. The answer is kept
//! for [`PROBE_TTL`], so a load balancer asking many times a second costs
//! one small write every couple of seconds.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::blocking;
use super::evict::FsUsage;

/// How long a probe's answer is reused.
const PROBE_TTL: Duration = Duration::from_secs(2);

/// Below this much room the disk counts as full: not even one download of
/// a typical layer would fit.
const FULL_BELOW: u64 = 64 * 1024 * 1024;

/// The cached answer of the last probe.
pub struct DiskProbe {
    dir: PathBuf,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl DiskProbe {
    /// Probes by writing in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        DiskProbe {
            dir,
            last: Mutex::new(None),
        }
    }

    /// `Ok` when a file can be written in the directory and its file
    /// system has room; else why not. Concurrent callers share one probe.
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < PROBE_TTL
        {
            return answer.clone();
        }
        let dir = self.dir.clone();
        let answer = blocking::run(move || probe(&dir))
            .await
            .unwrap_or_else(|e| Err(format!("the probe did not run: {e}")));
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}

fn probe(dir: &std::path::Path) -> Result<(), String> {
    let path = dir.join(format!("ready-probe-{}", std::process::id()));
    let written = std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"ready"))
        .map_err(|e| format!("data directory not writable: {e}"));
    let _ = std::fs::remove_file(&path);
    written?;
    let usage = FsUsage::of(dir).map_err(|e| format!("cannot measure the disk: {e}"))?;
    if usage.available < FULL_BELOW {
        return Err(format!("disk full: {} bytes left", usage.available));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writable_directory_passes_and_a_broken_one_fails_after_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let probe = DiskProbe::new(tmp.clone());
        probe.check().await.unwrap();
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "the probe cleans up"
        );

        // A directory replaced by a file cannot be written in, even by root.
        std::fs::remove_dir(&tmp).unwrap();
        std::fs::write(&tmp, b"not a directory").unwrap();
        assert!(
            probe.check().await.is_ok(),
            "the answer is reused for a while"
        );
        tokio::time::sleep(PROBE_TTL).await;
        let err = probe.check().await.unwrap_err();
        assert!(err.contains("not writable"), "{err}");
    }
}
