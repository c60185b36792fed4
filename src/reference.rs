//! Repository names, references and the `/v2/...` paths that carry them.
//!
//! Clients put names with any number of slashes in the path, so the path is
//! parsed from its end, where the fixed words (`manifests`, `blobs`, `tags`)
//! stand. Names and tags are checked against the OCI distribution grammar
//! before anything else sees them: nothing invalid reaches the cache or
//! upstream.

use std::fmt;

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted, as in distribution.
const MAX_NAME_LEN: usize = 255;
/// Longest tag, from the OCI grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
const MAX_TAG_LEN: usize = 128;

/// A repository name that matches the OCI grammar, such as `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// What is wrong with a name, reference or path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid repository name {0:?}")]
    Name(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl RepoName {
    /// Validates `name` against the OCI grammar.
    pub fn parse(name: &str) -> Result<Self, ReferenceError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.split('/').all(is_path_component);
        if valid {
            Ok(RepoName(name.to_owned()))
        } else {
            Err(ReferenceError::Name(name.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub's rule for official images: a one-component name such as
    /// `alpine` means `library/alpine`.
    pub fn with_library_namespace(&self) -> RepoName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepoName(format!("library/{}", self.0))
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of alphanumerics.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // A separator: ".", "_", "__" or one or more "-".
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += if bytes.get(i + 1) == Some(&b'_') {
                    2
                } else {
                    1
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// A tag that matches `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Tag(String);

impl Tag {
    /// Validates `tag` against the OCI grammar.
    pub fn parse(tag: &str) -> Result<Self, ReferenceError> {
        let bytes = tag.as_bytes();
        let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_TAG_LEN
            && word(&bytes[0])
            && bytes[1..]
                .iter()
                .all(|b| word(b) || *b == b'.' || *b == b'-');
        if valid {
            Ok(Tag(tag.to_owned()))
        } else {
            Err(ReferenceError::Tag(tag.to_owned()))
        }
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a manifest request names: a movable tag or an immutable digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference with a colon is a digest, anything else a tag.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.contains(':') {
            Ok(Reference::Digest(text.parse()?))
        } else {
            Ok(Reference::Tag(Tag::parse(text)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => f.write_str(d.as_str()),
        }
    }
}

/// The endpoint a `/v2/<rest>` path addresses, still unvalidated text.
///
/// Splitting is kept apart from validation so the API can tell a path it
/// does not serve (404) from a served path with a bad name (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Path<'a> {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    TagsList {
        name: &'a str,
    },
    /// `/v2/<name>/referrers/<digest>`: the OCI 1.1 referrers API.
    Referrers {
        name: &'a str,
        digest: &'a str,
    },
    /// `/v2/<name>/blobs/uploads/...`: pushing, which a mirror refuses.
    Upload {
        name: &'a str,
    },
    /// Anything else, such as `/v2/_catalog`.
    Unknown,
}

impl<'a> V2Path<'a> {
    /// Splits the part of the path after `/v2/`.
    pub fn parse(rest: &'a str) -> V2Path<'a> {
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            return V2Path::Base;
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return V2Path::TagsList { name };
        }
        if let Some(i) = rest.find("/blobs/uploads") {
            let tail = &rest[i + "/blobs/uploads".len()..];
            if tail.is_empty() || tail.starts_with('/') {
                return V2Path::Upload { name: &rest[..i] };
            }
        }
        let Some((head, last)) = rest.rsplit_once('/') else {
            return V2Path::Unknown;
        };
        let Some((name, kind)) = head.rsplit_once('/') else {
            return V2Path::Unknown;
        };
        match kind {
            "manifests" => V2Path::Manifest {
                name,
                reference: last,
            },
            "blobs" => V2Path::Blob { name, digest: last },
            "referrers" => V2Path::Referrers { name, digest: last },
            _ => V2Path::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_from_the_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c/d",
            "my-org/my_repo",
            "a__b",
            "a---b",
            "a.b",
            "x0/9y",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn rejects_names_outside_the_grammar() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "Alpine",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "-a",
            "a-",
            "a..b",
            "a b",
            "..",
            "a/../b",
            long.as_str(),
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn library_rule_applies_to_single_component_names() {
        let alpine = RepoName::parse("alpine").unwrap();
        assert_eq!(alpine.with_library_namespace().as_str(), "library/alpine");
        let org = RepoName::parse("bitnami/redis").unwrap();
        assert_eq!(org.with_library_namespace().as_str(), "bitnami/redis");
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(Tag::parse("3.20").is_ok());
        assert!(Tag::parse("_x-Y.1").is_ok());
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        for bad in ["", ".x", "-x", "a/b", "a b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn references_split_tags_from_digests() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
        assert!(Reference::parse("sha256:zz").is_err());
    }

    #[test]
    fn paths_parse_from_the_end() {
        assert_eq!(V2Path::parse(""), V2Path::Base);
        assert_eq!(
            V2Path::parse("a/b/c/manifests/latest"),
            V2Path::Manifest {
                name: "a/b/c",
                reference: "latest"
            }
        );
        assert_eq!(
            V2Path::parse("manifests/manifests/x"),
            V2Path::Manifest {
                name: "manifests",
                reference: "x"
            }
        );
        assert_eq!(
            V2Path::parse("library/alpine/blobs/sha256:ab"),
            V2Path::Blob {
                name: "library/alpine",
                digest: "sha256:ab"
            }
        );
        assert_eq!(V2Path::parse("x/tags/list"), V2Path::TagsList { name: "x" });
        assert_eq!(
            V2Path::parse("a/b/referrers/sha256:ab"),
            V2Path::Referrers {
                name: "a/b",
                digest: "sha256:ab"
            }
        );
        assert_eq!(
            V2Path::parse("x/blobs/uploads/"),
            V2Path::Upload { name: "x" }
        );
        assert_eq!(
            V2Path::parse("x/blobs/uploads/123"),
            V2Path::Upload { name: "x" }
        );
        assert_eq!(V2Path::parse("_catalog"), V2Path::Unknown);
        assert_eq!(V2Path::parse("x/other/y"), V2Path::Unknown);
    }
}
