//! Health for orchestrators and load balancers, in two questions:
//! - `/healthz`: is the process alive? Always 200 once it answers at all,
//!   with the shared tier's state: a degraded S3 still serves, so a
//!   liveness probe must not restart the replica for it.
//! - `/readyz`: can it serve? 503 while it is starting (before its state
//!   is built; see [`starting_router`]), when its data directory takes no
//!   writes, or when its disk is full; 200 otherwise, also while the disk
//!   tier's accounting is still being rebuilt.
//!
//! Both answer JSON with the reason.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::{ApiError, AppState};

/// Liveness, with the shared tier's state.
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    let s3 = state.registry.shared_tier_state();
    let status = if s3 == "degraded" { "degraded" } else { "ok" };
    json_response(StatusCode::OK, json!({ "status": status, "s3": s3 }))
}

/// Readiness, with the reason and the disk tier's state.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.registry.readiness().await;
    let disk = readiness.disk;
    let disk = json!({
        "bytes": disk.bytes,
        "objects": disk.objects,
        // No bound at all (`disk.max_percent = 100` and no `max_bytes`): null.
        "capacity_bytes": (disk.limits.cap != u64::MAX).then_some(disk.limits.cap),
        "counted": disk.loaded,
    });
    let (status, body) = match readiness.not_ready {
        None => (StatusCode::OK, json!({ "status": "ready" })),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not ready", "reason": reason }),
        ),
    };
    let mut body = body;
    body["disk"] = disk;
    body["s3"] = Value::from(readiness.s3);
    json_response(status, body)
}

/// What the listener serves while the state is being built (opening the
/// cache, checking the S3 bucket): alive, not ready, and 503 for the
/// registry API, so nothing waits on a replica that cannot answer yet.
pub fn starting_router() -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, json!({ "status": "starting" })) }),
        )
        .route(
            "/readyz",
            get(|| async {
                let body = json!({ "status": "not ready", "reason": "starting" });
                json_response(StatusCode::SERVICE_UNAVAILABLE, body)
            }),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "pullthrough is starting",
            )
            .into_response()
        })
}

pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get_json(router: Router, path: &str) -> (StatusCode, Value) {
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_starting_replica_is_alive_but_not_ready() {
        let (status, body) = get_json(starting_router(), "/healthz").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("starting"))
        );
        let (status, body) = get_json(starting_router(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reason"], "starting");
        let (status, body) = get_json(starting_router(), "/v2/library/alpine/manifests/3").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
}
