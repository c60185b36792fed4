//! Listener plumbing: binds `127.0.0.1:0` and serves an axum router in a way
//! that can be stopped completely.
//!
//! `axum::serve` spawns one task per connection. Dropping the accept loop only
//! asks those connections for a *graceful* shutdown: idle keep-alive
//! connections close, but in-flight responses (a `Slow` fault, a large blob
//! still streaming) would carry on. Every accepted socket is therefore
//! wrapped in [`KillableIo`], which fails all reads and writes once the
//! simulator's shutdown token is cancelled, so hyper drops the connection at
//! once and "upstream is gone" really means gone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The client's address, available to handlers as `ConnectInfo<PeerAddr>`.
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, SimListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A TCP listener whose connections die when `shutdown` is cancelled.
pub(super) struct SimListener {
    inner: TcpListener,
    shutdown: CancellationToken,
}

impl SimListener {
    /// Binds an ephemeral loopback port; returns the listener and its base URL.
    pub async fn bind(shutdown: &CancellationToken) -> (SimListener, String) {
        let inner = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("hubsim: bind 127.0.0.1:0");
        let addr = inner.local_addr().expect("hubsim: local_addr");
        let url = format!("http://{addr}");
        let listener = SimListener {
            inner,
            shutdown: shutdown.clone(),
        };
        (listener, url)
    }
}

impl Listener for SimListener {
    type Io = KillableIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableIo, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = KillableIo {
                        inner: stream,
                        killed: Box::pin(self.shutdown.clone().cancelled_owned()),
                    };
                    return (io, addr);
                }
                // e.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that errors out once the shutdown token is cancelled.
pub(super) struct KillableIo {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableIo {
    /// `Some(error)` once shut down; registers the waker otherwise, so an idle
    /// keep-alive connection wakes up and closes on shutdown.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.killed
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::ConnectionAborted, "hubsim stopped"))
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Spawns `router` on `listener` on the current tokio runtime.
pub(super) fn spawn(listener: SimListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let svc = router.into_make_service_with_connect_info::<PeerAddr>();
        let _ = axum::serve(listener, svc).await;
    })
}
