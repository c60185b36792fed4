//! Asking an owner: the peer path's client side.
//!
//! Requests go to `<owner>/_pullthrough/peer/v2/<repo>/...?ns=<upstream>`,
//! the owner's registry API behind the cluster secret, answered from the
//! owner's own tiers or its own fetch. The owner's answer about the content
//! itself (not found, denied, out of pulls) holds for the whole fleet and is
//! [`PeerError::Answered`]; anything that says the owner could not answer
//! (no connection, no head within `cluster.timeout`, a 5xx, a refused
//! secret, a broken protocol) is [`PeerError::Unavailable`], on which the
//! caller fetches the key itself.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::{HeaderMap, Method, StatusCode, header};

use super::{Cluster, Peer};
use crate::digest::Digest;
use crate::upstream::MAX_MANIFEST_BYTES;

/// Where the peer path starts on every replica.
pub const PEER_PREFIX: &str = "/_pullthrough/peer/";

/// The client a peer request is made for (its address or authenticated
/// name), whose fair share the owner charges.
pub const CLIENT_HEADER: &str = "pullthrough-client";

/// On the owner's answer: how the owner answered (`stale`, `reserve`, …).
pub const OUTCOME_HEADER: &str = "pullthrough-outcome";

/// Why an owner gave no answer to use.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PeerError {
    /// The owner answered about the content, which holds here too.
    #[error("{message}")]
    Answered {
        status: StatusCode,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The owner could not answer: fetch the key locally. `reason` is the
    /// metric label.
    #[error("peer {peer}: {detail}")]
    Unavailable {
        peer: String,
        reason: &'static str,
        detail: String,
    },
}

/// A blob streaming from its owner.
pub struct PeerBlob {
    /// The blob's size, when the owner knew it.
    pub size: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes, PeerError>>,
}

/// A manifest by digest from its owner (not yet verified here).
pub struct PeerManifest {
    pub media_type: String,
    pub body: Bytes,
}

/// What a tag's owner says it points at.
pub struct PeerTag {
    pub digest: Digest,
    pub media_type: String,
    pub size: Option<u64>,
    /// How long ago the owner last checked it upstream (`Age`).
    pub age: Duration,
    /// The owner's outcome, such as `stale` when upstream failed there.
    pub outcome: Option<String>,
}

impl Cluster {
    /// `GET` a blob from its owner; the body streams as the owner's
    /// download progresses.
    pub async fn blob(
        &self,
        peer: &Peer,
        upstream: &str,
        repo: &str,
        digest: &Digest,
    ) -> Result<PeerBlob, PeerError> {
        let path = format!("v2/{repo}/blobs/{digest}?ns={upstream}");
        let response = self.ask(peer, Method::GET, &path, "", None, "blob").await?;
        let size = response.content_length();
        let received = self.inner.metrics.cluster.received_bytes.clone();
        let (this, owner) = (self.clone(), peer.clone());
        let body = response
            .bytes_stream()
            .map(move |chunk| match chunk {
                Ok(bytes) => {
                    received.inc_by(bytes.len() as u64);
                    Ok(bytes)
                }
                Err(e) => Err(this.unavailable(&owner, "blob", "broken", e.to_string())),
            })
            .boxed();
        Ok(PeerBlob { size, body })
    }

