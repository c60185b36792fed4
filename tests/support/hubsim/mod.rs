//! A Docker Hub simulator for testing the proxy's upstream client over real
//! loopback sockets.
//!
//! Docker Hub is not just "a registry": a pull involves three services with
//! behaviours a pull-through cache has to get right, and this module plays
//! all three on ephemeral `127.0.0.1` ports:
//!
//! * **Registry** ([`HubSim::registry_url`], like `registry-1.docker.io`):
//!   every request needs a bearer token; without one it answers 401 with a
//!   `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge.
//!   Manifests are content-negotiated on `Accept` (a client that does not
//!   accept a tag's manifest list gets its linux/amd64 manifest, as from
//!   distribution) and metered by a per-client
//!   pull **rate limit** (`ratelimit-*` headers, 429 `TOOMANYREQUESTS` once
//!   spent). Blob requests never carry bytes: they **307-redirect to the CDN**.
//! * **Token realm** ([`HubSim::realm_url`], like `auth.docker.io`): issues
//!   short-lived opaque tokens for `repository:<name>:pull` scopes,
//!   anonymously or for HTTP Basic users (who get their own rate-limit bucket).
//! * **CDN** ([`HubSim::cdn_url`]): serves blob bytes for signed URLs and,
//!   like real signed-URL storage, **rejects any request that still carries
//!   an `Authorization` header** — the classic bug of forwarding the registry
//!   token across the redirect.
//!
//! With [`SimOptions::front_prefix`] a fourth listener plays
//! **registry.k8s.io** ([`HubSim::front_url`]): no auth of its own, every
//! non-blob `/v2/` request 307-redirected to the registry above under a
//! repository prefix (so the registry's challenge scope names
//! `<prefix>/<name>`, not the name the client asked for), and blobs
//! redirected straight to the CDN.
//!
//! On top of that, tests can arm **faults** ([`HubSim::set_fault`]): error
//! statuses, slow responses, connections reset mid-body, truncated or
//! corrupted bodies that look fine at the HTTP level. [`HubSim::counters`]
//! and [`HubSim::requests`] let tests assert exactly how much upstream
//! traffic the proxy caused (e.g. "a cache hit makes zero upstream requests").
//!
//! Dropping (or [`HubSim::stop`]ping) the simulator closes its listeners and
//! kills open keep-alive connections, so tests can prove the proxy serves
//! from its own storage while upstream is gone.

