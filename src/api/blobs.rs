//! The blob handler: whole or one range, from the cache or a download in
//! progress, or a redirect to the bucket that holds it.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::range::{self, ByteRange};
use super::{ApiError, AppState, resolve};
use crate::cache::Redirect;
use crate::digest::Digest;
use crate::metrics::BlobCollectors;
use crate::registry::{BlobBody, BlobReply, BlobWant, Caller};

/// `GET|HEAD /v2/<name>/blobs/<digest>`.
pub async fn serve(
    state: &AppState,
    query: Option<&str>,
    name: &str,
    digest: &str,
    headers: &HeaderMap,
    head: bool,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let (upstream, repo) = resolve(state, query, name)?;
    let digest: Digest = digest
        .parse()
        .map_err(|e| ApiError::blob_reference(crate::reference::ReferenceError::from(e)))?;
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let want = if head {
        BlobWant::Head
    } else if state
        .redirects
        .allow(user_agent, upstream.name(), repo.as_str())
    {
        BlobWant::BodyOrRedirect
    } else {
        BlobWant::Body
    };
    let reply = state
        .registry
        .blob(&upstream, &repo, &digest, want, caller)
        .await?;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    Ok(blob_response(
        reply,
        &digest,
        range_header,
        &state.metrics.blobs,
    ))
}

fn blob_response(
    reply: BlobReply,
    digest: &Digest,
    range_header: Option<&str>,
    counted: &BlobCollectors,
) -> Response {
    let range = match reply.size {
        Some(size) => range::parse(range_header, size),
        // A download of unknown length can only be sent whole.
        None => ByteRange::Full,
    };
    let (status, start, end) = match (range, reply.size) {
        (ByteRange::Unsatisfiable, Some(size)) => return unsatisfiable(size, reply),
        (ByteRange::Partial { start, end }, _) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        (_, size) => (StatusCode::OK, 0, size.unwrap_or(u64::MAX)),
    };
    if let BlobBody::Redirect(redirect) = reply.body {
        counted.redirected.inc();
        counted.redirected_bytes.inc_by(end - start);
        counted.served_by_redirect.inc_by(end - start);
        return redirected(&redirect, digest, reply.outcome);
    }
    if !matches!(reply.body, BlobBody::None) {
        counted.streamed.inc();
        if reply.size.is_some() {
            counted.streamed_bytes.inc_by(end - start);
        }
    }
    let body = match reply.body {
        BlobBody::None | BlobBody::Redirect(_) => Body::empty(),
        BlobBody::Cached(content) => match content.slice(start, end, reply.size.unwrap_or(0)) {
            Ok(bytes) => Body::from(bytes),
            Err(e) => {
                let message = format!("cannot read the cached blob: {e}");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
                    .into_response();
            }
        },
        BlobBody::Download(seated) => Body::from_stream(seated.stream(start, end)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(size) = reply.size {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if status == StatusCode::PARTIAL_CONTENT {
            let value = format!("bytes {start}-{}/{size}", end - 1);
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("ascii"),
            );
        }
    }
    super::insert_digest_headers(headers, digest.as_str());
    response.extensions_mut().insert(reply.outcome);
    response
}

/// Marks a redirect to the mirror's own bucket (not a registry's to its
/// CDN), for `pullthrough warm`.
const BUCKET_REDIRECT: &str = "pullthrough-redirect";

/// Whether a redirect answer to a GET of blob `digest` sends the client to
/// the mirror's bucket, which then holds the blob.
pub fn is_bucket_redirect(headers: &HeaderMap, digest: &str) -> bool {
    headers
        .get(BUCKET_REDIRECT)
        .is_some_and(|v| v.as_bytes() == b"bucket")
        && headers
            .get("docker-content-digest")
            .is_some_and(|d| d.as_bytes() == digest.as_bytes())
}

/// A `307` to the bucket's presigned URL: the client sends its request,
/// `Range` included, there; the URL expires, so the answer is not cached.
fn redirected(redirect: &Redirect, digest: &Digest, outcome: crate::registry::Outcome) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    let headers = response.headers_mut();
    match HeaderValue::from_str(&redirect.url) {
        Ok(location) => headers.insert(header::LOCATION, location),
        Err(_) => {
            let message = "the bucket's presigned URL is not a valid header value".to_owned();
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
                .into_response();
        }
    };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(BUCKET_REDIRECT, HeaderValue::from_static("bucket"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        headers.insert("docker-content-digest", v);
    }
    response.extensions_mut().insert(outcome);
    response
}

fn unsatisfiable(size: u64, reply: BlobReply) -> Response {
    let mut response = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UNKNOWN",
        format!("requested range lies outside the blob's {size} bytes"),
    )
    .into_response_with_outcome(reply.outcome);
    let value = HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii");
    response.headers_mut().insert(header::CONTENT_RANGE, value);
    response
}
