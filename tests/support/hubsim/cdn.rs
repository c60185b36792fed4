//! The CDN listener (plays Docker Hub's signed-URL blob storage): serves blob
//! bytes for URLs the registry signed, and refuses requests that still carry
//! an `Authorization` header, exactly like S3/CloudFront-style signed URLs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, header};

use super::state::{Shared, bump};
use super::util::{body_with_fault, parse_query, percent_decode, query_get, set_header, with_body};
use super::{Fault, FaultTarget};

/// An S3-style XML error.
fn xml_error(status: StatusCode, code: &str, message: &str) -> Response {
    with_body(
        status,
        "application/xml",
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ),
    )
}

/// Entry point for every request on the CDN listener.
pub(super) async fn handle(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    sim.record("cdn", req.method(), req.uri());
    let (parts, _body) = req.into_parts();
    let get = parts.method == Method::GET;
    if get {
        bump(&sim.counters.cdn_gets);
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        bump(&sim.counters.cdn_refused_with_auth);
        return xml_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed",
        );
    }
    if !get && parts.method != Method::HEAD {
        return xml_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        );
    }
    let path = percent_decode(parts.uri.path(), false);
    let Some(digest) = path.strip_prefix("/blobs/") else {
        return xml_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };
    let query = parse_query(parts.uri.query());
    if !query_get(&query, "sig").is_some_and(|sig| sim.sig_matches(sig, digest)) {
        return xml_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request has expired or the signature does not match",
        );
    }
    let Some(bytes) = sim.blob(digest) else {
        return xml_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        );
    };

    let total = bytes.len() as u64;
    let range = requested_range(&parts.headers, total);
    let (status, slice) = match range {
        RangeReq::Full => (StatusCode::OK, bytes),
        RangeReq::Part(start, end) => (
            StatusCode::PARTIAL_CONTENT,
            bytes.slice(start as usize..=end as usize),
        ),
        RangeReq::Unsatisfiable => {
            let mut resp = xml_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            );
            set_header(
                resp.headers_mut(),
                "content-range",
                &format!("bytes */{total}"),
            );
            return resp;
        }
    };
    let slice_len = slice.len() as u64;
    let (body, len) = if get {
        let fault = sim.take_fault(FaultTarget::Blobs, Fault::is_body_fault);
        let counter = sim.clone();
        body_with_fault(slice, fault, sim.cdn_bytes_per_sec, move |n| {
            counter
                .counters
                .cdn_bytes
                .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        })
    } else {
        (Body::empty(), slice_len)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    set_header(h, "content-type", "application/octet-stream");
    set_header(h, "content-length", &len.to_string());
    set_header(h, "accept-ranges", "bytes");
    if let RangeReq::Part(start, end) = range {
        set_header(h, "content-range", &format!("bytes {start}-{end}/{total}"));
    }
    resp
}

/// A parsed single-range `Range` header.
#[derive(Clone, Copy)]
enum RangeReq {
    Full,
    /// Inclusive byte positions.
    Part(u64, u64),
    Unsatisfiable,
}

/// Supports one `bytes=a-b`, `bytes=a-` or `bytes=-n` range; anything else
/// (including multiple ranges) is ignored and the full blob is served, as
/// RFC 9110 allows.
fn requested_range(headers: &HeaderMap, total: u64) -> RangeReq {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => Some((start, end.min(total.saturating_sub(1)))),
        (Ok(start), Err(_)) if b.is_empty() => Some((start, total.saturating_sub(1))),
        (Err(_), Ok(suffix)) if a.is_empty() => {
            if suffix == 0 {
                return RangeReq::Unsatisfiable;
            }
            Some((total.saturating_sub(suffix), total.saturating_sub(1)))
        }
        _ => None,
    };
    match parsed {
        None => RangeReq::Full,
        Some((start, _)) if start >= total => RangeReq::Unsatisfiable,
        Some((start, end)) => RangeReq::Part(start, end),
    }
}
