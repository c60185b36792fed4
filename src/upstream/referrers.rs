//! The OCI 1.1 referrers API upstream: `GET /v2/<name>/referrers/<digest>`,
//! whose answer is an image index listing the manifests whose `subject` is
//! that digest. What comes back is checked to be such an index before a
//! caller can cache it.

use http::{HeaderMap, HeaderName, Method, header};

use super::exchange::Ask;
use super::{ErrorKind, MAX_MANIFEST_BYTES, Relayed, Upstream, UpstreamError};
use crate::digest::Digest;
use crate::reference::RepoName;

/// The media type of a referrers answer.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The header by which a registry says which filters it applied.
pub const FILTERS_APPLIED: &str = "oci-filters-applied";

impl Upstream {
    /// GETs the referrers of `digest`, passing the client's raw query (its
    /// still percent-encoded `artifactType` filter, a page's parameters)
    /// on, and relaying the filter and paging headers. A registry without
    /// the API answers 404, an [`ErrorKind::NotFound`] error; a 200 whose
    /// body is not an image index is [`ErrorKind::Invalid`].
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        query: &str,
    ) -> Result<Relayed, UpstreamError> {
        let mut path = format!("/v2/{repo}/referrers/{digest}");
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        let (response, _slot) = self
            .fetch(Ask {
                method: Method::GET,
                path: &path,
                repo,
                accept: OCI_INDEX,
                kind: "referrers",
                bounded: true,
                range_from: None,
            })
            .await?;
        let status = response.status();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, OCI_INDEX.parse().expect("valid"));
        for name in [HeaderName::from_static(FILTERS_APPLIED), header::LINK] {
            if let Some(v) = response.headers().get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let body = self.read_limited(response, MAX_MANIFEST_BYTES).await?;
        if !is_index(&body) {
            tracing::error!(upstream = %self.name, path, "referrers answer is not an image index; nothing stored");
            return Err(self.error(
                ErrorKind::Invalid,
                format!("{path}: the referrers answer is not an image index"),
            ));
        }
        Ok(Relayed {
            status,
            headers,
            body,
        })
    }
}

/// Whether `body` is a JSON object with a `manifests` array, as every
/// referrers answer is.
pub fn is_index(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("manifests").map(serde_json::Value::is_array))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_index_passes() {
        assert!(is_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!is_index(br#"{"schemaVersion":2}"#));
        assert!(!is_index(br#"{"manifests":{}}"#));
        assert!(!is_index(b"<html>404</html>"));
    }
}
