//! Start-up and serving: builds the state from a [`Config`], then serves
//! the API on a listener until shutdown.

use std::future::Future;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::cache::{CacheError, DiskTier, MemoryTier, TieredCache};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::upstream::{UpstreamError, Upstreams};

/// Why pullthrough could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    #[error("upstreams: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the cache tiers and upstream clients that `config` describes.
pub fn build_state(config: &Config) -> Result<AppState, StartError> {
    let metrics = Metrics::new();
    let memory = MemoryTier::new(
        config.memory.max_bytes.as_u64(),
        config.memory.max_object_bytes.as_u64(),
    );
    let disk = DiskTier::open(&config.data_dir.join("cache"))?;
    let cache = TieredCache::new(memory, disk, Vec::new());
    let upstreams = Upstreams::from_config(config, &metrics)?;
    let registry = Registry::new(
        upstreams,
        cache,
        &config.data_dir,
        config.stale_retry,
        metrics.clone(),
    )?;
    Ok(AppState { registry, metrics })
}

/// Binds the configured address.
pub async fn bind(config: &Config) -> Result<TcpListener, StartError> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })
}

/// Serves the API on `listener` until `shutdown` completes, then lets
/// requests in flight finish.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
