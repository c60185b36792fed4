//! Downloads the disk tier cannot hold, kept in bounded memory.
//!
//! When the disk is full or failing, a download goes on in memory (see
//! `writer`) so its clients are still served. Held whole, a 1 GiB layer
//! would cost 1 GiB until its last client is done, and three of them an
//! OOM kill, after which every node goes to Docker Hub. So memory held by
//! such downloads has one budget for the whole process
//! ([`DownloadMemory`], `memory.max_download_bytes`), and each download
//! holds at most a window of it: the bytes between its slowest client and
//! the newest byte.
//!
//! The choice, of three (a bounded window, passing each client through to
//! upstream, or 503): a window keeps the promise of one upstream fetch for
//! every client that is keeping up, which in a rollout is nearly all of
//! them, and costs nothing but a wait while the window is full. Passing
//! through would cost one upstream fetch per client, and a 503 sends a
//! dockerd or containerd node to Docker Hub itself.
//!
//! How the window moves:
//! - Every client following a download takes a [`Seat`] that records how
//!   far it has read. Bytes behind every seat are dropped and their memory
//!   given back.
//! - When the window is full the download waits for its slowest client
//!   (upstream is read no faster than the clients take the bytes). A client
//!   that has not moved for [`STALL`] while the download waits on it is cut
//!   off: its body ends in an error, which aborts its connection, and its
//!   retry is served afresh.
//! - A client that arrives after the bytes it wants were dropped cannot
//!   take a seat; the registry then starts a new download for it and the
//!   clients after it (which may find room on disk by then).
//! - A download with no client at all holds its window for its first
//!   client, and gives up after [`STALL`] if none comes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long a download waits on a client that does not read before that
/// client is cut off, and on no client at all before it gives up.
pub(super) const STALL: Duration = Duration::from_secs(10);

/// A seat's position once its client was cut off.
const CUT: u64 = u64::MAX;

/// The memory every download held in memory may use, all together; cheap
/// to share.
#[derive(Debug)]
pub struct DownloadMemory {
    limit: u64,
    used: AtomicU64,
    gauge: prometheus::IntGauge,
    cut: prometheus::IntCounter,
}

impl DownloadMemory {
    /// A budget of `limit` bytes, reported in `metrics`.
    pub fn new(limit: u64, metrics: &Metrics) -> Arc<Self> {
        Arc::new(DownloadMemory {
            limit,
            used: AtomicU64::new(0),
            gauge: metrics.traffic.download_memory.clone(),
            cut: metrics.traffic.followers_cut.clone(),
        })
    }

    /// The most one download may hold: a quarter of the budget, so that a
    /// slow client of one download does not hold up every other, and at
    /// least a few batches.
    fn per_download(&self) -> u64 {
        (self.limit / 4).max(4 * 1024 * 1024)
    }

    /// Takes `n` bytes of the budget if they are free.
    pub(super) fn try_take(&self, n: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.limit || used == 0).then_some(used + n)
            })
            .is_ok();
        if taken {
            self.gauge.add(n as i64);
        }
        taken
    }

    /// Gives back `n` bytes taken before.
    pub(super) fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        self.gauge.sub(n as i64);
    }
}

/// The clients following one download and how far each has read.
#[derive(Debug, Default)]
pub(super) struct Seats {
    state: Mutex<SeatsState>,
    /// Woken when a client reads on while the download waits for room.
    moved: Notify,
    waiting: AtomicBool,
}

#[derive(Debug, Default)]
struct SeatsState {
    seats: Vec<Weak<Seat>>,
    /// Bytes before this are gone: a client must start at or after it.
    floor: u64,
}

/// One client's place in a download: the first byte it has yet to read.
#[derive(Debug)]
pub(super) struct Seat {
    pos: AtomicU64,
}

/// No client came for a download held in memory: it is given up.
#[derive(Debug, thiserror::Error)]
#[error("no client came for a download held in memory")]
pub(super) struct NoClient;

/// The bytes a client wants were dropped, or it was cut off for not reading.
#[derive(Debug, thiserror::Error)]
#[error(
    "this download is held in memory (the disk tier cannot take it) and its window has moved past this client; retry"
)]
pub(super) struct Passed;

impl Seats {
    fn lock(&self) -> std::sync::MutexGuard<'_, SeatsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A seat at byte `start`, unless that byte is gone.
    pub(super) fn take(&self, start: u64) -> Result<Arc<Seat>, Passed> {
        let mut state = self.lock();
        if start < state.floor {
            return Err(Passed);
        }
        if state.seats.len() >= 64 && state.seats.len().is_power_of_two() {
            state.seats.retain(|seat| seat.strong_count() > 0);
        }
        let seat = Arc::new(Seat {
            pos: AtomicU64::new(start),
        });
        state.seats.push(Arc::downgrade(&seat));
        Ok(seat)
    }