    /// `GET` a manifest by digest from its owner, for `client`.
    pub async fn manifest(
        &self,
        peer: &Peer,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        client: Option<&str>,
    ) -> Result<PeerManifest, PeerError> {
        let path = format!("v2/{repo}/manifests/{digest}?ns={upstream}");
        let accept = crate::registry::ALL_MANIFEST_TYPES;
        let response = self
            .ask(peer, Method::GET, &path, accept, client, "manifest")
            .await?;
        let invalid = |detail: String| self.unavailable(peer, "manifest", "invalid", detail);
        let media_type = media_type(response.headers())
            .ok_or_else(|| invalid("an answer without Content-Type".into()))?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES)
        {
            return Err(invalid("a manifest larger than 4 MiB".into()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(peer, "manifest", "broken", e.to_string()))?;
        Ok(PeerManifest { media_type, body })
    }

    /// `HEAD` a tag at its owner, for `client` accepting `accept`.
    pub async fn tag(
        &self,
        peer: &Peer,
        upstream: &str,
        repo: &str,
        tag: &str,
        accept: &str,
        client: Option<&str>,
    ) -> Result<PeerTag, PeerError> {
        let path = format!("v2/{repo}/manifests/{tag}?ns={upstream}");
        let response = self
            .ask(peer, Method::HEAD, &path, accept, client, "tag")
            .await?;
        let headers = response.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let parsed = (|| {
            let digest = text("docker-content-digest")?.parse().ok()?;
            let age = text(header::AGE.as_str()).map_or(Some(0), |a| a.parse().ok())?;
            Some(PeerTag {
                digest,
                media_type: media_type(headers)?,
                size: response.content_length(),
                age: Duration::from_secs(age),
                outcome: text(OUTCOME_HEADER).map(str::to_owned),
            })
        })();
        parsed.ok_or_else(|| {
            let detail = "a tag answer without a digest, type or age".into();
            self.unavailable(peer, "tag", "invalid", detail)
        })
    }

    /// Asks the member at `url` who it is: the identity of the process
    /// that answered, or why none did.
    pub(super) async fn hello(&self, url: &str) -> Result<String, String> {
        let request = self
            .inner
            .client
            .get(format!("{url}{PEER_PREFIX}hello"))
            .bearer_auth(self.inner.secret.expose())
            .timeout(self.inner.timeout.min(Duration::from_secs(2)));
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let answer: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        let id = answer["id"].as_str().ok_or("an answer without an id")?;
        Ok(id.to_owned())
    }

    /// Sends one peer request and sorts its failure; counts it.
    async fn ask(
        &self,
        peer: &Peer,
        method: Method,
        path: &str,
        accept: &str,
        client: Option<&str>,
        kind: &'static str,
    ) -> Result<reqwest::Response, PeerError> {
        let url = format!("{}{PEER_PREFIX}{path}", peer.url);
        let mut request = self
            .inner
            .client
            .request(method, url)
            .bearer_auth(self.inner.secret.expose());
        if !accept.is_empty() {
            request = request.header(header::ACCEPT, accept);
        }
        if let Some(client) = client {
            request = request.header(CLIENT_HEADER, client);
        }
        let sent = tokio::time::timeout(self.inner.timeout, request.send()).await;
        let response = match sent {
            Err(_) => {
                let detail = format!("no answer within {:?}", self.inner.timeout);
                return Err(self.unavailable(peer, kind, "timeout", detail));
            }
            Ok(Err(e)) => {
                let reason = if e.is_connect() { "connect" } else { "broken" };
                return Err(self.unavailable(peer, kind, reason, e.to_string()));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            self.count(kind, "ok");
            return Ok(response);
        }
        match status {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                self.count(kind, "answered");
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .map(Duration::from_secs);
                let message = error_message(response).await;
                Err(PeerError::Answered {
                    status,
                    message,
                    retry_after,
                })
            }
            StatusCode::UNAUTHORIZED => {
                tracing::error!(peer = %peer.url, "cluster: the peer refused our secret; do all replicas share cluster.secret?");
                Err(self.unavailable(peer, kind, "refused", "refused the cluster secret".into()))
            }
            _ => {
                let detail = format!("answered {status}: {}", error_message(response).await);
                Err(self.unavailable(peer, kind, "status", detail))
            }
        }
    }

    /// The error for an owner that could not answer, counted; a member
    /// that did not answer at all is also passed over for a while.
    fn unavailable(
        &self,
        peer: &Peer,
        kind: &'static str,
        reason: &'static str,
        detail: String,
    ) -> PeerError {
        self.count(kind, reason);
        self.inner
            .metrics
            .cluster
            .fallbacks
            .with_label_values(&[reason])
            .inc();
        if matches!(reason, "connect" | "timeout" | "broken" | "refused") {
            self.failed(peer, &detail);
        }
        PeerError::Unavailable {
            peer: peer.url.clone(),
            reason,
            detail,
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.inner
            .metrics
            .cluster
            .sent
            .with_label_values(&[kind, result])
            .inc();
    }
}

/// The media type of an answer, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let value = value.split(';').next().unwrap_or(value).trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// The message of an OCI error body, or the status when there is none.
async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Option<serde_json::Value> = response.json().await.ok();
    body.as_ref()
        .and_then(|b| b["errors"][0]["message"].as_str())
        .map_or_else(|| status.to_string(), str::to_owned)
}
