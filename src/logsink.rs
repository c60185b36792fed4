//! Where log lines go: a buffer in memory that one thread writes out, so
//! a request never waits on the terminal, pipe or file behind stdout, and
//! never wakes another thread for its line.
//!
//! A line is appended to the buffer under a mutex held for one copy: no
//! allocation of its own and no system call. The writer thread is woken
//! only by the first line to land in an empty buffer; it lets lines gather
//! for [`LINGER`], takes them all and writes them with one system call. So
//! under load one wake-up and one write serve every line of a few
//! milliseconds, not one of each per request, and no line waits longer
//! than about [`LINGER`] plus one write.
//!
//! Bounded: past [`MAX_WAITING`] bytes waiting (the output is stuck),
//! lines are dropped and counted, and the count is reported on stderr
//! once the output moves again. Logging never blocks a request.
//! [`Flush`], kept by `main`, writes what is left when dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer lets lines gather after the first one arrives.
pub const LINGER: Duration = Duration::from_millis(5);

/// Bytes that may wait to be written before lines are dropped.
pub const MAX_WAITING: usize = 16 * 1024 * 1024;

/// Where the logging layer writes; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<Waiting>,
    /// Wakes the writer: a line arrived in an empty buffer, or closing.
    wake: Condvar,
}

struct Waiting {
    lines: Vec<u8>,
    dropped: u64,
    closed: bool,
}

/// Writes what is still waiting, and stops the writer, when dropped.
pub struct Flush {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl LogSink {
    /// A sink whose lines a thread of its own writes to `out`.
    pub fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(LogSink, Flush)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Waiting {
                lines: Vec::new(),
                dropped: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_out(&shared, out))?
        };
        let flush = Flush {
            shared: shared.clone(),
            writer: Some(writer),
        };
        Ok((LogSink { shared }, flush))
    }

    /// Appends one line (or any bytes) for the writer.
    fn append(&self, bytes: &[u8]) {
        let mut waiting = self.shared.lock();
        if waiting.lines.len() + bytes.len() > MAX_WAITING {
            waiting.dropped += 1;
            return;
        }
        let first = waiting.lines.is_empty();
        waiting.lines.extend_from_slice(bytes);
        drop(waiting);
        if first {
            self.shared.wake.notify_one();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer thread: waits for lines, lets more gather, writes them all.
fn write_out(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut waiting = shared.lock();
        while waiting.lines.is_empty() && !waiting.closed {
            waiting = shared
                .wake
                .wait(waiting)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if waiting.lines.is_empty() {
            return;
        }
        if !waiting.closed {
            drop(waiting);
            std::thread::sleep(LINGER);
            waiting = shared.lock();
        }
        std::mem::swap(&mut waiting.lines, &mut batch);
        let dropped = std::mem::take(&mut waiting.dropped);
        drop(waiting);
        // Nowhere to report a failing stdout: the lines are lost, as they
        // would be with any logger.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if dropped > 0 {
            eprintln!("pullthrough: {dropped} log lines dropped: the log output could not keep up");
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// One event's writer: the fmt layer formats a line, then writes it here
/// in one call.
pub struct LineWriter<'a>(&'a LogSink);

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the writer wrote, and how many writes it took.
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Out {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut out = self.0.lock().unwrap();
            out.0.extend_from_slice(bytes);
            out.1 += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arriving_together_are_written_in_order_and_together() {
        let out = Out::default();
        let (sink, flush) = LogSink::spawn(out.clone()).unwrap();
        let lines: Vec<String> = (0..100).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            sink.append(line.as_bytes());
        }
        drop(flush);
        let (bytes, writes) = out.0.lock().unwrap().clone();
        assert_eq!(String::from_utf8(bytes).unwrap(), lines.concat());
        // One write unless this (shared, busy) machine paused the loop
        // above for longer than LINGER.
        assert!(writes < 10, "{writes} writes for 100 lines");
    }

    #[test]
    fn what_is_waiting_is_written_when_the_flush_is_dropped() {
        let out = Out::default();
        let (sink, flush) = LogSink::spawn(out.clone()).unwrap();
        sink.append(b"last words\n");
        drop(flush);
        assert_eq!(out.0.lock().unwrap().0, b"last words\n");
    }

    #[test]
    fn a_stuck_output_drops_lines_instead_of_holding_requests() {
        let (sink, flush) = LogSink::spawn(std::io::sink()).unwrap();
        // No writer progress is needed to see the bound: fill it at once.
        let mut waiting = sink.shared.lock();
        waiting.lines.resize(MAX_WAITING, b'x');
        drop(waiting);
        sink.append(b"one too many\n");
        assert_eq!(sink.shared.lock().dropped, 1);
        drop(flush);
    }
}
