//! The access record: one log line and one set of metrics per request,
//! written in one place from the outcome the handler attached.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue, StatusCode, header};

use super::AppState;
use crate::metrics::Metrics;
use crate::registry::Outcome;

/// Sent with every answer.
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Every `outcome` label, in the order that indexes their metric handles.
const OUTCOMES: [&str; 13] = [
    "hit-memory",
    "hit-disk",
    "hit-s3",
    "hit-shared",
    "miss",
    "coalesced",
    "revalidated",
    "stale",
    "reserve",
    "peer",
    "relayed",
    "local",
    "error",
];

/// Every `tier` label of `pullthrough_served_bytes_total`, likewise.
const TIERS: [&str; 6] = ["memory", "disk", "s3", "peer", "upstream", "cache"];

/// Which endpoint a request hit, for the metrics' `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    Base,
    Manifest,
    Blob,
    TagsList,
    Referrers,
    Other,
}

impl EndpointKind {
    fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Base => "base",
            EndpointKind::Manifest => "manifest",
            EndpointKind::Blob => "blob",
            EndpointKind::TagsList => "tags_list",
            EndpointKind::Referrers => "referrers",
            EndpointKind::Other => "other",
        }
    }
}

/// Logs and counts the request, and marks every answer with the API version.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let status = response.status();
    let kind = response.extensions().get::<EndpointKind>().copied();
    let outcome = match response.extensions().get::<Outcome>() {
        Some(outcome) => outcome.as_str(),
        None if status.is_client_error() || status.is_server_error() => "error",
        None => Outcome::Local.as_str(),
    };
    let elapsed = started.elapsed();
    let size = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    if method == http::Method::GET
        && status.is_success()
        && matches!(kind, Some(EndpointKind::Manifest | EndpointKind::Blob))
        && let (Some(tier), Ok(bytes)) = (served_from(outcome), size.parse::<u64>())
    {
        count_served(&state.metrics, tier, bytes);
    }
    // Whole microseconds as milliseconds: integer formatting, where a
    // float with a precision costs several times more.
    let micros = elapsed.as_micros();
    tracing::info!(
        target: "pullthrough::access",
        method = %method,
        uri = %uri,
        status = status.as_u16(),
        outcome,
        size,
        ms = format_args!("{}.{:03}", micros / 1000, micros % 1000),
    );
    post_to_board(&state, &method, &uri, &response, outcome);
    if let Some(kind) = kind {
        count(&state.metrics, kind, outcome, status, elapsed);
    }
    response
}

/// Counts a request in `pullthrough_requests_total` and its latency in
/// `pullthrough_request_duration_seconds`, through handles resolved once.
fn count(
    metrics: &Metrics,
    kind: EndpointKind,
    outcome: &'static str,
    status: StatusCode,
    elapsed: Duration,
) {
    let kind_label = kind.as_str();
    let index = OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .map(|o| kind as usize * OUTCOMES.len() + o);
    let seconds = index.and_then(|i| {
        metrics.request_seconds_by.get(i, || {
            metrics
                .request_seconds
                .with_label_values(&[kind_label, outcome])
        })
    });
    match seconds {
        Some(seconds) => seconds.observe(elapsed.as_secs_f64()),
        None => metrics
            .request_seconds
            .with_label_values(&[kind_label, outcome])
            .observe(elapsed.as_secs_f64()),
    }
    let ok = index.filter(|_| status == StatusCode::OK).and_then(|i| {
        metrics.requests_ok.get(i, || {
            metrics
                .requests
                .with_label_values(&[kind_label, outcome, "200"])
        })
    });
    match ok {
        Some(ok) => ok.inc(),
        None => metrics
            .requests
            .with_label_values(&[kind_label, outcome, status.as_str()])
            .inc(),
    }
}

/// Counts `bytes` served from a tier (an index into [`TIERS`]) in
/// `pullthrough_served_bytes_total`, through a handle resolved once.
fn count_served(metrics: &Metrics, tier: usize, bytes: u64) {
    let lookup = || {
        metrics
            .traffic
            .served_bytes
            .with_label_values(&[TIERS[tier]])
    };
    match metrics.served_bytes_by.get(tier, lookup) {
        Some(counter) => counter.inc_by(bytes),
        None => lookup().inc_by(bytes),
    }
}

/// The image a manifest response served, named as routed (so `alpine`,
/// `library/alpine` and containerd's `?ns=docker.io` are one image), for
/// the hottest-images list.
#[derive(Clone, Debug)]
pub(super) struct ServedImage(pub String);

/// The `tier` of `pullthrough_served_bytes_total` for an outcome, as an
/// index into [`TIERS`].
fn served_from(outcome: &str) -> Option<usize> {
    let tier = match outcome {
        "hit-memory" => "memory",
        "hit-disk" => "disk",
        "hit-s3" | "hit-shared" => "s3",
        "peer" => "peer",
        "miss" | "coalesced" | "relayed" => "upstream",
        "revalidated" | "stale" | "reserve" => "cache",
        _ => return None,
    };
    TIERS.iter().position(|t| *t == tier)
}

/// Counts manifest requests for the hottest images and keeps error
/// answers for the status page.
fn post_to_board(
    state: &AppState,
    method: &http::Method,
    uri: &http::Uri,
    response: &Response,
    outcome: &str,
) {
    let status = response.status();
    if let Some(ServedImage(image)) = response.extensions().get() {
        state.board.count_image(image);
    }
    if status.is_client_error() || status.is_server_error() {
        let note = response.extensions().get::<super::ErrorNote>();
        state.board.error(crate::status::ErrorEntry {
            at: crate::status::now_secs(),
            method: method.to_string(),
            path: uri.to_string(),
            status: status.as_u16(),
            code: note.map_or("-", |n| n.code).to_owned(),
            message: note.map_or_else(
                || status.canonical_reason().unwrap_or(outcome).to_owned(),
                |n| n.message.clone(),
            ),
        });
    }
}
