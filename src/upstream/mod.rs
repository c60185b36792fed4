//! Upstream registries: one pooled HTTP client, one [`Upstream`] per
//! configured registry, and the operations pullthrough needs from them.
//!
//! Only registries named in the configuration are ever contacted: requests
//! pick an [`Upstream`] by name from [`Upstreams`], never by a URL a client
//! sent.

mod auth;
mod error;
mod ratelimit;
mod route;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use reqwest::{Response, Url};

pub use auth::Challenge;
pub use error::{ErrorKind, UpstreamError};
pub use route::UnknownUpstream;

use crate::config::Config;
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::reference::RepoName;
use auth::Authenticator;

/// Largest manifest accepted, as in distribution.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Redirect hops followed for a blob before giving up.
const MAX_REDIRECTS: usize = 5;

/// What a manifest HEAD (or the head of a GET) tells.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Option<Digest>,
    pub media_type: String,
    pub size: Option<u64>,
}

/// A blob body on its way from upstream.
pub struct BlobDownload {
    /// `Content-Length`, when upstream sent one.
    pub size: Option<u64>,
    pub body: Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send + Unpin>,
}

/// An upstream answer relayed as it is (tag lists).
#[derive(Debug, Clone)]
pub struct Relayed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// All configured upstreams by name; cheap to clone.
#[derive(Clone)]
pub struct Upstreams {
    by_name: Arc<BTreeMap<String, Arc<Upstream>>>,
    default: Arc<Upstream>,
}

impl Upstreams {
    /// Builds a client for every enabled upstream in `config`.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<Self, UpstreamError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeouts.connect)
            .read_timeout(config.timeouts.read)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(64)
            .user_agent(concat!("pullthrough/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::new("*", ErrorKind::Invalid, e.to_string()))?;
        let mut by_name = BTreeMap::new();
        for (name, cfg) in config.upstreams.iter().filter(|(_, c)| c.enabled) {
            let base = Url::parse(cfg.url.trim_end_matches('/'))
                .map_err(|e| UpstreamError::new(name, ErrorKind::Invalid, e.to_string()))?;
            let credentials = cfg.username.clone().zip(cfg.password.clone());
            let upstream = Upstream {
                name: name.clone(),
                base,
                client: client.clone(),
                auth: Authenticator::new(name, credentials),
                tag_ttl: config.tag_ttl_of(name),
                request_timeout: config.timeouts.request,
                library_namespace: name == crate::config::DOCKER_HUB,
                metrics: metrics.clone(),
            };
            by_name.insert(name.clone(), Arc::new(upstream));
        }
        let default = by_name
            .get(&config.default_upstream)
            .cloned()
            .ok_or_else(|| {
                UpstreamError::new(
                    &config.default_upstream,
                    ErrorKind::Invalid,
                    "default upstream is not enabled",
                )
            })?;
        Ok(Upstreams {
            by_name: Arc::new(by_name),
            default,
        })
    }

    /// The upstream called `name`, if configured and enabled.
    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    /// The upstream for requests that name none.
    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.default
    }

    /// The upstream a request addresses (by `ns`, a path prefix, or the
    /// default) and the repository name as that upstream knows it.
    pub fn route(
        &self,
        ns: Option<&str>,
        name: &RepoName,
    ) -> Result<(Arc<Upstream>, RepoName), UnknownUpstream> {
        let route = route::route(ns, name.as_str(), |n| self.by_name.contains_key(n))?;
        let upstream = match route.upstream {
            Some(n) => self.by_name[n].clone(),
            None => self.default.clone(),
        };
        let repo = if route.repo.len() == name.as_str().len() {
            name.clone()
        } else {
            RepoName::parse(route.repo).expect("a suffix of a valid name is valid")
        };
        let repo = upstream.canonical(&repo);
        Ok((upstream, repo))
    }
}

/// One upstream registry with its authentication state.
pub struct Upstream {
    name: String,
    base: Url,
    client: reqwest::Client,
    auth: Authenticator,
    tag_ttl: Duration,
    request_timeout: Duration,
    library_namespace: bool,
    metrics: Metrics,
}

impl Upstream {
    /// The configured name, such as `docker.io`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long a tag answer from this upstream is trusted.
    pub fn tag_ttl(&self) -> Duration {
        self.tag_ttl
    }

    /// The repository as this upstream names it (Docker Hub's `library/` rule).
    fn canonical(&self, repo: &RepoName) -> RepoName {
        if self.library_namespace {
            repo.with_library_namespace()
        } else {
            repo.clone()
        }
    }

    fn error(&self, kind: ErrorKind, detail: impl Into<String>) -> UpstreamError {
        UpstreamError::new(&self.name, kind, detail)
    }

