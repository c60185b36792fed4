//! The token realm (plays `auth.docker.io/token`): hands out opaque bearer
//! tokens carrying pull scopes, anonymously or for Basic-auth users.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use http::request::Parts;
use http::{Method, StatusCode};

use super::state::{Grant, Shared, bump};
use super::util::{basic_credentials, json, now_rfc3339, parse_query, query_get, random_hex};

/// The only service name the realm issues tokens for.
pub(super) const SERVICE: &str = "registry.sim";

/// Entry point for every request on the realm listener.
pub(super) async fn handle(State(sim): State<Arc<Shared>>, req: Request) -> Response {
    sim.record("realm", req.method(), req.uri());
    let (parts, _body) = req.into_parts();
    if parts.uri.path() != "/token" {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"details": "not found"}),
        );
    }
    issue(&sim, &parts)
}

/// Issues a token for the request's scopes, wherever the realm is served
/// (its own host, or a path on the registry's, see [`super::SimAuth`]).
pub(super) fn issue(sim: &Shared, parts: &Parts) -> Response {
    bump(&sim.counters.tokens);
    if parts.method != Method::GET {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"details": "only GET is supported"}),
        );
    }
    let query = parse_query(parts.uri.query());
    if let Some(service) = query_get(&query, "service")
        && service != SERVICE
    {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"details": format!("unknown service {service:?}")}),
        );
    }

    let user = match basic_credentials(&parts.headers) {
        None => None,
        Some(Ok((u, p)))
            if sim.users.is_empty() || sim.users.iter().any(|(cu, cp)| *cu == u && *cp == p) =>
        {
            Some(u)
        }
        Some(_) => {
            bump(&sim.counters.unauthorized);
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"details": "incorrect username or password"}),
            );
        }
    };

    // `scope` may repeat, and one value may hold several space-separated scopes.
    let scopes: HashSet<String> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .filter_map(pull_scope)
        .collect();

    let token = random_hex(24);
    let ttl = sim.token_ttl;
    sim.issue_token(
        token.clone(),
        Grant {
            scopes,
            user,
            expires: Instant::now() + ttl,
        },
    );
    json(
        StatusCode::OK,
        &serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": ttl.as_secs_f64().ceil() as u64,
            "issued_at": now_rfc3339(),
        }),
    )
}

/// `repository:<name>:<actions>` -> `repository:<name>:pull` when `pull` (or
/// `*`) is among the actions; anything else grants nothing.
fn pull_scope(scope: &str) -> Option<String> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    (!name.is_empty() && actions.split(',').any(|a| a == "pull" || a == "*"))
        .then(|| format!("repository:{name}:pull"))
}
