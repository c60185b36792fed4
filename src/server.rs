//! Start-up and serving: binds the listener and answers health checks on
//! it while the state is built from a [`Config`], then serves the API until
//! shutdown, drains, and clears unfinished downloads. How connections are
//! accepted and bounded is [`listen`]'s.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, AuthError, ClientAuth, RedirectRules, router, starting_router};
use crate::listen::{self, Listening, TlsError};
use std::sync::Arc;

use crate::cache::evict::Bounds;
use crate::cache::{CacheError, DiskTier, MemoryTier, S3StartError, S3Tier, TieredCache};
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::upstream::{UpstreamError, Upstreams};

/// Why pullthrough could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("shared tier: {0}")]
    S3(#[from] S3StartError),
    #[error("upstreams: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("client authentication: {0}")]
    Auth(#[from] AuthError),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the cache tiers and upstream clients that `config` describes,
/// checking the S3 bucket's credentials when the shared tier is on.
pub async fn build_state(config: &Config) -> Result<AppState, StartError> {
    let metrics = Metrics::new();
    let auth = ClientAuth::from_config(&config.auth)?;
    let shared = match config.s3.enabled() {
        true => Some(Arc::new(S3Tier::connect(&config.s3, &metrics).await?)),
        false => None,
    };
    let memory = MemoryTier::new(
        config.memory.max_bytes.as_u64(),
        config.memory.max_object_bytes.as_u64(),
    );
    let bounds = Bounds::new(&config.disk);
    let disk = DiskTier::open_bounded(&config.data_dir.join("cache"), bounds, metrics.clone())?
        .with_scrub(config.disk.scrub_interval);
    let cache = TieredCache::new(memory, disk, shared);
    cache.spawn_catch_up();
    let upstreams = Upstreams::from_config(config, &metrics)?;
    upstreams.spawn_budget_probes(config.budget.probe_interval);
    let cluster = Cluster::from_config(config, &metrics)?;
    if let Some(cluster) = &cluster {
        cluster.spawn();
    }
    let registry = Registry::new(upstreams, cache, cluster, config, metrics.clone())?;
    registry.spawn_budget_sharing(config.budget.share_interval);
    registry.limit_tag_records(config.disk.max_tag_records);
    let board = crate::status::Board::saved_in(config.data_dir.join("status/hot.json"));
    board.spawn_sampler(metrics.clone());
    Ok(AppState {
        registry,
        metrics,
        board,
        auth,
        redirects: Arc::new(RedirectRules::new(&config.s3)),
    })
}

/// Connections the kernel may hold for us before they are accepted; it
/// caps this at `net.core.somaxconn` (4096 by default since Linux 5.4).
/// A rollout connects thousands of nodes in the same instant: with the
/// usual 1024, the rest see their SYN dropped and retry after a second.
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds the configured address.
pub fn bind(config: &Config) -> Result<TcpListener, StartError> {
    let addr = config.listen;
    let listening = || {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listening().map_err(|source| StartError::Listen { addr, source })
}

/// Health checks answered, and requests held, while the state is being
/// built; see [`serve_while_starting`].
pub struct Starting {
    stop: CancellationToken,
    ready: tokio::sync::watch::Sender<Option<axum::Router>>,
}

/// How long connections accepted while starting may run on once the
/// replica serves: their requests are the API's by then, blob downloads
/// included.
const STARTED_DRAIN: Duration = Duration::from_secs(600);

/// Answers `/healthz` (alive) and `/readyz` (503, starting) on a second
/// handle of `listener`, with the same TLS and limits as the API, until
/// [`Starting::finish`], so a load balancer sees a starting replica as
/// alive but not ready rather than as dead; any other request is held
/// until the API can answer it (see [`starting_router`]).
pub fn serve_while_starting(
    listener: &TcpListener,
    listening: &Listening,
) -> std::io::Result<Starting> {
    use std::os::fd::AsFd;
    let copy = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    copy.set_nonblocking(true)?;
    let copy = TcpListener::from_std(copy)?;
    let stop = CancellationToken::new();
    let listening = listening.clone();
    let stopped = stop.clone();
    let (ready, waiting) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let app = starting_router(waiting);
        listen::serve(copy, app, &listening, stopped, STARTED_DRAIN).await;
    });
    Ok(Starting { stop, ready })
}

impl Starting {
    /// Hands the held requests, and any still to come on connections
    /// accepted while starting, to `api`, and stops accepting on the second
    /// handle (the listener itself stays open for the API).
    pub fn finish(self, api: axum::Router) {
        self.ready.send_replace(Some(api));
        self.stop.cancel();
    }
}

/// Deletes the unfinished downloads left in the data directory: call it
/// once nothing runs any more (after the runtime shut down).
pub fn clear_unfinished_downloads(config: &Config) -> Result<usize, CacheError> {
    DiskTier::clear_temp(&config.data_dir.join("cache"))
}

/// How long requests in flight may run on after shutdown was asked for; a
/// client streaming a large blob slowly must not hold a restart hostage.
/// Public because a platform's stop timeout (ECS `stopTimeout`,
/// Kubernetes `terminationGracePeriodSeconds`) must exceed it, and the
/// deployment files are checked against it.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Serves the API on `listener` as `listening` says until `shutdown`
/// completes, then lets requests in flight finish for up to `DRAIN`.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    listening: Listening,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopping = CancellationToken::new();
    let trigger = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let listening = listening.counted(state.metrics.clone());
    if !listen::serve(listener, router(state), &listening, stopping, DRAIN).await {
        tracing::warn!("requests still running {DRAIN:?} after shutdown were cut off");
    }
    Ok(())
}
