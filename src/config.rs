//! Configuration: an embedded default, overlaid by a TOML file, then by
//! environment variables and command-line flags (those two arrive together
//! through clap as [`Overrides`]).
//!
//! An invalid configuration fails at start-up with the name of the field,
//! never later at request time.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;

mod disk;
mod render;

pub use disk::DiskConfig;
use serde::{Deserialize, Serialize};

mod auth;
mod budget;
mod cluster;
mod listen;
mod resilience;
mod s3;

pub use auth::{AuthConfig, ReadRule, repository_glob};
pub use budget::BudgetConfig;
pub use cluster::ClusterConfig;
pub use listen::{ListenLimits, TlsConfig};
pub use resilience::ResilienceConfig;
pub use s3::S3Config;

/// The name of the upstream that plain `/v2/<name>` requests go to.
pub const DOCKER_HUB: &str = "docker.io";

/// The public registries configured out of the box, by the name clients
/// use for them, with their API endpoints.
pub const BUILT_IN_UPSTREAMS: [(&str, &str); 7] = [
    (DOCKER_HUB, "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("quay.io", "https://quay.io"),
    ("registry.k8s.io", "https://registry.k8s.io"),
    ("public.ecr.aws", "https://public.ecr.aws"),
    ("gcr.io", "https://gcr.io"),
    ("mcr.microsoft.com", "https://mcr.microsoft.com"),
];

/// The whole configuration of one pullthrough process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the registry API listens on.
    pub listen: SocketAddr,
    /// Where the disk tier and tag records live.
    pub data_dir: PathBuf,
    /// How long a tag→digest answer is trusted before a HEAD revalidates it.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How long a tag is served stale after upstream failed, before the next try.
    #[serde(with = "humantime_serde")]
    pub stale_retry: Duration,
    /// Upstream for requests that name none.
    pub default_upstream: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    pub memory: MemoryConfig,
    /// The disk tier's bounds.
    pub disk: DiskConfig,
    pub timeouts: TimeoutConfig,
    /// Retries, resumes, circuit breakers and fetch limits per upstream.
    pub resilience: ResilienceConfig,
    /// The shared S3 tier; off unless a bucket is named.
    pub s3: S3Config,
    /// Upstream registries by name, merged over the built-in ones.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// How announced pull limits are spent.
    pub budget: BudgetConfig,
    /// Timeouts and limits on client connections.
    pub listen_limits: ListenLimits,
    /// TLS on the listener; off unless a certificate is named.
    pub tls: TlsConfig,
    /// Client authentication; off unless configured.
    pub auth: AuthConfig,
    /// The other replicas, which share every fetch; off unless configured.
    pub cluster: ClusterConfig,
}

/// The in-memory tier, for manifests and small blobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Total bytes held; zero turns the tier off.
    #[serde(serialize_with = "render::exact_size")]
    pub max_bytes: ByteSize,
    /// Objects larger than this are served from disk only.
    #[serde(serialize_with = "render::exact_size")]
    pub max_object_bytes: ByteSize,
    /// Memory that downloads the disk tier cannot take (full, failing) may
    /// hold, all together; by default an eighth of `max_bytes`, at least
    /// 8 MiB. Each such download holds a window of it, never its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_download_bytes: Option<ByteSize>,
}

impl MemoryConfig {
    /// The memory budget of downloads the disk tier cannot take.
    pub fn download_bytes(&self) -> u64 {
        self.max_download_bytes
            .map_or((self.max_bytes.0 / 8).max(8 << 20), |b| b.0)
    }
}

/// Bounds on every upstream exchange.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// TCP and TLS connection set-up.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Longest wait for the next bytes of a response.
    #[serde(with = "humantime_serde")]
    pub read: Duration,
    /// Whole-request bound for manifests, tokens and other small answers.
    #[serde(with = "humantime_serde")]
    pub request: Duration,
}

/// One upstream registry, configured as a value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, such as `https://registry-1.docker.io`; http is allowed for local registries.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Overrides the global `tag_ttl` for this upstream.
    #[serde(default, with = "humantime_serde")]
    pub tag_ttl: Option<Duration>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Token realm hosts (`host` or `host:port`) trusted with the credentials
    /// besides the upstream's own host and the built-in ones (see
    /// `upstream::egress`).
    #[serde(default)]
    pub auth_hosts: Vec<String>,
    /// Private networks (CIDRs) that redirects from this upstream may point
    /// into; other non-public addresses are refused.
    #[serde(default)]
    pub redirect_allow: Vec<String>,
    /// Repository globs served from this upstream (`library/*`, `myorg/**`);
    /// empty allows every repository.
    #[serde(default)]
    pub allow_repositories: Vec<String>,
    /// Repository globs never served from this upstream; wins over `allow_repositories`.
    #[serde(default)]
    pub deny_repositories: Vec<String>,
    /// A PEM file of CA certificates trusted, besides the public roots, for
    /// this upstream and the hosts it sends pullthrough to (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A credential that never appears in `Debug` output, logs or a printed
