//! Runs pullthrough in-process on an ephemeral loopback port, in front of
//! the Docker Hub simulator or any registry URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pullthrough::api::AppState;
use pullthrough::config::{Config, DOCKER_HUB, UpstreamConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running pullthrough.
pub struct Proxy {
    /// `http://127.0.0.1:<port>` (`https://` when TLS is configured)
    pub url: String,
    pub state: AppState,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A configuration with `upstream_url` as docker.io and short timeouts.
/// The disk tier has no percentage cap: how full the test machine's disk
/// is must not decide what a test finds cached.
pub fn config(upstream_url: &str, data_dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config
        .upstreams
        .insert(DOCKER_HUB.to_owned(), UpstreamConfig::new(upstream_url));
    config.timeouts.connect = Duration::from_secs(2);
    config.timeouts.read = Duration::from_secs(5);
    config.timeouts.request = Duration::from_secs(5);
    config.disk.max_percent = 100;
    config
}

impl Proxy {
    /// Starts pullthrough with `config` (its `listen` is ignored).
    pub async fn start(config: Config) -> Proxy {
        config.validate().expect("valid test config");
        let state = pullthrough::server::build_state(&config)
            .await
            .expect("pullthrough starts");
        let listening =
            pullthrough::listen::Listening::from_config(&config).expect("TLS files load");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if listening.is_tls() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let served = state.clone();
        let task = tokio::spawn(async move {
            pullthrough::server::run(listener, served, listening, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Proxy {
            url,
            state,
            data_dir: config.data_dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving and waits until the listener is closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// A counter from pullthrough's own `/metrics`, summed over the series
    /// whose labels contain every `label="value"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.state.metrics.render();
        super::metric_sum(&text, name, labels)
    }

    /// Requests answered with `outcome` so far.
    pub fn outcomes(&self, outcome: &str) -> u64 {
        self.metric("pullthrough_requests_total", &[("outcome", outcome)]) as u64
    }

    /// Files under the disk tier's object directories (`blobs/`, `manifests/`).
    pub fn cached_files(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        let root = self.data_dir.join("cache");
        count(&root.join("blobs")) + count(&root.join("manifests"))
    }
}

impl Proxy {
    /// The disk tier's size and bounds, as `/readyz` reports them.
    pub async fn disk(&self) -> pullthrough::cache::evict::DiskUsage {
        self.state.registry.readiness().await.disk
    }

    /// Waits until the disk tier has counted the files it started with.
    pub async fn disk_counted(&self) {
        super::wait_until_async(async || self.disk().await.loaded).await;
    }

    /// Whether the disk tier holds the blob `digest` (`sha256:<hex>`).
    pub fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = self.data_dir.join("cache/blobs/sha256").join(&hex[..2]);
        path.join(hex).exists()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
