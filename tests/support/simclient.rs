//! A plain reqwest client for driving the simulator directly, request by
//! request, as its self-tests do: no redirect followed, tokens fetched by
//! hand.

use reqwest::{Client, Response, StatusCode, redirect};

use super::hubsim::HubSim;

/// A client that follows no redirect, to see each hop.
pub fn client() -> Client {
    Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// Fetches an anonymous pull token for `repo` from the realm.
pub async fn token(c: &Client, sim: &HubSim, repo: &str) -> String {
    let url = format!(
        "{}/token?service=registry.sim&scope=repository:{repo}:pull",
        sim.realm_url
    );
    let resp = c.get(url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// The OCI error code of an error response.
pub async fn error_code(resp: Response) -> String {
    let v: serde_json::Value = resp.json().await.unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

/// A header as text; panics when it is missing.
pub fn header_str(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Follows a registry blob GET's 307 by hand, without auth; returns the CDN response.
pub async fn fetch_blob_via_cdn(
    c: &Client,
    sim: &HubSim,
    repo: &str,
    tok: &str,
    digest: &str,
) -> Response {
    let resp = c
        .get(format!("{}/v2/{repo}/blobs/{digest}", sim.registry_url))
        .bearer_auth(tok)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = header_str(&resp, "location");
    c.get(location).send().await.unwrap()
}

/// `GET /v2/<repo>/manifests/<reference>` with a bearer token.
pub async fn get_manifest(
    c: &Client,
    sim: &HubSim,
    repo: &str,
    reference: &str,
    tok: &str,
) -> Response {
    c.get(format!(
        "{}/v2/{repo}/manifests/{reference}",
        sim.registry_url
    ))
    .bearer_auth(tok)
    .send()
    .await
    .unwrap()
}

/// `HEAD /v2/<repo>/manifests/<reference>` with a bearer token.
pub async fn head_manifest(
    c: &Client,
    sim: &HubSim,
    repo: &str,
    reference: &str,
    tok: &str,
) -> Response {
    c.head(format!(
        "{}/v2/{repo}/manifests/{reference}",
        sim.registry_url
    ))
    .bearer_auth(tok)
    .send()
    .await
    .unwrap()
}
