//! The status page at `/ui` (and `/`, which redirects there) and its JSON
//! form at `/ui/status.json`, which `pullthrough status` reads. Both
//! render one [`Snapshot`] taken from the same collectors as `/metrics`.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use http::{HeaderValue, header};

use super::AppState;
use crate::status::{Snapshot, render_page};

fn snapshot(state: &AppState) -> Snapshot {
    Snapshot::take(&state.registry, &state.metrics, &state.board)
}

/// `/`: the status page is the mirror's front page.
pub(super) async fn root() -> Redirect {
    Redirect::to("/ui")
}

/// `/ui`: the page.
pub(super) async fn page(State(state): State<AppState>) -> Response {
    let mut response = Html(render_page(&snapshot(&state))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/ui/status.json`: the same snapshot for scripts and the CLI.
pub(super) async fn json(State(state): State<AppState>) -> Response {
    let body = serde_json::to_string(&snapshot(&state)).unwrap_or_else(|_| "{}".to_owned());
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
