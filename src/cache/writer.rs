//! Writes and hashes a download on the bounded file pool, one batch at a
//! time, into its temporary file; or into memory when the disk tier cannot
//! take it. Going to a file, each piece is shown to the readers as soon as
//! it arrives (see `fresh`), so neither the hashing nor the writing stands
//! between upstream and the clients.
//!
//! Disk full (or any write error) never fails a download: the batch that
//! could not be written, and every later one, are kept in memory instead
//! (see `view`), within a bounded window (see `window`), the download goes
//! on streaming to all its clients, and nothing of it is cached. The temporary file is given up, so no partial
//! object can ever be linked into the tier. Each such download is logged at
//! WARN and counted in `pullthrough_cache_store_failures_total`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::flight::{FlightError, Progress, Publisher};
use super::fresh::Fresh;
use super::read::map_file;
use super::view::View;
use super::window::{DownloadMemory, Seats, Tail, make_room};
use super::{CacheError, TempFile, blocking};
use crate::digest::{Digest, Hasher};
use crate::metrics::Metrics;

/// Where a download's bytes go.
enum Sink {
    /// A file, and what arrived but is not in it yet.
    File(TempFile, Arc<Fresh>),
    Memory(Arc<Tail>),
}

/// What one batch's job hands back: the hasher, which has taken the whole
/// batch, and whether the batch reached the file.
type Job = (Hasher, io::Result<()>);

/// Writes and hashes one download.
pub(super) struct Writer {
    sink: Sink,
    size: Option<u64>,
    /// Bytes written and hashed.
    pub(super) written: u64,
    /// Bytes handed to the pool, written or not.
    pub(super) queued: u64,
    /// Bytes arrived, all readable while the download goes to a file.
    arrived: u64,
    hasher: Option<Hasher>,
    /// The batch being written, kept to go to memory if the write fails.
    job: Option<(JoinHandle<io::Result<Job>>, Vec<Bytes>)>,
    digest: Digest,
    /// What the download may hold in memory, and its clients' places.
    memory: Arc<DownloadMemory>,
    seats: Arc<Seats>,
    metrics: Metrics,
}

/// Why a disk write failed, as a metric label.
pub(super) fn reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull => "no_space",
        io::ErrorKind::QuotaExceeded => "quota",
        io::ErrorKind::FileTooLarge => "file_too_large",
        _ => "io",
    }
}

fn write_error(source: io::Error) -> FlightError {
    FlightError::Cache(Arc::new(CacheError::Io {
        tier: "disk",
        context: "writing a download".into(),
        source,
    }))
}

impl Writer {
    /// A writer into `temp`, or straight into memory when the disk tier
    /// could not give the download a file (`temp` is the failure); in
    /// memory, it holds what `memory` and the clients in `seats` allow.
    pub(super) fn new(
        temp: Result<TempFile, CacheError>,
        size: Option<u64>,
        digest: &Digest,
        memory: Arc<DownloadMemory>,
        seats: Arc<Seats>,
        metrics: &Metrics,
    ) -> Self {
        let (sink, failure) = match temp {
            Ok(temp) => (Sink::File(temp, Fresh::new()), None),
            Err(e) => (Sink::Memory(Tail::new(0, memory.clone())), Some(e)),
        };
        let writer = Writer {
            sink,
            size,
            written: 0,
            queued: 0,
            arrived: 0,
            hasher: Some(Hasher::new(digest.algorithm())),
            job: None,
            digest: digest.clone(),
            memory,
            seats,
            metrics: metrics.clone(),
        };
        if let Some(e) = failure {
            let why = match &e {
                CacheError::Io { source, .. } => reason(source),
                CacheError::Other { .. } => "io",
            };
            writer.gave_up(why, &e);
        }
        writer
    }

    /// The file, while the download still goes to one.
    pub(super) fn file(&self) -> Option<&Arc<File>> {
        match &self.sink {
            Sink::File(temp, _) => Some(temp.file()),
            Sink::Memory(_) => None,
        }
    }

    /// What arrived but is not in the file yet, while the download goes
    /// to a file.
    pub(super) fn fresh(&self) -> Option<&Arc<Fresh>> {
        match &self.sink {
            Sink::File(_, fresh) => Some(fresh),
            Sink::Memory(_) => None,
        }
    }

