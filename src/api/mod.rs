//! The HTTP API: the OCI distribution pull endpoints under `/v2/`, plus
//! `/metrics`, `/healthz`, `/readyz`, the operators' `/_pullthrough/pin`
//! and the status page at `/ui` (see [`crate::status`]).
//!
//! When client authentication is configured, `auth` admits or refuses
//! every request before its handler runs.
//!
//! Handlers only extract, delegate to the [`Registry`] and shape the
//! response. Every response passes through `access::record`, which writes
//! the one log line and the metrics of the request from the
//! [`Outcome`] the handler attached.

mod access;
mod admin;
mod auth;
mod blobs;
mod client;
mod error;
mod health;
mod manifests;
mod pagination;
mod peer;
pub(crate) mod range;
mod redirects;
mod referrers;
mod status;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

pub use access::EndpointKind;
pub use auth::{AuthError, ClientAuth};
pub use blobs::is_bucket_redirect;
pub use error::{ApiError, ErrorNote};
pub use health::starting_router;
pub use range::ByteRange;
pub use redirects::RedirectRules;

use crate::metrics::Metrics;
use crate::reference::{RepoName, V2Path};
use crate::registry::{Caller, Outcome, Registry};

/// What every handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub metrics: Metrics,
    /// Hottest images, recent errors and history for the status page.
    pub board: crate::status::Board,
    /// Client authentication; `None` when it is off.
    pub auth: Option<std::sync::Arc<ClientAuth>>,
    /// Which blob GETs may be redirected to the bucket.
    pub redirects: std::sync::Arc<RedirectRules>,
}

/// The whole API, ready to serve or to drive with `oneshot` in tests.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v2", any(dispatch_base))
        .route("/v2/", any(dispatch_base))
        .route("/v2/{*rest}", any(dispatch))
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/", get(status::root))
        .route("/ui", get(status::page))
        .route("/ui/status.json", get(status::json))
        .route("/_pullthrough/peer/{*rest}", any(peer::serve))
        .route(
            "/_pullthrough/pin",
            get(admin::pins).post(admin::pin).delete(admin::pin),
        );
    // Without client authentication the guard would admit every request:
    // it is left out rather than run for nothing.
    let routes = match state.auth {
        Some(_) => routes.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        )),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::record,
        ))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.registry.refresh_cache_gauges();
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn dispatch_base(method: Method) -> Response {
    tag(EndpointKind::Base, base(&method))
}

/// `/v2/`: tells clients this is a registry speaking API version 2.
fn base(method: &Method) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::HEAD {
        return Err(ApiError::read_only());
    }
    let mut response = (StatusCode::OK, "{}").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(Outcome::Local);
    Ok(response)
}

/// Routes `/v2/<rest>` by the endpoint its path names.
async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    caller: Caller,
    headers: HeaderMap,
) -> Response {
    serve_v2(&state, &method, &rest, query.as_deref(), &caller, &headers).await
}

/// Answers `/v2/<rest>` for `caller`: a client's request, or (through the
/// peer path) another replica's.
async fn serve_v2(
    state: &AppState,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    caller: &Caller,
    headers: &HeaderMap,
) -> Response {
    let reads = method == Method::GET || method == Method::HEAD;
    let head = method == Method::HEAD;
    match V2Path::parse(rest) {
        V2Path::Base => tag(EndpointKind::Base, base(method)),
        V2Path::Manifest { name, reference } if reads => tag(
            EndpointKind::Manifest,
            manifests::serve(state, query, name, reference, headers, head, caller).await,
        ),
        V2Path::Blob { name, digest } if reads => tag(
            EndpointKind::Blob,
            blobs::serve(state, query, name, digest, headers, head, caller).await,
        ),
        V2Path::TagsList { name } if reads => tag(
            EndpointKind::TagsList,
            manifests::tags_list(state, query, name).await,
        ),
        V2Path::Referrers { name, digest } if reads => tag(
            EndpointKind::Referrers,
            referrers::serve(state, query, name, digest, head, &caller.client).await,
        ),
        V2Path::Manifest { .. }
        | V2Path::Blob { .. }
        | V2Path::TagsList { .. }
        | V2Path::Referrers { .. }
        | V2Path::Upload { .. } => tag(EndpointKind::Other, Err(ApiError::read_only())),
        V2Path::Unknown => tag(EndpointKind::Other, Err(ApiError::no_endpoint())),
    }
}

/// Marks a response with its endpoint kind for the access record.
fn tag(kind: EndpointKind, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(kind);
    response
}

/// Sets the headers every manifest and blob answer carries for `digest`:
/// `Docker-Content-Digest`, and the `ETag` clients revalidate with (built
/// without formatting).
fn insert_digest_headers(headers: &mut HeaderMap, digest: &str) {
    const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
    if let Ok(v) = HeaderValue::from_str(digest) {
        headers.insert(DOCKER_CONTENT_DIGEST, v);
    }
    let mut etag = Vec::with_capacity(digest.len() + 2);
    etag.push(b'"');
    etag.extend_from_slice(digest.as_bytes());
    etag.push(b'"');
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(etag)) {
        headers.insert(header::ETAG, v);
    }
}

/// Reads one parameter from a raw query string.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Validates the name and picks the upstream (`?ns=`, a path prefix, or the default).
fn resolve(
    state: &AppState,
    query: Option<&str>,
    name: &str,
) -> Result<(std::sync::Arc<crate::upstream::Upstream>, RepoName), ApiError> {
    let repo = RepoName::parse(name)?;
    Ok(state.registry.route(query_param(query, "ns"), &repo)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_by_name() {
        assert_eq!(
            query_param(Some("ns=docker.io&x=1"), "ns"),
            Some("docker.io")
        );
        assert_eq!(query_param(Some("x=1&ns=ghcr.io"), "ns"), Some("ghcr.io"));
        assert_eq!(query_param(Some("nsx=1"), "ns"), None);
        assert_eq!(query_param(None, "ns"), None);
    }
}
