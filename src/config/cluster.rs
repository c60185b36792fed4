//! The `[cluster]` section: the other replicas of this mirror, so that the
//! fleet fetches each key once (see `cluster`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, invalid};

/// The replicas this one shares its fetches with. Off (one replica on its
/// own, exactly as without the section) unless `peers` names some.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Every replica's base URL (`http://10.0.1.5:5000`, this one's
    /// included), or one `dns:NAME:PORT` whose addresses are the replicas
    /// (a Kubernetes headless Service, ECS Service Discovery), looked up
    /// again every `refresh_interval`.
    pub peers: Vec<String>,
    /// This replica's own URL as the others reach it. Without it, `POD_IP`
    /// or the ECS task metadata names the address, and a replica also
    /// recognises itself when it asks a member who it is.
    pub advertise: Option<String>,
    /// The shared secret every peer request carries; required with peers.
    pub secret: Option<Secret>,
    /// A file holding the secret (its surrounding white space ignored).
    pub secret_file: Option<PathBuf>,
    /// How long an owner may take to begin its answer (and to connect)
    /// before this replica fetches the key itself.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often every member is asked whether it is up.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How often a `dns:` member list is looked up again.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How long a member that failed a request is passed over.
    #[serde(with = "humantime_serde")]
    pub down_for: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            peers: Vec::new(),
            advertise: None,
            secret: None,
            secret_file: None,
            timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(5),
            down_for: Duration::from_secs(10),
        }
    }
}

/// The shortest secret accepted: a guessable one is no door at all.
const MIN_SECRET_LEN: usize = 16;

impl ClusterConfig {
    /// True when peers are configured.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The secret, from `secret` or `secret_file`.
    pub fn load_secret(&self) -> Result<Option<Secret>, ConfigError> {
        if let Some(secret) = &self.secret {
            return Ok(Some(secret.clone()));
        }
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Some(Secret::new(text.trim())))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let dns = self.peers.iter().filter(|p| p.starts_with("dns:")).count();
        if dns > 0 && self.peers.len() > 1 {
            return Err(invalid(
                "cluster.peers",
                "either one dns:NAME:PORT or a list of URLs, not both",
            ));
        }
        for peer in &self.peers {
            check_peer(peer).map_err(|m| invalid("cluster.peers", format!("{peer:?}: {m}")))?;
        }
        if let Some(url) = &self.advertise {
            check_url(url).map_err(|m| invalid("cluster.advertise", m))?;
        }
        if self.secret.is_some() && self.secret_file.is_some() {
            return Err(invalid(
                "cluster.secret",
                "set secret or secret_file, not both",
            ));
        }
        match self.load_secret() {
            Ok(Some(s)) if s.expose().len() >= MIN_SECRET_LEN => {}
            Ok(Some(_)) => {
                return Err(invalid(
                    "cluster.secret",
                    format!("must be at least {MIN_SECRET_LEN} characters"),
                ));
            }
            Ok(None) => {
                return Err(invalid(
                    "cluster.secret",
                    "peers need a shared secret (secret, secret_file or PULLTHROUGH_CLUSTER_SECRET)",
                ));
            }
            Err(e) => return Err(invalid("cluster.secret_file", e.to_string())),
        }
        for (field, value) in [
            ("cluster.timeout", self.timeout),
            ("cluster.probe_interval", self.probe_interval),
            ("cluster.refresh_interval", self.refresh_interval),
            ("cluster.down_for", self.down_for),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// A member as configured: a base URL, or `dns:NAME:PORT`.
fn check_peer(peer: &str) -> Result<(), String> {
    match peer.strip_prefix("dns:") {
        Some(target) => match target.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
            _ => Err("expected dns:NAME:PORT".into()),
        },
        None => check_url(peer),
    }
}

/// A replica's base URL: `http(s)://host:port`, nothing after it.
fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && matches!(u.path(), "" | "/")
                && u.query().is_none() =>
        {
            Ok(())
        }
        _ => Err("must be an http:// or https:// base URL such as http://10.0.1.5:5000".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, refused_naming_fields};

    #[test]
    fn peers_need_a_long_secret_and_urls_or_one_dns_name() {
        let with_secret = "[cluster]\nsecret = \"0123456789abcdef\"\n";
        let c = Config::from_toml(&format!(
            "{with_secret}peers = [\"http://10.0.0.1:5000\", \"http://10.0.0.2:5000\"]\n"
        ))
        .unwrap();
        c.validate().unwrap();
        let dns = Config::from_toml(&format!(
            "{with_secret}peers = [\"dns:mirror.internal:5000\"]\n"
        ));
        dns.unwrap().validate().unwrap();
        refused_naming_fields(
            "[cluster]\n",
            &[
                ("peers = [\"http://a:1\"]\n", "cluster.secret"),
                (
                    "peers = [\"http://a:1\"]\nsecret = \"short\"\n",
                    "cluster.secret",
                ),
                (
                    "peers = [\"dns:a:1\", \"http://b:1\"]\nsecret = \"0123456789abcdef\"\n",
                    "cluster.peers",
                ),
                (
                    "peers = [\"dns:a\"]\nsecret = \"0123456789abcdef\"\n",
                    "cluster.peers",
                ),
                (
                    "peers = [\"ftp://a:1\"]\nsecret = \"0123456789abcdef\"\n",
                    "cluster.peers",
                ),
                (
                    "peers = [\"http://a:1/v2\"]\nsecret = \"0123456789abcdef\"\n",
                    "cluster.peers",
                ),
                (
                    "peers = [\"http://a:1\"]\nsecret = \"0123456789abcdef\"\nadvertise = \"a:1\"\n",
                    "cluster.advertise",
                ),
                (
                    "peers = [\"http://a:1\"]\nsecret = \"0123456789abcdef\"\ntimeout = \"0s\"\n",
                    "cluster.timeout",
                ),
            ],
        );
        // Without peers the section is off, whatever else it says.
        Config::from_toml("[cluster]\nsecret = \"x\"\n")
            .unwrap()
            .validate()
            .unwrap();
    }
}
