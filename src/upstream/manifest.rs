//! What makes an upstream answer a manifest, checked before anything is
//! cached: a 200 can still carry a redirect's HTML, a login page, an error
//! document or half a JSON file, and a cache must never keep those.
//!
//! A body is accepted when:
//! - it is a JSON object;
//! - it matches the digest it was asked for (by digest) and any
//!   `Docker-Content-Digest` upstream sent;
//! - its `mediaType`, when it has one, is the `Content-Type`;
//! - without `mediaType`: `schemaVersion` 1 (Docker schema 1) comes with a
//!   schema 1 or plain JSON type; an OCI manifest or index (where the field
//!   is optional) has the shape of one (`config`, `manifests`); Docker
//!   schema 2 types require the field; any other JSON type (artifacts,
//!   custom types) is taken as labelled, unless the object is an OCI error
//!   document (`errors` only).
//!
//! A HEAD has no body: its `Content-Type` must at least be a JSON type
//! ([`check_type`]), so a web page never becomes a tag's answer.
//!
//! The bytes and the media type are kept exactly as served.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::digest::{self, Digest};

/// Docker image manifest, schema 2.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1, unsigned and signed.
const SCHEMA1_TYPES: [&str; 3] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
];
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A manifest from upstream that passed [`check`]: its exact bytes, the
/// `Content-Type` it came with and its digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The digest asked for, else the one upstream announced (both checked
    /// against the bytes), else the SHA-256 of the bytes.
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// Why a body is not the manifest it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAManifest {
    #[error(transparent)]
    Digest(#[from] digest::DigestMismatch),
    #[error("manifest body is not a JSON object ({0})")]
    NotJson(String),
    #[error("manifest says mediaType {body:?} but was served as {header:?}")]
    MediaType { body: String, header: String },
    #[error("manifest served as {0:?} lacks the mediaType field that type requires")]
    MissingMediaType(String),
    #[error("a schema 1 manifest served as {0:?}")]
    Schema1(String),
    #[error("body served as {0:?} does not have the shape of one")]
    Shape(String),
    #[error("body served as {0:?} is an error document")]
    ErrorDocument(String),
}

/// Checks `body`, served as `media_type` with `announced` as its
/// `Docker-Content-Digest`, for a request of `requested` (a digest when the
/// request was by digest).
pub fn check(
    requested: Option<&Digest>,
    announced: Option<&Digest>,
    media_type: &str,
    body: Bytes,
) -> Result<Manifest, NotAManifest> {
    for expected in [requested, announced].into_iter().flatten() {
        digest::verify(expected, &body)?;
    }
    let object: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return Err(NotAManifest::NotJson("not an object".into())),
        Err(e) => return Err(NotAManifest::NotJson(e.to_string())),
    };
    check_media_type(&object, media_type)?;
    let digest = match requested.or(announced) {
        Some(d) => d.clone(),
        None => Digest::sha256_of(&body),
    };
    Ok(Manifest {
        digest,
        media_type: media_type.to_owned(),
        body,
    })
}

fn check_media_type(object: &Map<String, Value>, served: &str) -> Result<(), NotAManifest> {
    let mismatch = |body: &str| NotAManifest::MediaType {
        body: body.to_owned(),
        header: served.to_owned(),
    };
    match object.get("mediaType") {
        Some(Value::String(declared)) if declared.eq_ignore_ascii_case(served) => return Ok(()),
        Some(Value::String(declared)) => return Err(mismatch(declared)),
        Some(other) => return Err(mismatch(&other.to_string())),
        None => {}
    }
    let is = |t: &str| served.eq_ignore_ascii_case(t);
    if object.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
        return if SCHEMA1_TYPES.iter().any(|t| is(t)) {
            Ok(())
        } else {
            Err(NotAManifest::Schema1(served.to_owned()))
        };
    }
    let shaped = |field: &str, array: bool| match object.get(field) {
        Some(Value::Array(_)) => array,
        Some(Value::Object(_)) => !array,
        _ => false,
    };
    if is(DOCKER_MANIFEST) || is(DOCKER_LIST) {
        Err(NotAManifest::MissingMediaType(served.to_owned()))
    } else if (is(OCI_MANIFEST) && !shaped("config", false))
        || (is(OCI_INDEX) && !shaped("manifests", true))
    {
        Err(NotAManifest::Shape(served.to_owned()))
    } else if let Err(e) = check_type(served) {
        Err(e)
    } else if object.len() == 1 && object.contains_key("errors") {
        Err(NotAManifest::ErrorDocument(served.to_owned()))
    } else {
        Ok(())
    }
}

