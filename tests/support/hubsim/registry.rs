//! The registry listener (plays `registry-1.docker.io`): `/v2/`, manifests,
//! blob redirects to the CDN and `tags/list`, all behind bearer tokens.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};

use super::realm::SERVICE;
use super::server::PeerAddr;
use super::state::{Grant, LookupError, Shared, StoredManifest, bump};
use super::util::{
    bearer_token, body_with_fault, json, oci_error, parse_query, percent_decode, query_get,
    random_hex, set_header, status_fault, too_many_requests, valid_digest, valid_repo_name,
    valid_tag, with_body,
};
use super::{DOCKER_MANIFEST_LIST, Fault, FaultTarget, SimAuth};

/// The rate-limit window Docker Hub advertises (6 hours).
const WINDOW: &str = "w=21600";

/// What a `/v2/<name>/...` path addresses.
enum Route<'a> {
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Tags(&'a str),
    Referrers(&'a str, &'a str),
}

/// Parses a path below `/v2/` from its end, so names may contain slashes.
fn parse_route(rest: &str) -> Option<Route<'_>> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    let (head, reference) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Route::Manifest(name, reference)),
        "blobs" => Some(Route::Blob(name, reference)),
        "referrers" => Some(Route::Referrers(name, reference)),
        _ => None,
    }
}

/// Entry point for every request on the registry listener.
pub(super) async fn handle(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    sim.record("registry", req.method(), req.uri());
    let (parts, _body) = req.into_parts();
    let mut resp = match sim.auth {
        SimAuth::OwnHost(realm) if parts.uri.path() == realm => super::realm::issue(&sim, &parts),
        _ => dispatch(&sim, &parts).await,
    };
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn dispatch(sim: &Shared, parts: &Parts) -> Response {
    let path = percent_decode(parts.uri.path(), false);
    let Some(rest) = path.strip_prefix("/v2") else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "not a registry API path",
        );
    };
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "the operation is unsupported",
        );
    }
    if rest.is_empty() || rest == "/" {
        return base(sim, parts);
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let get = parts.method == Method::GET;
    let route = parse_route(rest);
    // Count by kind as the request arrives, before any validation or auth.
    match (&route, get) {
        (Some(Route::Manifest(..)), true) => bump(&sim.counters.manifest_gets),
        (Some(Route::Manifest(..)), false) => bump(&sim.counters.manifest_heads),
        (Some(Route::Blob(..)), true) => bump(&sim.counters.blob_gets),
        (Some(Route::Blob(..)), false) => bump(&sim.counters.blob_heads),
        (Some(Route::Tags(_)), _) => bump(&sim.counters.tags_lists),
        (Some(Route::Referrers(..)), _) | (None, _) => {}
    }
    let Some(route) = route else {
        return oci_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown registry route");
    };
    let name = match &route {
        Route::Manifest(n, _) | Route::Blob(n, _) | Route::Tags(n) | Route::Referrers(n, _) => *n,
    };
    if !valid_repo_name(name) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "invalid repository name",
        );
    }
    match route {
        Route::Manifest(_, r) if r.contains(':') && !valid_digest(r) => {
            return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
        }
        Route::Manifest(_, r) if !r.contains(':') && !valid_tag(r) => {
            return oci_error(StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag");
        }
        Route::Blob(_, d) if !valid_digest(d) => {
            return oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
        }
        _ => {}
    }
    let Some(grant) = authorize(sim, parts, Some(name)) else {
        return challenge(sim, Some(name));
    };
    match route {
        Route::Manifest(name, reference) => {
            let peer = parts.extensions.get::<ConnectInfo<PeerAddr>>();
            let key = grant.user.clone().unwrap_or_else(|| match peer {
                Some(ConnectInfo(PeerAddr(a))) => a.ip().to_string(),
                None => "unknown".to_owned(),
            });
            manifest(sim, parts, name, reference, &key, get).await
        }
        Route::Blob(_, digest) => blob(sim, parts, digest).await,
        Route::Tags(name) => tags_list(sim, parts, name),
        Route::Referrers(name, digest) => super::referrers::list(sim, parts, name, digest),
    }
}

/// `GET /v2/`: the version check / auth probe.
fn base(sim: &Shared, parts: &Parts) -> Response {
    if authorize(sim, parts, None).is_none() {
        return challenge(sim, None);
    }
    json(StatusCode::OK, &serde_json::json!({}))
}