/// configuration (it serializes as [`Secret::REDACTED`]).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What a printed configuration shows instead of a credential.
    pub const REDACTED: &str = "<redacted>";

    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Secret::REDACTED)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Default for Config {
    fn default() -> Self {
        let upstreams = BUILT_IN_UPSTREAMS
            .iter()
            .map(|(name, url)| (name.to_string(), UpstreamConfig::new(url)))
            .collect();
        Config {
            listen: "0.0.0.0:5000".parse().expect("valid address"),
            data_dir: PathBuf::from("pullthrough-data"),
            tag_ttl: Duration::from_secs(300),
            stale_retry: Duration::from_secs(15),
            default_upstream: DOCKER_HUB.to_owned(),
            log_format: LogFormat::Text,
            memory: MemoryConfig::default(),
            disk: DiskConfig::default(),
            timeouts: TimeoutConfig::default(),
            resilience: ResilienceConfig::default(),
            s3: S3Config::default(),
            upstreams,
            budget: BudgetConfig::default(),
            listen_limits: ListenLimits::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_bytes: ByteSize::mib(256),
            max_object_bytes: ByteSize::mib(1),
            max_download_bytes: None,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(30),
            request: Duration::from_secs(30),
        }
    }
}

impl UpstreamConfig {
    /// An anonymous, enabled upstream at `url`.
    pub fn new(url: &str) -> Self {
        UpstreamConfig {
            url: url.to_owned(),
            username: None,
            password: None,
            tag_ttl: None,
            enabled: true,
            auth_hosts: Vec::new(),
            redirect_allow: Vec::new(),
            allow_repositories: Vec::new(),
            deny_repositories: Vec::new(),
            ca_file: None,
        }
    }
}

/// Settings given on the command line or in `PULLTHROUGH_*` variables; each
/// one that is set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tag_ttl: Option<Duration>,
    pub upstreams: Vec<(String, String)>,
    pub memory_max_bytes: Option<ByteSize>,
    pub disk_max_bytes: Option<ByteSize>,
    pub disk_max_percent: Option<u8>,
    pub log_format: Option<LogFormat>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub s3_bucket: Option<String>,
    pub s3_prefix: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_read_part_size: Option<ByteSize>,
    pub s3_read_concurrency: Option<usize>,
    pub s3_redirect: Option<bool>,
    pub s3_public_endpoint: Option<String>,
    pub peers: Vec<String>,
    pub advertise: Option<String>,
}

