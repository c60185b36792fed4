//! Single-flight downloads: concurrent misses for one object share one
//! upstream fetch, and every waiting client streams from it as it arrives.
//!
//! The contract:
//! - At most one download per key runs at a time; [`Flights::join_or_start`]
//!   either joins it or starts it, under one short lock.
//! - Bytes go to a temporary file in the disk tier, and readers `pread` that
//!   file as it grows, so memory stays bounded whatever the object's size.
//! - Readers never receive the final byte before the digest is verified: on a
//!   mismatch or a broken download their bodies end in an error, which
//!   aborts the client's connection instead of completing a bad 200.
//! - The download runs in its own task: it finishes (and fills the cache)
//!   even when the client that started it goes away.
//! - If the download task dies without finishing, its progress channel
//!   closes and every reader fails rather than hangs; the map entry is
//!   removed by a drop guard, so the next request starts afresh.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};

use super::read::{ByteStream, stream_growing};
use super::{CacheError, ObjectKey, TieredCache, Verified};
use crate::digest::{DigestMismatch, Hasher};
use crate::metrics::Metrics;

/// Any error the source of a download reports; callers downcast to their own.
pub type SourceError = Arc<dyn std::error::Error + Send + Sync>;

/// An object's bytes as a source delivers them.
pub struct Source {
    /// The final size, when the source announced it.
    pub size: Option<u64>,
    pub body: Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send + Unpin>,
    /// True when the bytes come from the shared tier, which then needs no
    /// copy of its own.
    pub shared: bool,
}

/// Why a download did not produce a cached object.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FlightError {
    #[error("{0}")]
    Source(SourceError),
    #[error(transparent)]
    Mismatch(DigestMismatch),
    #[error("{0}")]
    Cache(Arc<CacheError>),
    #[error("the download was abandoned")]
    Abandoned,
}

/// A download's state, as its readers see it.
#[derive(Clone, Debug)]
pub(super) enum Progress {
    Connecting,
    Streaming {
        file: Arc<File>,
        size: Option<u64>,
        written: u64,
    },
    Done {
        file: Arc<File>,
        size: u64,
    },
    Failed(FlightError),
}

impl Progress {
    /// How many bytes a reader may take now, and the final size if known.
    /// The last byte is held back until the digest is verified.
    pub(super) fn readable(&self) -> Result<(u64, Option<u64>), String> {
        match self {
            Progress::Connecting => Ok((0, None)),
            Progress::Streaming {
                size: Some(size),
                written,
                ..
            } => Ok(((*written).min(size.saturating_sub(1)), Some(*size))),
            Progress::Streaming {
                size: None,
                written,
                ..
            } => Ok((*written, None)),
            Progress::Done { size, .. } => Ok((*size, Some(*size))),
            Progress::Failed(e) => Err(e.to_string()),
        }
    }
}

/// One download in progress, shared by every client waiting for it.
pub struct Flight {
    progress: watch::Receiver<Progress>,
    from_shared: AtomicBool,
}

impl Flight {
    /// Waits until bytes start to arrive; returns the announced size.
    pub async fn ready(&self) -> Result<Option<u64>, FlightError> {
        let mut progress = self.progress.clone();
        let state = progress
            .wait_for(|p| !matches!(p, Progress::Connecting))
            .await
            .map_err(|_| FlightError::Abandoned)?
            .clone();
        match state {
            Progress::Streaming { size, .. } => Ok(size),
            Progress::Done { size, .. } => Ok(Some(size)),
            Progress::Failed(e) => Err(e),
            Progress::Connecting => unreachable!("waited past Connecting"),
        }
    }

    /// Whether the bytes come from the shared tier rather than upstream;
    /// known once [`Flight::ready`] succeeded.
    pub fn from_shared(&self) -> bool {
        self.from_shared.load(Ordering::Acquire)
    }

    /// Streams bytes `start..end` (clamped to the final size) as they arrive.
    /// Call after [`Flight::ready`] succeeded.
    pub fn stream(&self, start: u64, end: u64) -> ByteStream {
        let state = self.progress.borrow().clone();
        match state {
            Progress::Streaming { file, .. } | Progress::Done { file, .. } => {
                stream_growing(file, start, end, self.progress.clone())
            }
            Progress::Failed(e) => failed_stream(e.to_string()),
            Progress::Connecting => failed_stream("download has not started".into()),
        }
    }
}

fn failed_stream(message: String) -> ByteStream {
    Box::pin(futures_util::stream::once(async move {
        Err(std::io::Error::other(message))
    }))
}

/// The downloads in progress, by key; cheap to clone.
#[derive(Clone)]
pub struct Flights {
    running: Arc<Mutex<HashMap<ObjectKey, Arc<Flight>>>>,
    metrics: Metrics,
}

