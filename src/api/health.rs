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
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

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

/// How long a request that arrives while the replica starts waits for it
/// before it gets 503: a mirror's 503 sends containerd and dockerd to
/// Docker Hub, so a request is held rather than refused while the state is
/// built (the cache opened, the S3 bucket checked), which takes a moment.
pub const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the listener serves while the state is being built: alive, not
/// ready (so load balancers hold new traffic back), and every other
/// request held until `ready` carries the API's router, which then answers
/// it, or 503 after `STARTUP_WAIT`. Once ready, everything goes to the
/// API's router, health checks included.
pub fn starting_router(ready: watch::Receiver<Option<Router>>) -> Router {
    Router::new().fallback(starting).with_state(ready)
}

async fn starting(
    State(ready): State<watch::Receiver<Option<Router>>>,
    request: Request,
) -> Response {
    let serving = ready.borrow().clone();
    let router = match serving {
        Some(router) => router,
        None => match request.uri().path() {
            "/healthz" => return json_response(StatusCode::OK, json!({ "status": "starting" })),
            "/readyz" => {
                let body = json!({ "status": "not ready", "reason": "starting" });
                return json_response(StatusCode::SERVICE_UNAVAILABLE, body);
            }
            _ => {
                let mut ready = ready.clone();
                let built = tokio::time::timeout(STARTUP_WAIT, ready.wait_for(Option::is_some));
                match built.await {
                    Ok(Ok(router)) => router.clone().expect("waited for it"),
                    _ => {
                        let message = "pullthrough is starting";
                        let error =
                            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message);
                        return error.into_response();
                    }
                }
            }
        },
    };
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
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
    async fn a_starting_replica_is_alive_but_not_ready_and_holds_requests_until_it_is() {
        let (built, ready) = watch::channel(None);
        let starting = starting_router(ready);
        let (status, body) = get_json(starting.clone(), "/healthz").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("starting"))
        );
        let (status, body) = get_json(starting.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reason"], "starting");
        let held = tokio::spawn(get_json(starting.clone(), "/v2/library/alpine/manifests/3"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !held.is_finished(),
            "a request waits for the replica to start"
        );
        let api = Router::new()
            .fallback(|| async { json_response(StatusCode::OK, json!({ "api": true })) });
        built.send_replace(Some(api));
        let (status, body) = held.await.unwrap();
        assert_eq!(
            (status, body["api"].as_bool()),
            (StatusCode::OK, Some(true))
        );
        let (status, body) = get_json(starting, "/readyz").await;
        assert_eq!(
            (status, body["api"].as_bool()),
            (StatusCode::OK, Some(true)),
            "then everything is the API's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_held_past_the_wait_gets_503() {
        let (_built, ready) = watch::channel(None);
        let (status, body) = get_json(starting_router(ready), "/v2/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
}
