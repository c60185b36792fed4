//! The `[auth]` section: who may use the mirror. Off by default (inside a
//! VPC the network is the boundary); the modes combine:
//! - `htpasswd`: users with bcrypt hashes, sent as HTTP Basic;
//! - `tokens` / `tokens_file`: static tokens, sent as `Bearer <token>` or
//!   as the password of Basic with the token's name as the user;
//! - `allow_networks`: peer addresses allowed at all;
//! - `rules`: which repositories of which upstream a client may read.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

/// Client authentication; see the module doc.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// An htpasswd file of bcrypt hashes (`htpasswd -B`), read at start.
    pub htpasswd: Option<PathBuf>,
    /// Static tokens by client name.
    pub tokens: BTreeMap<String, Secret>,
    /// A file of `name:token` lines, read at start.
    pub tokens_file: Option<PathBuf>,
    /// Peer networks (`10.0.0.0/8`, or single addresses) allowed to use the
    /// mirror; empty allows every address. Others get 403 `DENIED`.
    pub allow_networks: Vec<String>,
    /// Whether `/metrics` needs credentials when credentials are on.
    pub protect_metrics: bool,
    /// Read rules: a client named in any rule may read only what its
    /// rules allow; clients named in none read everything.
    pub rules: Vec<ReadRule>,
}

/// "These clients may read these repositories of this upstream."
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRule {
    /// Client names (htpasswd users or token names).
    pub clients: Vec<String>,
    /// The upstream's name, such as `docker.io`.
    pub upstream: String,
    /// Repository globs, such as `library/*` (`*` stays within one path
    /// segment, `**` crosses them).
    pub repositories: Vec<String>,
}

impl AuthConfig {
    /// Whether clients must present credentials.
    pub fn needs_credentials(&self) -> bool {
        self.htpasswd.is_some() || !self.tokens.is_empty() || self.tokens_file.is_some()
    }

    /// Whether any check is on.
    pub fn enabled(&self) -> bool {
        self.needs_credentials() || !self.allow_networks.is_empty()
    }

    /// The allowed networks, parsed.
    pub fn networks(&self) -> Result<Vec<IpNet>, ConfigError> {
        self.allow_networks
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "auth.allow_networks",
                            format!("{text:?} is not a network such as 10.0.0.0/8"),
                        )
                    })
            })
            .collect()
    }

    /// Checks networks, token names and rules; `upstream_exists` tells
    /// which upstream names are configured.
    pub fn validate(&self, upstream_exists: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        self.networks()?;
        for name in self.tokens.keys() {
            if name.is_empty() || name.contains(':') {
                return Err(invalid(
                    "auth.tokens",
                    "a token's name must be non-empty without ':'",
                ));
            }
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let field = |f: &str| format!("auth.rules[{i}].{f}");
            if !self.needs_credentials() {
                return Err(invalid(
                    field("clients"),
                    "rules name clients: configure htpasswd or tokens",
                ));
            }
            if rule.clients.is_empty() {
                return Err(invalid(field("clients"), "must name at least one client"));
            }
            if !upstream_exists(&rule.upstream) {
                return Err(invalid(
                    field("upstream"),
                    "must name a configured upstream",
                ));
            }
            for pattern in &rule.repositories {
                repository_glob(pattern).map_err(|e| invalid(field("repositories"), e))?;
            }
        }
        Ok(())
    }
}

/// A repository glob as rules use it: `*` does not cross `/`.
pub fn repository_glob(pattern: &str) -> Result<globset::Glob, String> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("{pattern:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, refused_naming_fields};

    #[test]
    fn auth_is_off_by_default_and_validates_what_it_names() {
        let c = Config::default();
        assert!(!c.auth.enabled());
        let c = Config::from_toml(
            "[auth]\nallow_networks = [\"10.0.0.0/8\", \"192.168.1.7\"]\n\
             [auth.tokens]\nci = \"s3cret\"\n\
             [[auth.rules]]\nclients = [\"ci\"]\nupstream = \"docker.io\"\nrepositories = [\"library/*\"]",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(c.auth.enabled() && c.auth.needs_credentials());
        assert_eq!(c.auth.networks().unwrap().len(), 2);
        assert!(
            !c.to_toml().unwrap().contains("s3cret"),
            "tokens are redacted"
        );
        refused_naming_fields(
            "[auth]\n",
            &[
                ("allow_networks = [\"10.0.0/8\"]", "auth.allow_networks"),
                (
                    "tokens = { ci = \"x\" }\n[[auth.rules]]\nclients = [\"ci\"]\nupstream = \"nowhere\"\nrepositories = []",
                    "auth.rules[0].upstream",
                ),
                (
                    "tokens = { ci = \"x\" }\n[[auth.rules]]\nclients = [\"ci\"]\nupstream = \"docker.io\"\nrepositories = [\"a/[\"]",
                    "auth.rules[0].repositories",
                ),
                (
                    "[[auth.rules]]\nclients = [\"ci\"]\nupstream = \"docker.io\"\nrepositories = []",
                    "auth.rules[0].clients",
                ),
            ],
        );
    }
}
