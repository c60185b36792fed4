//! The egress policy against a hostile upstream: a foreign token realm gets
//! no credentials, no request kind carries a token across a redirect to
//! another origin, a redirect to a forbidden address causes no connection
//! at all, and a denied repository is neither fetched nor served.
//!
//! Every listener here is on loopback, where the upstream's own address
//! must stay reachable. So the forbidden-address tests put the hostile
//! upstream on 127.0.0.2 and the trap on 127.0.0.1: loopback, but not the
//! upstream's own address, hence forbidden, and reachable for real when a
//! control run allows it. The https→http downgrade is played by an HTTPS
//! upstream whose test CA the mirror trusts through `ca_file`.

mod support;

use std::net::{IpAddr, Ipv4Addr};

use pullthrough::config::{Config, DOCKER_HUB, Secret};
use support::client::Client;
use support::hostile::{Hostile, Plan, TlsRedirector, Trap};
use support::hubsim::HubSim;
use support::proxy::{Proxy, config};
use support::random_bytes;

const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OTHER_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PASSWORD: &str = "org-s3cret";

/// `config` with the organisation's credentials on docker.io, then `edit`.
fn with_credentials(
    upstream_url: &str,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut Config),
) -> Config {
    let mut cfg = config(upstream_url, dir);
    let hub = cfg.upstreams.get_mut(DOCKER_HUB).unwrap();
    hub.username = Some("org".into());
    hub.password = Some(Secret::new(PASSWORD));
    edit(&mut cfg);
    cfg
}

fn is_basic(authorization: &Option<String>) -> bool {
    authorization
        .as_deref()
        .is_some_and(|a| a.to_ascii_lowercase().starts_with("basic "))
}

fn digest() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

