//! Which upstream a request is for, from what clients send:
//! - containerd's `?ns=<registry>` parameter;
//! - a path prefix, `/v2/<registry>/<name>/...`, used by podman and CRI-O
//!   mirror locations and by image references rewritten to the mirror
//!   where no daemon can be configured (Fargate);
//! - otherwise the default upstream (dockerd mirrors Docker Hub only).
//!
//! A registry that is not configured is refused here, before any
//! connection: no client can make pullthrough fetch from an address of its
//! choosing.

/// Where a request goes: an upstream name (`None` for the default) and the
/// repository name left once a prefix is taken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub upstream: Option<&'a str>,
    pub repo: &'a str,
}

/// A request names a registry that is not configured (or is disabled).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no upstream named {0:?} is configured")]
pub struct UnknownUpstream(pub String);

/// Why a request cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Unknown(#[from] UnknownUpstream),
    /// The upstream's `allow_repositories` or `deny_repositories` refuse it.
    #[error("repository {repo} on {upstream} is denied by this mirror's configuration")]
    Denied { upstream: String, repo: String },
}

/// Splits `ns` and `name` into a route; `configured` says whether an
/// upstream of that name exists and is enabled.
pub fn route<'a>(
    ns: Option<&'a str>,
    name: &'a str,
    configured: impl Fn(&str) -> bool,
) -> Result<Route<'a>, UnknownUpstream> {
    if let Some(ns) = ns {
        return if configured(ns) {
            Ok(Route {
                upstream: Some(ns),
                repo: name,
            })
        } else {
            Err(UnknownUpstream(ns.to_owned()))
        };
    }
    match name.split_once('/') {
        Some((first, rest)) if configured(first) => Ok(Route {
            upstream: Some(first),
            repo: rest,
        }),
        // A host name (Docker Hub namespaces have no dots) that is not ours.
        Some((first, _)) if first.contains('.') => Err(UnknownUpstream(first.to_owned())),
        _ => Ok(Route {
            upstream: None,
            repo: name,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(name: &str) -> bool {
        matches!(name, "docker.io" | "ghcr.io" | "registry.k8s.io")
    }

    #[test]
    fn ns_names_the_upstream() {
        assert_eq!(
            route(Some("ghcr.io"), "org/app", ours),
            Ok(Route {
                upstream: Some("ghcr.io"),
                repo: "org/app"
            })
        );
        assert_eq!(
            route(Some("evil.example"), "org/app", ours),
            Err(UnknownUpstream("evil.example".into()))
        );
        assert_eq!(
            route(Some("127.0.0.1:9"), "app", ours),
            Err(UnknownUpstream("127.0.0.1:9".into()))
        );
    }

    #[test]
    fn a_path_prefix_names_the_upstream() {
        assert_eq!(
            route(None, "registry.k8s.io/pause", ours),
            Ok(Route {
                upstream: Some("registry.k8s.io"),
                repo: "pause"
            })
        );
        assert_eq!(
            route(None, "docker.io/library/nginx", ours),
            Ok(Route {
                upstream: Some("docker.io"),
                repo: "library/nginx"
            })
        );
        assert_eq!(
            route(None, "quay.io/org/app", ours),
            Err(UnknownUpstream("quay.io".into()))
        );
    }

    #[test]
    fn plain_names_go_to_the_default() {
        assert_eq!(
            route(None, "alpine", ours),
            Ok(Route {
                upstream: None,
                repo: "alpine"
            })
        );
        assert_eq!(
            route(None, "bitnami/redis", ours),
            Ok(Route {
                upstream: None,
                repo: "bitnami/redis"
            })
        );
        // With ns given, the whole path is the repository.
        assert_eq!(
            route(Some("docker.io"), "ghcr.io/x", ours),
            Ok(Route {
                upstream: Some("docker.io"),
                repo: "ghcr.io/x"
            })
        );
    }
}
