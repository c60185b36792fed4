//! What a manifest references, read from its JSON: the manifests of an
//! index, and the config, layers and blobs of an image or artifact
//! manifest. Used to protect the blobs of an image being pulled and to pin
//! a whole image; anything unreadable references nothing.

use serde::Deserialize;

use crate::digest::Digest;

/// The digests one manifest references, by what they are.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Manifests of an index (one per platform, or attestations).
    pub manifests: Vec<Digest>,
    /// Config, layers and other blobs.
    pub blobs: Vec<Digest>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Schema1Layer {
    blob_sum: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    blobs: Vec<Descriptor>,
    #[serde(default)]
    fs_layers: Vec<Schema1Layer>,
}

/// The references of the manifest `body`; digests that do not parse are
/// left out.
pub fn references(body: &[u8]) -> References {
    let Ok(doc) = serde_json::from_slice::<Document>(body) else {
        return References::default();
    };
    let parse = |text: &str| text.parse::<Digest>().ok();
    let blobs = doc
        .config
        .iter()
        .chain(&doc.layers)
        .chain(&doc.blobs)
        .filter_map(|d| parse(&d.digest))
        .chain(doc.fs_layers.iter().filter_map(|l| parse(&l.blob_sum)))
        .collect();
    References {
        manifests: doc
            .manifests
            .iter()
            .filter_map(|d| parse(&d.digest))
            .collect(),
        blobs,
    }
}

impl References {
    /// Every referenced digest.
    pub fn all(&self) -> impl Iterator<Item = &Digest> {
        self.manifests.iter().chain(&self.blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn images_indexes_and_artifacts_name_what_they_reference() {
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
            d(1),
            d(2),
            d(3)
        );
        let refs = references(image.as_bytes());
        assert_eq!(refs.blobs, vec![d(1), d(2), d(3)]);
        assert!(refs.manifests.is_empty());

        let index = format!(
            r#"{{"manifests":[{{"digest":"{}"}},{{"digest":"not-a-digest"}}]}}"#,
            d(4)
        );
        assert_eq!(references(index.as_bytes()).manifests, vec![d(4)]);

        let artifact = format!(r#"{{"blobs":[{{"digest":"{}"}}]}}"#, d(5));
        assert_eq!(references(artifact.as_bytes()).blobs, vec![d(5)]);
        let schema1 = format!(r#"{{"fsLayers":[{{"blobSum":"{}"}}]}}"#, d(6));
        assert_eq!(references(schema1.as_bytes()).blobs, vec![d(6)]);
        assert_eq!(references(b"not json"), References::default());
    }
}
