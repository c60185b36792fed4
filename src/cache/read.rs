//! Reading cached files and downloads in progress.
//!
//! Complete files are served from a memory map, so their bytes go from the
//! page cache to the socket with no copy into buffers of ours. A download
//! in progress is mapped too (see `flight.rs`), and each client following
//! it is a small async state machine that slices that one shared map as
//! far as the download allows: no thread, no buffer and no system call per
//! client, so a thousand clients waiting on one download cost about what
//! their connections cost. Clients that have caught up wait in the
//! download's line and are woken one after another (see `relay.rs`). (A
//! download the disk could not hold is sliced from memory the same way,
//! see `view.rs`.)

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::{Pin, pin};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

use super::blocking;
use super::flight::Progress;
use super::relay::Relay;
use super::view::View;
use super::window::{Passed, Seat};

/// A response body's bytes; an `Err` item aborts the client connection.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Largest piece handed to a connection at once. Pieces are slices of a
/// map, so their size costs no memory; it bounds how long one client's
/// write can take before its task yields.
const CHUNK: u64 = 64 * 1024;

/// Reads a whole small file into memory.
pub fn read_all(file: &File, size: u64) -> io::Result<Bytes> {
    let mut buf = vec![0; usize::try_from(size).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Bytes::from(buf))
}

/// Reads a whole small file into memory, on the bounded file pool.
pub async fn read_whole(file: Arc<File>, size: u64) -> io::Result<Bytes> {
    blocking::run(move || read_all(&file, size)).await?
}

/// Maps the first `len` bytes of a file. The file must be at least `len`
/// bytes long and never be truncated while the map lives: cached files and
/// downloads are only ever written and unlinked, never shortened. The map
/// keeps `file` open, so the disk tier sees a cached object in use until
/// the last slice of it is dropped (see `evict`).
pub fn map_file(file: &Arc<File>, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: cached files are immutable once linked into place, and a
    // download's temporary file only grows (or is sized up front) and is
    // never truncated; removing either only unlinks it, which leaves an
    // existing mapping intact. Bytes not yet written read as zeros, and
    // readers never look past what the download has verified or written.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .len(usize::try_from(len).map_err(io::Error::other)?)
            .map(&**file)?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(Mapped {
        map,
        _file: file.clone(),
    }))
}

/// A map and the open file it came from, alive as long as any slice.
struct Mapped {
    map: memmap2::Mmap,
    _file: Arc<File>,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// Streams bytes `start..end` of a download as its `progress` allows
/// (`end` is clamped to the final size; `u64::MAX` reads to the end),
/// waiting for news in the download's `relay`, from `seat` (taken at or
/// before `start`).
pub(super) fn follow(
    progress: watch::Receiver<Progress>,
    relay: Relay,
    seat: Arc<Seat>,
    start: u64,
    end: u64,
    counted: crate::metrics::GaugeHeld,
) -> ByteStream {
    // A seat behind `start` would hold the window for bytes never read.
    let _ = relay.seats().advance(&seat, start);
    let follower = Follower {
        progress,
        relay,
        seat,
        looked: false,
        view: None,
        readable: 0,
        pos: start,
        end,
        finished: false,
        _counted: counted,
    };
    Box::pin(futures_util::stream::unfold(
        follower,
        |mut follower| async move {
            if follower.finished {
                return None;
            }
            match follower.next_piece().await {
                Ok(Some(bytes)) => Some((Ok(bytes), follower)),
                Ok(None) => None,
                Err(e) => {
                    follower.finished = true;
                    Some((Err(e), follower))
                }
            }
        },
    ))
}

fn passed() -> io::Error {
    io::Error::other(Passed)
}

/// One client's place in a download.
struct Follower {
    progress: watch::Receiver<Progress>,
    relay: Relay,
    /// How far this client has read, as the download's window sees it.
    seat: Arc<Seat>,
    /// Whether the download's progress was looked at yet.
    looked: bool,
    /// The bytes and how far they were readable at the last look.
    view: Option<View>,
    readable: u64,
    pos: u64,
    end: u64,
    finished: bool,
    /// Counts this client in `pullthrough_download_clients` while it reads.
    _counted: crate::metrics::GaugeHeld,
}

impl Follower {
    /// The next piece, waiting for the download where needed; `None` at
    /// the end.
    async fn next_piece(&mut self) -> io::Result<Option<Bytes>> {
        // Whether the relay woke this client: it then passes the news on.
        let mut woken = false;
        loop {
            // What the last look made readable goes out without a new look.
            if self.pos >= self.end {
                return Ok(None);
            }
            if let Some(view) = self.view.as_ref().filter(|_| self.pos < self.readable) {
                let stop = self.readable.min(self.end).min(self.pos + CHUNK);
                let piece = view.piece(self.pos, stop).ok_or_else(passed)?;
                if !piece.is_empty() {
                    self.pos += piece.len() as u64;
                    let seats = self.relay.seats();
                    seats.advance(&self.seat, self.pos).map_err(|_| passed())?;
                    return Ok(Some(piece));
                }
            }
            // Caught up: take a place in the relay's line, then look for
            // news (see `relay.rs` for why in that order).
            let relay = self.relay.clone();
            let mut place = pin!(relay.place());
            woken |= place.as_mut().enable();
            if !self.looked || self.progress.has_changed().unwrap_or(true) {
                let looked = self.look();
                if std::mem::take(&mut woken) {
                    relay.announce();
                }
                looked?;
                continue;
            }
            // Nothing new to us, so nothing new to anyone behind us either:
            // a wake-up we hold ends here.
            place.await;
            woken = true;
        }
    }

    /// Takes in the download's latest progress.
    fn look(&mut self) -> io::Result<()> {
        self.looked = true;
        let state = self.progress.borrow_and_update();
        let (readable, size) = state.readable().map_err(io::Error::other)?;
        if let Some(size) = size {
            self.end = self.end.min(size);
        }
        self.readable = readable;
        self.view = state.view().cloned();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_whole_files() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        assert_eq!(map_file(&f, 3_000_000).unwrap(), data);
        assert_eq!(read_all(&f, 3_000_000).unwrap(), data);
        assert_eq!(map_file(&f, 0).unwrap().len(), 0);
    }

    #[test]
    fn a_map_keeps_its_file_open_until_its_last_slice_goes() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7; 4096]).unwrap();
        let f = Arc::new(f);
        let open = Arc::downgrade(&f);
        let slice = map_file(&f, 4096).unwrap().slice(100..200);
        drop(f);
        assert!(open.upgrade().is_some(), "the disk tier sees it in use");
        assert_eq!(slice, vec![7; 100]);
        drop(slice);
        assert!(open.upgrade().is_none());
    }
}
