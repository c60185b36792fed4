//! What one connection is doing, and the deadline that follows from it:
//! a connection reading a request head (or a TLS handshake) must finish it
//! within the header timeout; one with no request in flight may wait for
//! the next for the idle timeout (counted from its last write: hyper may
//! take a response's last bytes long before they are sent); and no
//! connection may have its writes blocked (a client that stopped reading)
//! for longer than the idle timeout, noticed within twice that.
//!
//! hyper's own `header_read_timeout` also starts while a keep-alive
//! connection waits for its next request, so it would make the idle
//! timeout as short as the header timeout: both are kept here instead, as
//! Go's `ReadHeaderTimeout` and `IdleTimeout` are.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The start of every HTTP/2 connection (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Which deadline a connection overstayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A head (or TLS handshake) took longer than the header timeout.
    Header,
    /// No request came within the idle timeout.
    Idle,
    /// The client read none of a response for the idle timeout.
    Stalled,
}

impl Expiry {
    /// The `reason` label of `pullthrough_connections_closed_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Header => "header_timeout",
            Expiry::Idle => "idle_timeout",
            Expiry::Stalled => "write_stalled",
        }
    }
}

/// One connection's state, shared by its I/O, its requests and its watchdog.
pub struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

struct Phase {
    /// Requests whose responses are not yet fully sent.
    in_flight: usize,
    /// When the current wait (for a head, or for the next request) began.
    since: Instant,
    /// Waiting for a head to complete (or a handshake), not idle.
    reading_head: bool,
    /// Bytes arrived while requests were in flight: the next head has begun.
    read_while_busy: bool,
    /// Whether anything was read yet, to spot the HTTP/2 preface.
    started: bool,
    /// HTTP/2: frames (pings, window updates) arrive while idle, so a read
    /// does not start a head; the idle timeout alone applies.
    h2: bool,
    /// Since when writes wait for the client to read.
    write_blocked: Option<Instant>,
}

impl Activity {
    /// A connection accepted now: its head (or handshake) is due within the
    /// header timeout.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase {
                in_flight: 0,
                since: Instant::now(),
                reading_head: true,
                read_while_busy: false,
                started: false,
                h2: false,
                write_blocked: None,
            }),
            changed: Notify::new(),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the connection as HTTP/2 (from ALPN).
    pub fn set_h2(&self) {
        self.phase().h2 = true;
    }

    fn on_read(&self, data: &[u8]) {
        let mut phase = self.phase();
        if !phase.started {
            phase.started = true;
            phase.h2 |= data.starts_with(H2_PREFACE);
        }
        if phase.in_flight > 0 {
            phase.read_while_busy = true;
        } else if !phase.reading_head && !phase.h2 {
            phase.reading_head = true;
            phase.since = Instant::now();
            drop(phase);
            self.changed.notify_waiters();
        }
    }

    /// A request was dispatched; the guard ends it when dropped (once its
    /// response body is sent or abandoned).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        let mut phase = self.phase();
        phase.in_flight += 1;
        phase.reading_head = false;
        phase.read_while_busy = false;
        InFlight(Arc::clone(self))
    }

    fn end(&self) {
        let mut phase = self.phase();
        phase.in_flight -= 1;
        if phase.in_flight == 0 {
            phase.since = Instant::now();
            phase.reading_head = phase.read_while_busy && !phase.h2;
            drop(phase);
            self.changed.notify_waiters();
        }
    }

    fn on_write(&self, blocked: bool) {
        let mut phase = self.phase();
        if blocked {
            phase.write_blocked.get_or_insert_with(Instant::now);
        } else {
            phase.write_blocked = None;
            if phase.in_flight == 0 && !phase.reading_head {
                phase.since = Instant::now();
            }
        }
    }

    fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, Expiry)> {
        let phase = self.phase();
        if phase.in_flight == 0 && phase.reading_head {
            return Some((phase.since + header, Expiry::Header));
        }
        if let Some(blocked) = phase.write_blocked {
            return Some((blocked + idle, Expiry::Stalled));
        }
        (phase.in_flight == 0).then_some((phase.since + idle, Expiry::Idle))
    }

    /// Completes, with the deadline it overstayed, when the connection has
    /// overstayed one: the caller then drops the connection.
    pub async fn expired(&self, header: Duration, idle: Duration) -> Expiry {
        loop {
            let changed = self.changed.notified();
            // In flight and writing freely: look again for a stall later.
            let (at, expiry) = match self.deadline(header, idle) {
                Some((at, expiry)) => (at, Some(expiry)),
                None => (Instant::now() + idle, None),
            };
            if let Some(expiry) = expiry
                && at <= Instant::now()
            {
                return expiry;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(at) => {}
            }
        }
    }
}

