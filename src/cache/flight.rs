//! Blob downloads shared by every client that wants the blob: one fetch
//! per digest, however many clients ask at once, streamed to each of them
//! as it arrives. Built on the crate's one [`SingleFlight`], whose contract
//! (one run per key, runs outlive their callers, no hang on failure, the
//! hand-off re-check) holds here too.
//!
//! How a download reaches its clients:
//! - Bytes go to a temporary file in the disk tier. When the size is known
//!   the file is sized up front and mapped once; the map is shared by every
//!   client, each of which slices it as far as the download has written
//!   (see `read.rs`), and takes the bytes that arrived since from memory
//!   (see `fresh.rs`): a client gets each piece as soon as it arrives. A client waiting on a download holds no thread and no
//!   buffer: a rollout of a thousand nodes costs a thousand connections,
//!   not a thousand copies. A slow client only falls behind; it never slows
//!   the download or another client.
//! - Writing and hashing run on the bounded file pool, one batch at a time
//!   while the next batch arrives, off the clients' path; the download
//!   never holds a thread either, and a burst of downloads cannot starve
//!   lookups.
//! - When the disk tier cannot take a download (full, failing), it goes on
//!   in memory, streamed to every client and cached nowhere (see `writer`).
//! - Clients never receive the last byte before the digest is verified: on
//!   a mismatch or a broken download their bodies end in an error, which
//!   aborts the client's connection instead of completing a bad 200.
//! - The hand-off re-check: a new download first looks in the cache, and
//!   serves a hit from there, so a client that missed the cache just before
//!   another download stored the blob never causes a second fetch.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use super::read::{ByteStream, follow, map_file};
use super::relay::Relay;
use super::view::View;
use super::window::{DownloadMemory, Seat};
use super::writer::{Writer, reason};
use super::{CacheError, Content, ObjectKey, TieredCache, Verified};
use crate::digest::DigestMismatch;
use crate::metrics::Metrics;
use crate::singleflight::SingleFlight;

/// Any error the source of a download reports; callers downcast to their own.
pub type SourceError = Arc<dyn std::error::Error + Send + Sync>;

/// Bytes gathered from the source before they are handed to the file pool
/// while an earlier batch is still being written.
const BATCH: usize = 1024 * 1024;

/// Bytes gathered before a batch goes to an idle pool: the clients have
/// them already (see `fresh`), so fewer, larger jobs cost less.
const MIN_BATCH: usize = 256 * 1024;

/// An object's bytes as a source delivers them.
pub struct Source {
    /// The final size, when the source announced it.
    pub size: Option<u64>,
    pub body: Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send + Unpin>,
    /// Where the bytes come from: from the shared tier or from the key's
    /// owner, the bucket needs no copy of this replica's.
    pub origin: Origin,
    /// The shared tier's version of the object read, to delete that very
    /// version if it fails verification.
    pub etag: Option<String>,
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

/// Where a download's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from the upstream registry.
    Upstream,
    /// Streamed from the shared tier, which another replica filled.
    Shared,
    /// Streamed from the replica that owns the key (see `cluster`), which
    /// fetched it or is fetching it for the fleet.
    Peer,
    /// Already in this tier: found by the hand-off re-check.
    Cached(&'static str),
}

/// A download's state, as its readers see it.
#[derive(Clone, Debug)]
pub(super) enum Progress {
    Connecting,
    /// `view` holds at least `readable` bytes: those that arrived, or
    /// those written once the download went to memory.
    Streaming {
        view: View,
        size: Option<u64>,
        readable: u64,
        origin: Origin,
        relay: Relay,
    },
    Done {
        view: View,
        size: u64,
        origin: Origin,
        relay: Relay,
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
                readable,
                ..
            } => Ok(((*readable).min(size.saturating_sub(1)), Some(*size))),
            Progress::Streaming {
                size: None,
                readable,
                ..
            } => Ok((*readable, None)),
            Progress::Done { size, .. } => Ok((*size, Some(*size))),
            Progress::Failed(e) => Err(e.to_string()),
        }
    }

    /// The bytes, once there are any.
    pub(super) fn view(&self) -> Option<&View> {
        match self {
            Progress::Streaming { view, .. } | Progress::Done { view, .. } => Some(view),
            Progress::Connecting | Progress::Failed(_) => None,
        }
    }

    /// The line its followers wait in, once bytes flow.
    fn relay(&self) -> Option<&Relay> {
        match self {
            Progress::Streaming { relay, .. } | Progress::Done { relay, .. } => Some(relay),
            Progress::Connecting | Progress::Failed(_) => None,
        }
    }
}