/// The grant behind the request's bearer token, if it is valid, unexpired
/// and (with `name`) includes `repository:<name>:pull`.
fn authorize(sim: &Shared, parts: &Parts, name: Option<&str>) -> Option<Grant> {
    if sim.auth == SimAuth::None {
        return Some(Grant {
            scopes: Default::default(),
            user: None,
            expires: std::time::Instant::now(),
        });
    }
    let grant = bearer_token(&parts.headers).and_then(|t| sim.grant(&t))?;
    match name {
        Some(n) if !grant.scopes.contains(&format!("repository:{n}:pull")) => None,
        _ => Some(grant),
    }
}

/// The 401 challenge pointing at the realm (with the pull scope for `name`).
fn challenge(sim: &Shared, name: Option<&str>) -> Response {
    bump(&sim.counters.unauthorized);
    let realm = match sim.auth {
        SimAuth::OwnHost(path) => format!("{}{path}", sim.registry_url),
        _ => format!("{}/token", sim.realm_url),
    };
    let mut challenge = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
    if let Some(n) = name {
        challenge.push_str(&format!(",scope=\"repository:{n}:pull\""));
    }
    let mut resp = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    set_header(resp.headers_mut(), "www-authenticate", &challenge);
    resp
}

/// Adds Docker Hub's rate-limit headers (unless disabled in the options).
fn rate_headers(sim: &Shared, resp: &mut Response, key: &str, remaining: u32) {
    if !sim.rate_limit_headers {
        return;
    }
    let h = resp.headers_mut();
    set_header(h, "ratelimit-limit", &format!("{};{WINDOW}", sim.limit()));
    set_header(h, "ratelimit-remaining", &format!("{remaining};{WINDOW}"));
    set_header(h, "docker-ratelimit-source", key);
}

