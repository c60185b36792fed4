//! Egress policy: which hosts an upstream's answers may send pullthrough to,
//! and which of them are trusted with the configured credentials.
//!
//! An upstream names other hosts in two places: the token realm of a 401
//! challenge and the `Location` of a redirect. Both are upstream input, so a
//! compromised or spoofed upstream (plain-HTTP upstreams are allowed) could
//! otherwise harvest the credentials or make pullthrough reach the node's
//! metadata endpoint. The rules, enforced here and nowhere else:
//!
//! - **Credentials** go only to a realm on the upstream's own origin, to an
//!   HTTPS realm on a host built in for that registry ([`BUILT_IN_REALMS`]),
//!   or to a host configured in `auth_hosts` (over HTTPS, or over HTTP when
//!   the upstream itself is plain HTTP). Any other realm gets an anonymous
//!   token request, a WARN log and a count.
//! - **Redirects** go only to `http` or `https`, never from `https` down to
//!   `http`, and only to public addresses, the upstream's own addresses, or
//!   networks in `redirect_allow`. The address is checked after resolution:
//!   before the hop (for a clear error) and again in the resolver of the
//!   client that reaches foreign origins, so a name that changes its answer
//!   between the two still causes no connection to a forbidden address.
//!
//! The same address rule applies to a realm on another origin. Requests to
//! the upstream's own origin use the ordinary client: it is configured, so
//! trusted.

mod address;

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::Url;
use tokio::sync::OnceCell;

use address::{AddressPolicy, PolicyResolver};

use super::error::{ErrorKind, UpstreamError};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// Token realm hosts each public registry really uses on a host other than
/// its API's (the others issue tokens on their own host; see
/// `docs/registries.md`).
pub const BUILT_IN_REALMS: &[(&str, &[&str])] = &[(crate::config::DOCKER_HUB, &["auth.docker.io"])];

/// Checks the egress keys of one upstream's configuration; the error names
/// the key and what is wrong with it.
pub fn check_config(cfg: &UpstreamConfig) -> Result<(), (&'static str, String)> {
    for host in &cfg.auth_hosts {
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err((
                "auth_hosts",
                format!("{host:?} must be a host or host:port, without scheme or path"),
            ));
        }
    }
    for net in &cfg.redirect_allow {
        parse_net(net).map_err(|m| ("redirect_allow", m))?;
    }
    extra_roots(cfg).map_err(|m| ("ca_file", m))?;
    Ok(())
}

/// The certificates of the upstream's `ca_file`, if any, for both of its
/// clients; an unreadable file or one without a certificate is an error
/// naming the file.
pub fn extra_roots(cfg: &UpstreamConfig) -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = &cfg.ca_file else {
        return Ok(Vec::new());
    };
    let pem = std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(roots) if !roots.is_empty() => Ok(roots),
        Ok(_) => Err(format!("ca_file {}: no certificate in it", path.display())),
        Err(e) => Err(format!("ca_file {}: {e}", path.display())),
    }
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR such as 10.0.0.0/8"))
}

/// Why a target was refused; the `reason` label of the refusal metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `http` nor `https`.
    Scheme,
    /// `https` to `http`.
    Downgrade,
    /// Resolves only to non-public addresses that are not allowed.
    Address,
}

/// What was refused: a redirect hop or a token realm on another origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Redirect,
    Realm,
}

impl Refusal {
    /// The metric's `reason`, such as `redirect_address`.
    fn label(self, hop: Hop) -> &'static str {
        match (hop, self) {
            (Hop::Redirect, Refusal::Scheme) => "redirect_scheme",
            (Hop::Redirect, Refusal::Downgrade) => "redirect_downgrade",
            (Hop::Redirect, Refusal::Address) => "redirect_address",
            (Hop::Realm, Refusal::Scheme) => "realm_scheme",
            (Hop::Realm, Refusal::Downgrade) => "realm_downgrade",
            (Hop::Realm, Refusal::Address) => "realm_address",
        }
    }
}

/// One upstream's egress policy and the two clients it chooses between.
pub struct Egress {
    upstream: String,
    home: Url,
    /// For the upstream's own origin.
    home_client: reqwest::Client,
    /// For every other origin; its resolver drops forbidden addresses.
    foreign_client: reqwest::Client,
    realm_hosts: Vec<String>,
    addresses: Arc<AddressPolicy>,
    metrics: Metrics,
}