/// A download's side of its progress: every change is announced to the
/// followers' relay, and a download that ends without a final state (its
/// task panicked or was cut off) leaves `Failed(Abandoned)` behind, so no
/// follower waits forever.
pub(super) struct Publisher {
    progress: watch::Sender<Progress>,
    relay: Relay,
}

impl Publisher {
    pub(super) fn new(progress: watch::Sender<Progress>) -> Self {
        Publisher {
            progress,
            relay: Relay::default(),
        }
    }

    /// The relay to hand to followers in the states published.
    pub(super) fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Publishes `state` and tells the followers.
    pub(super) fn replace(&self, state: Progress) {
        self.progress.send_replace(state);
        self.relay.announce();
    }

    /// Publishes a change of the state and tells the followers.
    pub(super) fn modify(&self, change: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(change);
        self.relay.announce();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let open = matches!(
            *self.progress.borrow(),
            Progress::Connecting | Progress::Streaming { .. }
        );
        if open {
            self.replace(Progress::Failed(FlightError::Abandoned));
        }
    }
}

/// One download, as a client following it sees it; cheap to clone.
#[derive(Clone)]
pub struct Flight {
    progress: watch::Receiver<Progress>,
    /// `pullthrough_download_clients`, raised while a client streams.
    clients: prometheus::IntGauge,
}

impl Flight {
    /// Waits until bytes start to arrive; returns the announced size and
    /// where the bytes come from.
    pub async fn ready(&self) -> Result<(Option<u64>, Origin), FlightError> {
        let mut progress = self.progress.clone();
        let state = progress
            .wait_for(|p| !matches!(p, Progress::Connecting))
            .await
            .map_err(|_| FlightError::Abandoned)?
            .clone();
        match state {
            Progress::Streaming { size, origin, .. } => Ok((size, origin)),
            Progress::Done { size, origin, .. } => Ok((Some(size), origin)),
            Progress::Failed(e) => Err(e),
            Progress::Connecting => unreachable!("waited past Connecting"),
        }
    }

    /// A place in this download for one client about to stream it; call
    /// after [`Flight::ready`] succeeded. `None` when the download is held
    /// in memory and its window has already moved past the first byte (see
    /// `window`): the client needs a download of its own,
    /// [`Flights::replace`].
    pub fn seat(&self) -> Option<Seated> {
        // Failed has no relay, and its followers never wait: any will do.
        let relay = self.progress.borrow().relay().cloned().unwrap_or_default();
        let seat = relay.seats().take(0).ok()?;
        Some(Seated {
            flight: self.clone(),
            relay,
            seat,
        })
    }
}

/// A client's place in a download, taken before its answer goes out so the
/// bytes it will read are kept for it.
pub struct Seated {
    flight: Flight,
    relay: Relay,
    seat: Arc<Seat>,
}

impl Seated {
    /// Streams bytes `start..end` (clamped to the final size) as they arrive.
    pub fn stream(self, start: u64, end: u64) -> ByteStream {
        let counted = crate::metrics::GaugeHeld::new(&self.flight.clients);
        let progress = self.flight.progress;
        follow(progress, self.relay, self.seat, start, end, counted)
    }
}

/// The blob downloads in progress; cheap to clone.
#[derive(Clone)]
pub struct Flights {
    running: SingleFlight<ObjectKey, Progress>,
    /// What downloads the disk cannot hold may keep in memory.
    memory: Arc<DownloadMemory>,
    metrics: Metrics,
}

impl Flights {
    /// No downloads yet; those the disk tier cannot hold keep at most
    /// `memory_limit` bytes in memory together; digest mismatches are
    /// counted in `metrics`.
    pub fn new(memory_limit: u64, metrics: Metrics) -> Self {
        Flights {
            running: SingleFlight::default(),
            memory: DownloadMemory::new(memory_limit, &metrics),
            metrics,
        }
    }

    /// The download of `key`, if one is running.
    pub fn get(&self, key: &ObjectKey) -> Option<Flight> {
        self.running.get(key).map(|progress| Flight {
            progress,
            clients: self.metrics.traffic.download_clients.clone(),
        })
    }

