//! The checks of one upstream, in the order a request meets them: DNS,
//! TCP, TLS, `/v2/` with the token flow, the clock, and the pull budget.
//! A check that fails skips the ones that need it. TLS is judged from the
//! `/v2/` request, made by the client pulls use (same roots, same
//! settings): after DNS and TCP worked, a failure to connect is the
//! handshake's.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::Check;
use crate::config::Config;
use crate::upstream::{ErrorKind, Upstream, UpstreamError};

/// More clock difference than this fails the clock check: token expiry
/// and S3 request signatures start to fail well before S3's 15 minutes.
const MAX_SKEW: Duration = Duration::from_secs(30);

/// The environment variable prefix of an upstream's settings.
fn env_prefix(name: &str) -> String {
    format!("PULLTHROUGH_UPSTREAM_{}", crate::config::env_key(name))
}

/// Every check of `upstream`.
pub(super) async fn checks(upstream: &Upstream, config: &Config, credentials: bool) -> Vec<Check> {
    let name = upstream.name();
    let url = upstream.base_url();
    let mut checks = Vec::new();
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        checks.push(Check::fail(
            name,
            "config",
            format!("{url} names no host"),
            format!("set upstreams.\"{name}\".url to a URL such as https://registry.example.com"),
        ));
        return checks;
    };
    let connect = config.timeouts.connect;
    let resolved = tokio::time::timeout(connect, tokio::net::lookup_host((host, port))).await;
    let addrs: Vec<SocketAddr> = match resolved {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            checks.push(Check::fail(
                name,
                "dns",
                format!("{host}: {e}"),
                dns_hint(name),
            ));
            return skip_rest(checks, name, "dns");
        }
        Err(_) => {
            checks.push(Check::fail(
                name,
                "dns",
                format!("{host}: no answer within {connect:?}"),
                dns_hint(name),
            ));
            return skip_rest(checks, name, "dns");
        }
    };
    let shown: Vec<String> = addrs.iter().take(3).map(|a| a.ip().to_string()).collect();
    checks.push(Check::pass(
        name,
        "dns",
        format!("{host} → {}", shown.join(", ")),
    ));

    let mut tcp_error = String::from("no address");
    let mut reached = None;
    for addr in &addrs {
        match tokio::time::timeout(connect, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                reached = Some(*addr);
                break;
            }
            Ok(Err(e)) => tcp_error = format!("{addr}: {e}"),
            Err(_) => tcp_error = format!("{addr}: no answer within {connect:?}"),
        }
    }
    let Some(addr) = reached else {
        checks.push(Check::fail(
            name,
            "tcp",
            tcp_error,
            format!(
                "nothing accepts connections at {host}:{port}: check the port in upstreams.\"{name}\".url (or --upstream), the egress rules (security group, NetworkPolicy, firewall) and whether traffic must go through a proxy",
            ),
        ));
        return skip_rest(checks, name, "tcp");
    };
    checks.push(Check::pass(name, "tcp", format!("connected to {addr}")));

    let withheld = upstream.credentials_withheld();
    let base = upstream.check_base().await;
    let withheld = upstream.credentials_withheld() > withheld;
    let https = url.scheme() == "https";
    match (&base, https) {
        (_, false) => checks.push(Check::skip(name, "tls", "plain http: no TLS to check")),
        (Err(e), true) if is_tls(e) => {
            checks.push(Check::fail(
                name,
                "tls",
                e.detail.clone(),
                "the TLS handshake failed: if a proxy inspects TLS, add its CA to the trust store (SSL_CERT_FILE); if the port speaks plain http, use an http:// URL",
            ));
            return skip_rest(checks, name, "tls");
        }
        (_, true) => checks.push(Check::pass(
            name,
            "tls",
            "handshake and certificate accepted",
        )),
    }
    let answer = match base {
        Ok(answer) => answer,
        Err(e) => {
            checks.push(base_failure(name, &e, credentials));
            return skip_rest(checks, name, "v2");
        }
    };
    checks.push(match (credentials, withheld) {
        (true, true) => Check::fail(
            name,
            "v2",
            format!(
                "/v2/ answered {} only anonymously: its token realm is on another host, so the configured credentials were withheld",
                answer.status
            ),
            format!(
                "if that realm (see the WARN line) is this registry's own token service, add its host to upstreams.\"{name}\".auth_hosts"
            ),
        ),
        (true, false) => Check::pass(
            name,
            "v2",
            format!("/v2/ answered {} with the configured credentials", answer.status),
        ),
        (false, _) => Check::pass(
            name,
            "v2",
            format!("/v2/ answered {} anonymously", answer.status),
        ),
    });
    checks.push(clock(name, answer.date));
    checks.push(budget(upstream, credentials).await);
    checks
}

fn dns_hint(name: &str) -> String {
    format!(
        "the host of upstreams.\"{name}\".url does not resolve: check the URL for typos, and the resolver (/etc/resolv.conf; on ECS or EKS, the VPC's DNS)"
    )
}