impl Egress {
    /// The policy of upstream `name` at `home`; `builder` is the shared
    /// client configuration, to which the foreign client adds its resolver.
    pub fn new(
        name: &str,
        home: &Url,
        cfg: &UpstreamConfig,
        home_client: reqwest::Client,
        builder: impl FnOnce() -> reqwest::ClientBuilder,
        metrics: Metrics,
    ) -> Result<Self, UpstreamError> {
        let allow = cfg
            .redirect_allow
            .iter()
            .map(String::as_str)
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| UpstreamError::new(name, ErrorKind::Invalid, e))?;
        let addresses = Arc::new(AddressPolicy {
            allow,
            home: home.clone(),
            home_addresses: OnceCell::new(),
        });
        let foreign_client = builder()
            .dns_resolver(Arc::new(PolicyResolver(addresses.clone())))
            .build()
            .map_err(|e| UpstreamError::new(name, ErrorKind::Invalid, e.to_string()))?;
        let built_in = BUILT_IN_REALMS
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, hosts)| hosts.iter().map(|h| format!("https://{h}")));
        let configured = cfg.auth_hosts.iter().flat_map(|h| {
            let h = h.to_ascii_lowercase();
            let plain = (home.scheme() == "http").then(|| format!("http://{h}"));
            std::iter::once(format!("https://{h}")).chain(plain)
        });
        Ok(Egress {
            upstream: name.to_owned(),
            home: home.clone(),
            home_client,
            foreign_client,
            realm_hosts: built_in.chain(configured).collect(),
            addresses,
            metrics,
        })
    }

    /// Whether `url` is on the upstream's own origin.
    pub fn is_home(&self, url: &Url) -> bool {
        url.origin() == self.home.origin()
    }

    /// The client for a request to `url`.
    pub fn client(&self, url: &Url) -> &reqwest::Client {
        if self.is_home(url) {
            &self.home_client
        } else {
            &self.foreign_client
        }
    }

    /// Whether a token realm may receive the configured credentials; logs
    /// and counts a realm that may not.
    pub fn may_send_credentials(&self, realm: &Url) -> bool {
        if self.is_home(realm) || self.realm_hosts.contains(&scheme_and_authority(realm)) {
            return true;
        }
        tracing::warn!(
            upstream = %self.upstream,
            realm = %realm,
            "token realm is not on the upstream's host, a built-in realm host or auth_hosts: credentials withheld, asking anonymously"
        );
        self.count("credentials_withheld");
        false
    }

    /// Checks a redirect hop from `from` to `to`; a refusal is logged,
    /// counted and returned as an error that names the target.
    pub async fn check_redirect(&self, from: &Url, to: &Url) -> Result<(), UpstreamError> {
        let refusal = if !matches!(to.scheme(), "http" | "https") {
            Some(Refusal::Scheme)
        } else if from.scheme() == "https" && to.scheme() == "http" {
            Some(Refusal::Downgrade)
        } else if !self.is_home(to) && !self.addresses.reachable(to).await {
            Some(Refusal::Address)
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(refusal) => Err(self.refuse(refusal, Hop::Redirect, to)),
        }
    }

    /// Checks a token realm on another origin like a redirect target
    /// (`http`/`https` and a permitted address).
    pub async fn check_realm(&self, realm: &Url) -> Result<(), UpstreamError> {
        if !matches!(realm.scheme(), "http" | "https") {
            return Err(self.refuse(Refusal::Scheme, Hop::Realm, realm));
        }
        if self.is_home(realm) || self.addresses.reachable(realm).await {
            Ok(())
        } else {
            Err(self.refuse(Refusal::Address, Hop::Realm, realm))
        }
    }

    fn refuse(&self, refusal: Refusal, hop: Hop, target: &Url) -> UpstreamError {
        let what = match hop {
            Hop::Redirect => "redirect to",
            Hop::Realm => "token realm at",
        };
        let why = match refusal {
            Refusal::Scheme => "is neither http nor https",
            Refusal::Downgrade => "downgrades https to http",
            Refusal::Address => {
                "resolves only to loopback, link-local, private or other non-public addresses outside redirect_allow"
            }
        };
        // Only scheme, host and port: a signed URL's query is a credential.
        let shown = scheme_and_authority(target);
        let reason = refusal.label(hop);
        tracing::warn!(upstream = %self.upstream, target = %shown, reason, "egress refused: {what} a target that {why}");
        self.count(reason);
        UpstreamError::new(
            &self.upstream,
            ErrorKind::Invalid,
            format!("refused {what} {shown}: it {why}"),
        )
    }

    fn count(&self, reason: &str) {
        self.metrics
            .egress_refused
            .with_label_values(&[&self.upstream, reason])
            .inc();
    }
}