mod cdn;
mod front;
pub mod profile;
mod realm;
mod referrers;
mod registry;
mod server;
mod state;
mod util;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::profile::SimAuth;
use self::server::SimListener;
use self::state::{Shared, StoredManifest};

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image config blob.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzipped layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A running Docker Hub simulator (registry + token realm + CDN).
///
/// Start one per test with [`HubSim::start`]; point the proxy's upstream at
/// [`registry_url`](Self::registry_url). It follows the 401 challenge to
/// [`realm_url`](Self::realm_url) and the blob redirects to
/// [`cdn_url`](Self::cdn_url) on its own. Dropping it stops all listeners.
pub struct HubSim {
    /// Base URL of the registry, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub registry_url: String,
    /// Base URL of the token realm; tokens come from `<realm_url>/token`.
    pub realm_url: String,
    /// Base URL of the CDN that blob redirects point at.
    pub cdn_url: String,
    /// Base URL of the registry.k8s.io-style front, when
    /// [`SimOptions::front_prefix`] asked for one.
    pub front_url: Option<String>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Knobs for [`HubSim::start_with`].
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Manifest GETs allowed per client key; `None` = 100 (Docker Hub's
    /// anonymous limit). The window resets only when a test calls
    /// [`HubSim::new_rate_window`].
    pub rate_limit: Option<u32>,
    /// `Retry-After` seconds sent with a rate-limit 429; `None` sends none.
    pub retry_after: Option<u32>,
    /// Lifetime of issued tokens; `None` = 300 s. `expires_in` is reported
    /// rounded up to whole seconds.
    pub token_ttl: Option<Duration>,
    /// `(user, password)` pairs the realm accepts with HTTP Basic. When empty,
    /// any Basic credentials are accepted and the token belongs to that user.
    pub users: Vec<(String, String)>,
    /// Omit the `ratelimit-*` / `docker-ratelimit-source` headers (as Hub
    /// does for unlimited accounts). The limit is still enforced.
    pub no_rate_limit_headers: bool,
    /// Also start a registry.k8s.io-style front ([`HubSim::front_url`])
    /// that redirects every request to the registry under this repository
    /// prefix (see the `front` module).
    pub front_prefix: Option<String>,
    /// Where tokens come from, or no auth at all (see [`Profile`]).
    pub auth: SimAuth,
    /// The status of blob redirects; `None` = 307.
    pub blob_redirect: Option<u16>,
    /// Serve the OCI 1.1 referrers API; without it the endpoint is 404,
    /// as on registries that predate it.
    pub referrers_api: bool,
    /// Page referrers answers this many descriptors at a time, with a
    /// `Link` to the next page (`?next=<offset>`); `None` = one page.
    pub referrers_page: Option<usize>,
    /// Bandwidth of each CDN GET body in bytes per second; `None` (or 0) =
    /// as fast as loopback goes. A slow upstream holds a download in flight
    /// long enough for a whole fleet of clients to join it.
    pub cdn_bytes_per_sec: Option<u64>,
}

/// An image stored by [`HubSim::push_image`].
#[derive(Clone, Debug)]
pub struct SimImage {
    pub repo: String,
    pub tag: String,
    /// Digest of `manifest`.
    pub manifest_digest: String,
    /// The exact manifest bytes served (Docker schema 2).
    pub manifest: Bytes,
    pub config_digest: String,
    /// In the order they were given.
    pub layer_digests: Vec<String>,
}

/// A snapshot of request counts, taken with [`HubSim::counters`].
///
/// Every request is counted as it *arrives*, before auth, validation or
/// faults: a manifest GET answered 401 (or 404, 429, faulted) still counts in
/// `manifest_gets`. To know how many pulls were actually *charged* against
/// the rate limit, use [`HubSim::rate_limit_remaining`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Registry `GET /v2/<name>/manifests/<ref>`.
    pub manifest_gets: u64,
    /// Registry `HEAD /v2/<name>/manifests/<ref>`.
    pub manifest_heads: u64,
    /// Registry blob GETs (the ones answered with a 307 to the CDN).
    pub blob_gets: u64,
    /// Registry blob HEADs.
    pub blob_heads: u64,
    /// CDN GETs, including refused ones.
    pub cdn_gets: u64,
    /// Body bytes the CDN handed to its connections (ranges and cut-off
    /// bodies count what was sent, not what was announced).
    pub cdn_bytes: u64,
    /// CDN requests (GET or HEAD) refused because they carried `Authorization`.
    pub cdn_refused_with_auth: u64,
    /// Requests to the realm's `/token`.
    pub tokens: u64,
    /// Registry `tags/list` requests.
    pub tags_lists: u64,
    /// 401 answers: registry challenges and realm credential rejections.
    pub unauthorized: u64,
    /// Every request on every listener.
    pub total: u64,
}

/// Which upstream requests a [`Fault`] hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// Registry manifest GET/HEAD. HEADs take every fault but the body
    /// faults (they have no body).
    Manifests,
    /// Blobs: status faults and `Slow` hit the registry blob endpoint (the
    /// 307); body faults (`ResetMidBody`, `ResetAtPercent`, `TruncatedBody`,
    /// `WrongBytes`) hit the CDN's GET response body.
    Blobs,
    /// Both of the above.
    All,
}

