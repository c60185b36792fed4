//! Which repositories an upstream serves: `allow_repositories` and
//! `deny_repositories` globs from its configuration.
//!
//! Globs are matched against the repository name as the upstream knows it
//! (`library/alpine` on Docker Hub, not `alpine`). `*` stays within one path
//! component and `**` spans several, so `library/*` is the official images
//! and `myorg/**` everything under `myorg`. A repository is served when the
//! allow list is empty or one of its globs matches, and no deny glob
//! matches. The check runs when a request is routed, before any cache or
//! upstream is asked, so a denied repository's content is neither fetched
//! nor served from the cache.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::Upstream;
use super::route::RouteError;
use crate::reference::RepoName;

/// The compiled allow and deny lists of one upstream.
#[derive(Debug, Clone)]
pub struct RepoFilter {
    allow: Option<GlobSet>,
    deny: GlobSet,
}

impl RepoFilter {
    /// Compiles the lists; an invalid glob is an error naming it.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, String> {
        let allow = if allow.is_empty() {
            None
        } else {
            Some(compile(allow)?)
        };
        Ok(RepoFilter {
            allow,
            deny: compile(deny)?,
        })
    }

    /// Whether `repo` may be served.
    pub fn allows(&self, repo: &str) -> bool {
        self.allow.as_ref().is_none_or(|set| set.is_match(repo)) && !self.deny.is_match(repo)
    }
}

impl Upstream {
    /// Refuses, and counts, a repository this upstream does not serve.
    pub(super) fn admit(&self, repo: &RepoName) -> Result<(), RouteError> {
        if self.repos.allows(repo.as_str()) {
            return Ok(());
        }
        self.metrics
            .egress_refused
            .with_label_values(&[&self.name, "repository_denied"])
            .inc();
        Err(RouteError::Denied {
            upstream: self.name.clone(),
            repo: repo.to_string(),
        })
    }
}

fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("{pattern:?} is not a valid glob: {e}"))
}

fn compile(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        set.add(glob(pattern)?);
    }
    set.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> RepoFilter {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        RepoFilter::new(&owned(allow), &owned(deny)).unwrap()
    }

    #[test]
    fn everything_is_allowed_by_default() {
        let f = filter(&[], &[]);
        assert!(f.allows("library/alpine"));
        assert!(f.allows("a/b/c"));
    }

    #[test]
    fn one_star_is_one_component_and_two_are_any() {
        let f = filter(&["library/*", "myorg/**"], &[]);
        assert!(f.allows("library/alpine"));
        assert!(!f.allows("library/a/b"));
        assert!(f.allows("myorg/app"));
        assert!(f.allows("myorg/team/app"));
        assert!(!f.allows("myorgx/app"));
        assert!(!f.allows("evil/alpine"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let f = filter(&["myorg/**"], &["myorg/secret/**", "*/miner"]);
        assert!(f.allows("myorg/app"));
        assert!(!f.allows("myorg/secret/keys"));
        assert!(!f.allows("myorg/miner"));
        let f = filter(&[], &["bad/*"]);
        assert!(!f.allows("bad/x"));
        assert!(f.allows("good/x"));
    }

    #[test]
    fn an_invalid_glob_is_named() {
        let err = RepoFilter::new(&["a/[b".to_string()], &[]).unwrap_err();
        assert!(err.contains("a/[b"), "{err}");
    }
}
