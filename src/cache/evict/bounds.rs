//! How many bytes the disk tier may hold right now: the configured cap,
//! or what keeps the file system under its percentage, whichever is less,
//! and the two watermarks eviction works between.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::config::DiskConfig;

/// A file system's size and use, from `statvfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes in all.
    pub total: u64,
    /// Bytes in use, by anyone.
    pub used: u64,
    /// Bytes an unprivileged process may still write.
    pub available: u64,
}

impl FsUsage {
    /// The usage of the file system holding `path`.
    pub fn of(path: &Path) -> io::Result<FsUsage> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a path with a NUL byte"))?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a valid NUL-terminated string and `stat` a
        // buffer of the right type, which statvfs fills when it returns 0.
        let stat = unsafe {
            if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            stat.assume_init()
        };
        let block = stat.f_frsize as u64;
        Ok(FsUsage {
            total: stat.f_blocks as u64 * block,
            used: (stat.f_blocks as u64).saturating_sub(stat.f_bfree as u64) * block,
            available: stat.f_bavail as u64 * block,
        })
    }
}

/// The configured limits, resolved against the file system when checked,
/// and how long a pull protects what it fetches.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    max_bytes: Option<u64>,
    max_percent: u8,
    high: u8,
    low: u8,
    /// How long serving a manifest protects it and what it references.
    pub pull_hold: Duration,
}

/// Where the tier stands against its bounds at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the tier may hold.
    pub cap: u64,
    /// Eviction starts above this many bytes...
    pub high: u64,
    /// ...and stops at or below this many.
    pub low: u64,
}

impl Bounds {
    /// No bound at all: for tiers opened without a configuration.
    pub fn unbounded() -> Self {
        Bounds {
            max_bytes: None,
            max_percent: 100,
            high: 100,
            low: 99,
            pull_hold: DiskConfig::default().pull_hold,
        }
    }

    /// The bounds `config` describes.
    pub fn new(config: &DiskConfig) -> Self {
        Bounds {
            max_bytes: config.max_bytes.map(|b| b.as_u64()),
            max_percent: config.max_percent,
            high: config.high_watermark,
            low: config.low_watermark,
            pull_hold: config.pull_hold,
        }
    }

    /// The limits for a tier holding `cached` bytes on a file system in
    /// `usage` (`None`: not known, so only the fixed cap applies). The
    /// percentage form leaves the tier what it holds plus the room below
    /// the percentage, so other users of the disk shrink the cache, never
    /// the other way round.
    pub fn limits(&self, cached: u64, usage: Option<FsUsage>) -> Limits {
        let by_percent = match usage {
            Some(fs) if self.max_percent < 100 => {
                let allowed = (fs.total as u128 * u128::from(self.max_percent) / 100) as u64;
                if fs.used <= allowed {
                    cached.saturating_add(allowed - fs.used)
                } else {
                    cached.saturating_sub(fs.used - allowed)
                }
            }
            _ => u64::MAX,
        };
        let cap = self.max_bytes.unwrap_or(u64::MAX).min(by_percent);
        let share = |percent: u8| (cap as u128 * u128::from(percent) / 100) as u64;
        Limits {
            cap,
            high: share(self.high),
            low: share(self.low),
        }
    }
}

impl Limits {
    /// Bytes to evict from a tier holding `cached`: none up to the high
    /// watermark, else down to the low one.
    pub fn excess(&self, cached: u64) -> u64 {
        if cached <= self.high {
            0
        } else {
            cached - self.low
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytesize::ByteSize;

    fn config(max_bytes: Option<u64>, max_percent: u8) -> DiskConfig {
        DiskConfig {
            max_bytes: max_bytes.map(ByteSize::b),
            max_percent,
            ..DiskConfig::default()
        }
    }

    fn fs(total: u64, used: u64) -> Option<FsUsage> {
        Some(FsUsage {
            total,
            used,
            available: total - used,
        })
    }

    #[test]
    fn a_fixed_cap_evicts_from_the_high_to_the_low_watermark() {
        let limits = Bounds::new(&config(Some(1000), 100)).limits(0, fs(10_000, 9_999));
        assert_eq!(
            limits,
            Limits {
                cap: 1000,
                high: 950,
                low: 850
            }
        );
        assert_eq!(limits.excess(950), 0, "at the high watermark nothing goes");
        assert_eq!(limits.excess(951), 101, "above it, down to the low one");
    }

    #[test]
    fn the_percentage_leaves_the_cache_the_room_below_it() {
        let bounds = Bounds::new(&config(None, 80));
        // 1000 bytes, 300 in use of which the cache holds 100: the cache
        // may grow by the 500 bytes below 80%.
        assert_eq!(bounds.limits(100, fs(1000, 300)).cap, 600);
        // Others filled the disk past 80%: the cache gives back the excess.
        assert_eq!(bounds.limits(100, fs(1000, 850)).cap, 50);
        assert_eq!(bounds.limits(100, fs(1000, 950)).cap, 0);
        assert_eq!(bounds.limits(100, None).cap, u64::MAX, "unknown: no cap");
        // The smaller of the two forms wins.
        let both = Bounds::new(&config(Some(200), 80));
        assert_eq!(both.limits(100, fs(1000, 300)).cap, 200);
        assert_eq!(both.limits(100, fs(1000, 800)).cap, 100);
    }

    #[test]
    fn unbounded_never_evicts() {
        let limits = Bounds::unbounded().limits(u64::MAX / 2, fs(1000, 1000));
        assert_eq!(limits.excess(u64::MAX / 2), 0);
    }

    #[test]
    fn the_file_system_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let usage = FsUsage::of(dir.path()).unwrap();
        assert!(usage.total > 0 && usage.used <= usage.total && usage.available <= usage.total);
        assert!(FsUsage::of(&dir.path().join("missing")).is_err());
    }
}