/// A failure to inject, armed with [`HubSim::set_fault`].
///
/// Faults apply after authentication succeeded (a 401 challenge never
/// consumes one). Each request that a fault is applied to consumes one of
/// its `times`; requests it does not apply to (e.g. a body fault and a
/// HEAD) leave it armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 with an OCI error body (`UNKNOWN`).
    InternalError,
    /// 503 with an OCI error body (`UNAVAILABLE`).
    ServiceUnavailable,
    /// 429 `TOOMANYREQUESTS`, whatever the rate-limit counter says.
    TooManyRequests,
    /// Headers with the full `Content-Length`, the first half of the body,
    /// a short pause, then the connection is dropped.
    ResetMidBody,
    /// As `ResetMidBody`, but the connection drops after this percentage
    /// of the body (of the range asked for, on a ranged GET).
    ResetAtPercent(u8),
    /// A well-formed 200 whose body is the first half of the bytes, with
    /// `Content-Length` matching that shorter length; only a digest or
    /// expected-size check catches it.
    TruncatedBody,
    /// Full length, but the middle byte is inverted; `Docker-Content-Digest`
    /// still claims the real digest.
    WrongBytes,
    /// Wait this long before sending the response headers, then answer normally.
    Slow(Duration),
    /// A 307 with an HTML body and no `Location`: a redirect no client can
    /// follow, whose body is not the content.
    BareRedirect,
    /// A 307 whose relative `Location` names the request's own URL, forever.
    RedirectLoop,
}

