//! Manifest and tag-list handlers.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::access::ServedImage;
use super::{ApiError, AppState, pagination, query_param, resolve};
use crate::reference::Reference;
use crate::registry::{AcceptSet, Caller, ManifestReply, Outcome};

/// `GET|HEAD /v2/<name>/manifests/<reference>`.
pub async fn serve(
    state: &AppState,
    query: Option<&str>,
    name: &str,
    reference: &str,
    headers: &HeaderMap,
    head: bool,
    caller: &Caller,
) -> Result<Response, ApiError> {
    let (upstream, repo) = resolve(state, query, name)?;
    let image = crate::status::image_name(upstream.name(), repo.as_str(), reference);
    let reference = Reference::parse(reference).map_err(ApiError::manifest_reference)?;
    let accept = AcceptSet::from_headers(headers);
    let reply = state
        .registry
        .manifest(&upstream, &repo, &reference, &accept, !head, caller)
        .await?;
    let mut response = manifest_response(reply);
    response.extensions_mut().insert(ServedImage(image));
    Ok(response)
}

/// The exact bytes with the headers clients check, on GET and HEAD alike.
fn manifest_response(reply: ManifestReply) -> Response {
    let digest = reply.digest.as_str();
    let checked = reply.tag_checked_at_ms.map(super::peer::TagCheckedAt);
    let mut response = Response::new(reply.body.map_or_else(Body::empty, Body::from));
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&reply.media_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(reply.size));
    super::insert_digest_headers(headers, digest);
    response.extensions_mut().insert(reply.outcome);
    if let Some(checked) = checked {
        response.extensions_mut().insert(checked);
    }
    response
}

/// `GET /v2/<name>/tags/list`, relayed with the client's `n` and `last`,
/// named and linked on as the client asked (see `pagination`).
pub async fn tags_list(
    state: &AppState,
    query: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    let (upstream, repo) = resolve(state, query, name)?;
    let forwarded: Vec<String> = ["n", "last"]
        .iter()
        .filter_map(|p| query_param(query, p).map(|v| format!("{p}={v}")))
        .collect();
    let mut relayed = state
        .registry
        .tags_list(&upstream, &repo, Some(&forwarded.join("&")))
        .await?;
    let ok = relayed.status.is_success();
    let body = match ok {
        true => pagination::renamed(relayed.body, name),
        false => relayed.body,
    };
    let next = relayed.headers.remove(header::LINK);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(relayed.status.as_u16()).unwrap_or(StatusCode::OK);
    response.headers_mut().extend(relayed.headers);
    let ns = query_param(query, "ns");
    if let Some(next) = next.and_then(|link| pagination::next_link(&link, name, ns)) {
        response.headers_mut().insert(header::LINK, next);
    }
    response.extensions_mut().insert(Outcome::Relayed);
    Ok(response)
}