    /// Joins the running download of `key`, or starts one that re-checks
    /// `cache`, then fetches from `source`, verifies the bytes and stores
    /// them in `cache`. The `bool` is true when an existing download was
    /// joined (`source` is then dropped unused).
    pub fn join_or_start<S>(&self, key: ObjectKey, cache: TieredCache, source: S) -> (Flight, bool)
    where
        S: Future<Output = Result<Source, SourceError>> + Send + 'static,
    {
        let work = self.work(key.clone(), cache, source);
        let (progress, joined) = self.running.join_or_start(key, Progress::Connecting, work);
        self.flight(progress, joined)
    }

    /// Starts a download of `key` in place of `passed`, one whose window
    /// moved past where a new client starts (see [`Flight::seat`]), or
    /// joins the one another client started so. `passed` goes on for the
    /// clients it has.
    pub fn replace<S>(
        &self,
        key: ObjectKey,
        passed: &Flight,
        cache: TieredCache,
        source: S,
    ) -> (Flight, bool)
    where
        S: Future<Output = Result<Source, SourceError>> + Send + 'static,
    {
        let work = self.work(key.clone(), cache, source);
        let (progress, joined) =
            self.running
                .replace(key, &passed.progress, Progress::Connecting, work);
        self.flight(progress, joined)
    }

    fn work<S>(
        &self,
        key: ObjectKey,
        cache: TieredCache,
        source: S,
    ) -> impl FnOnce(watch::Sender<Progress>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    where
        S: Future<Output = Result<Source, SourceError>> + Send + 'static,
    {
        let (memory, metrics) = (self.memory.clone(), self.metrics.clone());
        move |progress| Box::pin(download(key, cache, source, progress, memory, metrics))
    }

    fn flight(&self, progress: watch::Receiver<Progress>, joined: bool) -> (Flight, bool) {
        let clients = self.metrics.traffic.download_clients.clone();
        (Flight { progress, clients }, joined)
    }
}

/// The work of one flight, start to end.
async fn download<S>(
    key: ObjectKey,
    cache: TieredCache,
    source: S,
    progress: watch::Sender<Progress>,
    memory: Arc<DownloadMemory>,
    metrics: Metrics,
) where
    S: Future<Output = Result<Source, SourceError>>,
{
    let _active = crate::metrics::GaugeHeld::new(&metrics.traffic.downloads_active);
    let progress = Publisher::new(progress);
    if let Some(done) = recheck(&key, &cache, progress.relay()).await {
        progress.replace(done);
        return;
    }
    let source = match source.await {
        Ok(source) => source,
        Err(e) => {
            tracing::warn!(digest = %key.digest, error = %e, "download failed; nothing cached");
            progress.replace(Progress::Failed(FlightError::Source(e)));
            return;
        }
    };
    // A damaged object in the bucket is deleted once found, so that the
    // next read fetches a good copy instead of failing again.
    let shared_etag = (source.origin == Origin::Shared).then(|| source.etag.clone());
    match transfer(&key, &cache, source, &progress, memory, &metrics).await {
        Ok((verified, origin)) => {
            progress.modify(|state| {
                if let Progress::Streaming {
                    view,
                    origin,
                    relay,
                    ..
                } = state
                {
                    *state = Progress::Done {
                        view: view.clone(),
                        size: verified.size,
                        origin: *origin,
                        relay: relay.clone(),
                    };
                }
            });
            let Some(verified) = verified.object else {
                tracing::warn!(digest = %key.digest, "download verified and served; not cached (the disk tier could not hold it)");
                return;
            };
            let stored = match origin {
                Origin::Shared | Origin::Peer => cache.store_local(&verified).await,
                Origin::Upstream | Origin::Cached(_) => cache.store(&verified).await,
            };
            if let Err(e) = stored {
                if let CacheError::Io { tier, source, .. } = &e {
                    metrics
                        .cache_store_failures
                        .with_label_values(&[tier, reason(source)])
                        .inc();
                }
                tracing::error!(digest = %key.digest, error = %e, "could not cache a verified download");
            }
        }
        Err(e) => {
            if matches!(e, FlightError::Mismatch(_)) {
                metrics.digest_mismatches.with_label_values(&["blob"]).inc();
                if let (Some(etag), Some(s3)) = (shared_etag, cache.shared()) {
                    s3.discard_damaged(&key, etag.as_deref()).await;
                }
            }
            tracing::warn!(digest = %key.digest, error = %e, "download failed; nothing cached");
            progress.replace(Progress::Failed(e));
        }
    }
}

/// The hand-off re-check: the object as a finished download, when a tier
/// holds it after all.
async fn recheck(key: &ObjectKey, cache: &TieredCache, relay: &Relay) -> Option<Progress> {
    let (object, tier) = cache.lookup(key).await.ok()??;
    let size = object.meta.size;
    let view = View::Mapped(match object.content {
        Content::Memory(bytes) => bytes,
        Content::File(file) => map_file(&file, size).ok()?,
    });
    Some(Progress::Done {
        view,
        size,
        origin: Origin::Cached(tier),
        relay: relay.clone(),
    })
}

fn cache_error(e: CacheError) -> FlightError {
    FlightError::Cache(Arc::new(e))
}

fn write_error(context: &str) -> impl FnOnce(io::Error) -> FlightError + '_ {
    move |source| {
        cache_error(CacheError::Io {
            tier: "disk",
            context: context.into(),
            source,
        })
    }
}