/// Why the configuration cannot be used; always names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Config {
    /// Loads the embedded default, the optional file, the overrides and the
    /// credential variables from `env`, then validates the result.
    pub fn load(
        file: Option<&Path>,
        overrides: Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Config::from_toml(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_owned(),
                    source,
                })?
            }
            None => Config::default(),
        };
        config.apply(overrides);
        config.apply_credentials_from_env(env);
        config.validate()?;
        Ok(config)
    }

    /// Parses a file's text; its upstreams are merged over the built-in ones.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        let mut config: Config = toml::from_str(text)?;
        for (name, upstream) in Config::default().upstreams {
            config.upstreams.entry(name).or_insert(upstream);
        }
        Ok(config)
    }

    fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.listen {
            self.listen = v;
        }
        if let Some(v) = o.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = o.tag_ttl {
            self.tag_ttl = v;
        }
        if let Some(v) = o.memory_max_bytes {
            self.memory.max_bytes = v;
        }
        if o.disk_max_bytes.is_some() {
            self.disk.max_bytes = o.disk_max_bytes;
        }
        if let Some(v) = o.disk_max_percent {
            self.disk.max_percent = v;
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
        if let Some(v) = o.connect_timeout {
            self.timeouts.connect = v;
        }
        if let Some(v) = o.read_timeout {
            self.timeouts.read = v;
        }
        if let Some(v) = o.s3_bucket {
            self.s3.bucket = v;
        }
        if let Some(v) = o.s3_prefix {
            self.s3.prefix = v;
        }
        if o.s3_endpoint.is_some() {
            self.s3.endpoint = o.s3_endpoint;
        }
        if o.s3_region.is_some() {
            self.s3.region = o.s3_region;
        }
        if let Some(v) = o.s3_read_part_size {
            self.s3.read_part_size = v;
        }
        if let Some(v) = o.s3_read_concurrency {
            self.s3.read_concurrency = v;
        }
        if let Some(v) = o.s3_redirect {
            self.s3.redirect = v;
        }
        if o.s3_public_endpoint.is_some() {
            self.s3.public_endpoint = o.s3_public_endpoint;
        }
        if !o.peers.is_empty() {
            self.cluster.peers = o.peers;
        }
        if o.advertise.is_some() {
            self.cluster.advertise = o.advertise;
        }
        for (name, url) in o.upstreams {
            let entry = self
                .upstreams
                .entry(name)
                .or_insert_with(|| UpstreamConfig::new(&url));
            entry.url = url;
            entry.enabled = true;
        }
    }

    /// Reads `PULLTHROUGH_UPSTREAM_<NAME>_USERNAME` and `..._PASSWORD`, where
    /// `<NAME>` is the upstream's name in upper case with every other
    /// character turned into `_` (`docker.io` → `DOCKER_IO`).
    fn apply_credentials_from_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(secret) = env("PULLTHROUGH_CLUSTER_SECRET") {
            self.cluster.secret = Some(Secret(secret));
            self.cluster.secret_file = None;
        }
        for (name, upstream) in &mut self.upstreams {
            let prefix = format!("PULLTHROUGH_UPSTREAM_{}", env_key(name));
            if let Some(user) = env(&format!("{prefix}_USERNAME")) {
                upstream.username = Some(user);
            }
            if let Some(password) = env(&format!("{prefix}_PASSWORD")) {
                upstream.password = Some(Secret(password));
            }
        }
    }

    /// Checks what serde's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.budget.validate()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.memory.max_object_bytes > self.memory.max_bytes && self.memory.max_bytes.0 > 0 {
            return Err(invalid(
                "memory.max_object_bytes",
                "must not exceed memory.max_bytes",
            ));
        }
        if self
            .memory
            .max_download_bytes
            .is_some_and(|b| b.0 < 4 << 20)
        {
            return Err(invalid(
                "memory.max_download_bytes",
                "must be at least 4MiB (a download's batches go through it)",
            ));
        }
        self.disk.validate()?;
        for (field, value) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.read", self.timeouts.read),
            ("timeouts.request", self.timeouts.request),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        self.resilience.validate()?;
        self.listen_limits.validate()?;
        self.tls.validate()?;
        self.auth
            .validate(|name| self.upstreams.contains_key(name))?;
        self.cluster.validate()?;
        self.s3.validate()?;
        for (name, upstream) in &self.upstreams {
            let field = |f: &str| format!("upstreams.{name:?}.{f}");
            if name.is_empty() || name.contains('/') {
                return Err(invalid(
                    field("name"),
                    "must be a registry host name without '/'",
                ));
            }
            match reqwest::Url::parse(&upstream.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                _ => return Err(invalid(field("url"), "must be an http:// or https:// URL")),
            }
            if upstream.password.is_some() != upstream.username.is_some() {
                return Err(invalid(
                    field("username"),
                    "username and password go together",
                ));
            }
            crate::upstream::check_egress_config(upstream)
                .map_err(|(f, message)| invalid(field(f), message))?;
        }
        match self.upstreams.get(&self.default_upstream) {
            Some(u) if u.enabled => Ok(()),
            _ => Err(invalid("default_upstream", "must name an enabled upstream")),
        }
    }

    /// The tag TTL of upstream `name`.
    pub fn tag_ttl_of(&self, name: &str) -> Duration {
        self.upstreams
            .get(name)
            .and_then(|u| u.tag_ttl)
            .unwrap_or(self.tag_ttl)
    }
}

/// An upstream name as it appears in environment variable names.
pub fn env_key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Parses `NAME=URL`, the form of `--upstream`.
pub fn parse_upstream_flag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, url)) if !name.is_empty() && !url.is_empty() => {
            Ok((name.to_owned(), url.to_owned()))
        }
        _ => Err(format!("expected NAME=URL, got {text:?}")),
    }
}

