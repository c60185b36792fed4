//! The bytes of a download that have arrived but are not in its file yet.
//!
//! A download's clients should get each piece as soon as it arrives, not
//! once it is hashed and written: hashing and writing run on the file pool
//! (see `writer`), off the clients' path. So each piece that arrives is
//! kept here, shared with every reader as it came off the network (no
//! copy), until the file holds it; then it is dropped and readers slice it
//! from the file's map instead (see `view`).
//!
//! Bounded by what the writer has not written yet: a batch being written
//! and the next one gathering, which the download's loop keeps to a few
//! megabytes by waiting for the writer.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

/// Pieces that arrived and are not yet in the file; cheap to share.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    held: RwLock<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// The pieces with the offset of their first byte, in order and
    /// without gaps, starting at `in_file`.
    pieces: VecDeque<(u64, Bytes)>,
    /// Bytes before this are in the file.
    in_file: u64,
}

impl Fresh {
    pub(super) fn new() -> Arc<Fresh> {
        Arc::default()
    }

    /// Keeps `piece`, which follows the pieces kept before (or the file).
    pub(super) fn push(&self, piece: Bytes) {
        if piece.is_empty() {
            return;
        }
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        let offset = held
            .pieces
            .back()
            .map_or(held.in_file, |(offset, b)| offset + b.len() as u64);
        held.pieces.push_back((offset, piece));
    }

    /// The file now holds every byte before `end`: the pieces that end
    /// there or before are dropped, and readers take those bytes from the
    /// file. Call only once the file's bytes are written.
    pub(super) fn in_file_up_to(&self, end: u64) {
        let mut held = self.held.write().unwrap_or_else(PoisonError::into_inner);
        while held
            .pieces
            .front()
            .is_some_and(|(offset, b)| offset + b.len() as u64 <= end)
        {
            held.pieces.pop_front();
        }
        held.in_file = held.in_file.max(end);
    }

    /// Bytes from `pos` up to `stop` (exclusive), shorter where a piece
    /// ends, empty when none arrived there yet; `Err(end)` when they are in
    /// the file, which holds every byte before `end`.
    pub(super) fn piece(&self, pos: u64, stop: u64) -> Result<Bytes, u64> {
        let held = self.held.read().unwrap_or_else(PoisonError::into_inner);
        if pos < held.in_file {
            return Err(held.in_file);
        }
        let Some(index) = held
            .pieces
            .partition_point(|(offset, _)| *offset <= pos)
            .checked_sub(1)
        else {
            return Ok(Bytes::new());
        };
        let (offset, piece) = &held.pieces[index];
        let from = ((pos - offset) as usize).min(piece.len());
        let to = (stop.saturating_sub(*offset) as usize).min(piece.len());
        Ok(piece.slice(from..to.max(from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_read_until_the_file_has_them() {
        let fresh = Fresh::new();
        assert_eq!(fresh.piece(0, 10), Ok(Bytes::new()), "nothing yet");
        fresh.push(Bytes::from_static(b"hello "));
        fresh.push(Bytes::from_static(b"world"));
        assert_eq!(
            fresh.piece(0, 100).unwrap(),
            "hello ",
            "stops at a piece's end"
        );
        assert_eq!(fresh.piece(3, 8).unwrap(), "lo ");
        assert_eq!(fresh.piece(6, 100).unwrap(), "world");
        assert_eq!(fresh.piece(11, 100), Ok(Bytes::new()), "not arrived yet");
        fresh.in_file_up_to(6);
        assert_eq!(fresh.piece(2, 8), Err(6), "from the file now");
        assert_eq!(fresh.piece(7, 100).unwrap(), "orld");
        fresh.push(Bytes::from_static(b"!"));
        fresh.in_file_up_to(11);
        assert_eq!(fresh.piece(8, 100), Err(11));
        assert_eq!(fresh.piece(11, 100).unwrap(), "!");
    }
}
