//! Content negotiation: the set of manifest media types a client accepts.
//!
//! dockerd sends each media type on its own `Accept` line, in random order;
//! containerd sends one comma-separated line. Both are read whole and
//! normalised to one sorted set, which is what pullthrough forwards upstream
//! and what keys a tag's cache entry (a tag may name different manifests
//! for different sets).

use http::HeaderMap;
use http::header::ACCEPT;

/// Every manifest media type pullthrough knows, for fetches by digest where
/// the content is fixed and any type must be accepted.
pub const ALL_MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.list.v2+json,\
application/vnd.docker.distribution.manifest.v1+json,\
application/vnd.docker.distribution.manifest.v1+prettyjws,\
application/vnd.docker.distribution.manifest.v2+json,\
application/vnd.oci.artifact.manifest.v1+json,\
application/vnd.oci.image.index.v1+json,\
application/vnd.oci.image.manifest.v1+json,\
*/*";

/// A normalised, sorted, de-duplicated list of accepted media types.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AcceptSet(String);

impl AcceptSet {
    /// Reads every `Accept` line of a request.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut types: Vec<&str> = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|line| line.split(','))
            .map(|item| item.split(';').next().unwrap_or("").trim())
            .filter(|t| !t.is_empty())
            .collect();
        types.sort_unstable();
        types.dedup();
        AcceptSet(types.join(","))
    }

    /// The set as one `Accept` value; empty when the client sent none.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_lines_in_any_order_give_one_set() {
        let mut a = HeaderMap::new();
        a.append(
            ACCEPT,
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        );
        a.append(
            ACCEPT,
            "application/vnd.docker.distribution.manifest.v2+json"
                .parse()
                .unwrap(),
        );
        a.append(
            ACCEPT,
            "application/vnd.oci.image.manifest.v1+json; q=0.5"
                .parse()
                .unwrap(),
        );
        let mut b = HeaderMap::new();
        b.append(
            ACCEPT,
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json, application/vnd.oci.image.index.v1+json"
                .parse()
                .unwrap(),
        );
        assert_eq!(AcceptSet::from_headers(&a), AcceptSet::from_headers(&b));
        assert_eq!(
            AcceptSet::from_headers(&a).as_str(),
            "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(AcceptSet::from_headers(&HeaderMap::new()).as_str(), "");
    }
}