/// Asserts, for each `(toml, field)`, that the configuration `head` plus
/// `toml` parses but fails validation with an error that names `field`.
#[cfg(test)]
fn refused_naming_fields(head: &str, cases: &[(&str, &str)]) {
    for (toml, field) in cases {
        let c = Config::from_toml(&format!("{head}{toml}")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with(field), "{toml}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None, Overrides::default(), no_env).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(c.memory.max_bytes, ByteSize::mib(256));
        assert_eq!(c.upstreams[DOCKER_HUB].url, "https://registry-1.docker.io");
        assert_eq!(c.upstreams.len(), 7);
        assert!(
            c.upstreams
                .values()
                .all(|u| u.enabled && u.url.starts_with("https://"))
        );
    }

    #[test]
    fn file_overrides_and_merges_upstreams() {
        let c = Config::from_toml(
            r#"
            tag_ttl = "30s"
            [memory]
            max_bytes = "64MiB"
            [upstreams."ghcr.io"]
            url = "https://ghcr.example"
            tag_ttl = "1m"
            [upstreams."quay.io"]
            url = "https://quay.io"
            enabled = false
            [upstreams."registry.local:5000"]
            url = "http://10.0.0.5:5000"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.tag_ttl, Duration::from_secs(30));
        assert_eq!(c.memory.max_bytes, ByteSize::mib(64));
        assert_eq!(c.tag_ttl_of("ghcr.io"), Duration::from_secs(60));
        assert_eq!(c.tag_ttl_of(DOCKER_HUB), Duration::from_secs(30));
        assert_eq!(c.upstreams["ghcr.io"].url, "https://ghcr.example");
        assert!(!c.upstreams["quay.io"].enabled);
        assert!(
            c.upstreams["gcr.io"].enabled,
            "built-ins not named in the file stay"
        );
        assert_eq!(
            c.upstreams["registry.local:5000"].url,
            "http://10.0.0.5:5000"
        );
    }

    #[test]
    fn unknown_and_mistyped_fields_are_named() {
        let err = Config::from_toml("tag_tll = \"5m\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tag_tll"), "{err}");
        let err = Config::from_toml("[memory]\nmax_bytes = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_bytes"), "{err}");
        let err = Config::from_toml("tag_ttl = \"five minutes\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tag_ttl"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let overrides = Overrides {
            upstreams: vec![("docker.io".into(), "ftp://x".into())],
            ..Overrides::default()
        };
        let err = Config::load(None, overrides, no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstreams.\"docker.io\".url"), "{err}");
    }

    #[test]
    fn overrides_win_and_credentials_come_from_env() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:1".parse().unwrap()),
            upstreams: vec![("docker.io".into(), "http://127.0.0.1:6000".into())],
            ..Overrides::default()
        };
        let env = |k: &str| match k {
            "PULLTHROUGH_UPSTREAM_DOCKER_IO_USERNAME" => Some("me".to_owned()),
            "PULLTHROUGH_UPSTREAM_DOCKER_IO_PASSWORD" => Some("hunter2".to_owned()),
            _ => None,
        };
        let c = Config::load(None, overrides, env).unwrap();
        assert_eq!(c.listen.port(), 1);
        let hub = &c.upstreams[DOCKER_HUB];
        assert_eq!(hub.url, "http://127.0.0.1:6000");
        assert_eq!(hub.username.as_deref(), Some("me"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn s3_read_parts_come_from_the_file_then_the_overrides() {
        let c = Config::from_toml("[s3]\nbucket = \"cache\"").unwrap();
        assert_eq!(
            (c.s3.read_part_size, c.s3.read_concurrency, c.s3.timeout),
            (ByteSize::mib(8), 8, Duration::from_secs(5)),
            "defaults when the section leaves them out"
        );
        let mut c = Config::from_toml(
            "[s3]\nbucket = \"cache\"\nread_part_size = \"1MiB\"\nread_concurrency = 3",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.s3.read_part_size, c.s3.read_concurrency),
            (ByteSize::mib(1), 3)
        );
        c.apply(Overrides {
            s3_read_part_size: Some(ByteSize::mib(16)),
            s3_read_concurrency: Some(1),
            ..Overrides::default()
        });
        assert_eq!(
            (c.s3.read_part_size, c.s3.read_concurrency),
            (ByteSize::mib(16), 1)
        );
        refused_naming_fields(
            "[s3]\nbucket = \"cache\"\n",
            &[
                ("read_part_size = \"1KiB\"", "s3.read_part_size"),
                ("read_concurrency = 0", "s3.read_concurrency"),
                ("read_concurrency = 65", "s3.read_concurrency"),
            ],
        );
    }

    #[test]
    fn resilience_settings_default_and_validate() {
        let c = Config::from_toml("[resilience]\ncircuit_cooldown = \"2s\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.resilience.circuit_cooldown, Duration::from_secs(2));
        assert_eq!(c.resilience.attempts, 3, "defaults for what is left out");
        refused_naming_fields(
            "[resilience]\n",
            &[
                ("attempts = 0", "resilience.attempts"),
                (
                    "max_concurrent_fetches = 0",
                    "resilience.max_concurrent_fetches",
                ),
                ("backoff_base = \"5s\"", "resilience.backoff_base"),
                ("circuit_cooldown = \"0s\"", "resilience.circuit_cooldown"),
            ],
        );
    }

    #[test]
    fn upstream_flag_parses() {
        assert_eq!(
            parse_upstream_flag("docker.io=http://x:1").unwrap(),
            ("docker.io".to_owned(), "http://x:1".to_owned())
        );
        assert!(parse_upstream_flag("nourl").is_err());
    }
}