    /// Records that `seat` has read up to `to`; fails once it was cut off.
    pub(super) fn advance(&self, seat: &Seat, to: u64) -> Result<(), Passed> {
        let mut at = seat.pos.load(Ordering::Acquire);
        loop {
            if at == CUT {
                return Err(Passed);
            }
            if at >= to {
                return Ok(());
            }
            match seat
                .pos
                .compare_exchange(at, to, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => at = now,
            }
        }
        if self.waiting.load(Ordering::Acquire) {
            self.moved.notify_one();
        }
        Ok(())
    }

    /// The slowest client's position (none without clients), after
    /// dropping the bytes of `tail` that every client has read.
    fn settle(&self, tail: &Tail) -> Option<u64> {
        let mut state = self.lock();
        let mut slowest = None::<u64>;
        state.seats.retain(|seat| match seat.upgrade() {
            Some(seat) => {
                let pos = seat.pos.load(Ordering::Acquire);
                if pos != CUT {
                    slowest = Some(slowest.map_or(pos, |s| s.min(pos)));
                }
                true
            }
            None => false,
        });
        if let Some(slowest) = slowest
            && let Some(floor) = tail.drop_before(slowest)
        {
            state.floor = state.floor.max(floor);
        }
        slowest
    }

    /// Cuts off every client still at `pos`; returns how many.
    fn cut_at(&self, pos: u64) -> u64 {
        let state = self.lock();
        let mut cut = 0;
        for seat in state.seats.iter().filter_map(Weak::upgrade) {
            if seat
                .pos
                .compare_exchange(pos, CUT, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                cut += 1;
            }
        }
        cut
    }
}