    /// Takes note of a piece that arrived (and goes to the pool in a later
    /// batch): going to a file, readers may take it at once.
    pub(super) fn arrived(&mut self, piece: &Bytes, progress: &Publisher) {
        self.arrived += piece.len() as u64;
        let Some(fresh) = self.fresh() else {
            return;
        };
        fresh.push(piece.clone());
        let arrived = self.arrived;
        progress.modify(|state| {
            if let Progress::Streaming { readable, .. } = state {
                *readable = arrived;
            }
        });
    }

    /// The tail the download goes to, once it goes to memory.
    pub(super) fn tail(&self) -> Option<&Arc<Tail>> {
        match &self.sink {
            Sink::Memory(tail) => Some(tail),
            Sink::File(..) => None,
        }
    }

    fn gave_up(&self, reason: &'static str, error: &dyn std::fmt::Display) {
        self.metrics
            .cache_store_failures
            .with_label_values(&["disk", reason])
            .inc();
        tracing::warn!(
            digest = %self.digest, offset = self.written, error = %error,
            "the disk tier cannot hold this download; streaming it to its clients uncached"
        );
    }

    /// Whether a batch is still being written.
    pub(super) fn busy(&self) -> bool {
        self.job.as_ref().is_some_and(|(job, _)| !job.is_finished())
    }

    /// Starts hashing (and writing, to a file) `batch` after what was
    /// queued before. Call `settle` first: batches go one at a time, in order.
    pub(super) fn start(&mut self, batch: Vec<Bytes>) {
        let mut hasher = self.hasher.take().expect("settled before the next batch");
        let file = self.file().cloned();
        let mut offset = self.queued;
        self.queued += batch.iter().map(|b| b.len() as u64).sum::<u64>();
        let pieces = batch.clone();
        let job = tokio::spawn(blocking::run(move || {
            for piece in &pieces {
                hasher.update(piece);
            }
            let written = file.map_or(Ok(()), |file| {
                pieces.iter().try_for_each(|piece| {
                    file.write_all_at(piece, offset)?;
                    offset += piece.len() as u64;
                    Ok(())
                })
            });
            (hasher, written)
        }));
        self.job = Some((job, batch));
    }

    /// Waits for the batch being written, then lets readers see it; a
    /// failed write moves the download to memory.
    pub(super) async fn settle(&mut self, progress: &Publisher) -> Result<(), FlightError> {
        let Some((job, batch)) = self.job.take() else {
            return Ok(());
        };
        let (hasher, written) = job
            .await
            .map_err(io::Error::other)
            .and_then(|job| job)
            .map_err(write_error)?;
        self.hasher = Some(hasher);
        let spilled = match written {
            Ok(()) => None,
            Err(e) => {
                self.gave_up(reason(&e), &e);
                let tail = Tail::new(self.written, self.memory.clone());
                // The file goes (unlinked now; readers keep their map of
                // what was written before), and with it what arrived after.
                self.sink = Sink::Memory(tail.clone());
                Some(tail)
            }
        };
        let before = self.written;
        if let Sink::Memory(tail) = &self.sink {
            let len = self.queued - self.written;
            make_room(tail, &self.seats, len)
                .await
                .map_err(|_| FlightError::Abandoned)?;
            tail.push(batch);
        }
        self.written = self.queued;
        // Without a known size the file grows: map what is written so far.
        let grown = match (&self.sink, self.size) {
            (Sink::File(temp, _), None) => {
                Some(map_file(temp.file(), self.written).map_err(|e| {
                    FlightError::Cache(Arc::new(CacheError::Io {
                        tier: "disk",
                        context: "mapping a download".into(),
                        source: e,
                    }))
                })?)
            }
            _ => None,
        };
        let readable = match &self.sink {
            Sink::File(_, fresh) => {
                fresh.in_file_up_to(self.written);
                self.arrived
            }
            Sink::Memory(_) => self.written,
        };
        progress.modify(|state| {
            if let Progress::Streaming {
                view, readable: r, ..
            } = state
            {
                *r = readable;
                if let Some(tail) = spilled {
                    *view = view.spill(before, tail);
                } else if let (Some(map), View::Filling { fresh, .. }) = (grown, &*view) {
                    *view = View::Filling {
                        map,
                        fresh: fresh.clone(),
                    };
                }
            }
        });
        Ok(())
    }

    /// The digest of everything taken, its length, and the file holding
    /// it unless the download went to memory.
    pub(super) fn finish(mut self) -> (Digest, u64, Option<TempFile>) {
        let hasher = self.hasher.take().expect("settled before finishing");
        let temp = match self.sink {
            Sink::File(temp, _) => Some(temp),
            Sink::Memory(_) => None,
        };
        (hasher.finish(), self.written, temp)
    }
}