/// Whether `/v2/` failed in the TLS handshake: a connection error after
/// DNS and TCP both just worked, or any error that names TLS.
fn is_tls(e: &UpstreamError) -> bool {
    let detail = e.detail.to_lowercase();
    e.kind == ErrorKind::Connect
        || (e.kind == ErrorKind::Transport
            && ["certificate", "tls", "handshake", "ssl"]
                .iter()
                .any(|w| detail.contains(w)))
}

fn base_failure(name: &str, e: &UpstreamError, credentials: bool) -> Check {
    let prefix = env_prefix(name);
    let hint = match e.kind {
        ErrorKind::Denied if credentials => format!(
            "the registry refused the credentials: check {prefix}_USERNAME and {prefix}_PASSWORD (an access token needs read rights)"
        ),
        ErrorKind::Denied => {
            format!("the registry wants credentials: set {prefix}_USERNAME and {prefix}_PASSWORD")
        }
        ErrorKind::NotFound => format!(
            "{} has no /v2/: upstreams.\"{name}\".url must be the registry's API endpoint (for Docker Hub, https://registry-1.docker.io)",
            name
        ),
        ErrorKind::Timeout => {
            "the registry is too slow to answer: check the network path, or raise timeouts.request"
                .to_owned()
        }
        _ => "the registry did not answer as a registry: check upstreams.\"NAME\".url"
            .replace("NAME", name),
    };
    Check::fail(name, "v2", e.detail.clone(), hint)
}

fn clock(name: &str, date: Option<SystemTime>) -> Check {
    let Some(date) = date else {
        return Check::skip(name, "clock", "no Date header to compare with");
    };
    let now = SystemTime::now();
    let (skew, ahead) = match now.duration_since(date) {
        Ok(behind) => (behind, true),
        Err(e) => (e.duration(), false),
    };
    // The Date header has whole seconds: one second is no skew.
    let shown = format!(
        "{}s {} upstream",
        skew.as_secs(),
        if ahead { "ahead of" } else { "behind" }
    );
    if skew > MAX_SKEW {
        Check::fail(
            name,
            "clock",
            shown,
            "the clock is off: enable time sync (chrony, systemd-timesyncd, or the Amazon Time Sync Service); tokens and S3 signatures fail with a skewed clock",
        )
    } else {
        Check::pass(name, "clock", shown)
    }
}

async fn budget(upstream: &Upstream, credentials: bool) -> Check {
    let name = upstream.name();
    if !upstream.can_probe_budget() {
        return Check::skip(
            name,
            "budget",
            "no free way to read this registry's pull budget",
        );
    }
    if let Err(e) = upstream.probe_budget().await
        && e.kind != ErrorKind::RateLimited
    {
        return Check::fail(
            name,
            "budget",
            format!(
                "the free HEAD of ratelimitpreview/test failed: {}",
                e.detail
            ),
            "the budget could not be read; the v2 check above shows whether pulls work",
        );
    }
    let state = upstream.budget().state();
    let window = state.window_secs.map_or(String::new(), |w| {
        format!(
            " per {}",
            humantime::format_duration(Duration::from_secs(w))
        )
    });
    let source = state
        .source
        .map_or(String::new(), |s| format!(", counted for {s}"));
    match (state.remaining, state.limit) {
        (Some(0), limit) => Check::fail(
            name,
            "budget",
            format!("0 of {} pulls left{window}{source}", limit.unwrap_or(0)),
            if credentials {
                "the account's pulls are spent: cached images keep being served; wait for the window, or use an account with a higher limit".to_owned()
            } else {
                format!(
                    "the anonymous pulls are spent: cached images keep being served; set {}_USERNAME and {}_PASSWORD for a higher limit",
                    env_prefix(name),
                    env_prefix(name)
                )
            },
        ),
        (Some(left), Some(limit)) => Check::pass(
            name,
            "budget",
            format!("{left} of {limit} pulls left{window}{source}"),
        ),
        _ => Check::pass(name, "budget", "no pull limit announced"),
    }
}

/// Marks the checks after `failed` as not run.
fn skip_rest(mut checks: Vec<Check>, name: &str, failed: &str) -> Vec<Check> {
    let order = ["dns", "tcp", "tls", "v2", "clock", "budget"];
    let after = order.iter().position(|c| *c == failed).map_or(0, |i| i + 1);
    for check in &order[after..] {
        checks.push(Check::skip(
            name,
            check,
            format!("not run: {failed} failed"),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_config_rule() {
        assert_eq!(env_prefix("docker.io"), "PULLTHROUGH_UPSTREAM_DOCKER_IO");
        assert_eq!(
            env_prefix("registry.k8s.io"),
            "PULLTHROUGH_UPSTREAM_REGISTRY_K8S_IO"
        );
    }
}