    /// HEADs a manifest: free on Docker Hub, so the way to check a tag.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<ManifestHead, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = self
            .send(Method::HEAD, &path, repo, accept, "manifest_head", true)
            .await?;
        self.manifest_head(&response)
    }

    /// GETs a manifest, whole. This is what Docker Hub counts as a pull.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<(ManifestHead, Bytes), UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let response = self
            .send(Method::GET, &path, repo, accept, "manifest_get", true)
            .await?;
        let head = self.manifest_head(&response)?;
        if head.size.is_some_and(|s| s > MAX_MANIFEST_BYTES) {
            return Err(self.error(ErrorKind::TooLarge, "manifest is larger than 4 MiB"));
        }
        let body = self.read_limited(response, MAX_MANIFEST_BYTES).await?;
        Ok((
            ManifestHead {
                size: Some(body.len() as u64),
                ..head
            },
            body,
        ))
    }

    /// Starts a blob download, following the redirect to a CDN without our
    /// `Authorization` header when it leaves the registry's origin.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobDownload, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let response = self
            .send_following(Method::GET, &path, repo, "blob_get")
            .await?;
        let size = response.content_length();
        let name = self.name.clone();
        let bytes = self.metrics.upstream_bytes.with_label_values(&[&self.name]);
        let body = response
            .bytes_stream()
            .inspect_ok(move |chunk| bytes.inc_by(chunk.len() as u64))
            .map_err(move |e| UpstreamError::from_reqwest(&name, &e));
        Ok(BlobDownload {
            size,
            body: Box::new(body),
        })
    }

    /// HEADs a blob for its size, following redirects like [`Self::get_blob`].
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let response = self
            .send_following(Method::HEAD, &path, repo, "blob_head")
            .await?;
        Ok(content_length(response.headers()))
    }

    /// Relays `tags/list` with the client's `n` and `last`.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        query: Option<&str>,
    ) -> Result<Relayed, UpstreamError> {
        let mut path = format!("/v2/{repo}/tags/list");
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            path.push('?');
            path.push_str(q);
        }
        let response = self
            .send(Method::GET, &path, repo, "", "tags_list", true)
            .await?;
        let status = response.status();
        let mut headers = HeaderMap::new();
        for name in [header::CONTENT_TYPE, header::LINK] {
            if let Some(v) = response.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let body = self.read_limited(response, MAX_MANIFEST_BYTES).await?;
        Ok(Relayed {
            status,
            headers,
            body,
        })
    }

    fn manifest_head(&self, response: &Response) -> Result<ManifestHead, UpstreamError> {
        let headers = response.headers();
        let digest = match headers.get("docker-content-digest").map(|v| v.to_str()) {
            None => None,
            Some(Ok(text)) => Some(
                text.parse()
                    .map_err(|e| self.error(ErrorKind::Invalid, format!("{e}")))?,
            ),
            Some(Err(_)) => {
                return Err(self.error(ErrorKind::Invalid, "unreadable Docker-Content-Digest"));
            }
        };
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.error(ErrorKind::Invalid, "manifest without Content-Type"))?;
        Ok(ManifestHead {
            digest,
            media_type,
            size: content_length(headers),
        })
    }

    async fn read_limited(&self, response: Response, limit: u64) -> Result<Bytes, UpstreamError> {
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| UpstreamError::from_reqwest(&self.name, &e))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(self.error(
                    ErrorKind::TooLarge,
                    format!("answer is larger than {limit} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    /// Sends an authenticated request and follows redirects by hand.
    async fn send_following(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        kind: &'static str,
    ) -> Result<Response, UpstreamError> {
        let mut response = self
            .send(method.clone(), path, repo, "", kind, false)
            .await?;
        for _ in 0..MAX_REDIRECTS {
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let from = response.url().clone();
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| from.join(v).ok())
                .ok_or_else(|| {
                    self.error(ErrorKind::Invalid, "redirect without a usable Location")
                })?;
            let mut request = self.client.request(method.clone(), location.clone());
            if location.origin() == self.base.origin() {
                let scope = format!("repository:{repo}:pull");
                if let Some(auth) = self
                    .auth
                    .authorization(&self.client, &scope, self.request_timeout)
                    .await?
                {
                    request = request.header(header::AUTHORIZATION, auth);
                }
            }
            response = request.send().await.map_err(|e| self.failed(kind, &e))?;
            self.check_status(&response, kind)?;
        }
        Err(self.error(ErrorKind::Invalid, "too many redirects"))
    }

    /// Sends one request with a token for `repo`'s pull scope, answering one
    /// 401 challenge by authenticating and trying once more.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        accept: &str,
        kind: &'static str,
        bounded: bool,
    ) -> Result<Response, UpstreamError> {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let scope = format!("repository:{repo}:pull");
        let mut challenged = false;
        loop {
            let mut request = self.client.request(method.clone(), &url);
            if bounded {
                request = request.timeout(self.request_timeout);
            }
            if !accept.is_empty()
                && let Ok(v) = HeaderValue::from_str(accept)
            {
                request = request.header(header::ACCEPT, v);
            }
            if let Some(auth) = self
                .auth
                .authorization(&self.client, &scope, self.request_timeout)
                .await?
            {
                request = request.header(header::AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(|e| self.failed(kind, &e))?;
            ratelimit::observe(&self.metrics, &self.name, response.headers());
            if response.status() == StatusCode::UNAUTHORIZED && !challenged {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(Challenge::parse);
                if let Some(challenge) = challenge {
                    self.record(kind, "401");
                    self.auth.learn(&challenge);
                    self.auth.forget(&scope).await;
                    challenged = true;
                    continue;
                }
            }
            self.check_status(&response, kind)?;
            return Ok(response);
        }
    }

    fn check_status(&self, response: &Response, kind: &'static str) -> Result<(), UpstreamError> {
        let status = response.status();
        self.record(kind, status.as_str());
        let error_kind = match status.as_u16() {
            200..=399 => return Ok(()),
            404 => ErrorKind::NotFound,
            401 | 403 => ErrorKind::Denied,
            429 => ErrorKind::RateLimited,
            code => ErrorKind::Status(code),
        };
        Err(self.error(
            error_kind,
            format!("{} answered {status}", response.url().path()),
        ))
    }

    fn failed(&self, kind: &'static str, err: &reqwest::Error) -> UpstreamError {
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

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