/// `true` when the client's `Accept` lines allow `media_type`: no Accept at
/// all, `*/*`, or an exact match on any (comma-separated, `;q=`-stripped) value.
fn accepts(parts: &Parts, media_type: &str) -> bool {
    let mut any = false;
    for line in parts.headers.get_all(header::ACCEPT) {
        let Ok(line) = line.to_str() else { continue };
        for value in line.split(',') {
            let value = value.split(';').next().unwrap_or("").trim();
            if value.is_empty() {
                continue;
            }
            any = true;
            if value == "*/*" || value.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !any
}

/// What distribution answers a client that asks for a Docker manifest list
/// by tag but does not accept lists: the list's linux/amd64 manifest.
fn default_platform(
    sim: &Shared,
    name: &str,
    list: &StoredManifest,
) -> Option<(String, StoredManifest)> {
    if list.media_type != DOCKER_MANIFEST_LIST {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&list.bytes).ok()?;
    let digest =
        json["manifests"]
            .as_array()?
            .iter()
            .find(|d| d["platform"]["architecture"] == "amd64" && d["platform"]["os"] == "linux")?
            ["digest"]
            .as_str()?;
    sim.manifest(name, digest).ok()
}

/// Pre-header faults shared by manifests and blobs: sleeps for `Slow`,
/// returns the error or redirect response for the others.
async fn pre_header_fault(
    sim: &Shared,
    parts: &Parts,
    target: FaultTarget,
) -> Option<(Fault, Response)> {
    let fault = sim.take_fault(target, |f| !f.is_body_fault())?;
    if let Fault::Slow(d) = fault {
        tokio::time::sleep(d).await;
        return None;
    }
    let own_name = parts.uri.path().rsplit('/').next().unwrap_or("");
    let response = match fault {
        Fault::BareRedirect => redirect(None),
        Fault::RedirectLoop => redirect(Some(own_name)),
        _ => status_fault(fault)?,
    };
    Some((fault, response))
}

/// `GET|HEAD /v2/<name>/manifests/<reference>`.
async fn manifest(
    sim: &Shared,
    parts: &Parts,
    name: &str,
    reference: &str,
    key: &str,
    get: bool,
) -> Response {
    if let Some((fault, mut resp)) = pre_header_fault(sim, parts, FaultTarget::Manifests).await {
        let remaining = if fault == Fault::TooManyRequests {
            0
        } else {
            sim.remaining(key)
        };
        rate_headers(sim, &mut resp, key, remaining);
        return resp;
    }
    // Charge GETs up front (so concurrent GETs cannot overspend) and refund
    // if the GET does not end in a 200.
    let remaining = if get {
        match sim.try_charge(key) {
            Ok(r) => r,
            Err(()) => {
                let mut resp = too_many_requests();
                rate_headers(sim, &mut resp, key, 0);
                if let Some(secs) = sim.retry_after {
                    set_header(resp.headers_mut(), "retry-after", &secs.to_string());
                }
                return resp;
            }
        }
    } else {
        sim.remaining(key)
    };
    let failure = |code: &str, message: &str| {
        if get {
            sim.refund(key);
        }
        let mut resp = oci_error(StatusCode::NOT_FOUND, code, message);
        rate_headers(sim, &mut resp, key, sim.remaining(key));
        resp
    };
    let (digest, m) = match sim.manifest(name, reference) {
        Ok(found) => found,
        Err(LookupError::NoRepo) => {
            return failure("NAME_UNKNOWN", "repository name not known to registry");
        }
        Err(LookupError::NoManifest) => return failure("MANIFEST_UNKNOWN", "manifest unknown"),
    };
    let (digest, m) = if !accepts(parts, &m.media_type) && !reference.contains(':') {
        default_platform(sim, name, &m).unwrap_or((digest, m))
    } else {
        (digest, m)
    };
    if !accepts(parts, &m.media_type) {
        return failure(
            "MANIFEST_UNKNOWN",
            "manifest unknown: no accepted media type matches",
        );
    }
    let (body, len) = if get {
        let fault = sim.take_fault(FaultTarget::Manifests, Fault::is_body_fault);
        body_with_fault(m.bytes, fault, None, |_| {})
    } else {
        (Body::empty(), m.bytes.len() as u64)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    set_header(h, "content-type", &m.media_type);
    set_header(h, "content-length", &len.to_string());
    set_header(h, "docker-content-digest", &digest);
    set_header(h, "etag", &format!("\"{digest}\""));
    rate_headers(sim, &mut resp, key, remaining);
    resp
}

/// `GET|HEAD /v2/<name>/blobs/<digest>`: a 307 to a signed CDN URL.
async fn blob(sim: &Shared, parts: &Parts, digest: &str) -> Response {
    if let Some((_, resp)) = pre_header_fault(sim, parts, FaultTarget::Blobs).await {
        return resp;
    }
    cdn_redirect(sim, digest)
}

/// A 307 to a freshly signed CDN URL for `digest`, or 404 `BLOB_UNKNOWN`.
pub(super) fn cdn_redirect(sim: &Shared, digest: &str) -> Response {
    if sim.blob(digest).is_none() {
        return oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        );
    }
    let sig = random_hex(16);
    sim.issue_sig(sig.clone(), digest.to_owned());
    let mut resp = redirect(Some(&format!("{}/blobs/{digest}?sig={sig}", sim.cdn_url)));
    *resp.status_mut() = sim.blob_redirect;
    resp
}

/// A 307 to `location` (none at all with `None`) with the small HTML body
/// web servers send along.
pub(super) fn redirect(location: Option<&str>) -> Response {
    let body = format!(
        "<a href=\"{}\">Temporary Redirect</a>.\n",
        location.unwrap_or("")
    );
    let mut resp = with_body(
        StatusCode::TEMPORARY_REDIRECT,
        "text/html; charset=utf-8",
        body,
    );
    if let Some(location) = location {
        set_header(resp.headers_mut(), "location", location);
    }
    resp
}

/// `GET /v2/<name>/tags/list[?n=&last=]`, paginated with a `Link` header.
fn tags_list(sim: &Shared, parts: &Parts, name: &str) -> Response {
    let Some(all) = sim.tags(name) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
        );
    };
    let query = parse_query(parts.uri.query());
    let n = match query_get(&query, "n").map(str::parse::<usize>) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return oci_error(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                "invalid number of results requested",
            );
        }
    };
    let after: Vec<String> = match query_get(&query, "last") {
        Some(last) => all.into_iter().filter(|t| t.as_str() > last).collect(),
        None => all,
    };
    let (page, more) = match n {
        Some(n) if n < after.len() => (after[..n].to_vec(), n > 0),
        _ => (after, false),
    };
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({"name": name, "tags": page}),
    );
    if more && let (Some(n), Some(last)) = (n, page.last()) {
        let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
        set_header(resp.headers_mut(), "link", &link);
    }
    resp
}
