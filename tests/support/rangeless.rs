//! A store that ignores `Range`, as some S3 gateways do: an HTTP proxy in
//! front of an S3 API that answers every ranged GET with the whole object
//! (200, no `Content-Range`) and forwards everything else untouched, Host
//! header included, so SigV4 signatures still verify.
//!
//! SigV4 signs the `Range` header, so the proxy cannot just strip it: it
//! reads the whole object itself, with its own client and credentials.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::Response;
use tokio::task::JoinHandle;

use super::s3::S3Server;

/// A running proxy; stops when dropped.
pub struct RangelessS3 {
    /// `http://127.0.0.1:<port>`, to use as the S3 endpoint.
    pub endpoint: String,
    ranged: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    s3: aws_sdk_s3::Client,
    ranged: Arc<AtomicUsize>,
}

impl RangelessS3 {
    /// Starts the proxy in front of `store` on a free loopback port.
    pub async fn start(store: &S3Server) -> RangelessS3 {
        let ranged = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            upstream: store.endpoint.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            s3: store.client(),
            ranged: ranged.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RangelessS3 {
            endpoint,
            ranged,
            task,
        }
    }

    /// Ranged GETs answered with the whole object so far.
    pub fn ranged_gets(&self) -> usize {
        self.ranged.load(Ordering::SeqCst)
    }
}

impl Drop for RangelessS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Headers that belong to one connection, not to the exchange.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    if request.method() == Method::GET && request.headers().contains_key(header::RANGE) {
        shared.ranged.fetch_add(1, Ordering::SeqCst);
        return whole_object(&shared, request.uri().path()).await;
    }
    let url = format!(
        "{}{}",
        shared.upstream,
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = shared.http.request(request.method().clone(), url);
    for (name, value) in request.headers() {
        if !hop_by_hop(name) {
            forward = forward.header(name, value);
        }
    }
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    let answer = match forward.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => return status(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}

/// The whole object at path-style `path` (`/<bucket>/<key>`), as a 200.
async fn whole_object(shared: &Shared, path: &str) -> Response {
    let Some((bucket, key)) = path.trim_start_matches('/').split_once('/') else {
        return status(StatusCode::BAD_REQUEST, format!("no bucket in {path}"));
    };
    let out = match shared.s3.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => out,
        Err(e) => {
            let code = e.raw_response().map_or(502, |r| r.status().as_u16());
            return status(StatusCode::from_u16(code).unwrap(), format!("{e:?}"));
        }
    };
    let bytes = out.body.collect().await.unwrap().into_bytes();
    Response::builder()
        .header(header::CONTENT_LENGTH, bytes.len())
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(bytes))
        .unwrap()
}

fn status(code: StatusCode, message: String) -> Response {
    Response::builder()
        .status(code)
        .body(Body::from(message))
        .unwrap()
}
