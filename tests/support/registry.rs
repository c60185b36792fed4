//! A real upstream registry for the tests: Debian's `docker-registry`
//! (distribution 2.8) on an ephemeral loopback port, seeded over its own
//! push API so manifests keep exact bytes and media types.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

/// A running distribution registry; killed when dropped.
pub struct DockerRegistry {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// `127.0.0.1:<port>`, as image references name it.
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

/// A free loopback port: bound, read, released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Panics with the way to get a missing program.
pub fn require(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{program} is not installed: run tests/run, which installs it"))
}

impl DockerRegistry {
    /// Starts a registry with filesystem storage in a temporary directory.
    pub async fn start() -> DockerRegistry {
        let binary = require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry starts");
        let registry = DockerRegistry {
            url: format!("http://127.0.0.1:{port}"),
            host: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
            http: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if let Ok(r) = registry
                .http
                .get(format!("{}/v2/", registry.url))
                .send()
                .await
                && r.status().is_success()
            {
                return registry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("docker-registry did not come up on {}", registry.url);
    }

    /// Pushes a blob (monolithic upload); returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: Bytes) -> String {
        let digest = super::sha256_digest(&bytes);
        let start = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 202, "upload starts");
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.url)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .http
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "blob {digest} stored");
        digest
    }

    /// Pushes a manifest under `reference` (a tag or its digest); returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> String {
        let digest = super::sha256_digest(&bytes);
        let put = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url))
            .header("content-type", media_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(
            put.status(),
            201,
            "manifest {repo}:{reference}: {}",
            put.text().await.unwrap_or_default()
        );
        digest
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DockerRegistry {
    /// Pushes an image's blobs and manifest, tagged `tag` if given.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        image: &super::image::Image,
    ) -> String {
        self.push_blob(repo, image.config.clone()).await;
        for layer in &image.layers {
            self.push_blob(repo, layer.clone()).await;
        }
        let reference = tag.unwrap_or(&image.digest);
        self.push_manifest(
            repo,
            reference,
            image.format.manifest_type(),
            image.manifest.clone(),
        )
        .await
    }
}
