//! A registry client for the tests, speaking like dockerd does: every
//! manifest media type on its own `Accept` line.

use bytes::Bytes;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use sha2::{Digest as _, Sha256};

/// The six `Accept` lines dockerd sends, each on its own line.
pub const DOCKERD_ACCEPT: [&str; 6] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/json",
];

/// containerd's one `Accept` line when it resolves a tag.
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// The `Accept` lines of containers/image (skopeo, podman, CRI-O), one each.
pub const CONTAINERS_IMAGE_ACCEPT: [&str; 6] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// One GET or HEAD answer, whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The OCI error code of an error answer.
    pub fn error_code(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        json["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }

    /// "sha256:<hex>" of the body.
    pub fn body_digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.body)))
    }
}

/// A client bound to one registry base URL.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self::from_address(base, None)
    }

    /// A client whose connections come from `local` (any 127/8 address on
    /// loopback), so the mirror sees it as a different node.
    pub fn from_address(base: &str, local: Option<std::net::IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .local_address(local)
            .build()
            .unwrap();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// A client that keeps its connections alive, as a node's daemon does:
    /// for load that would otherwise run out of ephemeral ports.
    pub fn pooled(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .unwrap();
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    fn dockerd_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in DOCKERD_ACCEPT {
            headers.append(ACCEPT, HeaderValue::from_static(value));
        }
        headers
    }

    /// Sends `method path` with extra headers, reading the whole body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: HeaderMap,
    ) -> reqwest::Result<Answer> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .headers(headers)
            .send()
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// GET, panicking on transport errors.
    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, HeaderMap::new())
            .await
            .expect("GET completes")
    }

    /// A manifest GET with dockerd's Accept lines.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Answer {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.send("GET", &path, Self::dockerd_headers())
            .await
            .expect("GET completes")
    }

    /// A manifest HEAD with dockerd's Accept lines.
    pub async fn manifest_head(&self, repo: &str, reference: &str) -> Answer {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.send("HEAD", &path, Self::dockerd_headers())
            .await
            .expect("HEAD completes")
    }

    /// A manifest GET or HEAD (`method`) sending each of `accept` as its
    /// own `Accept` line (none at all when empty).
    pub async fn manifest_accepting(
        &self,
        method: &str,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> Answer {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(ACCEPT, HeaderValue::from_str(value).unwrap());
        }
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.send(method, &path, headers)
            .await
            .expect("request completes")
    }

    /// A blob GET; `Err` when the transfer broke.
    pub async fn blob(&self, repo: &str, digest: &str) -> reqwest::Result<Answer> {
        self.send(
            "GET",
            &format!("/v2/{repo}/blobs/{digest}"),
            HeaderMap::new(),
        )
        .await
    }

    /// Pulls an image the way a client does: manifest by tag, then every
    /// blob it lists, checking each blob against its digest. Returns the
    /// manifest's digest.
    pub async fn pull(&self, repo: &str, tag: &str) -> String {
        let manifest = self.manifest(repo, tag).await;
        assert_eq!(
            manifest.status, 200,
            "manifest of {repo}:{tag}: {:?}",
            manifest.body
        );
        let digest = manifest.header("docker-content-digest").to_owned();
        assert_eq!(
            manifest.body_digest(),
            digest,
            "manifest bytes match their digest"
        );
        let json: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
        let mut blobs = vec![json["config"]["digest"].as_str().unwrap().to_owned()];
        for layer in json["layers"].as_array().unwrap() {
            blobs.push(layer["digest"].as_str().unwrap().to_owned());
        }
        for blob in blobs {
            let answer = self
                .blob(repo, &blob)
                .await
                .expect("blob transfer completes");
            assert_eq!(answer.status, 200, "blob {blob}");
            assert_eq!(answer.body_digest(), blob, "blob bytes match their digest");
        }
        digest
    }
}