/// A request in flight on a connection; see [`Activity::begin`].
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A connection's byte stream, reporting what it reads to its [`Activity`].
pub struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.on_write(polled.is_pending());
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.on_write(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_millis(200);
    const IDLE: Duration = Duration::from_millis(600);

    #[tokio::test]
    async fn a_new_connection_is_due_within_the_header_timeout() {
        let a = Activity::new();
        let started = Instant::now();
        a.on_read(b"GET / HT");
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.on_read(b"TP/1.1\r\n");
        assert_eq!(a.expired(HEADER, IDLE).await, Expiry::Header);
        let took = started.elapsed();
        assert!(
            took >= HEADER && took < IDLE,
            "trickled bytes do not extend it: {took:?}"
        );
    }

    #[tokio::test]
    async fn after_a_response_the_idle_timeout_applies_until_a_byte_arrives() {
        let a = Activity::new();
        drop(a.begin());
        let idle_from = Instant::now();
        let watchdog = a.clone();
        let expiry = tokio::spawn(async move {
            assert_eq!(watchdog.expired(HEADER, IDLE).await, Expiry::Header);
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!expiry.is_finished(), "idle longer than the header timeout");
        a.on_read(b"G");
        let took = expiry.await.unwrap() - idle_from;
        let due = Duration::from_millis(300) + HEADER;
        assert!(took >= due && took < IDLE, "a head began: {took:?}");
    }

    #[test]
    fn a_request_in_flight_has_no_deadline_and_h2_reads_do_not_start_heads() {
        let a = Activity::new();
        a.on_read(H2_PREFACE);
        let request = a.begin();
        assert_eq!(a.deadline(HEADER, IDLE), None);
        a.on_read(b"window update");
        drop(request);
        let idle = a.deadline(HEADER, IDLE).unwrap();
        a.on_read(b"ping");
        assert_eq!(a.deadline(HEADER, IDLE), Some(idle), "still idle");
        assert_eq!(idle.1, Expiry::Idle);
        assert!(idle.0 > Instant::now() + HEADER);
    }

    #[tokio::test]
    async fn a_response_the_client_does_not_read_expires_after_the_idle_timeout() {
        let a = Activity::new();
        let _request = a.begin();
        a.on_write(true);
        let blocked = Instant::now();
        a.on_write(true);
        assert_eq!(a.expired(HEADER, IDLE).await, Expiry::Stalled);
        let took = blocked.elapsed();
        assert!(took >= IDLE && took < IDLE * 2, "{took:?}");
        a.on_write(false);
        assert_eq!(a.deadline(HEADER, IDLE), None, "writing again");
    }

    #[test]
    fn writes_after_the_last_request_ended_postpone_the_idle_timeout() {
        let a = Activity::new();
        drop(a.begin());
        let (before, _) = a.deadline(HEADER, IDLE).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        a.on_write(false);
        let (after, expiry) = a.deadline(HEADER, IDLE).unwrap();
        assert!(after > before, "the idle time counts from the last write");
        assert_eq!(expiry, Expiry::Idle);
        a.on_write(true);
        assert_eq!(a.deadline(HEADER, IDLE).unwrap().1, Expiry::Stalled);
    }
}
