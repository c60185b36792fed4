//! Content negotiation: which known manifest media types a client accepts.
//!
//! dockerd sends each media type on its own `Accept` line, in random order;
//! containerd sends one comma-separated line. Both are read whole and
//! normalised to the set of [`KNOWN_MANIFEST_TYPES`] they list. Anything
//! else (`*/*`, `application/json`, junk) is dropped: distribution ignores
//! `*/*` too, and an unknown type can neither be cached nor be worth a trip
//! upstream. The set is what pullthrough forwards upstream and what chooses
//! a tag's cached record (see `tags::TagEntry::choose`).

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

/// The manifest media types a tag record can hold: [`ALL_MANIFEST_TYPES`]
/// without `*/*`, in the same (sorted) order.
pub const KNOWN_MANIFEST_TYPES: [&str; 7] = [
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
];

/// How rich a manifest type is. A registry answers the richest kind the
/// client accepts: an index (or manifest list) if the tag names one, else
/// the image manifest, and schema 1 only to clients that accept nothing
/// newer. The order of the variants is that preference.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A type pullthrough does not know (only upstream can send one).
    Other,
    /// Docker schema 1, signed or not.
    Schema1,
    /// One image (Docker schema 2, OCI manifest, OCI artifact).
    Manifest,
    /// Many images (Docker manifest list, OCI index).
    Index,
}

impl Kind {
    /// The kind of `media_type`.
    pub fn of(media_type: &str) -> Kind {
        match media_type {
            "application/vnd.docker.distribution.manifest.list.v2+json"
            | "application/vnd.oci.image.index.v1+json" => Kind::Index,
            "application/vnd.docker.distribution.manifest.v2+json"
            | "application/vnd.oci.image.manifest.v1+json"
            | "application/vnd.oci.artifact.manifest.v1+json" => Kind::Manifest,
            "application/vnd.docker.distribution.manifest.v1+json"
            | "application/vnd.docker.distribution.manifest.v1+prettyjws" => Kind::Schema1,
            _ => Kind::Other,
        }
    }
}

/// The known manifest types a client accepts, as a bit set over
/// [`KNOWN_MANIFEST_TYPES`]. Empty means "no preference": no `Accept`, or
/// only `*/*` and unknown types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AcceptSet(u8);

impl AcceptSet {
    /// Reads every `Accept` line of a request (comma-separated values,
    /// parameters such as `q=` ignored, case-insensitive).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|line| line.split(','))
            .map(|item| item.split(';').next().unwrap_or("").trim())
            .fold(AcceptSet(0), |set, t| match index_of(t) {
                Some(i) => AcceptSet(set.0 | (1 << i)),
                None => set,
            })
    }

    /// A set of exactly `types` (unknown ones dropped).
    pub fn of(types: &[&str]) -> Self {
        AcceptSet(
            types
                .iter()
                .filter_map(|t| index_of(t))
                .fold(0, |set, i| set | (1 << i)),
        )
    }

    /// Whether the client stated no preference among known types.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether `media_type` is listed.
    pub fn admits(self, media_type: &str) -> bool {
        index_of(media_type).is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The richest kind listed; `None` for no preference.
    pub fn richest(self) -> Option<Kind> {
        self.types().map(Kind::of).max()
    }

    /// The listed types, in [`KNOWN_MANIFEST_TYPES`] order.
    pub fn types(self) -> impl Iterator<Item = &'static str> {
        KNOWN_MANIFEST_TYPES
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, t)| *t)
    }

    /// The set as one `Accept` value for upstream; empty for no preference.
    pub fn header_value(self) -> String {
        self.types().collect::<Vec<_>>().join(",")
    }
}

fn index_of(media_type: &str) -> Option<usize> {
    KNOWN_MANIFEST_TYPES
        .iter()
        .position(|known| known.eq_ignore_ascii_case(media_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(ACCEPT, v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn many_lines_in_any_order_give_one_set() {
        let a = lines(&[
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json; q=0.5",
        ]);
        let b = lines(&[
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json, application/vnd.oci.image.index.v1+json",
        ]);
        assert_eq!(AcceptSet::from_headers(&a), AcceptSet::from_headers(&b));
        assert_eq!(
            AcceptSet::from_headers(&a).header_value(),
            "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            AcceptSet::from_headers(&HeaderMap::new()).header_value(),
            ""
        );
    }

    #[test]
    fn wildcards_and_unknown_types_are_no_preference() {
        let junk = lines(&[
            "*/*",
            "application/x-junk-1, text/html;q=0.9",
            "application/json",
        ]);
        let set = AcceptSet::from_headers(&junk);
        assert!(set.is_empty());
        assert_eq!(set.richest(), None);
        assert_eq!(set.header_value(), "");
        let mixed = lines(&["application/x-junk, APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON, */*"]);
        assert_eq!(
            AcceptSet::from_headers(&mixed),
            AcceptSet::of(&["application/vnd.oci.image.manifest.v1+json"])
        );
    }

    #[test]
    fn the_richest_listed_kind_is_known() {
        let single = AcceptSet::of(&[
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ]);
        assert_eq!(single.richest(), Some(Kind::Manifest));
        assert!(single.admits("application/vnd.docker.distribution.manifest.v2+json"));
        assert!(!single.admits("application/vnd.oci.image.manifest.v1+json"));
        assert!(!single.admits("application/x-junk"));
        let all = AcceptSet::of(&KNOWN_MANIFEST_TYPES);
        assert_eq!(all.richest(), Some(Kind::Index));
        assert!(Kind::Index > Kind::Manifest && Kind::Manifest > Kind::Schema1);
        assert!(Kind::Schema1 > Kind::Other);
    }

    #[test]
    fn the_known_types_are_all_types_but_the_wildcard() {
        assert_eq!(
            format!("{},*/*", KNOWN_MANIFEST_TYPES.join(",")),
            ALL_MANIFEST_TYPES
        );
    }
}
