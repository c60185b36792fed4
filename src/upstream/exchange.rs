//! One exchange with an upstream, whatever is asked: the request, the token
//! flow on a 401, and redirects followed to wherever the content really is.
//!
//! Registries send clients elsewhere: Docker Hub answers blobs with a 307 to
//! signed storage that refuses an `Authorization` header, registry.k8s.io
//! answers every manifest and tag request with a 307 to another registry
//! (another host, another path, its own token realm). Every request kind
//! goes through [`Upstream::send`], which follows 301, 302, 303, 307 and 308
//! up to [`MAX_REDIRECTS`] hops, authenticates at each origin with what that
//! origin's challenge asked for, and never carries one origin's credentials
//! to another: the `Authorization` of a hop is chosen for that hop's origin
//! in `send_once`, the only place that sets it. Each hop is checked by the
//! egress policy (`egress`) before it is followed, and hops to a foreign
//! origin go through the client whose resolver enforces it. A 3xx it does
//! not follow is an error, never a success.
//! Callers reach it through `retry`, which adds fetch slots, retries and
//! the circuit breaker around each exchange.

use http::{HeaderValue, Method, StatusCode, header};
use reqwest::{Response, Url};

use super::Upstream;
use super::auth::Challenge;
use super::error::{ErrorKind, UpstreamError};
use crate::reference::RepoName;

/// Redirect hops followed before giving up.
pub(super) const MAX_REDIRECTS: usize = 5;

/// What one request is and how long it may take.
#[derive(Clone)]
pub(super) struct Ask<'a> {
    pub method: Method,
    /// Below the upstream's base URL, such as `/v2/library/alpine/manifests/3`.
    pub path: &'a str,
    pub repo: &'a RepoName,
    /// `Accept`, sent to every hop; empty for none.
    pub accept: &'a str,
    /// The metrics label, such as `manifest_get`.
    pub kind: &'static str,
    /// Bounded by the request timeout (everything but blob bodies).
    pub bounded: bool,
    /// `Range: bytes=<n>-`, sent to every hop, to resume a blob body.
    pub range_from: Option<u64>,
}

