//! Upstream registries: one pooled HTTP client, one [`Upstream`] per
//! configured registry, and the operations pullthrough needs from them.
//!
//! Only registries named in the configuration are ever contacted: requests
//! pick an [`Upstream`] by name from [`Upstreams`], never by a URL a client
//! sent, and only for repositories its allow and deny lists admit (`repos`).
//! The only other hosts reached are those a configured registry redirects
//! to or names as its token realm, within the egress policy (`egress`).
//!
//! Every request goes through one exchange (`exchange`) that follows
//! redirects and runs the token flow at whichever host challenges; every
//! manifest is checked to be one (`manifest`) before a caller can cache it.
//! Around that exchange sit the defences against a failing upstream
//! (`retry`: fetch slots, retries and the `circuit` breaker; `resume`:
//! interrupted blob bodies continued with `Range`).

mod auth;
pub(crate) mod budget;
mod check;
mod circuit;
mod egress;
mod error;
mod exchange;
mod link;
pub(crate) mod manifest;
mod probe;
mod referrers;
mod repos;
pub(crate) mod resume;
mod retry;
mod route;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, StatusCode, header};
use reqwest::{Response, Url};

pub use auth::Challenge;
pub use budget::{Budget, BudgetState, Standing};
pub use check::BaseAnswer;
pub use error::{ErrorKind, UpstreamError};
pub use link::next_page;
pub use manifest::{Manifest, NotAManifest};
pub use referrers::{FILTERS_APPLIED, OCI_INDEX, is_index};
pub use route::{RouteError, UnknownUpstream};

use crate::config::{Config, UpstreamConfig};
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::reference::RepoName;
use auth::Authenticator;
use egress::Egress;
use exchange::Ask;
use repos::RepoFilter;

/// Checks one upstream's egress and repository keys; the error names the
/// key. Configuration validation calls it so a bad value fails at start-up.
pub fn check_egress_config(cfg: &UpstreamConfig) -> Result<(), (&'static str, String)> {
    egress::check_config(cfg)?;
    RepoFilter::new(&cfg.allow_repositories, &[]).map_err(|m| ("allow_repositories", m))?;
    RepoFilter::new(&[], &cfg.deny_repositories).map_err(|m| ("deny_repositories", m))?;
    Ok(())
}

/// Largest manifest accepted, as in distribution.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

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
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(config.timeouts.connect)
                .read_timeout(config.timeouts.read)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(64)
                .user_agent(concat!("pullthrough/", env!("CARGO_PKG_VERSION")))
        };
        let client = builder()
            .build()
            .map_err(|e| UpstreamError::new("*", ErrorKind::Invalid, e.to_string()))?;
        let mut by_name = BTreeMap::new();
        for (name, cfg) in config.upstreams.iter().filter(|(_, c)| c.enabled) {
            let invalid = |e: String| UpstreamError::new(name, ErrorKind::Invalid, e);
            let base =
                Url::parse(cfg.url.trim_end_matches('/')).map_err(|e| invalid(e.to_string()))?;
            let roots = egress::extra_roots(cfg).map_err(invalid)?;
            let trusting = || {
                roots
                    .iter()
                    .fold(builder(), |b, root| b.add_root_certificate(root.clone()))
            };
            let home_client = match roots.is_empty() {
                true => client.clone(),
                false => trusting().build().map_err(|e| invalid(e.to_string()))?,
            };
            let egress = Arc::new(Egress::new(
                name,
                &base,
                cfg,
                home_client,
                trusting,
                metrics.clone(),
            )?);
            let repos = RepoFilter::new(&cfg.allow_repositories, &cfg.deny_repositories)
                .map_err(invalid)?;
            let credentials = cfg.username.clone().zip(cfg.password.clone());
            let auth = Authenticator::new(name, egress.clone(), credentials);
            let upstream = Upstream {
                name: name.clone(),
                base,
                egress,
                repos,
                auth,
                tag_ttl: config.tag_ttl_of(name),
                request_timeout: config.timeouts.request,
                library_namespace: name == crate::config::DOCKER_HUB,
                budget: Budget::new(name, config.budget.clone(), metrics.clone()),
                resilience: retry::Resilience::new(name, &config.resilience, metrics),
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

    /// Every enabled upstream.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.by_name.values()
    }

    /// The upstream for requests that name none.
    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.default
    }

    /// The upstream a request addresses (by `ns`, a path prefix, or the
    /// default) and the repository name as that upstream knows it; a
    /// repository the upstream's allow and deny lists refuse is
    /// [`RouteError::Denied`], before any cache or upstream is asked.
    pub fn route(
        &self,
        ns: Option<&str>,
        name: &RepoName,
    ) -> Result<(Arc<Upstream>, RepoName), RouteError> {
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
        upstream.admit(&repo)?;
        Ok((upstream, repo))
    }
}

