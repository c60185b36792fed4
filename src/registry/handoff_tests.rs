//! The single-flight's hand-off, proved at the exact point: a request that
//! missed the cache is parked (a hook, not a sleep) until another request's
//! fetch has stored the object and ended; released, it must not fetch again.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode, Uri};
use tokio::sync::oneshot;

use super::{BlobBody, BlobWant, Caller, ClientId, Registry};
use crate::cache::{DiskTier, MemoryTier, ObjectKey, TieredCache};
use crate::config::{Config, UpstreamConfig};
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::reference::{Reference, RepoName};
use crate::upstream::Upstreams;

/// Parks the first request that reaches the hand-off point once armed.
#[derive(Default)]
pub(super) struct Hook {
    armed: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

impl Hook {
    /// Parks here, when armed, until released.
    pub(super) async fn pause(&self, _key: &ObjectKey) {
        let armed = self.armed.lock().unwrap().take();
        if let Some((parked, release)) = armed {
            let _ = parked.send(());
            let _ = release.await;
        }
    }

    /// Arms the hook: the first receiver fires when a request is parked,
    /// the sender releases it.
    fn arm(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (parked_tx, parked) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.armed.lock().unwrap() = Some((parked_tx, release_rx));
        (parked, release)
    }
}

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A minimal upstream on loopback that serves one blob and one manifest
/// and counts the GETs of each.
struct Upstream {
    url: String,
    blob: Bytes,
    blob_gets: Arc<AtomicUsize>,
    manifest_gets: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Served {
    blob: Bytes,
    blob_gets: Arc<AtomicUsize>,
    manifest_gets: Arc<AtomicUsize>,
}

async fn serve(State(served): State<Served>, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path == "/v2/" {
        return StatusCode::OK.into_response();
    }
    if path.contains("/blobs/") {
        if method == Method::GET {
            served.blob_gets.fetch_add(1, Ordering::SeqCst);
        }
        return served.blob.clone().into_response();
    }
    if path.contains("/manifests/") {
        if method == Method::GET {
            served.manifest_gets.fetch_add(1, Ordering::SeqCst);
        }
        let digest = Digest::sha256_of(MANIFEST).to_string();
        let headers = [
            (http::header::CONTENT_TYPE, MANIFEST_TYPE.to_owned()),
            (
                http::HeaderName::from_static("docker-content-digest"),
                digest,
            ),
        ];
        return (headers, Bytes::from_static(MANIFEST)).into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

async fn start_upstream() -> Upstream {
    let served = Served {
        blob: Bytes::from(vec![7u8; 3 * 1024 * 1024 + 5]),
        blob_gets: Arc::default(),
        manifest_gets: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(serve)
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream {
        url,
        blob: served.blob,
        blob_gets: served.blob_gets,
        manifest_gets: served.manifest_gets,
    }
}

fn registry(upstream: &Upstream, dir: &std::path::Path) -> Registry {
    let mut config = Config {
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    config
        .upstreams
        .insert("docker.io".into(), UpstreamConfig::new(&upstream.url));
    let metrics = Metrics::new();
    let upstreams = Upstreams::from_config(&config, &metrics).unwrap();
    // No memory tier: the late request must find the object on disk.
    let cache = TieredCache::new(
        MemoryTier::new(0, 0),
        DiskTier::open(&dir.join("cache")).unwrap(),
        None,
    );
    Registry::new(upstreams, cache, None, &config, metrics).unwrap()
}

async fn body_of(reply: super::BlobReply) -> Vec<u8> {
    let size = reply.size.unwrap();
    match reply.body {
        BlobBody::Download(flight) => {
            let mut stream = flight.stream(0, u64::MAX);
            let mut bytes = Vec::new();
            while let Some(piece) = stream.next().await {
                bytes.extend_from_slice(&piece.unwrap());
            }
            bytes
        }
        BlobBody::Cached(content) => content.slice(0, size, size).unwrap().to_vec(),
        BlobBody::None => Vec::new(),
        BlobBody::Redirect(r) => panic!("no bucket here, yet a redirect to {}", r.url),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_request_parked_at_the_hand_off_never_fetches_twice() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(&upstream, dir.path());
    let repo = RepoName::parse("app").unwrap();
    let (target, _) = registry.route(None, &repo).unwrap();
    let digest = Digest::sha256_of(&upstream.blob);
    let (parked, release) = registry.inner.handoff.arm();

    // The late request misses the cache and parks before joining.
    let late = tokio::spawn({
        let (registry, target, repo, digest) = (
            registry.clone(),
            target.clone(),
            repo.clone(),
            digest.clone(),
        );
        async move {
            body_of(
                registry
                    .blob(&target, &repo, &digest, BlobWant::Body, &anyone())
                    .await
                    .unwrap(),
            )
            .await
        }
    });
    parked.await.unwrap();

    // Meanwhile another request fetches the blob, stores it, and its
    // flight ends.
    let first = registry
        .blob(&target, &repo, &digest, BlobWant::Body, &anyone())
        .await
        .unwrap();
    assert_eq!(body_of(first).await, upstream.blob);
    let key = ObjectKey::blob(digest.clone());
    while registry.inner.blob_flights.get(&key).is_some() {
        tokio::task::yield_now().await;
    }
    assert_eq!(upstream.blob_gets.load(Ordering::SeqCst), 1);

    release.send(()).unwrap();
    assert_eq!(late.await.unwrap(), upstream.blob);
    assert_eq!(
        upstream.blob_gets.load(Ordering::SeqCst),
        1,
        "the late request fetched the blob again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_request_parked_at_the_hand_off_spends_no_second_pull() {
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(&upstream, dir.path());
    let repo = RepoName::parse("app").unwrap();
    let (target, _) = registry.route(None, &repo).unwrap();
    let reference = Reference::Digest(Digest::sha256_of(MANIFEST));
    let accept = super::AcceptSet::default();
    let (parked, release) = registry.inner.handoff.arm();

    let late = tokio::spawn({
        let (registry, target, repo, reference, accept) = (
            registry.clone(),
            target.clone(),
            repo.clone(),
            reference.clone(),
            accept,
        );
        async move {
            registry
                .manifest(&target, &repo, &reference, &accept, true, &anyone())
                .await
                .unwrap()
        }
    });
    parked.await.unwrap();

    let first = registry
        .manifest(&target, &repo, &reference, &accept, true, &anyone())
        .await
        .unwrap();
    assert_eq!(first.body.as_deref(), Some(MANIFEST));
    let key = ObjectKey::manifest(Digest::sha256_of(MANIFEST));
    while registry.inner.manifest_fetches.get(&key).is_some() {
        tokio::task::yield_now().await;
    }

    release.send(()).unwrap();
    let late = late.await.unwrap();
    assert_eq!(late.body.as_deref(), Some(MANIFEST));
    assert_eq!(late.media_type, MANIFEST_TYPE);
    assert_eq!(
        upstream.manifest_gets.load(Ordering::SeqCst),
        1,
        "the late request spent a second pull"
    );
}

/// A client's own request, from no address in particular.
fn anyone() -> Caller {
    Caller::client(ClientId::Unknown)
}
