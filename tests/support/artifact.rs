//! OCI 1.1 artifacts for the referrers tests: manifests whose `subject`
//! names an image, as cosign signatures and SBOM attestations are, and the
//! index the referrers tag schema keeps under `<alg>-<ref>`.

use bytes::Bytes;
use serde_json::{Value, json};

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index media type, also every referrers answer's.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The empty descriptor's media type and content.
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY: &[u8] = b"{}";

/// An artifact manifest of `artifact_type` whose subject is the manifest
/// `subject` (of `subject_type`); its one layer is the empty blob, its
/// `seed` annotation makes each artifact distinct.
pub fn artifact(subject_type: &str, subject: &Bytes, artifact_type: &str, seed: u64) -> Bytes {
    let empty = json!({
        "mediaType": EMPTY_TYPE,
        "digest": super::sha256_digest(EMPTY),
        "size": EMPTY.len(),
    });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty,
        "layers": [empty],
        "subject": {
            "mediaType": subject_type,
            "digest": super::sha256_digest(subject),
            "size": subject.len(),
        },
        "annotations": {"seed": seed.to_string()},
    });
    Bytes::from(manifest.to_string())
}

/// The descriptor a referrers list holds for `artifact`.
pub fn descriptor(artifact: &Bytes) -> Value {
    let v: Value = serde_json::from_slice(artifact).unwrap();
    json!({
        "mediaType": OCI_MANIFEST,
        "digest": super::sha256_digest(artifact),
        "size": artifact.len(),
        "artifactType": v["artifactType"],
    })
}

/// An image index listing `descriptors`, as the referrers tag holds.
pub fn referrers_index(descriptors: &[Value]) -> Bytes {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    });
    Bytes::from(index.to_string())
}

/// The referrers tag schema's tag for `digest`: `sha256:<hex>` -> `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The annotation oras gives each file of an artifact: its file name.
pub const TITLE: &str = "org.opencontainers.image.title";

/// An artifact manifest as `oras push` makes it: the empty config, and
/// one `application/octet-stream` layer for each of `files` (name,
/// bytes), titled with its name.
pub fn bundle(artifact_type: &str, files: &[(&str, Bytes)]) -> Bytes {
    let empty = json!({
        "mediaType": EMPTY_TYPE,
        "digest": super::sha256_digest(EMPTY),
        "size": EMPTY.len(),
    });
    let layers: Vec<Value> = files
        .iter()
        .map(|(name, bytes)| {
            json!({
                "mediaType": "application/octet-stream",
                "digest": super::sha256_digest(bytes),
                "size": bytes.len(),
                "annotations": {TITLE: name},
            })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": empty,
        "layers": layers,
    });
    Bytes::from(manifest.to_string())
}
