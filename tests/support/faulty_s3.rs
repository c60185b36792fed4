//! A store on a bad day: an HTTP proxy in front of an S3 API (s3s-fs) that
//! forwards every request untouched, as [`super::quirky_s3`] does (so SigV4
//! signatures still verify), while its [`S3Fault`] is `None`, and otherwise
//! fails the way S3 does under load or across a bad network:
//! - [`S3Fault::Slow`]: every request waits before it is forwarded;
//! - [`S3Fault::Failing`]: every request is answered `503 SlowDown`, as S3
//!   throttles, and never reaches the store;
//! - [`S3Fault::ResettingBodies`]: every answer with a body sends its
//!   headers (full `Content-Length`) and half its body, then the
//!   connection is dropped; every write is dropped before it reaches the
//!   store, its headers sent and no body.
//!
//! The fault can be changed at any time, and applies to requests that
//! arrive after the change.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use tokio::task::JoinHandle;

use super::quirky_s3::{forward, relay_head};
use super::s3::S3Server;

/// How the store fails, for the requests that arrive while it is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Fault {
    None,
    Slow(Duration),
    Failing,
    ResettingBodies,
}

/// A running proxy; stops when dropped.
pub struct FaultyS3 {
    /// `http://127.0.0.1:<port>`, to use as the S3 endpoint.
    pub endpoint: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    fault: Mutex<S3Fault>,
    requests: AtomicU64,
    faulted: AtomicU64,
}

impl FaultyS3 {
    /// Starts the proxy in front of `store` on a free loopback port,
    /// healthy.
    pub async fn start(store: &S3Server) -> FaultyS3 {
        let shared = Arc::new(Shared {
            upstream: store.endpoint.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            fault: Mutex::new(S3Fault::None),
            requests: AtomicU64::new(0),
            faulted: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FaultyS3 {
            endpoint,
            shared,
            task,
        }
    }

    /// Fails from now on as `fault` says (`S3Fault::None`: healthy again).
    pub fn set(&self, fault: S3Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Requests seen, and how many of them met a fault.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.requests.load(Ordering::SeqCst),
            self.shared.faulted.load(Ordering::SeqCst),
        )
    }
}

impl Drop for FaultyS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let fault = *shared.fault.lock().unwrap();
    if fault != S3Fault::None {
        shared.faulted.fetch_add(1, Ordering::SeqCst);
    }
    let reads = [Method::GET, Method::HEAD].contains(request.method());
    match fault {
        S3Fault::None => {}
        S3Fault::Slow(wait) => tokio::time::sleep(wait).await,
        S3Fault::Failing => return slow_down(),
        S3Fault::ResettingBodies if !reads => {
            let head = Response::builder().header(header::CONTENT_LENGTH, 1);
            return cut(head, Bytes::new());
        }
        S3Fault::ResettingBodies => {}
    }
    let answer = match forward(&shared.http, &shared.upstream, request).await {
        Ok(answer) => answer,
        Err(refused) => return refused,
    };
    let head = relay_head(&answer);
    let bytes = answer.bytes().await.unwrap_or_default();
    match fault {
        S3Fault::ResettingBodies if !bytes.is_empty() => cut(head, bytes.slice(..bytes.len() / 2)),
        _ => head.body(Body::from(bytes)).unwrap(),
    }
}

/// S3's answer when it throttles.
fn slow_down() -> Response {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header(header::CONTENT_TYPE, "application/xml")
        .body(Body::from(xml))
        .unwrap()
}

/// `head`, which announces more than `sent`, then `sent`, then a dropped
/// connection.
fn cut(head: axum::http::response::Builder, sent: Bytes) -> Response {
    let reset = stream::once(async {
        Err::<Bytes, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by the faulty store",
        ))
    });
    let body = stream::once(async { Ok(sent) }).chain(reset);
    head.body(Body::from_stream(body)).unwrap()
}
