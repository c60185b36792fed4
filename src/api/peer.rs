//! The peer path, `/_pullthrough/peer/...`: how the other replicas ask
//! this one, as the owner of a key (see [`crate::cluster`]).
//!
//! Only requests carrying the cluster secret are answered; any other gets
//! 401 before anything else is done (no cache lookup, no upstream request),
//! and so does every request while no peers are configured. Behind the
//! secret, `v2/...` is the registry API answered in the local scope: from
//! this replica's tiers or its own fetch, never forwarded to another
//! replica. Client authentication was the asking replica's; repository
//! rules, the egress policy and the pull budget apply here as for a client,
//! the budget's fair share to the client the request names.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::{ApiError, AppState, EndpointKind, serve_v2};
use crate::clock::now_ms;
use crate::cluster::{CLIENT_HEADER, OUTCOME_HEADER};
use crate::registry::{Caller, ClientId, Outcome};

/// `/_pullthrough/peer/<rest>`.
pub(super) async fn serve(
    State(state): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let cluster = state.registry.cluster();
    if !cluster.is_some_and(|c| c.admits(headers.get(header::AUTHORIZATION))) {
        return refused();
    }
    let served = &state.metrics.cluster.served;
    if rest == "hello" {
        served.with_label_values(&["hello"]).inc();
        let id = cluster.map(|c| c.id()).unwrap_or_default();
        let mut response = super::health::json_response(StatusCode::OK, json!({ "id": id }));
        response.extensions_mut().insert(Outcome::Local);
        return response;
    }
    let Some(v2) = rest.strip_prefix("v2/") else {
        return ApiError::no_endpoint().into_response();
    };
    let named = headers.get(CLIENT_HEADER).and_then(|v| v.to_str().ok());
    let caller = Caller::peer(ClientId::from_header(named));
    let mut response = serve_v2(&state, &method, v2, query.as_deref(), &caller, &headers).await;
    let kind = match response.extensions().get::<EndpointKind>() {
        Some(EndpointKind::Blob) => "blob",
        Some(EndpointKind::Manifest) if method == Method::HEAD => "tag",
        Some(EndpointKind::Manifest) => "manifest",
        _ => "other",
    };
    served.with_label_values(&[kind]).inc();
    describe(&mut response);
    response
}

/// Tells the asking replica how the answer was made: its outcome, and for
/// a tag how long ago upstream confirmed it (`Age`), so a tag is trusted
/// for one TTL across the fleet, not one per hop.
fn describe(response: &mut Response) {
    let outcome = response.extensions().get::<Outcome>().copied();
    let checked = response.extensions().get::<TagCheckedAt>().map(|at| at.0);
    let headers = response.headers_mut();
    if let Some(outcome) = outcome {
        headers.insert(OUTCOME_HEADER, HeaderValue::from_static(outcome.as_str()));
    }
    if let Some(at) = checked {
        let age = now_ms().saturating_sub(at) / 1000;
        headers.insert(header::AGE, HeaderValue::from(age));
    }
}

/// On a manifest response by tag: when upstream last confirmed the tag (ms).
#[derive(Clone, Copy, Debug)]
pub(super) struct TagCheckedAt(pub u64);

fn refused() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "the peer path answers only replicas of this mirror holding the cluster secret",
    )
    .into_response();
    response.extensions_mut().insert(EndpointKind::Other);
    response
}
