//! Wall-clock time as the plain numbers that records keep on disk and
//! replicas exchange through S3 (tag records, the pull budget, the disk
//! tier's access times).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds from the Unix epoch to `time` (0 for anything before it).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}