/// Checks what a HEAD can tell: the `Content-Type` of a manifest is JSON
/// (or signed schema 1), never a web page's.
pub fn check_type(media_type: &str) -> Result<(), NotAManifest> {
    if is_json_type(media_type)
        || SCHEMA1_TYPES
            .iter()
            .any(|t| media_type.eq_ignore_ascii_case(t))
    {
        Ok(())
    } else {
        Err(NotAManifest::NotJson(format!("served as {media_type:?}")))
    }
}

/// `application/json` or a `+json` structured type.
fn is_json_type(media_type: &str) -> bool {
    let lower = media_type.to_ascii_lowercase();
    lower == "application/json" || lower.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(media_type: &str, body: &str) -> Result<Manifest, NotAManifest> {
        check(None, None, media_type, Bytes::from(body.to_owned()))
    }

    #[test]
    fn manifests_pass_with_their_exact_bytes_and_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{}},"layers":[]}}"#
        );
        let m = ok(DOCKER_MANIFEST, &body).unwrap();
        assert_eq!(m.body, body.as_bytes());
        assert_eq!(m.digest, Digest::sha256_of(body.as_bytes()));
        assert!(
            ok(
                OCI_MANIFEST,
                r#"{"schemaVersion":2,"config":{},"layers":[]}"#
            )
            .is_ok()
        );
        assert!(ok(OCI_INDEX, r#"{"schemaVersion":2,"manifests":[]}"#).is_ok());
        let schema1 = r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        assert!(ok(SCHEMA1_TYPES[1], schema1).is_ok());
        assert!(
            ok(
                "application/vnd.example.custom+json",
                r#"{"hello":"world"}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn what_is_not_a_manifest_is_refused() {
        let html = "<html><body>Temporary Redirect</body></html>";
        assert!(matches!(
            ok("text/html", html),
            Err(NotAManifest::NotJson(_))
        ));
        assert!(matches!(
            ok(OCI_MANIFEST, html),
            Err(NotAManifest::NotJson(_))
        ));
        assert!(matches!(
            ok(OCI_MANIFEST, r#"{"schemaVersion":2,"config""#),
            Err(NotAManifest::NotJson(_))
        ));
        assert!(matches!(
            ok(OCI_MANIFEST, "[]"),
            Err(NotAManifest::NotJson(_))
        ));
        let wrong = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(matches!(
            ok(OCI_MANIFEST, &wrong),
            Err(NotAManifest::MediaType { .. })
        ));
        assert!(matches!(
            ok(DOCKER_MANIFEST, r#"{"schemaVersion":2}"#),
            Err(NotAManifest::MissingMediaType(_))
        ));
        assert!(matches!(
            ok(OCI_INDEX, r#"{"schemaVersion":2,"config":{}}"#),
            Err(NotAManifest::Shape(_))
        ));
        assert!(matches!(
            ok(OCI_MANIFEST, r#"{"schemaVersion":1}"#),
            Err(NotAManifest::Schema1(_))
        ));
        let error = r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#;
        assert!(matches!(
            ok("application/json", error),
            Err(NotAManifest::ErrorDocument(_))
        ));
        assert!(matches!(
            ok("text/plain", r#"{"a":1}"#),
            Err(NotAManifest::NotJson(_))
        ));
    }

    #[test]
    fn digests_are_checked_never_assumed() {
        let body = Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#);
        let other = Digest::sha256_of(b"something else");
        let right = Digest::sha256_of(&body);
        assert!(matches!(
            check(Some(&other), None, OCI_INDEX, body.clone()),
            Err(NotAManifest::Digest(_))
        ));
        assert!(matches!(
            check(None, Some(&other), OCI_INDEX, body.clone()),
            Err(NotAManifest::Digest(_))
        ));
        let m = check(Some(&right), Some(&right), OCI_INDEX, body).unwrap();
        assert_eq!(m.digest, right);
    }
}