impl Upstream {
    /// Sends `ask`, following redirects and answering one 401 challenge per
    /// hop; returns the response that carries the content, whose headers
    /// (digest, rate limit) are the ones that count.
    pub(super) async fn send(&self, ask: Ask<'_>) -> Result<Response, UpstreamError> {
        let mut url = Url::parse(&format!(
            "{}{}",
            self.base.as_str().trim_end_matches('/'),
            ask.path
        ))
        .map_err(|e| self.error(ErrorKind::Invalid, format!("request URL: {e}")))?;
        let home_scope = format!("repository:{}:pull", ask.repo);
        let mut hops = 0;
        let mut scope = home_scope.clone();
        let mut challenged = false;
        loop {
            let origin = url.origin().ascii_serialization();
            let response = self.send_once(&ask, &url, &origin, &scope).await?;
            self.budget.observe(response.headers());
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED
                && !challenged
                && let Some(challenge) = challenge_of(&response)
            {
                self.record(ask.kind, status.as_str());
                self.auth.learn(&origin, &challenge);
                if let Challenge::Bearer {
                    scope: Some(asked), ..
                } = &challenge
                {
                    scope = asked.clone();
                }
                self.auth.forget(&origin, &scope).await;
                challenged = true;
                continue;
            }
            if !is_followed(status) {
                self.check_status(&response, ask.kind)?;
                return Ok(response);
            }
            self.record(ask.kind, status.as_str());
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(self.error(
                    ErrorKind::Invalid,
                    format!("more than {MAX_REDIRECTS} redirects from {}", ask.path),
                ));
            }
            let next = self.location(&response)?;
            self.egress.check_redirect(&url, &next).await?;
            url = next;
            scope = if self.egress.is_home(&url) {
                home_scope.clone()
            } else {
                scope_in(url.path())
            };
            challenged = false;
        }
    }

    /// One request to `url`, with `origin`'s authorization for `scope` when
    /// that origin asked for one, and never another origin's.
    async fn send_once(
        &self,
        ask: &Ask<'_>,
        url: &Url,
        origin: &str,
        scope: &str,
    ) -> Result<Response, UpstreamError> {
        let client = self.egress.client(url);
        let mut request = client.request(ask.method.clone(), url.clone());
        if ask.bounded {
            request = request.timeout(self.request_timeout);
        }
        if !ask.accept.is_empty()
            && let Ok(v) = HeaderValue::from_str(ask.accept)
        {
            request = request.header(header::ACCEPT, v);
        }
        if let Some(offset) = ask.range_from {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(auth) = self
            .auth
            .authorization(origin, scope, self.request_timeout)
            .await?
        {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let started = std::time::Instant::now();
        let sent = request.send().await;
        self.metrics
            .traffic
            .upstream_seconds
            .with_label_values(&[&self.name, ask.kind])
            .observe(started.elapsed().as_secs_f64());
        sent.map_err(|e| self.failed(ask.kind, &e))
    }

    /// Where a redirect points, resolved against the URL that sent it.
    fn location(&self, response: &Response) -> Result<Url, UpstreamError> {
        let status = response.status();
        let next = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| response.url().join(v).ok())
            .ok_or_else(|| {
                self.error(
                    ErrorKind::Invalid,
                    format!(
                        "{} answered {status} without a usable Location",
                        response.url().path()
                    ),
                )
            })?;
        Ok(next)
    }

    /// Turns a final answer that is not a success into an error.
    fn check_status(&self, response: &Response, kind: &'static str) -> Result<(), UpstreamError> {
        let status = response.status();
        self.record(kind, status.as_str());
        let error_kind = match status.as_u16() {
            200..=299 => return Ok(()),
            300..=399 => ErrorKind::Invalid,
            404 => ErrorKind::NotFound,
            401 | 403 => ErrorKind::Denied,
            429 => {
                let wait = self.budget.refused(response.headers());
                return Err(self.budget.spent_error(&self.budget.state(), wait));
            }
            code => ErrorKind::Status(code),
        };
        Err(self.error(
            error_kind,
            format!("{} answered {status}", response.url().path()),
        ))
    }

    pub(super) fn failed(&self, kind: &'static str, err: &reqwest::Error) -> UpstreamError {
        let error = UpstreamError::from_reqwest(&self.name, err);
        self.record(
            kind,
            if error.kind == ErrorKind::Timeout {
                "timeout"
            } else {
                "error"
            },
        );
        error
    }

    fn record(&self, kind: &str, status: &str) {
        self.metrics
            .upstream_requests
            .with_label_values(&[&self.name, kind, status])
            .inc();
    }
}

/// The redirect statuses that are followed, keeping the method.
fn is_followed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn challenge_of(response: &Response) -> Option<Challenge> {
    response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(Challenge::parse)
}

/// The pull scope a registry path on another host is for, such as
/// `repository:k8s-artifacts-prod/images/pause:pull` for
/// `/v2/k8s-artifacts-prod/images/pause/manifests/3.9`; empty when the path
/// names no repository (signed storage URLs), so no token is asked for
/// before that host challenges.
fn scope_in(path: &str) -> String {
    let Some((_, rest)) = path.split_once("/v2/") else {
        return String::new();
    };
    let name = ["/manifests/", "/blobs/", "/tags/list", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker).map(|at| &rest[..at]))
        .max_by_key(|name| name.len());
    match name {
        Some(name) if !name.is_empty() => format!("repository:{name}:pull"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_of_a_path_names_its_repository() {
        assert_eq!(
            scope_in("/v2/k8s-artifacts-prod/images/pause/manifests/3.9"),
            "repository:k8s-artifacts-prod/images/pause:pull"
        );
        assert_eq!(
            scope_in("/prefix/v2/a/b/blobs/sha256:00"),
            "repository:a/b:pull"
        );
        assert_eq!(scope_in("/v2/x/tags/list"), "repository:x:pull");
        assert_eq!(scope_in("/blobs/sha256:00"), "");
        assert_eq!(scope_in("/v2/"), "");
    }

    #[test]
    fn only_redirects_that_keep_the_method_are_followed() {
        for code in [301, 302, 303, 307, 308] {
            assert!(is_followed(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 300, 304, 305, 401] {
            assert!(!is_followed(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }
}
