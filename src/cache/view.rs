//! A download's bytes as its readers see them: normally a map of its
//! temporary file, and the bytes that arrived but are not written yet
//! from memory (see `fresh`); when the disk tier cannot take the download
//! (full, or failing), the bytes written before the failure from that map
//! and the rest from memory.
//!
//! The memory part, a [`Tail`], is a list of the chunks as they arrived,
//! shared by every reader of the download: appending takes a write lock for
//! one `push`, reading a read lock for one binary search, and no chunk is
//! ever copied. Chunks every reader has passed are dropped, so a download
//! held in memory costs its window, not its size (see `window`).

use std::sync::Arc;

use bytes::Bytes;

use super::fresh::Fresh;
use super::window::Tail;

/// Where readers of a download slice its bytes from.
#[derive(Clone, Debug)]
pub(super) enum View {
    /// The temporary file, mapped (or a finished object).
    Mapped(Bytes),
    /// A download still arriving: the bytes the file holds from its map,
    /// the others from `fresh`.
    Filling { map: Bytes, fresh: Arc<Fresh> },
    /// The disk failed after `prefix.len()` bytes: those from the file's
    /// map, the rest from memory.
    Spilled { prefix: Bytes, tail: Arc<Tail> },
}

impl View {
    /// The same download continuing in memory after its first `written`
    /// bytes, which stay readable from this view's map.
    pub(super) fn spill(&self, written: u64, tail: Arc<Tail>) -> View {
        let prefix = match self {
            View::Mapped(map) | View::Filling { map, .. } => {
                map.slice(..(written as usize).min(map.len()))
            }
            View::Spilled { prefix, .. } => prefix.clone(),
        };
        View::Spilled { prefix, tail }
    }

    /// Bytes from `pos`, up to `stop` (exclusive); shorter when they lie in
    /// two chunks, empty when none is there yet, `None` when they were
    /// dropped. Readers ask only for what the download has made readable.
    pub(super) fn piece(&self, pos: u64, stop: u64) -> Option<Bytes> {
        match self {
            View::Mapped(map) => Some(slice(map, pos, stop)),
            View::Filling { map, fresh } => match fresh.piece(pos, stop) {
                Ok(piece) => Some(piece),
                Err(in_file) => Some(slice(map, pos, stop.min(in_file))),
            },
            View::Spilled { prefix, tail } if pos < prefix.len() as u64 => {
                let end = (stop as usize).min(prefix.len());
                (tail.dropped() == 0).then(|| prefix.slice(pos as usize..end))
            }
            View::Spilled { tail, .. } => tail.piece(pos, stop),
        }
    }
}

/// `map[pos..stop]`, cut short at the map's end.
fn slice(map: &Bytes, pos: u64, stop: u64) -> Bytes {
    let end = (stop as usize).min(map.len());
    map.slice((pos as usize).min(end)..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::window::DownloadMemory;
    use crate::metrics::Metrics;

    fn memory() -> Arc<DownloadMemory> {
        DownloadMemory::new(1 << 30, &Metrics::new())
    }

    fn read_all(view: &View, len: u64, step: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < len {
            let piece = view.piece(pos, (pos + step).min(len)).unwrap();
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
        let tail = Tail::new(300, memory());
        let view = map.spill(300, tail.clone());
        assert!(view.piece(300, 400).unwrap().is_empty(), "nothing held yet");
        tail.push([Bytes::copy_from_slice(&data[300..450]), Bytes::new()]);
        tail.push([
            Bytes::copy_from_slice(&data[450..451]),
            Bytes::copy_from_slice(&data[451..1000]),
        ]);
        for step in [1, 7, 64, 1000] {
            assert_eq!(read_all(&view, 1000, step), data, "step {step}");
        }
        assert_eq!(
            &view.piece(290, 310).unwrap()[..],
            &data[290..300],
            "stops at the map's end"
        );
        assert_eq!(
            &view.piece(440, 460).unwrap()[..],
            &data[440..450],
            "stops at a chunk's end"
        );
    }

    #[test]
    fn a_download_wholly_in_memory_starts_at_zero() {
        let tail = Tail::new(0, memory());
        let view = View::Mapped(Bytes::new()).spill(0, tail.clone());
        tail.push([Bytes::from_static(b"hello "), Bytes::from_static(b"world")]);
        assert_eq!(read_all(&view, 11, 4), b"hello world");
    }

    #[test]
    fn dropped_chunks_are_gone_and_their_memory_given_back() {
        let memory = memory();
        assert!(memory.try_take(11));
        let tail = Tail::new(0, memory.clone());
        let view = View::Mapped(Bytes::from_static(b"hello world")).spill(0, tail.clone());
        tail.push([Bytes::from_static(b"hello "), Bytes::from_static(b"world")]);
        assert_eq!(tail.drop_before(5), None, "the first chunk is still read");
        assert_eq!(tail.drop_before(6), Some(6));
        assert_eq!(tail.held(), 5);
        assert!(view.piece(3, 6).is_none(), "gone, from the map too");
        assert_eq!(&view.piece(6, 11).unwrap()[..], b"world");
        drop((view, tail));
        assert!(memory.try_take(1 << 30), "all of it given back");
    }
}
