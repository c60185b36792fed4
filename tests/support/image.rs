//! Real, runnable-shaped images for the real clients: gzipped tar layers,
//! a config whose `diff_ids` match them, Docker schema 2 or OCI manifests,
//! and multi-arch indexes over several of them.

use std::io::Write;

use bytes::Bytes;
use serde_json::json;

use super::sha256_digest;

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Docker,
    Oci,
}

impl Format {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.distribution.manifest.v2+json",
            Format::Oci => "application/vnd.oci.image.manifest.v1+json",
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
            Format::Oci => "application/vnd.oci.image.index.v1+json",
        }
    }

    fn config_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.container.image.v1+json",
            Format::Oci => "application/vnd.oci.image.config.v1+json",
        }
    }

    fn layer_type(self) -> &'static str {
        match self {
            Format::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Format::Oci => "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }
}

/// One single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    pub format: Format,
    pub architecture: String,
    pub config: Bytes,
    pub layers: Vec<Bytes>,
    pub manifest: Bytes,
    pub digest: String,
}

/// A gzipped tar holding one file of `size` pseudo-random bytes.
pub fn layer(name: &str, size: usize, seed: u64) -> Bytes {
    let content = super::random_bytes(size, seed);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, name, &content[..]).unwrap();
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    Bytes::from(gz.finish().unwrap())
}

fn diff_id(layer: &[u8]) -> String {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(layer), &mut raw).unwrap();
    sha256_digest(&raw)
}

/// An image for `architecture` with `layer_sizes` layers; `seed` makes it unique.
pub fn image(format: Format, architecture: &str, layer_sizes: &[usize], seed: u64) -> Image {
    let layers: Vec<Bytes> = layer_sizes
        .iter()
        .enumerate()
        .map(|(i, size)| {
            layer(
                &format!("data-{seed}-{i}.bin"),
                *size,
                seed * 100 + i as u64,
            )
        })
        .collect();
    let config = json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Cmd": ["/data"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| diff_id(l)).collect::<Vec<_>>() },
        "history": [{ "created_by": "pullthrough tests" }],
    });
    let config = Bytes::from(serde_json::to_vec(&config).unwrap());
    let descriptor = |media_type: &str, bytes: &Bytes| json!({ "mediaType": media_type, "size": bytes.len(), "digest": sha256_digest(bytes) });
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": format.manifest_type(),
        "config": descriptor(format.config_type(), &config),
        "layers": layers.iter().map(|l| descriptor(format.layer_type(), l)).collect::<Vec<_>>(),
    });
    let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
    let digest = sha256_digest(&manifest);
    Image {
        format,
        architecture: architecture.to_owned(),
        config,
        layers,
        manifest,
        digest,
    }
}

/// A multi-arch index (OCI) or manifest list (Docker) over `images`.
pub fn index(format: Format, images: &[&Image]) -> (Bytes, String) {
    let manifests: Vec<_> = images
        .iter()
        .map(|image| {
            json!({
                "mediaType": format.manifest_type(),
                "size": image.manifest.len(),
                "digest": image.digest,
                "platform": { "architecture": image.architecture, "os": "linux" },
            })
        })
        .collect();
    let index =
        json!({ "schemaVersion": 2, "mediaType": format.index_type(), "manifests": manifests });
    let bytes = Bytes::from(serde_json::to_vec_pretty(&index).unwrap());
    let digest = sha256_digest(&bytes);
    (bytes, digest)
}
