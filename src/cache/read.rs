//! Streaming reads of cached files and of downloads still in progress.
//!
//! Each response body is fed by one blocking thread that `pread`s chunks and
//! hands them over a small bounded channel, so a body never holds more than
//! a few chunks in memory, however large the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};

use super::flight::Progress;

/// A response body's bytes; an `Err` item aborts the client connection.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Largest chunk read at once.
const CHUNK: u64 = 1024 * 1024;
/// Chunks queued between the reading thread and the connection.
const QUEUE: usize = 4;

/// Reads a whole small file into memory.
pub fn read_all(file: &File, size: u64) -> io::Result<Bytes> {
    let mut buf = vec![0; usize::try_from(size).map_err(io::Error::other)?];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Bytes::from(buf))
}

/// Reads a whole small file into memory, off the async threads.
pub async fn read_whole(file: Arc<File>, size: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || read_all(&file, size))
        .await
        .map_err(io::Error::other)?
}

/// Maps a complete cached file, so its bytes go from the page cache to the
/// socket with no copy into buffers of ours.
pub fn map_file(file: &File, size: u64) -> io::Result<Bytes> {
    if size == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: cached files are immutable. They are written under a temporary
    // name, fsynced, linked into place and never written or truncated again;
    // removing one only unlinks it, which leaves an existing mapping intact.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .len(usize::try_from(size).map_err(io::Error::other)?)
            .map(file)?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(Bytes::from_owner(map))
}

/// Streams bytes `start..end` of a file a download is still writing, as
/// `progress` allows (`end` is clamped to the final size; `u64::MAX` reads
/// to the end).
pub(super) fn stream_growing(
    file: Arc<File>,
    start: u64,
    end: u64,
    progress: watch::Receiver<Progress>,
) -> ByteStream {
    let (tx, rx) = mpsc::channel(QUEUE);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = pump(&file, start, end, progress, &tx, &runtime) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Reads and sends until `end`, waiting for the download where needed.
/// Returns `Ok` also when the client went away.
fn pump(
    file: &File,
    mut pos: u64,
    mut end: u64,
    mut progress: watch::Receiver<Progress>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    runtime: &tokio::runtime::Handle,
) -> io::Result<()> {
    loop {
        let state = progress.borrow_and_update().clone();
        let (readable, size) = state.readable().map_err(io::Error::other)?;
        if let Some(size) = size {
            end = end.min(size);
        }
        if pos >= end {
            return Ok(());
        }
        if pos >= readable {
            if runtime.block_on(progress.changed()).is_err() {
                return Err(io::Error::other("the download was abandoned"));
            }
            continue;
        }
        let len = (readable.min(end) - pos).min(CHUNK) as usize;
        let mut buf = BytesMut::zeroed(len);
        file.read_exact_at(&mut buf, pos)?;
        pos += len as u64;
        if tx.blocking_send(Ok(buf.freeze())).is_err() {
            return Ok(());
        }
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
        assert_eq!(map_file(&f, 3_000_000).unwrap(), data);
        assert_eq!(read_all(&f, 3_000_000).unwrap(), data);
        assert_eq!(map_file(&f, 0).unwrap().len(), 0);
    }
}
