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

/// How much of a file may be read.
pub(super) enum Extent {
    /// The file is complete at this size.
    Complete(u64),
    /// A download is still writing it.
    Growing(watch::Receiver<Progress>),
}

/// Streams bytes `start..end` of `file` (`end` is clamped to the file's
/// final size; `u64::MAX` reads to the end).
pub(super) fn stream_range(file: Arc<File>, start: u64, end: u64, extent: Extent) -> ByteStream {
    let (tx, rx) = mpsc::channel(QUEUE);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = pump(&file, start, end, extent, &tx, &runtime) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Reads and sends until `end`, waiting for a download where needed. Returns
/// `Ok` also when the client went away.
fn pump(
    file: &File,
    mut pos: u64,
    mut end: u64,
    mut extent: Extent,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    runtime: &tokio::runtime::Handle,
) -> io::Result<()> {
    loop {
        let readable = match &mut extent {
            Extent::Complete(size) => {
                end = end.min(*size);
                end
            }
            Extent::Growing(progress) => {
                let state = progress.borrow_and_update().clone();
                match state.readable() {
                    Ok((readable, Some(size))) => {
                        end = end.min(size);
                        readable
                    }
                    Ok((readable, None)) => readable,
                    Err(message) => return Err(io::Error::other(message)),
                }
            }
        };
        if pos >= end {
            return Ok(());
        }
        if pos >= readable {
            let Extent::Growing(progress) = &mut extent else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached file is shorter than recorded",
                ));
            };
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
    use futures_util::StreamExt;
    use std::io::Write;

    async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn streams_ranges_of_complete_files() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        let all = collect(stream_range(
            f.clone(),
            0,
            u64::MAX,
            Extent::Complete(3_000_000),
        ))
        .await;
        assert_eq!(all.unwrap(), data);
        let part = collect(stream_range(
            f.clone(),
            10,
            2_000_000,
            Extent::Complete(3_000_000),
        ))
        .await;
        assert_eq!(part.unwrap(), &data[10..2_000_000]);
        let short = collect(stream_range(f, 0, u64::MAX, Extent::Complete(4_000_000))).await;
        assert!(
            short.is_err(),
            "a file shorter than recorded must fail the body"
        );
    }
}