/// A verified download, and the object to cache unless the disk tier
/// could not hold it.
struct Transferred {
    size: u64,
    object: Option<Verified>,
}

/// Copies the source into a temporary file (or memory, see `writer`),
/// hashing as it goes, and returns the verified object.
async fn transfer(
    key: &ObjectKey,
    cache: &TieredCache,
    source: Source,
    progress: &Publisher,
    memory: Arc<DownloadMemory>,
    metrics: &Metrics,
) -> Result<(Transferred, Origin), FlightError> {
    let origin = source.origin;
    let temp = cache.disk().create_temp(source.size).await;
    let seats = progress.relay().seats().clone();
    let mut writer = Writer::new(temp, source.size, &key.digest, memory, seats, metrics);
    let view = match (writer.file(), writer.fresh(), writer.tail(), source.size) {
        (Some(file), Some(fresh), _, Some(size)) => View::Filling {
            map: map_file(file, size).map_err(write_error("mapping a download"))?,
            fresh: fresh.clone(),
        },
        (_, Some(fresh), _, None) => View::Filling {
            map: Bytes::new(),
            fresh: fresh.clone(),
        },
        (_, _, Some(tail), _) => View::Mapped(Bytes::new()).spill(0, tail.clone()),
        _ => View::Mapped(Bytes::new()),
    };
    progress.replace(Progress::Streaming {
        view,
        size: source.size,
        readable: 0,
        origin,
        relay: progress.relay().clone(),
    });

    let mut body = source.body;
    let mut batch = Vec::new();
    let mut batch_len = 0;
    while let Some(item) = body.next().await {
        let chunk = item.map_err(FlightError::Source)?;
        batch_len += chunk.len();
        batch.push(chunk);
        if let Some(size) = source.size
            && writer.queued + batch_len as u64 > size
        {
            let message = format!("the source sent more than the {size} bytes it announced");
            return Err(FlightError::Source(Arc::new(io::Error::other(message))));
        }
        writer.arrived(batch.last().expect("just pushed"), progress);
        // Hand the batch over once the pool is free (going to memory, at
        // once: readers see it only then); a busy pool lets the batch grow
        // to `BATCH`, and then the download waits for it.
        let enough = batch_len >= MIN_BATCH || writer.fresh().is_none();
        if batch_len >= BATCH || (enough && !writer.busy()) {
            writer.settle(progress).await?;
            writer.start(std::mem::take(&mut batch));
            batch_len = 0;
        }
    }
    writer.settle(progress).await?;
    if !batch.is_empty() {
        writer.start(batch);
        writer.settle(progress).await?;
    }
    let (hashed, size, temp) = writer.finish();
    let object = match temp {
        Some(temp) => {
            Some(Verified::file(key.clone(), hashed, size, temp).map_err(FlightError::Mismatch)?)
        }
        // Held in memory: verified all the same, and kept nowhere.
        None if hashed == key.digest => None,
        None => {
            return Err(FlightError::Mismatch(DigestMismatch {
                expected: key.digest.clone(),
                actual: hashed,
            }));
        }
    };
    Ok((Transferred { size, object }, origin))
}
