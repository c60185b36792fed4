//! Stores that bend S3's rules, as some gateways do: an HTTP proxy in front
//! of an S3 API that forwards every request untouched (Host header
//! included, so SigV4 signatures still verify) except those its [`Quirk`]
//! bends:
//! - [`Quirk::IgnoresRange`] answers every ranged GET with the whole object
//!   (200, no `Content-Range`);
//! - [`Quirk::IgnoresConditionalWrites`] performs every `If-None-Match: *`
//!   write (a PUT, or the completion of a multipart upload) whatever is
//!   there already, as Garage does: the object is overwritten.
//!
//! SigV4 signs these headers, so the proxy cannot just strip them: it does
//! the request itself, with its own client and credentials.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::Response;
use tokio::task::JoinHandle;

use super::s3::S3Server;

/// Which rule the store bends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quirk {
    IgnoresRange,
    IgnoresConditionalWrites,
}

/// A running proxy; stops when dropped.
pub struct QuirkyS3 {
    /// `http://127.0.0.1:<port>`, to use as the S3 endpoint.
    pub endpoint: String,
    bent: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
    task: JoinHandle<()>,
}

/// What the store is doing: requests in flight, and when the last began.
#[derive(Default)]
struct Traffic {
    in_flight: AtomicUsize,
    last_start: std::sync::Mutex<Option<Instant>>,
}

/// Counts one request in flight while it lives.
struct InFlight(Arc<Traffic>);

impl InFlight {
    fn start(traffic: &Arc<Traffic>) -> InFlight {
        traffic.in_flight.fetch_add(1, Ordering::SeqCst);
        *traffic.last_start.lock().unwrap() = Some(Instant::now());
        InFlight(traffic.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    s3: aws_sdk_s3::Client,
    quirk: Quirk,
    bent: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
}

impl QuirkyS3 {
    /// Starts the proxy in front of `store` on a free loopback port.
    pub async fn start(store: &S3Server, quirk: Quirk) -> QuirkyS3 {
        let bent = Arc::new(AtomicUsize::new(0));
        let traffic = Arc::new(Traffic::default());
        let shared = Shared {
            upstream: store.endpoint.clone(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            s3: store.client(),
            quirk,
            bent: bent.clone(),
            traffic: traffic.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        QuirkyS3 {
            endpoint,
            bent,
            traffic,
            task,
        }
    }

    /// Requests bent so far: ranged GETs answered whole, or conditional
    /// writes done without their condition.
    pub fn bent(&self) -> usize {
        self.bent.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight and none has begun for `quiet`:
    /// every write the clients started has landed (at most 30 s).
    pub async fn settled(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let idle = self.traffic.in_flight.load(Ordering::SeqCst) == 0;
            let last = *self.traffic.last_start.lock().unwrap();
            if idle && last.is_none_or(|at| at.elapsed() >= quiet) {
                return;
            }
            assert!(Instant::now() < deadline, "the store never went quiet");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for QuirkyS3 {
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
    let _in_flight = InFlight::start(&shared.traffic);
    let headers = request.headers();
    match shared.quirk {
        Quirk::IgnoresRange
            if request.method() == Method::GET && headers.contains_key(header::RANGE) =>
        {
            shared.bent.fetch_add(1, Ordering::SeqCst);
            return whole_object(&shared, request.uri().path()).await;
        }
        Quirk::IgnoresConditionalWrites if headers.contains_key(header::IF_NONE_MATCH) => {
            return unconditional_write(&shared, request).await;
        }
        _ => {}
    }
    let answer = match forward(&shared.http, &shared.upstream, request).await {
        Ok(answer) => answer,
        Err(refused) => return refused,
    };
    let response = relay_head(&answer);
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}

/// Sends `request` on to the S3 API at `upstream` as it came (its
/// end-to-end headers, so its signature still verifies); the answer, or a
/// 502 when the API cannot be reached.
pub(super) async fn forward(
    http: &reqwest::Client,
    upstream: &str,
    request: Request,
) -> Result<reqwest::Response, Response> {
    let url = format!(
        "{upstream}{}",
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = http.request(request.method().clone(), url);
    for (name, value) in request.headers() {
        if !hop_by_hop(name) {
            forward = forward.header(name, value);
        }
    }
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    forward
        .body(body)
        .send()
        .await
        .map_err(|e| status(StatusCode::BAD_GATEWAY, e.to_string()))
}

/// The status and end-to-end headers of `answer`, for a response that
/// relays it.
pub(super) fn relay_head(answer: &reqwest::Response) -> axum::http::response::Builder {
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    response
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

/// A conditional PUT or multipart completion, done without its condition,
/// overwriting whatever is there.
async fn unconditional_write(shared: &Shared, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let Some((bucket, key)) = path.trim_start_matches('/').split_once('/') else {
        return status(StatusCode::BAD_REQUEST, format!("no bucket in {path}"));
    };
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap();
    let upload = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("uploadId="))
        .map(str::to_owned);
    let written = match upload {
        None => {
            let mut put = shared
                .s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into());
            if let Some(ct) = content_type.and_then(|v| v.to_str().ok().map(str::to_owned)) {
                put = put.content_type(ct);
            }
            put.send()
                .await
                .map(|_| String::new())
                .map_err(|e| format!("{e:?}"))
        }
        Some(upload) => {
            let parts = completed_parts(&String::from_utf8_lossy(&body));
            let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build();
            let complete = shared
                .s3
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key);
            let sent = complete
                .upload_id(upload)
                .multipart_upload(done)
                .send()
                .await;
            sent.map(|_| {
                format!(
                    "<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key></CompleteMultipartUploadResult>"
                )
            })
            .map_err(|e| format!("{e:?}"))
        }
    };
    match written {
        Ok(body) => {
            shared.bent.fetch_add(1, Ordering::SeqCst);
            Response::new(Body::from(body))
        }
        Err(e) => status(StatusCode::BAD_GATEWAY, e),
    }
}

/// The parts of a `CompleteMultipartUpload` body.
fn completed_parts(xml: &str) -> Vec<aws_sdk_s3::types::CompletedPart> {
    let field = |part: &str, name: &str| {
        let open = format!("<{name}>");
        let start = part.find(&open)? + open.len();
        let end = part[start..].find(&format!("</{name}>"))? + start;
        Some(part[start..end].to_owned())
    };
    xml.split("<Part>")
        .skip(1)
        .filter_map(|part| {
            let number = field(part, "PartNumber")?.parse().ok()?;
            let etag = field(part, "ETag")?.replace("&quot;", "\"");
            Some(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .e_tag(etag)
                    .build(),
            )
        })
        .collect()
}

fn status(code: StatusCode, message: String) -> Response {
    Response::builder()
        .status(code)
        .body(Body::from(message))
        .unwrap()
}
