//! The `[listen_limits]` and `[tls]` sections: how the listener guards
//! itself against slow, idle and greedy clients, and the certificate it
//! presents (see `listen`).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, render};

/// Bounds on client connections. The defaults hold a cluster's rollout
/// (thousands of nodes, each with a few hundred requests at once) while a
/// client that trickles its headers or sits idle is cut off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenLimits {
    /// Longest time from a connection's start, or from the first byte of a
    /// request, until its headers are complete (TLS handshake included);
    /// a client trickling its headers is disconnected at this bound.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight may stay open
    /// waiting for the next one, and how long a client may leave a
    /// response unread before it is disconnected.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) over HTTP/1, and
    /// header list over HTTP/2; larger ones are refused.
    #[serde(serialize_with = "render::exact_size")]
    pub max_header_bytes: ByteSize,
    /// Open client connections at once; connection N+1 waits in the
    /// kernel's backlog until one closes.
    pub max_connections: usize,
    /// Requests in flight at once from one peer address (a response counts
    /// until its body is sent); more get 429 `TOOMANYREQUESTS`. A backstop
    /// against one runaway client, not a quota: a 429 sends containerd and
    /// dockerd to Docker Hub, and behind a load balancer that hides client
    /// addresses every node shares one address.
    pub max_requests_per_ip: usize,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: ByteSize::kib(64),
            max_connections: 16_384,
            max_requests_per_ip: 4096,
            max_streams_per_connection: 256,
        }
    }
}

/// hyper reads HTTP/1 heads into a buffer of at least this size.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

impl ListenLimits {
    /// Checks what serde's types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            (
                "listen_limits.header_read_timeout",
                self.header_read_timeout,
            ),
            ("listen_limits.idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.max_header_bytes.as_u64() < MIN_HEADER_BYTES {
            return Err(invalid(
                "listen_limits.max_header_bytes",
                "must be at least 8KiB",
            ));
        }
        for (field, value) in [
            ("listen_limits.max_connections", self.max_connections),
            (
                "listen_limits.max_requests_per_ip",
                self.max_requests_per_ip,
            ),
            (
                "listen_limits.max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// TLS on the listener: off unless both files are named.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// How often the files' modification times are checked; a change (or
    /// SIGHUP) loads them for new handshakes. Default 5 s.
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// How often the files are checked for a change.
    pub fn reload_every(&self) -> Duration {
        self.reload_interval.unwrap_or(Duration::from_secs(5))
    }

    /// Checks that the two files are named together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid("tls.cert", "tls.cert and tls.key go together"));
        }
        if self.reload_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid("tls.reload_interval", "must be greater than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, refused_naming_fields};

    #[test]
    fn limits_default_for_a_cluster_and_validate() {
        let c = Config::from_toml("[listen_limits]\nheader_read_timeout = \"3s\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen_limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(c.listen_limits.max_connections, 16_384);
        refused_naming_fields(
            "[listen_limits]\n",
            &[
                ("idle_timeout = \"0s\"", "listen_limits.idle_timeout"),
                (
                    "max_header_bytes = \"1KiB\"",
                    "listen_limits.max_header_bytes",
                ),
                (
                    "max_requests_per_ip = 0",
                    "listen_limits.max_requests_per_ip",
                ),
            ],
        );
    }

    #[test]
    fn tls_needs_both_files() {
        let c = Config::from_toml("[tls]\ncert = \"/c.pem\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("tls.cert"), "{err}");
        let c = Config::from_toml("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"").unwrap();
        c.validate().unwrap();
        assert!(c.tls.enabled());
        assert_eq!(c.tls.reload_every(), Duration::from_secs(5));
    }
}
