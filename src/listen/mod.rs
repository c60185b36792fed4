//! The listener: accepts client connections and serves the router on each
//! with hyper-util's automatic HTTP/1.1 and HTTP/2 builder, optionally over
//! TLS, within the [`ListenLimits`]:
//! - at most `max_connections` at once: the next one waits in the kernel's
//!   backlog until a connection closes;
//! - a head (or TLS handshake) must be complete within the header timeout,
//!   however slowly its bytes trickle in, and a connection with nothing in
//!   flight closes after the idle timeout (see `activity`);
//! - heads are bounded in size, HTTP/2 connections in streams;
//! - at most `max_requests_per_ip` requests in flight per peer address;
//!   more are answered 429 at once (see `per_ip`).
//!
//! The router sees each request's peer address as
//! `ConnectInfo<SocketAddr>`, as with `axum::serve`. Open connections,
//! timeouts and refusals are counted in [`ListenerCollectors`](crate::metrics::ListenerCollectors). On shutdown the
//! listener closes at once and open connections finish their requests for
//! a bounded time.

mod activity;
mod per_ip;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use tls::{Tls, TlsError};

use self::activity::{Activity, Watched};
use self::per_ip::{Held, PerIp};
use crate::api::ApiError;
use crate::config::{Config, ListenLimits};
use crate::metrics::Metrics;

/// How the listener serves: its limits and, when configured, its TLS.
/// Cheap to clone.
#[derive(Clone)]
pub struct Listening {
    limits: ListenLimits,
    tls: Option<Arc<Tls>>,
    metrics: Option<Metrics>,
}

impl Listening {
    /// The listener `config` describes; reads the TLS files if named.
    pub fn from_config(config: &Config) -> Result<Listening, TlsError> {
        Ok(Listening {
            limits: config.listen_limits.clone(),
            tls: Tls::from_config(&config.tls)?,
            metrics: None,
        })
    }

    /// The same listener, recording in `metrics`.
    pub fn counted(mut self, metrics: Metrics) -> Listening {
        self.metrics = Some(metrics);
        self
    }

    /// Whether clients must speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// What every connection's task shares.
struct Shared {
    app: Router,
    limits: ListenLimits,
    tls: Option<Arc<Tls>>,
    per_ip: PerIp,
    http: auto::Builder<TokioExecutor>,
    metrics: Option<Metrics>,
}

/// Serves `app` on `listener` until `stop`, then closes the listener and
/// lets open connections finish for up to `drain`. Returns whether they
/// all finished in time.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    listening: &Listening,
    stop: CancellationToken,
    drain: Duration,
) -> bool {
    let limits = listening.limits.clone();
    let shared = Arc::new(Shared {
        app,
        per_ip: PerIp::new(limits.max_requests_per_ip),
        http: builder(&limits),
        tls: listening.tls.clone(),
        metrics: listening.metrics.clone(),
        limits,
    });
    if let Some(tls) = &shared.tls {
        tls.spawn_reloading(stop.child_token());
    }
    let connections = Arc::new(Semaphore::new(shared.limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            () = stop.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            peer,
            shared.clone(),
            graceful.watcher(),
            permit,
        ));
    }
    drop(listener);
    tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_ok()
}

/// HTTP/1.1 and HTTP/2 with the size limits; the timeouts are kept by
/// [`Activity`], so hyper's own header timer is off.
fn builder(limits: &ListenLimits) -> auto::Builder<TokioExecutor> {
    let header_bytes = limits.max_header_bytes.as_u64();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(usize::try_from(header_bytes).unwrap_or(usize::MAX));
    builder
        .http2()
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_pending_accept_reset_streams(Some(64));
    builder
}

/// One connection, from accept to close: the TLS handshake if any, then
/// HTTP, dropped as soon as it overstays its deadline.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    let _open = shared.metrics.as_ref().map(Open::new);
    let activity = Activity::new();
    let io = Watched::new(tcp, activity.clone());
    let limits = &shared.limits;
    let expired = activity.expired(limits.header_read_timeout, limits.idle_timeout);
    let serve = async {
        match &shared.tls {
            None => http(io, peer, &shared, &activity, watcher).await,
            Some(tls) => match tls.acceptor().accept(io).await {
                Ok(stream) => {
                    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        activity.set_h2();
                    }
                    http(stream, peer, &shared, &activity, watcher).await;
                }
                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            },
        }
    };
    tokio::select! {
        () = serve => {}
        expiry = expired => {
            tracing::debug!(%peer, reason = expiry.as_str(), "connection closed");
            if let Some(metrics) = &shared.metrics {
                metrics.listener.connections_closed.with_label_values(&[expiry.as_str()]).inc();
            }
        }
    }
}

/// Counts a connection as open while it lives.
struct Open(Metrics);

impl Open {
    fn new(metrics: &Metrics) -> Open {
        metrics.listener.connections_open.inc();
        Open(metrics.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.listener.connections_open.dec();
    }
}

/// Serves HTTP on an established connection until it closes.
async fn http<IO>(
    io: IO,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    activity: &Arc<Activity>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (for_requests, activity) = (shared.clone(), activity.clone());
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_flight = activity.begin();
        let slot = for_requests.per_ip.try_acquire(peer.ip());
        let app = for_requests.app.clone();
        let metrics = for_requests.metrics.clone();
        async move {
            let response = match &slot {
                Some(_) => app.oneshot(request).await.unwrap_or_else(|e| match e {}),
                None => too_many_requests(peer, metrics.as_ref()),
            };
            Ok::<_, Infallible>(response.map(|body| Held::new(body, slot, in_flight)))
        }
    });
    let conn = shared.http.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

fn too_many_requests(peer: SocketAddr, metrics: Option<&Metrics>) -> Response<axum::body::Body> {
    tracing::debug!(%peer, "too many requests in flight from one address");
    if let Some(metrics) = metrics {
        metrics
            .listener
            .requests_refused
            .with_label_values(&["per_ip_limit"])
            .inc();
    }
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
        "too many requests in flight from this address",
    );
    error.retry_after = Some(Duration::from_secs(1));
    error.into_response()
}