impl Fault {
    /// Faults that corrupt a response body (moot for HEAD and redirects).
    pub fn is_body_fault(self) -> bool {
        matches!(
            self,
            Fault::ResetMidBody
                | Fault::ResetAtPercent(_)
                | Fault::TruncatedBody
                | Fault::WrongBytes
        )
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    size: usize,
    digest: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema2Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

impl HubSim {
    /// Starts a simulator with default [`SimOptions`].
    pub async fn start() -> HubSim {
        Self::start_with(SimOptions::default()).await
    }

    /// Starts the three listeners on `127.0.0.1:0` on the current runtime.
    pub async fn start_with(opts: SimOptions) -> HubSim {
        let shutdown = CancellationToken::new();
        let (registry_l, registry_url) = SimListener::bind(&shutdown).await;
        let (realm_l, realm_url) = SimListener::bind(&shutdown).await;
        let (cdn_l, cdn_url) = SimListener::bind(&shutdown).await;
        let shared = Arc::new(Shared::new(
            registry_url.clone(),
            realm_url.clone(),
            cdn_url.clone(),
            &opts,
        ));
        let mut tasks = vec![
            server::spawn(
                registry_l,
                Router::new()
                    .fallback(registry::handle)
                    .with_state(shared.clone()),
            ),
            server::spawn(
                realm_l,
                Router::new()
                    .fallback(realm::handle)
                    .with_state(shared.clone()),
            ),
            server::spawn(
                cdn_l,
                Router::new()
                    .fallback(cdn::handle)
                    .with_state(shared.clone()),
            ),
        ];
        let mut front_url = None;
        if opts.front_prefix.is_some() {
            let (front_l, url) = SimListener::bind(&shutdown).await;
            let router = Router::new()
                .fallback(front::handle)
                .with_state(shared.clone());
            tasks.push(server::spawn(front_l, router));
            front_url = Some(url);
        }
        HubSim {
            registry_url,
            realm_url,
            cdn_url,
            front_url,
            shared,
            shutdown,
            tasks,
        }
    }

    /// Stores a blob and returns its digest. Blobs are global: any repository
    /// may fetch any blob (real registries scope them; tests don't need to).
    pub fn put_blob(&self, bytes: Bytes) -> String {
        let digest = super::sha256_digest(&bytes);
        self.shared.put_blob(digest.clone(), bytes);
        digest
    }

    /// Stores a manifest in `repo` under its digest, points `tag` at it when
    /// given, and returns the digest. The bytes are served verbatim with
    /// `media_type` as `Content-Type` (use it for indexes, OCI manifests, or
    /// deliberately broken manifests).
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Bytes,
    ) -> String {
        let digest = super::sha256_digest(&bytes);
        let m = StoredManifest {
            media_type: media_type.to_owned(),
            bytes,
        };
        self.shared.put_manifest(repo, tag, &digest, m);
        digest
    }

    /// Builds and stores a complete image: each layer as a blob, a config blob
    /// and a Docker schema 2 manifest referencing them, tagged `tag`.
    ///
    /// Content-addressed and deterministic: the same layers give the same
    /// config and manifest digests whatever the repo or tag, so give a tag
    /// different layers to make it "move".
    pub fn push_image(&self, repo: &str, tag: &str, layers: &[Bytes]) -> SimImage {
        let layer_digests: Vec<String> = layers.iter().map(|l| self.put_blob(l.clone())).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": layer_digests},
        });
        let config = Bytes::from(config.to_string());
        let config_digest = self.put_blob(config.clone());
        let manifest = Schema2Manifest {
            schema_version: 2,
            media_type: DOCKER_MANIFEST_V2,
            config: Descriptor {
                media_type: DOCKER_CONFIG,
                size: config.len(),
                digest: &config_digest,
            },
            layers: layers
                .iter()
                .zip(&layer_digests)
                .map(|(l, d)| Descriptor {
                    media_type: DOCKER_LAYER,
                    size: l.len(),
                    digest: d,
                })
                .collect(),
        };
        let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("serialize manifest"));
        let manifest_digest =
            self.put_manifest(repo, Some(tag), DOCKER_MANIFEST_V2, manifest.clone());
        SimImage {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            manifest_digest,
            manifest,
            config_digest,
            layer_digests,
        }
    }

    /// The registry's name for `name` asked of the front: `<prefix>/<name>`.
    /// Push there what the front should serve as `name`.
    pub fn front_repo(&self, name: &str) -> String {
        let prefix = self.shared.front_prefix.as_deref();
        format!("{}/{name}", prefix.expect("started without a front_prefix"))
    }

    /// A signed CDN URL for `digest`, as a blob redirect gives one: what a
    /// client that fetches the blob from the CDN directly uses.
    pub fn signed_blob_url(&self, digest: &str) -> String {
        let sig = util::random_hex(16);
        self.shared.issue_sig(sig.clone(), digest.to_owned());
        format!("{}/blobs/{digest}?sig={sig}", self.cdn_url)
    }

    /// A snapshot of the request counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Zeroes the counters and clears the [`requests`](Self::requests) log,
    /// so a test can measure just the next step. Rate-limit buckets, tokens
    /// and faults are left alone.
    pub fn reset_counters(&self) {
        self.shared.reset_counters();
    }

    /// Arms `fault` for the next `times` requests it applies to (`None` =
    /// until [`clear_faults`](Self::clear_faults)). Faults queue up: each
    /// request takes the first armed fault that matches it, so arming
    /// `InternalError` ×1 then `Slow` ×1 gives one 500 followed by one slow
    /// answer. See [`FaultTarget`] for where each fault lands.
    pub fn set_fault(&self, target: FaultTarget, fault: Fault, times: Option<usize>) {
        self.shared.set_fault(target, fault, times);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Manifest GETs `key` may still make; `key` is what the registry sends
    /// in `docker-ratelimit-source` (the Basic user name, else the client IP,
    /// i.e. `"127.0.0.1"`). Only manifest GETs answered 200 are charged.
    pub fn rate_limit_remaining(&self, key: &str) -> u32 {
        self.shared.remaining(key)
    }

    /// Starts a new rate-limit window of `limit` manifest GETs per client
    /// key, forgetting what was spent.
    pub fn new_rate_window(&self, limit: u32) {
        self.shared.new_rate_window(limit);
    }

    /// Every request seen so far, in arrival order, as
    /// `"<listener> METHOD path[?query]"` with listener `registry`, `realm`,
    /// `cdn` or `front`, e.g. `"registry GET /v2/library/alpine/manifests/latest"`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests()
    }

    /// Stops all listeners and kills open connections, waiting until the
    /// accept loops are gone (so the ports refuse connections on return).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HubSim {
    /// Same as [`HubSim::stop`] without waiting: the listeners close as soon
    /// as the runtime gets to the aborted tasks.
    fn drop(&mut self) {
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}