#[tokio::test]
async fn a_foreign_realm_over_http_gets_no_credentials() {
    let trap = Trap::start(HOME).await;
    let hostile = Hostile::start(
        HOME,
        Plan {
            realm: Some(format!("{}/token", trap.url)),
            redirect_to: None,
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(with_credentials(&hostile.url, dir.path(), |_| {})).await;
    Client::new(&proxy.url).manifest("x", "1").await;

    let seen = trap.seen();
    assert!(!seen.is_empty(), "the realm was asked for a token");
    for request in &seen {
        assert!(request.target.starts_with("/token"), "{request:?}");
        assert_eq!(request.authorization, None, "no credentials: {request:?}");
    }
    assert!(
        hostile.seen().iter().all(|s| !is_basic(&s.authorization)),
        "nor to the upstream itself"
    );
    let withheld = proxy.metric(
        "pullthrough_egress_refused_total",
        &[("reason", "credentials_withheld")],
    );
    assert!(withheld >= 1.0, "counted: {withheld}");
}

#[tokio::test]
async fn a_realm_in_auth_hosts_gets_the_credentials() {
    let trap = Trap::start(HOME).await;
    let hostile = Hostile::start(
        HOME,
        Plan {
            realm: Some(format!("{}/token", trap.url)),
            redirect_to: None,
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = format!("127.0.0.1:{}", trap.port);
    let cfg = with_credentials(&hostile.url, dir.path(), |c| {
        c.upstreams.get_mut(DOCKER_HUB).unwrap().auth_hosts = vec![trusted];
    });
    let proxy = Proxy::start(cfg).await;
    Client::new(&proxy.url).manifest("x", "1").await;
    let seen = trap.seen();
    assert!(
        seen.iter().any(|s| is_basic(&s.authorization)),
        "the configured realm host is trusted: {seen:?}"
    );
}

#[tokio::test]
async fn no_request_kind_carries_a_token_to_another_origin() {
    // The trap shares the upstream's address, so the redirect is allowed;
    // only its origin (the port) differs.
    let trap = Trap::start(HOME).await;
    let hostile = Hostile::start(
        HOME,
        Plan {
            realm: Some("/token".into()),
            redirect_to: Some(trap.url.clone()),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(with_credentials(&hostile.url, dir.path(), |_| {})).await;
    let client = Client::new(&proxy.url);
    let digest = digest();
    client.manifest("x", "1").await;
    client.manifest("x", &digest).await;
    // The trap's body is not the blob: the mirror breaks the transfer.
    let _ = client.blob("x", &digest).await;
    let _ = client
        .send("HEAD", &format!("/v2/x/blobs/{digest}"), Default::default())
        .await;
    client.get("/v2/x/tags/list").await;
    client.get(&format!("/v2/x/referrers/{digest}")).await;

    let at_home = hostile.seen();
    assert!(
        at_home
            .iter()
            .any(|s| s.target.starts_with("/token") && is_basic(&s.authorization)),
        "the credentials went to the upstream's own realm: {at_home:?}"
    );
    assert!(
        at_home
            .iter()
            .any(|s| s.authorization.as_deref() == Some("Bearer hostile-token")),
        "and its token to the upstream"
    );
    let seen = trap.seen();
    for (method, part) in [
        ("HEAD", "/manifests/1"),
        ("GET", "/manifests/sha256:"),
        ("GET", "/blobs/"),
        ("HEAD", "/blobs/"),
        ("GET", "/tags/list"),
        ("GET", "/referrers/"),
    ] {
        let hops: Vec<_> = seen
            .iter()
            .filter(|s| s.method == method && s.target.contains(part))
            .collect();
        assert!(!hops.is_empty(), "{method} {part} was redirected: {seen:?}");
        for hop in hops {
            assert_eq!(hop.authorization, None, "{hop:?}");
        }
    }
}

#[tokio::test]
async fn a_redirect_to_a_forbidden_address_makes_no_connection() {
    let trap = Trap::start(HOME).await;
    let hostile = Hostile::start(OTHER_LOOPBACK, Plan::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(with_credentials(&hostile.url, dir.path(), |_| {})).await;
    let client = Client::new(&proxy.url);
    let digest = digest();
    let targets = [
        trap.url.clone(),
        // A name, refused for what it resolves to.
        format!("http://localhost:{}", trap.port),
        "http://169.254.169.254".to_owned(),
        "http://169.254.170.2".to_owned(),
        "http://[fe80::1]".to_owned(),
        "http://0.0.0.0".to_owned(),
    ];
    let refused = || {
        proxy.metric(
            "pullthrough_egress_refused_total",
            &[("reason", "redirect_address")],
        )
    };
    for target in &targets {
        hostile.redirect_to(target);
        let before = refused();
        let answer = client.manifest("x", &digest).await;
        assert_eq!(answer.status, 502, "{target}: {:?}", answer.body);
        let body = String::from_utf8_lossy(&answer.body);
        assert!(body.contains("refused redirect"), "{target}: {body}");
        let blob = client.blob("x", &digest).await.unwrap();
        assert_eq!(blob.status, 502, "{target}: {:?}", blob.body);
        assert_eq!(refused() - before, 2.0, "{target}: each refusal counted");
    }
    assert_eq!(trap.connections(), 0, "nothing reached the trap");
}

#[tokio::test]
async fn a_realm_at_a_forbidden_address_is_never_asked() {
    let trap = Trap::start(HOME).await;
    let hostile = Hostile::start(
        OTHER_LOOPBACK,
        Plan {
            realm: Some(format!("http://localhost:{}/token", trap.port)),
            redirect_to: None,
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(with_credentials(&hostile.url, dir.path(), |_| {})).await;
    let answer = Client::new(&proxy.url).manifest("x", &digest()).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    let body = String::from_utf8_lossy(&answer.body);
    assert!(body.contains("refused token realm"), "{body}");
    assert_eq!(trap.connections(), 0, "nothing reached the trap");
    let refused = proxy.metric(
        "pullthrough_egress_refused_total",
        &[("reason", "realm_address")],
    );
    assert!(refused >= 1.0, "counted: {refused}");
}

#[tokio::test]
async fn a_redirect_from_https_down_to_http_is_refused() {
    let trap = Trap::start(HOME).await;
    let upstream = TlsRedirector::start(&trap.url).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &upstream.ca_pem).unwrap();
    let cfg = with_credentials(&upstream.url, &dir.path().join("data"), |c| {
        c.upstreams.get_mut(DOCKER_HUB).unwrap().ca_file = Some(ca_file);
    });
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);
    let answer = client.manifest("x", &digest()).await;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    let body = String::from_utf8_lossy(&answer.body);
    assert!(body.contains("downgrades https to http"), "{body}");
    let blob = client.blob("x", &digest()).await.unwrap();
    assert_eq!(blob.status, 502, "{:?}", blob.body);
    let refused = proxy.metric(
        "pullthrough_egress_refused_total",
        &[("reason", "redirect_downgrade")],
    );
    assert_eq!(refused, 2.0, "both counted");
    assert_eq!(trap.connections(), 0, "nothing reached the trap");
}

#[tokio::test]
async fn redirect_allow_opens_a_private_network() {
    let trap = Trap::start(HOME).await;
    let hostile = Hostile::start(
        OTHER_LOOPBACK,
        Plan {
            realm: None,
            redirect_to: Some(format!("http://localhost:{}", trap.port)),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_credentials(&hostile.url, dir.path(), |c| {
        c.upstreams.get_mut(DOCKER_HUB).unwrap().redirect_allow = vec!["127.0.0.1/32".into()];
    });
    let proxy = Proxy::start(cfg).await;
    Client::new(&proxy.url).manifest("x", &digest()).await;
    assert!(trap.connections() > 0, "the allowed network is reached");
}

#[tokio::test]
async fn a_denied_repository_is_neither_fetched_nor_served_from_the_cache() {
    let sim = HubSim::start().await;
    let image = sim.push_image("library/secret", "1", &[random_bytes(1000, 7)]);
    let dir = tempfile::tempdir().unwrap();
    let open = Proxy::start(config(&sim.registry_url, dir.path())).await;
    assert_eq!(
        Client::new(&open.url).pull("secret", "1").await,
        image.manifest_digest
    );
    open.stop().await;

    let mut cfg = config(&sim.registry_url, dir.path());
    let hub = cfg.upstreams.get_mut(DOCKER_HUB).unwrap();
    hub.allow_repositories = vec!["library/*".into(), "myorg/**".into()];
    hub.deny_repositories = vec!["library/secret".into()];
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);
    sim.reset_counters();
    let layer = &image.layer_digests[0];
    for path in [
        "/v2/secret/manifests/1".to_owned(),
        format!("/v2/secret/manifests/{}", image.manifest_digest),
        format!("/v2/library/secret/blobs/{layer}"),
        "/v2/secret/tags/list".to_owned(),
        "/v2/evil/miner/manifests/latest".to_owned(),
        "/v2/library/a/b/manifests/latest".to_owned(),
    ] {
        let answer = client.get(&path).await;
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (403, "DENIED"),
            "{path}"
        );
        let body = String::from_utf8_lossy(&answer.body);
        assert!(body.contains("denied by this mirror"), "{path}: {body}");
    }
    assert!(
        sim.requests().is_empty(),
        "nothing asked upstream: {:?}",
        sim.requests()
    );
    let denied = proxy.metric(
        "pullthrough_egress_refused_total",
        &[("reason", "repository_denied")],
    );
    assert_eq!(denied, 6.0);
    // Allowed repositories still work, from the same upstream.
    let other = sim.push_image("myorg/team/app", "1", &[random_bytes(500, 8)]);
    assert_eq!(
        client.pull("myorg/team/app", "1").await,
        other.manifest_digest
    );
}

#[test]
fn bad_egress_keys_fail_at_start_up_naming_the_field() {
    for (line, field) in [
        (
            r#"redirect_allow = ["10.0.0.0/33"]"#,
            r#"upstreams."docker.io".redirect_allow"#,
        ),
        (
            r#"auth_hosts = ["https://auth.example/token"]"#,
            r#"upstreams."docker.io".auth_hosts"#,
        ),
        (
            r#"allow_repositories = ["library/[a"]"#,
            r#"upstreams."docker.io".allow_repositories"#,
        ),
        (
            r#"deny_repositories = ["{a"]"#,
            r#"upstreams."docker.io".deny_repositories"#,
        ),
        (
            r#"ca_file = "/nonexistent/ca.pem""#,
            r#"upstreams."docker.io".ca_file"#,
        ),
    ] {
        let toml =
            format!("[upstreams.\"docker.io\"]\nurl = \"https://registry-1.docker.io\"\n{line}");
        let err = Config::from_toml(&toml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(field), "{line}: {err}");
    }
    let fine = "[upstreams.\"docker.io\"]\nurl = \"https://registry-1.docker.io\"\n\
        auth_hosts = [\"auth.example:8443\"]\nredirect_allow = [\"10.0.0.0/8\", \"fd00::/8\"]\n\
        allow_repositories = [\"library/*\"]\ndeny_repositories = [\"library/x*\"]";
    Config::from_toml(fine).unwrap().validate().unwrap();
}
