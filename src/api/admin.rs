//! Operator endpoints under `/_pullthrough/`, beside the registry API:
//! `POST /_pullthrough/pin?image=NAME[:TAG|@DIGEST]` pins an image so it
//! is never evicted (fetching its manifest first if needed, as one pull),
//! `DELETE` with the same parameter unpins it, and `GET` lists the pins. This is what
//! `pullthrough warm --pin` calls. `NAME` is routed like a pull through
//! the mirror: `ghcr.io/org/app` goes to the `ghcr.io` upstream, a name
//! without a configured registry prefix to the default one.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::{ApiError, AppState, resolve};
use crate::reference::Reference;
use crate::registry::ClientId;

/// `POST` (pin) or `DELETE` (unpin) `/_pullthrough/pin?image=...`.
pub(super) async fn pin(
    State(state): State<AppState>,
    method: Method,
    RawQuery(query): RawQuery,
    client: ClientId,
) -> Response {
    let result = pin_or_unpin(&state, &method, query.as_deref(), &client).await;
    super::tag(super::EndpointKind::Other, result)
}

/// `GET /_pullthrough/pin`: every pin, by the digest pinned.
pub(super) async fn pins(State(state): State<AppState>) -> Response {
    let pins: Vec<_> = state
        .registry
        .pinned()
        .into_iter()
        .map(|(root, digests)| json!({ "pinned": root.as_str(), "digests": digests }))
        .collect();
    let body = json!({ "pins": pins });
    super::tag(super::EndpointKind::Other, Ok(json_ok(&body)))
}

async fn pin_or_unpin(
    state: &AppState,
    method: &Method,
    query: Option<&str>,
    client: &ClientId,
) -> Result<Response, ApiError> {
    let image = super::query_param(query, "image").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "an image=NAME[:TAG|@DIGEST] parameter is required",
        )
    })?;
    let (name, reference) = split_image(image);
    let (upstream, repo) = resolve(state, None, name)?;
    let reference = Reference::parse(reference).map_err(ApiError::manifest_reference)?;
    let body = if method == Method::DELETE {
        let unpinned = state
            .registry
            .unpin_image(&upstream, &repo, &reference, client)
            .await?;
        json!({ "image": image, "unpinned": unpinned })
    } else {
        let pinned = state
            .registry
            .pin_image(&upstream, &repo, &reference, client)
            .await?;
        let missing: Vec<&str> = pinned
            .manifests_not_cached
            .iter()
            .map(|d| d.as_str())
            .collect();
        json!({
            "image": image,
            "pinned": pinned.root.as_str(),
            "digests": pinned.digests,
            "manifests_not_cached": missing,
        })
    };
    Ok(json_ok(&body))
}

fn json_ok(body: &serde_json::Value) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Splits `name[:tag|@digest]` into the name and the reference; a name
/// alone means `latest`, as with `docker pull`. A `:` before the last `/`
/// is a registry's port, not a tag.
fn split_image(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            &image[last_slash + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_and_tag_or_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let by_digest = format!("ghcr.io/org/app@{digest}");
        assert_eq!(
            split_image(&by_digest),
            ("ghcr.io/org/app", digest.as_str())
        );
        assert_eq!(split_image("alpine:3.19"), ("alpine", "3.19"));
        assert_eq!(split_image("alpine"), ("alpine", "latest"));
        assert_eq!(
            split_image("registry.local:5000/team/app"),
            ("registry.local:5000/team/app", "latest")
        );
        assert_eq!(
            split_image("registry.local:5000/team/app:v2"),
            ("registry.local:5000/team/app", "v2")
        );
    }
}
