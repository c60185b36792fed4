//! Read rules: which repositories of which upstream a named client may
//! read. A client named in no rule reads everything.

use std::collections::HashMap;

use globset::{GlobSet, GlobSetBuilder};

use super::AuthError;
use crate::config::{ReadRule, repository_glob};

/// The compiled rules, by client name, then upstream name.
pub struct Rules {
    by_client: HashMap<String, HashMap<String, GlobSet>>,
}

impl Rules {
    /// Compiles `rules` (already validated with the configuration).
    pub fn new(rules: &[ReadRule]) -> Result<Rules, AuthError> {
        let mut builders: HashMap<String, HashMap<String, GlobSetBuilder>> = HashMap::new();
        for rule in rules {
            for client in &rule.clients {
                let set = builders
                    .entry(client.clone())
                    .or_default()
                    .entry(rule.upstream.clone())
                    .or_insert_with(GlobSetBuilder::new);
                for pattern in &rule.repositories {
                    set.add(repository_glob(pattern).map_err(AuthError::Rule)?);
                }
            }
        }
        let mut by_client = HashMap::new();
        for (client, upstreams) in builders {
            let mut sets = HashMap::new();
            for (upstream, builder) in upstreams {
                let set = builder
                    .build()
                    .map_err(|e| AuthError::Rule(e.to_string()))?;
                sets.insert(upstream, set);
            }
            by_client.insert(client, sets);
        }
        Ok(Rules { by_client })
    }

    /// Whether `client` is limited to its rules.
    pub fn restricts(&self, client: &str) -> bool {
        self.by_client.contains_key(client)
    }

    /// Whether `client` may read `repository` of `upstream`.
    pub fn allows(&self, client: &str, upstream: &str, repository: &str) -> bool {
        match self.by_client.get(client) {
            None => true,
            Some(upstreams) => upstreams
                .get(upstream)
                .is_some_and(|set| set.is_match(repository)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(clients: &[&str], upstream: &str, repositories: &[&str]) -> ReadRule {
        ReadRule {
            clients: clients.iter().map(|c| c.to_string()).collect(),
            upstream: upstream.into(),
            repositories: repositories.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn a_restricted_client_reads_only_what_its_rules_name() {
        let rules = Rules::new(&[
            rule(&["ci"], "docker.io", &["library/*", "myorg/**"]),
            rule(&["ci", "ops"], "ghcr.io", &["org/app"]),
        ])
        .unwrap();
        assert!(rules.allows("ci", "docker.io", "library/nginx"));
        assert!(
            !rules.allows("ci", "docker.io", "library/a/b"),
            "* stays in a segment"
        );
        assert!(rules.allows("ci", "docker.io", "myorg/team/app"));
        assert!(!rules.allows("ci", "docker.io", "other/app"));
        assert!(rules.allows("ci", "ghcr.io", "org/app"));
        assert!(
            !rules.allows("ops", "docker.io", "library/nginx"),
            "no rule for docker.io"
        );
        assert!(!rules.allows("ci", "quay.io", "library/nginx"));
        assert!(rules.allows("admin", "quay.io", "anything"), "unrestricted");
        assert!(rules.restricts("ops") && !rules.restricts("admin"));
    }
}