/// `scheme://host[:port]`, the port only when it is not the scheme's default.
fn scheme_and_authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str, edit: impl FnOnce(&mut UpstreamConfig)) -> UpstreamConfig {
        let mut cfg = UpstreamConfig::new(url);
        edit(&mut cfg);
        cfg
    }

    fn egress(name: &str, cfg: &UpstreamConfig) -> Egress {
        let home = Url::parse(&cfg.url).unwrap();
        Egress::new(
            name,
            &home,
            cfg,
            reqwest::Client::new(),
            reqwest::Client::builder,
            Metrics::new(),
        )
        .unwrap()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn credentials_go_to_the_home_origin_built_in_realms_and_auth_hosts() {
        let hub = egress("docker.io", &cfg("https://registry-1.docker.io", |_| {}));
        assert!(hub.may_send_credentials(&url("https://registry-1.docker.io/token")));
        assert!(hub.may_send_credentials(&url("https://auth.docker.io/token")));
        assert!(hub.may_send_credentials(&url("https://AUTH.docker.io:443/token")));
        for foreign in [
            "http://auth.docker.io/token",
            "https://auth.docker.io:8443/token",
            "https://evil.example/token",
            "http://registry-1.docker.io/token",
        ] {
            assert!(!hub.may_send_credentials(&url(foreign)), "{foreign}");
        }
        let ghcr = egress("ghcr.io", &cfg("https://ghcr.io", |_| {}));
        assert!(
            !ghcr.may_send_credentials(&url("https://auth.docker.io/token")),
            "a built-in realm belongs to its own registry"
        );

        let own = egress(
            "registry.local",
            &cfg("http://10.0.0.5:5000", |c| {
                c.auth_hosts = vec!["Auth.local:9000".into(), "sso.example".into()];
            }),
        );
        assert!(own.may_send_credentials(&url("http://auth.local:9000/t")));
        assert!(own.may_send_credentials(&url("https://sso.example/t")));
        assert!(!own.may_send_credentials(&url("http://auth.local:9001/t")));
        let tls = egress(
            "registry.tls",
            &cfg("https://10.0.0.5", |c| {
                c.auth_hosts = vec!["sso.example".into()]
            }),
        );
        assert!(
            !tls.may_send_credentials(&url("http://sso.example/t")),
            "plain HTTP only when the upstream itself is plain HTTP"
        );
        assert_eq!(
            tls.metrics
                .egress_refused
                .with_label_values(&["registry.tls", "credentials_withheld"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn redirects_are_refused_by_scheme_downgrade_and_address() {
        let up = egress(
            "up",
            &cfg("https://127.0.0.2:8443", |c| {
                c.redirect_allow = vec!["10.0.0.0/8".into(), "fd00::5".into()];
            }),
        );
        let from = url("https://127.0.0.2:8443/v2/a/blobs/x");
        for ok in [
            "https://127.0.0.2:8443/elsewhere",
            "https://127.0.0.2:9999/same-address",
            "https://8.8.8.8/storage",
            "https://10.2.3.4/storage",
            "https://[fd00::5]/storage",
        ] {
            assert_eq!(up.check_redirect(&from, &url(ok)).await, Ok(()), "{ok}");
        }
        for (refused, reason) in [
            ("ftp://8.8.8.8/x", "redirect_scheme"),
            ("http://8.8.8.8/x", "redirect_downgrade"),
            ("https://127.0.0.1/x", "redirect_address"),
            (
                "https://169.254.169.254/latest/meta-data",
                "redirect_address",
            ),
            ("https://[fe80::1]/x", "redirect_address"),
            ("https://[fd00::6]/x", "redirect_address"),
            ("https://192.168.0.1/x", "redirect_address"),
            ("https://localhost:1/x", "redirect_address"),
        ] {
            let err = up.check_redirect(&from, &url(refused)).await.unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{refused}");
            assert!(err.detail.starts_with("refused redirect"), "{err}");
            let count = up
                .metrics
                .egress_refused
                .with_label_values(&["up", reason])
                .get();
            assert!(count > 0, "{refused} counted as {reason}");
        }
        let err = up
            .check_redirect(
                &from,
                &url("https://169.254.169.254/x?X-Amz-Signature=s3cret"),
            )
            .await
            .unwrap_err();
        assert!(!err.detail.contains("s3cret"), "{err}");
    }

    #[test]
    fn egress_keys_are_checked() {
        assert!(
            check_config(&cfg("https://x", |c| c.redirect_allow =
                vec!["10.0.0.0/8".into()]))
            .is_ok()
        );
        let err =
            check_config(&cfg("https://x", |c| c.redirect_allow = vec!["ten".into()])).unwrap_err();
        assert_eq!(err.0, "redirect_allow");
        let err = check_config(&cfg("https://x", |c| {
            c.auth_hosts = vec!["https://a/".into()]
        }))
        .unwrap_err();
        assert_eq!(err.0, "auth_hosts");
    }
}
