//! Image references as people write them (`nginx:1.27`,
//! `docker.io/library/nginx:1.27`, `ghcr.io/org/app:1`,
//! `name@sha256:...`), split into the registry, the repository and the
//! tag or digest, and addressed to the mirror the way containerd does
//! (`/v2/<repository>/...?ns=<registry>`).

/// The registry of a reference that names none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Such as `docker.io` or `ghcr.io`.
    pub registry: String,
    /// Such as `library/nginx`.
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an image reference: {1}")]
pub struct BadImage(pub String, pub &'static str);

impl ImageRef {
    /// Parses `[registry/]repository[:tag][@digest]`; no tag means
    /// `latest`. The first component is a registry when it has a `.` or a
    /// `:`, or is `localhost`, as in Docker's rule. Docker Hub's aliases
    /// become `docker.io`, and its one-component names get `library/`.
    pub fn parse(text: &str) -> Result<ImageRef, BadImage> {
        let bad = |why| BadImage(text.to_owned(), why);
        let text = text.trim();
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(bad("empty or contains spaces"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (text, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, path)
            }
            _ => (DEFAULT_REGISTRY, rest),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        if repository.is_empty() || repository.starts_with('/') || repository.ends_with('/') {
            return Err(bad("no repository name"));
        }
        let reference = match (digest, tag) {
            (Some(d), _) if d.starts_with("sha256:") && d.len() == 71 => d.to_owned(),
            (Some(_), _) => return Err(bad("a digest must be sha256: and 64 hex digits")),
            (None, Some(t)) if !t.is_empty() => t.to_owned(),
            (None, Some(_)) => return Err(bad("an empty tag")),
            (None, None) => "latest".to_owned(),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                DEFAULT_REGISTRY
            }
            other => other,
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        Ok(ImageRef {
            registry: registry.to_owned(),
            repository: repository.to_lowercase(),
            reference,
        })
    }

    /// The mirror URL of this image's manifest `reference` (a tag or digest).
    pub fn manifest_url(&self, mirror: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/manifests/{reference}?ns={}",
            mirror.trim_end_matches('/'),
            self.repository,
            self.registry
        )
    }

    /// The mirror URL of one of this image's blobs.
    pub fn blob_url(&self, mirror: &str, digest: &str) -> String {
        format!(
            "{}/v2/{}/blobs/{digest}?ns={}",
            mirror.trim_end_matches('/'),
            self.repository,
            self.registry
        )
    }

    /// `registry/repository:tag` or `registry/repository@digest`, as the
    /// mirror's pin endpoint takes it.
    pub fn full(&self) -> String {
        let separator = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        format!(
            "{}/{}{separator}{}",
            self.registry, self.repository, self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(text: &str) -> (String, String, String) {
        let i = ImageRef::parse(text).unwrap();
        (i.registry, i.repository, i.reference)
    }

    fn own(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn references_are_split_as_docker_does() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parts("nginx:1.27"),
            own("docker.io", "library/nginx", "1.27")
        );
        assert_eq!(parts("nginx"), own("docker.io", "library/nginx", "latest"));
        assert_eq!(
            parts("docker.io/library/nginx:1.27"),
            own("docker.io", "library/nginx", "1.27")
        );
        assert_eq!(
            parts("index.docker.io/bitnami/redis"),
            own("docker.io", "bitnami/redis", "latest")
        );
        assert_eq!(parts("ghcr.io/org/app:1"), own("ghcr.io", "org/app", "1"));
        assert_eq!(
            parts("localhost:5000/team/app"),
            own("localhost:5000", "team/app", "latest")
        );
        assert_eq!(
            parts(&format!("alpine:3.19@{digest}")),
            own("docker.io", "library/alpine", &digest)
        );
        assert_eq!(
            parts(&format!("registry.k8s.io/pause@{digest}")),
            own("registry.k8s.io", "pause", &digest)
        );
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in ["", "a b", "nginx@sha256:12", "nginx:", "ghcr.io/"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_route_by_namespace() {
        let image = ImageRef::parse("ghcr.io/org/app:1").unwrap();
        assert_eq!(
            image.manifest_url("http://m:5000/", "1"),
            "http://m:5000/v2/org/app/manifests/1?ns=ghcr.io"
        );
        assert_eq!(image.full(), "ghcr.io/org/app:1");
    }
}