/// Removes a flight's entry when its task ends, however it ends.
struct Unregister {
    running: Arc<Mutex<HashMap<ObjectKey, Arc<Flight>>>>,
    key: ObjectKey,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.key);
        }
    }
}

impl Flights {
    /// No downloads yet; digest mismatches are counted in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Flights {
            running: Arc::default(),
            metrics,
        }
    }

    /// The download of `key`, if one is running.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Flight>> {
        self.running.lock().expect("flights lock").get(key).cloned()
    }

    /// Joins the running download of `key`, or starts one from `source` that
    /// verifies the bytes and stores them in `cache`. The `bool` is true
    /// when an existing download was joined (`source` is then dropped unused).
    pub fn join_or_start<S>(
        &self,
        key: ObjectKey,
        cache: TieredCache,
        source: S,
    ) -> (Arc<Flight>, bool)
    where
        S: Future<Output = Result<Source, SourceError>> + Send + 'static,
    {
        let mut running = self.running.lock().expect("flights lock");
        if let Some(flight) = running.get(&key) {
            return (flight.clone(), true);
        }
        let (tx, rx) = watch::channel(Progress::Connecting);
        let flight = Arc::new(Flight {
            progress: rx,
            from_shared: AtomicBool::new(false),
        });
        let this = flight.clone();
        running.insert(key.clone(), flight.clone());
        let unregister = Unregister {
            running: self.running.clone(),
            key: key.clone(),
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _unregister = unregister;
            let tx = Arc::new(tx);
            match transfer(&key, &cache, source, &tx, &this).await {
                Ok((verified, shared)) => {
                    let Progress::Streaming { file, .. } = tx.borrow().clone() else {
                        unreachable!("a finished transfer was streaming")
                    };
                    tx.send_replace(Progress::Done {
                        file,
                        size: verified.meta().size,
                    });
                    let stored = if shared {
                        cache.store_local(&verified).await
                    } else {
                        cache.store(&verified).await
                    };
                    if let Err(e) = stored {
                        tracing::error!(digest = %key.digest, error = %e, "could not cache a verified download");
                    }
                }
                Err(e) => {
                    if matches!(e, FlightError::Mismatch(_)) {
                        metrics.digest_mismatches.with_label_values(&["blob"]).inc();
                    }
                    tracing::warn!(digest = %key.digest, error = %e, "download failed; nothing cached");
                    tx.send_replace(Progress::Failed(e));
                }
            }
        });
        (flight, false)
    }
}

/// Copies the source into a temp file, hashing as it goes, and returns the
/// verified object.
async fn transfer<S>(
    key: &ObjectKey,
    cache: &TieredCache,
    source: S,
    tx: &Arc<watch::Sender<Progress>>,
    flight: &Flight,
) -> Result<(Verified, bool), FlightError>
where
    S: Future<Output = Result<Source, SourceError>>,
{
    let source = source.await.map_err(FlightError::Source)?;
    flight.from_shared.store(source.shared, Ordering::Release);
    let shared = source.shared;
    let cache_error = |e: CacheError| FlightError::Cache(Arc::new(e));
    let temp = cache.disk().create_temp().map_err(cache_error)?;
    let file = temp.file().clone();
    tx.send_replace(Progress::Streaming {
        file: file.clone(),
        size: source.size,
        written: 0,
    });

    // A blocking thread writes and hashes; this task only moves bytes.
    let (chunks, mut received) = mpsc::channel::<Bytes>(16);
    let writer_tx = tx.clone();
    let algorithm = key.digest.algorithm();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(Hasher, u64)> {
        let mut hasher = Hasher::new(algorithm);
        let mut written = 0u64;
        while let Some(chunk) = received.blocking_recv() {
            (&*file).write_all(&chunk)?;
            hasher.update(&chunk);
            written += chunk.len() as u64;
            writer_tx.send_modify(|p| {
                if let Progress::Streaming { written: w, .. } = p {
                    *w = written;
                }
            });
        }
        Ok((hasher, written))
    });

    let mut body = source.body;
    let mut failure = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => {
                if chunks.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(chunks);
    let (hasher, written) = writer
        .await
        .map_err(|e| {
            cache_error(CacheError::Other {
                tier: "disk",
                message: e.to_string(),
            })
        })?
        .map_err(|source| {
            cache_error(CacheError::Io {
                tier: "disk",
                context: "writing a download".into(),
                source,
            })
        })?;
    if let Some(e) = failure {
        return Err(FlightError::Source(e));
    }
    let verified = Verified::file(key.clone(), hasher.finish(), written, temp)
        .map_err(FlightError::Mismatch)?;
    Ok((verified, shared))
}
