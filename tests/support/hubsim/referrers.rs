//! The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`), when
//! [`SimOptions::referrers_api`](super::SimOptions::referrers_api) turns it
//! on: an image index of every manifest in the repository whose `subject`
//! is the digest, each descriptor carrying its `artifactType` (or its
//! config's media type) and annotations, filtered by `?artifactType=` with
//! `OCI-Filters-Applied: artifactType` when asked; paged with a `Link` when
//! [`SimOptions::referrers_page`](super::SimOptions::referrers_page) says.

use axum::response::Response;
use http::StatusCode;
use http::request::Parts;
use serde_json::{Value, json};

use super::OCI_INDEX;
use super::state::Shared;
use super::util::{oci_error, parse_query, query_get, set_header, valid_digest, with_body};

/// `GET /v2/<name>/referrers/<digest>`.
pub(super) fn list(sim: &Shared, parts: &Parts, name: &str, digest: &str) -> Response {
    if !sim.referrers_api {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown registry route");
    }
    if !valid_digest(digest) {
        return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
    }
    let query = parse_query(parts.uri.query());
    let wanted = query_get(&query, "artifactType");
    let manifests: Vec<Value> = sim
        .manifests(name)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(d, m)| {
            let v: Value = serde_json::from_slice(&m.bytes).ok()?;
            (v["subject"]["digest"].as_str() == Some(digest)).then(|| {
                let artifact_type = v["artifactType"]
                    .as_str()
                    .or(v["config"]["mediaType"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                json!({
                    "mediaType": m.media_type,
                    "digest": d,
                    "size": m.bytes.len(),
                    "artifactType": artifact_type,
                    "annotations": v["annotations"],
                })
            })
        })
        .filter(|d| wanted.is_none_or(|w| d["artifactType"].as_str() == Some(w)))
        .collect();
    let from: usize = query_get(&query, "next")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let size = sim.referrers_page.unwrap_or(usize::MAX);
    let page: Vec<Value> = manifests.iter().skip(from).take(size).cloned().collect();
    let more = from.saturating_add(size) < manifests.len();
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page});
    let mut resp = with_body(StatusCode::OK, OCI_INDEX, body.to_string());
    if wanted.is_some() {
        set_header(resp.headers_mut(), "oci-filters-applied", "artifactType");
    }
    if more {
        let filter = wanted
            .map(|w| format!("&artifactType={w}"))
            .unwrap_or_default();
        let link = format!(
            "</v2/{name}/referrers/{digest}?next={}{filter}>; rel=\"next\"",
            from + size
        );
        set_header(resp.headers_mut(), "link", &link);
    }
    resp
}
