//! What an operator looks at: one [`Snapshot`] of the mirror, taken from
//! the same Prometheus collectors `/metrics` renders (so the two never
//! disagree), plus what Prometheus does not keep: the hottest images, the
//! recent errors and a short history for the chart, held on a [`Board`]
//! in bounded memory.
//!
//! The snapshot is rendered three ways: the `/ui` page (`page`), its JSON
//! form at `/ui/status.json`, and the `pullthrough status` table (`table`),
//! which reads that JSON.

mod board;
mod hot;
mod page;
mod samples;
mod snapshot;
mod table;

pub use board::{Board, ErrorEntry, Sample};
pub use hot::{HotImages, image_name};
pub use page::render_page;
pub use snapshot::{
    BlobBytes, CacheTier, Downloads, HotImage, Pulls, Requests, Snapshot, UpstreamStatus,
};
pub use table::write_table;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
