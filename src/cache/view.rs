//! A download's bytes as its readers see them: normally a map of its
//! temporary file; when the disk tier cannot take the download (full, or
//! failing), the bytes written before the failure from that map and the
//! rest from memory.
//!
//! The memory part, a [`Tail`], is an append-only list of the chunks as
//! they arrived, shared by every reader of the download: appending takes a
//! write lock for one `push`, reading a read lock for one binary search, and
//! no chunk is ever copied. A download held in memory costs its whole size
//! until its last reader is done; that is the price of still serving it.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Where readers of a download slice its bytes from.
#[derive(Clone, Debug)]
pub(super) enum View {
    /// The temporary file, mapped.
    Mapped(Bytes),
    /// The disk failed after `prefix.len()` bytes: those from the file's
    /// map, the rest from memory.
    Spilled { prefix: Bytes, tail: Arc<Tail> },
}

impl View {
    /// The same download continuing in memory after its first `written`
    /// bytes, which stay readable from this view's map.
    pub(super) fn spill(&self, written: u64, tail: Arc<Tail>) -> View {
        let prefix = match self {
            View::Mapped(map) => map.slice(..(written as usize).min(map.len())),
            View::Spilled { prefix, .. } => prefix.clone(),
        };
        View::Spilled { prefix, tail }
    }

    /// Bytes from `pos`, up to `stop` (exclusive); shorter when they lie in
    /// two chunks, empty when none is there yet. Readers ask only for what
    /// the download has made readable.
    pub(super) fn piece(&self, pos: u64, stop: u64) -> Bytes {
        match self {
            View::Mapped(map) => {
                let end = (stop as usize).min(map.len());
                map.slice((pos as usize).min(end)..end)
            }
            View::Spilled { prefix, .. } if pos < prefix.len() as u64 => {
                let end = (stop as usize).min(prefix.len());
                prefix.slice(pos as usize..end)
            }
            View::Spilled { tail, .. } => tail.piece(pos, stop),
        }
    }
}

/// The in-memory rest of a download, from byte `start` on.
#[derive(Debug)]
pub(super) struct Tail {
    start: u64,
    /// Chunks with the offset of their first byte, in order.
    chunks: RwLock<Vec<(u64, Bytes)>>,
}

impl Tail {
    /// An empty tail for the bytes from `start` on.
    pub(super) fn new(start: u64) -> Arc<Tail> {
        Arc::new(Tail {
            start,
            chunks: RwLock::default(),
        })
    }

    /// Appends `chunks`, which follow the bytes already held.
    pub(super) fn push(&self, chunks: impl IntoIterator<Item = Bytes>) {
        let mut held = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let mut end = held
            .last()
            .map_or(self.start, |(offset, b)| offset + b.len() as u64);
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            let len = chunk.len() as u64;
            held.push((end, chunk));
            end += len;
        }
    }

    fn piece(&self, pos: u64, stop: u64) -> Bytes {
        let held = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let Some(index) = held
            .partition_point(|(offset, _)| *offset <= pos)
            .checked_sub(1)
        else {
            return Bytes::new();
        };
        let (offset, chunk) = &held[index];
        let from = ((pos - offset) as usize).min(chunk.len());
        let to = (stop.saturating_sub(*offset) as usize).min(chunk.len());
        chunk.slice(from..to.max(from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(view: &View, len: u64, step: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < len {
            let piece = view.piece(pos, (pos + step).min(len));
            assert!(!piece.is_empty(), "bytes at {pos}");
            pos += piece.len() as u64;
            out.extend_from_slice(&piece);
        }
        out
    }

    #[test]
    fn a_spilled_view_reads_the_map_then_the_chunks() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let map = View::Mapped(Bytes::from(data.clone()));
        let tail = Tail::new(300);
        let view = map.spill(300, tail.clone());
        assert!(view.piece(300, 400).is_empty(), "nothing held yet");
        tail.push([Bytes::copy_from_slice(&data[300..450]), Bytes::new()]);
        tail.push([
            Bytes::copy_from_slice(&data[450..451]),
            Bytes::copy_from_slice(&data[451..1000]),
        ]);
        for step in [1, 7, 64, 1000] {
            assert_eq!(read_all(&view, 1000, step), data, "step {step}");
        }
        assert_eq!(
            &view.piece(290, 310)[..],
            &data[290..300],
            "stops at the map's end"
        );
        assert_eq!(
            &view.piece(440, 460)[..],
            &data[440..450],
            "stops at a chunk's end"
        );
    }

    #[test]
    fn a_download_wholly_in_memory_starts_at_zero() {
        let tail = Tail::new(0);
        let view = View::Mapped(Bytes::new()).spill(0, tail.clone());
        tail.push([Bytes::from_static(b"hello "), Bytes::from_static(b"world")]);
        assert_eq!(read_all(&view, 11, 4), b"hello world");
    }
}
