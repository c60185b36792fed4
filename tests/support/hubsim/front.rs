//! The front listener (plays `registry.k8s.io`): a registry that holds
//! nothing itself. As measured on the real one, every `/v2/` request that is
//! not a blob gets a 307 to the registry that really serves the content,
//! under another host and another path (`/v2/<prefix>/<name>/...`), where
//! that registry's own token realm and scope apply; blob requests get a 307
//! straight to bucket-like storage (the CDN listener) that refuses any
//! `Authorization` header. The front asks for no authentication.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};

use super::registry::{cdn_redirect, redirect};
use super::state::Shared;
use super::util::{oci_error, percent_decode};

/// Entry point for every request on the front listener.
pub(super) async fn handle(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    sim.record("front", req.method(), req.uri());
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the operation is unsupported",
        );
    }
    let path = percent_decode(req.uri().path(), false);
    let Some(rest) = path.strip_prefix("/v2") else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "not a registry API path",
        );
    };
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return redirect(Some(&format!("{}/v2/", sim.registry_url)));
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        return cdn_redirect(&sim, digest);
    }
    let prefix = sim.front_prefix.as_deref().unwrap_or_default();
    let mut location = format!("{}/v2/{prefix}/{rest}", sim.registry_url);
    if let Some(query) = req.uri().query() {
        location.push('?');
        location.push_str(query);
    }
    redirect(Some(&location))
}
