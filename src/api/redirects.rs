//! Which blob GETs may be sent to the bucket: with `s3.redirect` on, all
//! but those of clients and repositories the operator excluded (a client
//! that cannot follow a redirect, a repository whose nodes cannot reach
//! the bucket).

use globset::{GlobSet, GlobSetBuilder};

use crate::config::{S3Config, repository_glob};

/// The compiled `s3.redirect` and `s3.no_redirect_*` settings.
pub struct RedirectRules {
    on: bool,
    /// Lower-cased `User-Agent` substrings.
    user_agents: Vec<String>,
    /// `<upstream>/<repository>` globs.
    repositories: GlobSet,
}

impl RedirectRules {
    /// Compiles the settings (already validated with the configuration).
    pub fn new(config: &S3Config) -> RedirectRules {
        let mut repositories = GlobSetBuilder::new();
        for glob in config
            .no_redirect_repositories
            .iter()
            .filter_map(|p| repository_glob(p).ok())
        {
            repositories.add(glob);
        }
        RedirectRules {
            on: config.redirect && config.enabled(),
            user_agents: config
                .no_redirect_user_agents
                .iter()
                .map(|a| a.to_ascii_lowercase())
                .collect(),
            repositories: repositories.build().unwrap_or_else(|_| GlobSet::empty()),
        }
    }

    /// Whether a GET of a blob of `repository` on `upstream`, by a client
    /// that says it is `user_agent`, may be answered with a redirect.
    pub fn allow(&self, user_agent: Option<&str>, upstream: &str, repository: &str) -> bool {
        if !self.on {
            return false;
        }
        if let Some(agent) = user_agent {
            let agent = agent.to_ascii_lowercase();
            if self.user_agents.iter().any(|a| agent.contains(a.as_str())) {
                return false;
            }
        }
        self.repositories.is_empty()
            || !self
                .repositories
                .is_match(format!("{upstream}/{repository}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_on_and_excluded_clients_and_repositories_are_streamed() {
        let mut config = S3Config {
            bucket: "mirror".into(),
            ..S3Config::default()
        };
        assert!(!RedirectRules::new(&config).allow(None, "docker.io", "library/nginx"));
        config.redirect = true;
        config.no_redirect_user_agents = vec!["Old-Client/1".into()];
        config.no_redirect_repositories = vec!["ghcr.io/**".into(), "docker.io/library/*".into()];
        let rules = RedirectRules::new(&config);
        assert!(rules.allow(Some("containerd/2.0"), "docker.io", "bitnami/redis"));
        assert!(!rules.allow(Some("old-client/1.4 (linux)"), "docker.io", "bitnami/redis"));
        assert!(!rules.allow(None, "docker.io", "library/nginx"));
        assert!(rules.allow(None, "docker.io", "library/nginx/sub"));
        assert!(!rules.allow(None, "ghcr.io", "org/app/sub"));
        assert!(rules.allow(None, "quay.io", "org/app"));
    }
}
