//! The OCI 1.1 referrers handler: `GET /v2/<name>/referrers/<digest>`.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, header};

use super::{ApiError, AppState, query_param, resolve};
use crate::digest::Digest;
use crate::reference::ReferenceError;
use crate::registry::ClientId;
use crate::upstream::{FILTERS_APPLIED, OCI_INDEX};

/// `GET|HEAD /v2/<name>/referrers/<digest>[?artifactType=...]`. A digest
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
    let artifact_type = query_param(query, "artifactType").filter(|t| !t.is_empty());
    let reply = state
        .registry
        .referrers(&upstream, &repo, &digest, artifact_type, client)
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
    response.extensions_mut().insert(reply.outcome);
    Ok(response)
}