/// Waits until `tail` may take `len` more bytes: within the download's
/// window and the process's budget. Cuts off a client that holds the
/// window without reading for [`STALL`]; fails when no client has come
/// for that long.
pub(super) async fn make_room(tail: &Tail, seats: &Seats, len: u64) -> Result<(), NoClient> {
    let memory = tail.memory();
    let mut last = None;
    let mut since = Instant::now();
    loop {
        seats.waiting.store(true, Ordering::Release);
        let slowest = seats.settle(tail);
        let held = tail.held();
        if (held == 0 || held + len <= memory.per_download()) && memory.try_take(len) {
            seats.waiting.store(false, Ordering::Release);
            return Ok(());
        }
        if slowest != last {
            (last, since) = (slowest, Instant::now());
        } else if since.elapsed() >= STALL && held > 0 {
            match slowest {
                None => {
                    seats.waiting.store(false, Ordering::Release);
                    tracing::warn!("no client came for a download held in memory; giving it up");
                    return Err(NoClient);
                }
                Some(pos) => {
                    let cut = seats.cut_at(pos);
                    memory.cut.inc_by(cut);
                    tracing::warn!(
                        clients = cut,
                        offset = pos,
                        "cut off clients that stopped reading a download held in memory"
                    );
                    since = Instant::now();
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), seats.moved.notified()).await;
    }
}

/// The in-memory rest of a download, from byte `start` on, of which the
/// chunks every reader has passed are dropped.
#[derive(Debug)]
pub(super) struct Tail {
    start: u64,
    /// Chunks with the offset of their first byte, in order.
    chunks: RwLock<Vec<(u64, Bytes)>>,
    /// Bytes before this were dropped (zero while none were).
    dropped: AtomicU64,
    /// Bytes held now, taken from `memory`.
    held: AtomicU64,
    memory: Arc<DownloadMemory>,
}

impl Tail {
    /// An empty tail for the bytes from `start` on, held within `memory`.
    pub(super) fn new(start: u64, memory: Arc<DownloadMemory>) -> Arc<Tail> {
        Arc::new(Tail {
            start,
            chunks: RwLock::default(),
            dropped: AtomicU64::new(0),
            held: AtomicU64::new(0),
            memory,
        })
    }

    pub(super) fn memory(&self) -> &DownloadMemory {
        &self.memory
    }

    /// Bytes held now.
    pub(super) fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Bytes before this were dropped (zero while none were).
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Acquire)
    }

    /// Appends `chunks`, which follow the bytes already held; their
    /// memory was taken from the budget (see `window::make_room`).
    pub(super) fn push(&self, chunks: impl IntoIterator<Item = Bytes>) {
        let mut held = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let mut end = held
            .last()
            .map_or(self.start.max(self.dropped()), |(offset, b)| {
                offset + b.len() as u64
            });
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            let len = chunk.len() as u64;
            held.push((end, chunk));
            end += len;
            self.held.fetch_add(len, Ordering::AcqRel);
        }
    }

    /// Drops the chunks that end at or before `pos`, giving their memory
    /// back; returns the first byte still readable when any were dropped.
    pub(super) fn drop_before(&self, pos: u64) -> Option<u64> {
        let mut held = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let gone = held.partition_point(|(offset, b)| offset + b.len() as u64 <= pos);
        if gone == 0 {
            return None;
        }
        let (offset, last) = &held[gone - 1];
        let floor = offset + last.len() as u64;
        let freed: u64 = held.drain(..gone).map(|(_, b)| b.len() as u64).sum();
        self.held.fetch_sub(freed, Ordering::AcqRel);
        self.memory.give(freed);
        self.dropped.store(floor, Ordering::Release);
        Some(floor)
    }

    /// As `View::piece`, within the tail.
    pub(super) fn piece(&self, pos: u64, stop: u64) -> Option<Bytes> {
        if pos < self.dropped() {
            return None;
        }
        let held = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let Some(index) = held
            .partition_point(|(offset, _)| *offset <= pos)
            .checked_sub(1)
        else {
            return Some(Bytes::new());
        };
        let (offset, chunk) = &held[index];
        let from = ((pos - offset) as usize).min(chunk.len());
        let to = (stop.saturating_sub(*offset) as usize).min(chunk.len());
        Some(chunk.slice(from..to.max(from)))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.memory.give(self.held());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Fills `tail` one MiB at a time as the window allows.
    async fn fill(tail: &Tail, seats: &Seats, mibs: u64) -> Result<(), NoClient> {
        for _ in 0..mibs {
            make_room(tail, seats, MIB).await?;
            tail.push([Bytes::from(vec![0; MIB as usize])]);
        }
        Ok(())
    }

    fn window() -> (Arc<DownloadMemory>, Arc<Tail>, Seats) {
        let memory = DownloadMemory::new(16 * MIB, &Metrics::new());
        let tail = Tail::new(0, memory.clone());
        (memory, tail, Seats::default())
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_moves_with_the_slowest_client_and_a_stalled_one_is_cut_off() {
        let (memory, tail, seats) = window();
        let reading = seats.take(0).unwrap();
        let stalled = seats.take(0).unwrap();
        fill(&tail, &seats, 4).await.unwrap();
        assert_eq!(
            memory.used.load(Ordering::Acquire),
            4 * MIB,
            "a quarter of 16 MiB"
        );

        // The reader takes everything; the stalled client holds the window
        // until it is cut off.
        seats.advance(&reading, 4 * MIB).unwrap();
        let started = Instant::now();
        fill(&tail, &seats, 1).await.unwrap();
        assert!(started.elapsed() >= STALL);
        assert!(seats.advance(&stalled, MIB).is_err(), "cut off");
        assert_eq!(tail.held(), MIB, "only what the reader has yet to read");
        assert!(seats.take(0).is_err(), "the first bytes are gone");
        seats
            .take(4 * MIB)
            .expect("a seat where the bytes still are");
        drop(tail);
        assert_eq!(memory.used.load(Ordering::Acquire), 0, "all given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_no_client_comes_for_is_given_up() {
        let (_, tail, seats) = window();
        let started = Instant::now();
        let given_up = fill(&tail, &seats, 8).await;
        assert!(matches!(given_up, Err(NoClient)));
        assert!(started.elapsed() >= STALL);
        assert_eq!(tail.held(), 4 * MIB, "held its window for the first client");
    }

    #[tokio::test(start_paused = true)]
    async fn downloads_share_one_budget_and_one_waits_for_another_without_cutting_anyone() {
        let memory = DownloadMemory::new(4 * MIB, &Metrics::new());
        let (first, second) = (Tail::new(0, memory.clone()), Tail::new(0, memory.clone()));
        let (first_seats, second_seats) = (Seats::default(), Arc::new(Seats::default()));
        let _first_reader = first_seats.take(0).unwrap();
        let second_reader = second_seats.take(0).unwrap();
        fill(&first, &first_seats, 4).await.unwrap();
        // The budget is spent: the second download waits, past STALL, and
        // its client, who has read all there is, is not the one to blame.
        let seats = second_seats.clone();
        let waiting = tokio::spawn(async move { fill(&second, &seats, 1).await.map(|()| second) });
        tokio::time::sleep(STALL * 3).await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(second.held(), MIB);
        second_seats
            .advance(&second_reader, MIB)
            .expect("never cut off");
    }
}
