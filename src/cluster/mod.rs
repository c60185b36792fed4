//! The fleet is one cache: every key (a blob, a manifest by digest, a tag)
//! has one owner among the live replicas, chosen by rendezvous hashing
//! (`rendezvous`), and only the owner fetches it upstream. A replica that
//! misses asks the owner over HTTP (`peer`) and streams the answer to its
//! own clients as it arrives, filling its own tiers; the owner answers from
//! its tiers or from its own single-flight fetch, and never forwards a
//! peer's request again, so there are no loops and no amplification.
//!
//! Why owners by key (as groupcache and Kraken do) and not by repository
//! (zot's scale-out): one image's layers spread over the fleet, and a
//! replica down costs only a re-hash, not its repositories. Why no
//! consensus or lease: a disagreement on who is up costs at most one more
//! fetch of a key, and any failure of the owner (down, slow to begin,
//! refusing) makes the asking replica fetch the key itself, as it would
//! without peers. (Two replicas whose views differ so that each takes the
//! other for a key's owner wait on each other until `cluster.timeout`,
//! then both fetch it: views differ only while a member comes or goes,
//! and a view that is a subset of another's never picks that way.) The shared S3 tier is still asked first: a finished
//! object is read from the bucket, and only one still being fetched or
//! uploaded is asked of its owner.
//!
//! Membership (`members`) is a static list or a DNS name, each member
//! probed every `probe_interval`; a replica recognises itself by its
//! advertised URL or when a probe reaches itself.

mod members;
mod peer;
mod rendezvous;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use subtle::ConstantTimeEq;

pub use members::{MemberView, normalise};
pub use peer::{
    CLIENT_HEADER, OUTCOME_HEADER, PEER_PREFIX, PeerBlob, PeerError, PeerManifest, PeerTag,
};

use crate::config::{Config, ConfigError, Secret};
use crate::digest::Digest;
use crate::metrics::Metrics;
use members::{Members, Winner};

/// What a key is, for choosing its owner.
#[derive(Clone, Copy, Debug)]
pub enum OwnerKey<'a> {
    Blob(&'a Digest),
    Manifest(&'a Digest),
    Tag {
        upstream: &'a str,
        repo: &'a str,
        tag: &'a str,
    },
}

impl OwnerKey<'_> {
    fn hashed(&self) -> String {
        match self {
            OwnerKey::Blob(d) => format!("blob:{d}"),
            OwnerKey::Manifest(d) => format!("manifest:{d}"),
            OwnerKey::Tag {
                upstream,
                repo,
                tag,
            } => format!("tag:{upstream}/{repo}:{tag}"),
        }
    }
}

/// The replica that owns a key, when it is another one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    url: String,
}

impl Peer {
    /// Its base URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Where the member list comes from.
enum Source {
    Static(Vec<String>),
    /// `dns:NAME:PORT`, members as `scheme://address:PORT`.
    Dns {
        name: String,
        port: u16,
        scheme: &'static str,
    },
}

/// The fleet as this replica knows it; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    members: Members,
    source: Source,
    secret: Secret,
    /// This process's identity, which a probe that reaches it returns.
    id: String,
    client: reqwest::Client,
    timeout: Duration,
    probe_interval: Duration,
    refresh_interval: Duration,
    /// Where the listener is, for an advertised URL found at run time.
    scheme: &'static str,
    port: u16,
    advertise: Option<String>,
    metrics: Metrics,
}

/// Why the cluster cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the peer client: {0}")]
    Client(String),
}

