//! The OCI 1.1 referrers handler: `GET /v2/<name>/referrers/<digest>`.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, header};

use super::{ApiError, AppState, pagination, query_param, resolve};
use crate::digest::Digest;
use crate::reference::ReferenceError;
use crate::registry::ClientId;
use crate::upstream::{FILTERS_APPLIED, OCI_INDEX};

/// `GET|HEAD /v2/<name>/referrers/<digest>[?artifactType=...]`, and the
/// next page on the client's path when upstream paged the answer. A digest
/// that does not parse is 400 `DIGEST_INVALID`, as the spec requires.
pub async fn serve(
    state: &AppState,
    query: Option<&str>,
    name: &str,
    digest: &str,
    head: bool,
    client: &ClientId,
) -> Result<Response, ApiError> {
    let (upstream, repo) = resolve(state, query, name)?;
    let digest: Digest = digest
        .parse()
        .map_err(|e| ApiError::from(ReferenceError::Digest(e)))?;
    // The client's query goes upstream as it came (a filter, a page), but
    // for `ns`, which is this mirror's own.
    let ns = query_param(query, "ns");
    let asked: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("ns="))
        .collect();
    let reply = state
        .registry
        .referrers(&upstream, &repo, &digest, &asked.join("&"), client)
        .await?;
    let length = reply.body.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(reply.body)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some(v) = reply.filters_applied {
        headers.insert(FILTERS_APPLIED, v);
    }
    let path = format!("/v2/{name}/referrers/{digest}");
    if let Some(next) = reply.next.and_then(|q| pagination::link_on(&path, &q, ns)) {
        headers.insert(header::LINK, next);
    }
    response.extensions_mut().insert(reply.outcome);
    Ok(response)
}
