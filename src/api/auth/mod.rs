//! Client authentication, checked before any handler (and so before the
//! cache is consulted): with auth on, a cached private image is served
//! only to clients allowed to read it.
//!
//! In order, for every request but `/healthz`, `/readyz` and (unless
//! `auth.protect_metrics`) `/metrics`:
//! 1. a peer outside `auth.allow_networks` gets 403 `DENIED`;
//! 2. when credentials are on, a request without valid ones gets 401
//!    `UNAUTHORIZED` with `WWW-Authenticate: Basic realm="pullthrough"`,
//!    the challenge on which dockerd, containerd, podman and skopeo send
//!    the Basic credentials they hold for the host (`/v2/` included, which
//!    clients probe first);
//! 3. a client limited by read rules gets 403 `DENIED` for a repository
//!    its rules do not name, and for the operators' endpoints.
//!
//! An authenticated client's name becomes its [`ClientId::Named`] for the
//! fair share of counted pulls.

mod credentials;
mod rules;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};
use ipnet::IpNet;

use self::credentials::Credentials;
use self::rules::Rules;
use super::{ApiError, AppState, EndpointKind, query_param};
use crate::config::{AuthConfig, ConfigError, DOCKER_HUB};
use crate::reference::{RepoName, V2Path};
use crate::registry::ClientId;

/// The challenge sent with every 401.
const CHALLENGE: &str = "Basic realm=\"pullthrough\"";

/// Why client authentication cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    File {
        path: PathBuf,
        line: usize,
        message: &'static str,
    },
    #[error("auth.rules: {0}")]
    Rule(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl AuthError {
    fn file(path: &Path, line: usize, message: &'static str) -> AuthError {
        AuthError::File {
            path: path.to_owned(),
            line,
            message,
        }
    }
}

/// The configured checks; shared by every request.
pub struct ClientAuth {
    networks: Vec<IpNet>,
    credentials: Option<Credentials>,
    rules: Rules,
    protect_metrics: bool,
}

impl ClientAuth {
    /// The checks `config` turns on, reading its files; `None` when auth
    /// is off.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Arc<ClientAuth>>, AuthError> {
        if !config.enabled() {
            return Ok(None);
        }
        let credentials = match config.needs_credentials() {
            true => Some(Credentials::load(config)?),
            false => None,
        };
        Ok(Some(Arc::new(ClientAuth {
            networks: config.networks()?,
            credentials,
            rules: Rules::new(&config.rules)?,
            protect_metrics: config.protect_metrics,
        })))
    }

    /// Paths admitted without client credentials: health, unprotected
    /// metrics, and the peer path, which checks the cluster secret itself.
    fn open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz")
            || (path == "/metrics" && !self.protect_metrics)
            || path.starts_with(crate::cluster::PEER_PREFIX)
    }

    fn network_allows(&self, peer: Option<IpAddr>) -> bool {
        if self.networks.is_empty() {
            return true;
        }
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let peer = peer.map(|ip| ip.to_canonical());
        peer.is_some_and(|ip| self.networks.iter().any(|net| net.contains(&ip)))
    }
}

/// The middleware: admits the request or answers 401 or 403.
pub(super) async fn guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = state.auth.clone() else {
        return next.run(request).await;
    };
    if auth.open(request.uri().path()) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if !auth.network_allows(peer) {
        return denied("this address may not use the mirror");
    }
    let Some(credentials) = &auth.credentials else {
        return next.run(request).await;
    };
    let header = request.headers().get(header::AUTHORIZATION);
    let Some(client) = credentials.identify(header).await else {
        return unauthorized();
    };
    if auth.rules.restricts(&client) && !may_read(&state, &auth.rules, &client, request.uri()) {
        return denied("this client may not read this repository");
    }
    request.extensions_mut().insert(ClientId::Named(client));
    next.run(request).await
}

/// Whether a client limited by rules may make this request: `/v2/` and
/// reads of repositories its rules name.
fn may_read(state: &AppState, rules: &Rules, client: &str, uri: &Uri) -> bool {
    let Some(rest) = uri.path().strip_prefix("/v2") else {
        return false;
    };
    let name = match V2Path::parse(rest) {
        V2Path::Base => return true,
        V2Path::Manifest { name, .. }
        | V2Path::Blob { name, .. }
        | V2Path::TagsList { name }
        | V2Path::Referrers { name, .. }
        | V2Path::Upload { name } => name,
        V2Path::Unknown => return false,
    };
    let Ok(repo) = RepoName::parse(name) else {
        return false;
    };
    let Ok((upstream, repo)) = state.registry.route(query_param(uri.query(), "ns"), &repo) else {
        return false;
    };
    let repo = match upstream.name() == DOCKER_HUB {
        true => repo.with_library_namespace(),
        false => repo,
    };
    rules.allows(client, upstream.name(), repo.as_str())
}

fn unauthorized() -> Response {
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    response.extensions_mut().insert(EndpointKind::Other);
    response
}

fn denied(message: &'static str) -> Response {
    let mut response = ApiError::new(StatusCode::FORBIDDEN, "DENIED", message).into_response();
    response.extensions_mut().insert(EndpointKind::Other);
    response
}