impl Cluster {
    /// The fleet `config.cluster` describes; `None` without peers.
    pub fn from_config(
        config: &Config,
        metrics: &Metrics,
    ) -> Result<Option<Cluster>, ClusterError> {
        let cfg = &config.cluster;
        if !cfg.enabled() {
            return Ok(None);
        }
        let secret = cfg.load_secret()?.ok_or_else(|| {
            ClusterError::Config(crate::config::invalid("cluster.secret", "missing"))
        })?;
        let scheme = if config.tls.enabled() {
            "https"
        } else {
            "http"
        };
        let source = match cfg.peers[0].strip_prefix("dns:") {
            Some(target) => {
                let (name, port) = target.rsplit_once(':').expect("validated");
                Source::Dns {
                    name: name.to_owned(),
                    port: port.parse().expect("validated"),
                    scheme,
                }
            }
            None => Source::Static(cfg.peers.iter().filter_map(|p| normalise(p)).collect()),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(config.timeouts.read)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(64)
            .user_agent(concat!("pullthrough-peer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        let cluster = Cluster {
            inner: Arc::new(Inner {
                members: Members::new(cfg.down_for.as_millis() as u64),
                source,
                secret,
                id: format!("{:032x}", rand::random::<u128>()),
                client,
                timeout: cfg.timeout,
                probe_interval: cfg.probe_interval,
                refresh_interval: cfg.refresh_interval,
                scheme,
                port: config.listen.port(),
                advertise: cfg.advertise.as_deref().and_then(normalise),
                metrics: metrics.clone(),
            }),
        };
        if let Source::Static(urls) = &cluster.inner.source {
            cluster.inner.members.set(urls.clone());
        }
        if let Some(url) = &cluster.inner.advertise {
            cluster.inner.members.advertise(url.clone());
        }
        Ok(Some(cluster))
    }

    /// The replica that fetches `key` for the fleet, when it is not this one.
    pub fn owner(&self, key: OwnerKey<'_>) -> Option<Peer> {
        match self.inner.members.winner(&key.hashed()) {
            Winner::Me => None,
            Winner::Peer(url) => Some(Peer { url }),
        }
    }

    /// Whether a request's `Authorization` carries the cluster secret
    /// (`Bearer <secret>`), compared in constant time.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = authorization.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        token.ct_eq(self.inner.secret.expose().as_bytes()).into()
    }

    /// This process's identity, as its probe answer carries it.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Every member and its state.
    pub fn members(&self) -> Vec<MemberView> {
        self.inner.members.view()
    }

    /// Starts looking up, probing and counting the members for as long as
    /// the process runs; the first round runs at once.
    pub fn spawn(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            if this.inner.advertise.is_none()
                && let Some(url) = discover_advertise(this.inner.scheme, this.inner.port).await
            {
                tracing::info!(
                    url,
                    "cluster: advertising this replica as found in the environment"
                );
                this.inner.members.advertise(url);
            }
            let mut refreshed: Option<tokio::time::Instant> = None;
            loop {
                if refreshed.is_none_or(|at| at.elapsed() >= this.inner.refresh_interval) {
                    this.refresh().await;
                    refreshed = Some(tokio::time::Instant::now());
                }
                this.probe_all().await;
                this.count_members();
                tokio::time::sleep(this.inner.probe_interval).await;
            }
        });
    }

    /// Looks the members up again, for a `dns:` list.
    async fn refresh(&self) {
        let Source::Dns { name, port, scheme } = &self.inner.source else {
            return;
        };
        match tokio::net::lookup_host((name.as_str(), *port)).await {
            Ok(addrs) => {
                let urls = addrs
                    .map(|a| match a {
                        std::net::SocketAddr::V4(v4) => format!("{scheme}://{}:{port}", v4.ip()),
                        std::net::SocketAddr::V6(v6) => format!("{scheme}://[{}]:{port}", v6.ip()),
                    })
                    .collect();
                self.inner.members.set(urls);
            }
            // Keep the last list: a DNS hiccup is not the fleet vanishing.
            Err(e) => tracing::warn!(name, error = %e, "cluster: cannot look up the peers"),
        }
    }

    async fn probe_all(&self) {
        let probes = self
            .inner
            .members
            .to_probe()
            .into_iter()
            .map(|url| async move {
                let answer = self.hello(&url).await.map(|id| id == self.inner.id);
                self.inner.members.probed(&url, answer);
            });
        futures_util::future::join_all(probes).await;
    }

    /// For `doctor`: every member now (a `dns:` name looked up afresh),
    /// each with its answer to a probe (the identity of the process that
    /// answered, or why none did), and this replica's own URL when the
    /// configuration or the platform tells it.
    pub async fn survey(&self) -> (Vec<(String, Result<String, String>)>, Option<String>) {
        self.refresh().await;
        let advertised = match &self.inner.advertise {
            Some(url) => Some(url.clone()),
            None => discover_advertise(self.inner.scheme, self.inner.port).await,
        };
        let urls: Vec<String> = self.members().into_iter().map(|m| m.url).collect();
        let answers = urls.iter().map(|url| self.hello(url));
        let answers = futures_util::future::join_all(answers).await;
        (urls.into_iter().zip(answers).collect(), advertised)
    }

    fn count_members(&self) {
        let view = self.members();
        let gauge = &self.inner.metrics.cluster.members;
        for state in ["self", "up", "down", "unknown"] {
            let n = view.iter().filter(|m| m.state == state).count();
            gauge.with_label_values(&[state]).set(n as i64);
        }
    }

    /// Notes that `peer` failed a request: it is passed over for a while.
    fn failed(&self, peer: &Peer, error: &str) {
        tracing::warn!(peer = %peer.url, error, "cluster: peer failed; fetching locally and passing it over for a while");
        self.inner.members.mark_down(&peer.url, error.to_owned());
    }
}

/// This replica's URL from what the platform tells: `POD_IP` (Kubernetes'
/// downward API) or the ECS task metadata endpoint (v4).
async fn discover_advertise(scheme: &str, port: u16) -> Option<String> {
    let address = match std::env::var("POD_IP") {
        Ok(ip) if !ip.is_empty() => ip,
        _ => ecs_task_address().await?,
    };
    let host = match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => address,
    };
    normalise(&format!("{scheme}://{host}:{port}"))
}

/// The container's first IPv4 address from `ECS_CONTAINER_METADATA_URI_V4`.
async fn ecs_task_address() -> Option<String> {
    let uri = std::env::var("ECS_CONTAINER_METADATA_URI_V4").ok()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .ok()?;
    let json: serde_json::Value = client.get(uri).send().await.ok()?.json().await.ok()?;
    json["Networks"][0]["IPv4Addresses"][0]
        .as_str()
        .map(str::to_owned)
}
