//! Small HTTP helpers shared by the three listeners: error bodies, query
//! parsing, Basic-auth decoding, timestamps and fault-aware body streaming.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::Fault;

/// Size of the slices a body is streamed in, so body faults hit mid-stream.
const CHUNK: usize = 64 * 1024;

/// How long a `ResetMidBody` response pauses before failing, so the headers
/// and the first half of the body are flushed to the client first.
const RESET_PAUSE: Duration = Duration::from_millis(50);

/// A response with `body` and the given content type.
pub(super) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    with_body(status, "application/json", value.to_string())
}

/// An OCI distribution error: `{"errors":[{"code","message","detail":null}]}`.
pub(super) fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]}),
    )
}

/// The body Docker Hub sends with a pull-rate-limit 429.
pub(super) fn too_many_requests() -> Response {
    oci_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TOOMANYREQUESTS",
        "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
    )
}

/// The response for a status fault, or `None` for faults that are not one.
pub(super) fn status_fault(fault: Fault) -> Option<Response> {
    match fault {
        Fault::InternalError => Some(oci_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            "internal server error (simulated fault)",
        )),
        Fault::ServiceUnavailable => Some(oci_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "service unavailable (simulated fault)",
        )),
        Fault::TooManyRequests => Some(too_many_requests()),
        _ => None,
    }
}

/// Sets a header from a string, silently skipping values that are not legal
/// header values (client-controlled input must never panic the simulator).
pub(super) fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`). Invalid
/// escapes are kept literally; invalid UTF-8 is replaced.
pub(super) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Parses a raw query string into decoded `(key, value)` pairs, keeping
/// repeated keys (the token realm takes several `scope` parameters).
pub(super) fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The first value of `key` in a parsed query.
pub(super) fn query_get<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The credentials of an `Authorization` header: `Some(Ok)` for Basic,
/// `Some(Err)` for a malformed Basic header, `None` when there is no Basic auth.
pub(super) fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(rest.trim()).and_then(|b| String::from_utf8(b).ok());
    Some(match decoded.as_deref().and_then(|s| s.split_once(':')) {
        Some((u, p)) => Ok((u.to_owned(), p.to_owned())),
        None => Err(()),
    })
}

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

/// Standard base64 (padding optional); `None` on any invalid character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A random lowercase-hex string of `bytes` random bytes (tokens, signatures).
pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// The current time as RFC 3339 UTC (`2024-01-02T03:04:05Z`), without chrono.
pub(super) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `true` for a well-formed `sha256:<64 lowercase hex>` digest.
pub(super) fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// `true` for a well-formed tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
pub(super) fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `true` for a repository name: slash-separated lowercase components, each
/// starting and ending with an alphanumeric, separators `.`, `_`, `-` inside.
pub(super) fn valid_repo_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| {
                    x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
                })
        })
}

/// Streams `bytes` in [`CHUNK`]-sized zero-copy slices.
fn chunks(bytes: Bytes) -> impl Iterator<Item = Result<Bytes, std::io::Error>> + Send {
    let len = bytes.len();
    (0..len.div_ceil(CHUNK)).map(move |i| Ok(bytes.slice(i * CHUNK..len.min((i + 1) * CHUNK))))
}

/// A streamed body for `bytes` with an optional body fault applied, paced
/// to `bytes_per_sec` when given, and the `Content-Length` to announce for it.
///
/// * `ResetMidBody`: announces the full length, sends the first half, pauses
///   briefly, then fails the stream so hyper drops the connection.
/// * `ResetAtPercent(p)`: the same after the first `p`% of the bytes.
/// * `TruncatedBody`: a well-formed response carrying only the first half.
/// * `WrongBytes`: full length with the middle byte inverted.
/// * anything else (or `None`): the bytes as they are.
///
/// `on_sent` is told the length of every chunk handed to the connection.
pub(super) fn body_with_fault(
    bytes: Bytes,
    fault: Option<Fault>,
    bytes_per_sec: Option<u64>,
    on_sent: impl Fn(usize) + Send + 'static,
) -> (Body, u64) {
    use futures_util::stream::StreamExt;
    let (s, len) = stream_with_fault(bytes, fault);
    let s = match bytes_per_sec.filter(|&rate| rate > 0) {
        Some(rate) => throttle(s, rate),
        None => s,
    };
    let counted = s.inspect(move |item| {
        if let Ok(chunk) = item {
            on_sent(chunk.len());
        }
    });
    (Body::from_stream(counted), len)
}

/// A body's chunks, as [`body_with_fault`] describes them.
type ChunkStream = futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

fn stream_with_fault(bytes: Bytes, fault: Option<Fault>) -> (ChunkStream, u64) {
    use futures_util::stream::{self, StreamExt};
    let full = bytes.len() as u64;
    let half = bytes.len() / 2;
    let reset_at = match fault {
        Some(Fault::ResetMidBody) => Some(half),
        Some(Fault::ResetAtPercent(p)) => Some(bytes.len() * usize::from(p.min(100)) / 100),
        _ => None,
    };
    match fault {
        Some(Fault::ResetMidBody | Fault::ResetAtPercent(_)) => {
            let tail = stream::once(async {
                tokio::time::sleep(RESET_PAUSE).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated reset mid-body",
                ))
            });
            let sent = reset_at.unwrap_or(half);
            let s = stream::iter(chunks(bytes.slice(..sent))).chain(tail);
            (s.boxed(), full)
        }
        Some(Fault::TruncatedBody) => {
            let s = stream::iter(chunks(bytes.slice(..half)));
            (s.boxed(), half as u64)
        }
        Some(Fault::WrongBytes) if !bytes.is_empty() => {
            let mut v = bytes.to_vec();
            v[half] ^= 0xFF;
            (stream::iter(chunks(Bytes::from(v))).boxed(), full)
        }
        _ => (stream::iter(chunks(bytes)).boxed(), full),
    }
}

/// Paces `s` to `bytes_per_sec`: each chunk leaves once the bytes before
/// it would have taken that long at this rate, counted from the first poll.
fn throttle(s: ChunkStream, bytes_per_sec: u64) -> ChunkStream {
    use futures_util::stream::StreamExt;
    let mut started = None;
    let mut sent = 0u64;
    s.then(move |item| {
        let start = *started.get_or_insert_with(tokio::time::Instant::now);
        let due = start + Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
        if let Ok(chunk) = &item {
            sent += chunk.len() as u64;
        }
        async move {
            tokio::time::sleep_until(due).await;
            item
        }
    })
    .boxed()
}