/// One upstream registry with its authentication state.
pub struct Upstream {
    name: String,
    base: Url,
    /// Which client reaches a URL, and where redirects and credentials may go.
    egress: Arc<Egress>,
    repos: RepoFilter,
    auth: Authenticator,
    tag_ttl: Duration,
    request_timeout: Duration,
    library_namespace: bool,
    budget: Budget,
    resilience: retry::Resilience,
    metrics: Metrics,
}

impl Upstream {
    /// The configured name, such as `docker.io`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pull budget this upstream announces, and how it may be spent.
    pub fn budget(&self) -> &Budget {
        &self.budget
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
        let (response, _slot) = self
            .fetch(Ask {
                method: Method::HEAD,
                path: &path,
                repo,
                accept,
                kind: "manifest_head",
                bounded: true,
                range_from: None,
            })
            .await?;
        let head = self.manifest_head(&response)?;
        manifest::check_type(&head.media_type).map_err(|e| self.not_a_manifest(&path, e))?;
        Ok(head)
    }

    /// GETs a manifest, whole, and checks that it is one (see
    /// [`manifest::check`]); what is not is an [`ErrorKind::Invalid`] error
    /// and reaches no cache. This is what Docker Hub counts as a pull.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<Manifest, UpstreamError> {
        self.budget.admit()?;
        let path = format!("/v2/{repo}/manifests/{reference}");
        let (response, _slot) = self
            .fetch(Ask {
                method: Method::GET,
                path: &path,
                repo,
                accept,
                kind: "manifest_get",
                bounded: true,
                range_from: None,
            })
            .await?;
        self.metrics
            .pulls_spent
            .with_label_values(&[&self.name])
            .inc();
        let head = self.manifest_head(&response)?;
        if head.size.is_some_and(|s| s > MAX_MANIFEST_BYTES) {
            return Err(self.error(ErrorKind::TooLarge, "manifest is larger than 4 MiB"));
        }
        let body = self.read_limited(response, MAX_MANIFEST_BYTES).await?;
        let requested = reference.parse::<Digest>().ok();
        manifest::check(
            requested.as_ref(),
            head.digest.as_ref(),
            &head.media_type,
            body,
        )
        .map_err(|e| self.not_a_manifest(&path, e))
    }

    /// The error for a body that is not a manifest, counted and logged.
    fn not_a_manifest(&self, path: &str, e: NotAManifest) -> UpstreamError {
        if matches!(e, NotAManifest::Digest(_)) {
            self.metrics
                .digest_mismatches
                .with_label_values(&["manifest"])
                .inc();
        }
        tracing::error!(upstream = %self.name, path, error = %e, "upstream sent no manifest; nothing stored");
        self.error(ErrorKind::Invalid, format!("{path}: {e}"))
    }

    /// Starts a blob download, following redirects to signed storage (which
    /// gets no `Authorization` header of ours); an interrupted body resumes
    /// (see `resume`).
    pub async fn get_blob(
        self: &Arc<Self>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobDownload, UpstreamError> {
        self.blob_from(repo, digest, resume::Start::Whole).await
    }

    /// HEADs a blob for its size, following redirects like [`Self::get_blob`].
    pub async fn head_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let (response, _slot) = self
            .fetch(Ask {
                method: Method::HEAD,
                path: &path,
                repo,
                accept: "",
                kind: "blob_head",
                bounded: false,
                range_from: None,
            })
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
        let (response, _slot) = self
            .fetch(Ask {
                method: Method::GET,
                path: &path,
                repo,
                accept: "",
                kind: "tags_list",
                bounded: true,
                range_from: None,
            })
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
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
