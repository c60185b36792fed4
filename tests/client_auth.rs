//! Client authentication: each mode (htpasswd, tokens, networks, read
//! rules) admits and refuses plain HTTP requests as documented, a cached
//! private image reaches only clients allowed to read it, and skopeo,
//! podman, containerd and dockerd pull with the credentials they are given
//! and fail without. An authenticated client's fair share of counted
//! pulls goes by its name.

mod support;

use std::net::IpAddr;
use std::process::Command;

use base64::Engine;
use pullthrough::config::{Config, ReadRule, Secret};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use support::client::{Answer, Client};
use support::daemons::{Containerd, Dockerd, Podman, default_hosts_dir, run, run_ok};
use support::docs::{heredoc, snippet};
use support::hubsim::{HubSim, SimOptions};
use support::image::{Format, Image, image};
use support::proxy::{Proxy, config};
use support::random_bytes;
use support::registry::require;

/// Docker Hub simulator with `library/app:v1` and `myorg/secret:v1`.
struct Upstream {
    sim: HubSim,
    app: Image,
    secret: Image,
}

fn put(sim: &HubSim, repo: &str, image: &Image) {
    sim.put_blob(image.config.clone());
    for layer in &image.layers {
        sim.put_blob(layer.clone());
    }
    sim.put_manifest(
        repo,
        Some("v1"),
        Format::Docker.manifest_type(),
        image.manifest.clone(),
    );
}

async fn upstream() -> Upstream {
    let sim = HubSim::start().await;
    let app = image(Format::Docker, "amd64", &[20_000], 21);
    let secret = image(Format::Docker, "amd64", &[20_000], 22);
    put(&sim, "library/app", &app);
    put(&sim, "myorg/secret", &secret);
    Upstream { sim, app, secret }
}

/// `alice` (htpasswd) reads everything; `ci` (htpasswd) only `library/*`
/// of docker.io; the token `robot` reads everything.
fn with_credentials(cfg: &mut Config, dir: &std::path::Path) {
    let hash = |password: &str| bcrypt::hash(password, 4).unwrap();
    let htpasswd = dir.join("htpasswd");
    let users = format!("alice:{}\nci:{}\n", hash("wonderland"), hash("ci-pass"));
    std::fs::write(&htpasswd, users).unwrap();
    cfg.auth.htpasswd = Some(htpasswd);
    cfg.auth
        .tokens
        .insert("robot".into(), Secret::new("tok-robot"));
    cfg.auth.rules.push(ReadRule {
        clients: vec!["ci".into()],
        upstream: "docker.io".into(),
        repositories: vec!["library/*".into()],
    });
}

fn authorization(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    headers
}

fn basic(user: &str, password: &str) -> HeaderMap {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    authorization(&format!("Basic {encoded}"))
}

async fn get(client: &Client, path: &str, headers: HeaderMap) -> Answer {
    client.send("GET", path, headers).await.unwrap()
}

const APP: &str = "/v2/library/app/manifests/v1";
const SECRET: &str = "/v2/myorg/secret/manifests/v1";

#[tokio::test]
async fn passwords_and_tokens_admit_their_clients_and_401_everyone_else() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&up.sim.registry_url, &dir.path().join("data"));
    with_credentials(&mut cfg, dir.path());
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);

    for path in ["/v2/", APP] {
        let refused = get(&client, path, HeaderMap::new()).await;
        assert_eq!(
            (refused.status, refused.error_code().as_str()),
            (401, "UNAUTHORIZED"),
            "{path}"
        );
        assert_eq!(
            refused.header("www-authenticate"),
            "Basic realm=\"pullthrough\""
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            get(&client, path, HeaderMap::new()).await.status,
            200,
            "{path} stays open"
        );
    }
    for wrong in [
        basic("alice", "looking-glass"),
        basic("mallory", "wonderland"),
        basic("robot", "tok-robo"),
        authorization("Bearer tok-robo"),
        authorization("Bearer "),
        authorization("Basic ???"),
    ] {
        assert_eq!(
            get(&client, APP, wrong.clone()).await.status,
            401,
            "{wrong:?}"
        );
    }
    assert_eq!(
        get(&client, "/v2/", basic("alice", "wonderland"))
            .await
            .status,
        200
    );
    let pulled = get(&client, APP, basic("alice", "wonderland")).await;
    assert_eq!(pulled.body_digest(), up.app.digest);
    assert_eq!(
        get(&client, SECRET, authorization("Bearer tok-robot"))
            .await
            .status,
        200
    );
    assert_eq!(
        get(&client, SECRET, basic("robot", "tok-robot"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn read_rules_deny_other_repositories_even_when_cached() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&up.sim.registry_url, &dir.path().join("data"));
    with_credentials(&mut cfg, dir.path());
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);

    // alice brings the private image into the cache.
    let cached = get(&client, SECRET, basic("alice", "wonderland")).await;
    assert_eq!(cached.body_digest(), up.secret.digest);
    let layer = support::sha256_digest(&up.secret.layers[0]);
    let blob = format!("/v2/myorg/secret/blobs/{layer}");
    assert_eq!(
        get(&client, &blob, basic("alice", "wonderland"))
            .await
            .status,
        200
    );
    let hits = proxy.outcomes("hit-memory") + proxy.outcomes("hit-disk");

    let ci = || basic("ci", "ci-pass");
    for path in [
        SECRET,
        blob.as_str(),
        "/v2/myorg/secret/tags/list",
        "/_pullthrough/pin",
    ] {
        let denied = get(&client, path, ci()).await;
        assert_eq!(
            (denied.status, denied.error_code().as_str()),
            (403, "DENIED"),
            "{path}"
        );
    }
    assert_eq!(get(&client, SECRET, HeaderMap::new()).await.status, 401);
    assert_eq!(
        proxy.outcomes("hit-memory") + proxy.outcomes("hit-disk"),
        hits,
        "refused before the cache was consulted"
    );
    assert_eq!(get(&client, "/v2/", ci()).await.status, 200);
    let allowed = get(&client, APP, ci()).await;
    assert_eq!(allowed.body_digest(), up.app.digest);
    assert_eq!(
        get(&client, "/v2/app/manifests/v1", ci()).await.status,
        200,
        "a one-part Docker Hub name is library/<name>"
    );
}

#[tokio::test]
async fn networks_admit_only_their_addresses_and_combine_with_credentials() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&up.sim.registry_url, &dir.path().join("data"));
    cfg.auth.allow_networks = vec!["127.0.0.2/32".into()];
    let open = Proxy::start(cfg.clone()).await;
    let from = |proxy: &Proxy, ip: &str| {
        Client::from_address(&proxy.url, Some(ip.parse::<IpAddr>().unwrap()))
    };

    let outside = get(&from(&open, "127.0.0.1"), APP, HeaderMap::new()).await;
    assert_eq!(
        (outside.status, outside.error_code().as_str()),
        (403, "DENIED")
    );
    assert_eq!(
        get(&from(&open, "127.0.0.1"), "/healthz", HeaderMap::new())
            .await
            .status,
        200
    );
    assert_eq!(
        get(&from(&open, "127.0.0.2"), APP, HeaderMap::new())
            .await
            .status,
        200
    );

    with_credentials(&mut cfg, dir.path());
    cfg.data_dir = dir.path().join("data2");
    let both = Proxy::start(cfg).await;
    let inside = from(&both, "127.0.0.2");
    assert_eq!(get(&inside, APP, HeaderMap::new()).await.status, 401);
    assert_eq!(
        get(&inside, APP, basic("alice", "wonderland")).await.status,
        200
    );
    let outside = get(&from(&both, "127.0.0.1"), APP, basic("alice", "wonderland")).await;
    assert_eq!(
        outside.status, 403,
        "right credentials from the wrong address"
    );
}

/// Requests pullthrough answered 401.
fn challenged(proxy: &Proxy) -> f64 {
    proxy.metric("pullthrough_requests_total", &[("status", "401")])
}

/// pullthrough with credentials on, for the real clients.
async fn guarded(up: &Upstream, dir: &std::path::Path) -> (Proxy, String) {
    let mut cfg = config(&up.sim.registry_url, &dir.join("data"));
    with_credentials(&mut cfg, dir);
    let proxy = Proxy::start(cfg).await;
    let mirror = proxy.url.trim_start_matches("http://").to_owned();
    (proxy, mirror)
}

#[tokio::test]
async fn skopeo_reads_with_creds_and_fails_without() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (_proxy, mirror) = guarded(&up, dir.path()).await;
    let inspect = |creds: Option<&str>, repo: &str| {
        let mut skopeo = Command::new(require("skopeo"));
        skopeo.args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
        ]);
        if let Some(creds) = creds {
            skopeo.args(["--creds", creds]);
        }
        skopeo.arg(format!("docker://{mirror}/{repo}:v1"));
        skopeo
    };
    let raw = run_ok(inspect(Some("alice:wonderland"), "myorg/secret")).await;
    assert_eq!(support::sha256_digest(raw.as_bytes()), up.secret.digest);
    let raw = run_ok(inspect(Some("ci:ci-pass"), "library/app")).await;
    assert_eq!(support::sha256_digest(raw.as_bytes()), up.app.digest);
    for (creds, repo) in [
        (None, "library/app"),
        (Some("alice:nope"), "library/app"),
        (Some("ci:ci-pass"), "myorg/secret"),
    ] {
        let refused = run(inspect(creds, repo)).await;
        assert!(!refused.status.success(), "{creds:?} reads no {repo}");
    }
}

#[tokio::test]
async fn podman_pulls_through_the_mirror_with_creds_and_fails_without() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, mirror) = guarded(&up, dir.path()).await;
    let conf = snippet("docs/deploy.md", "registries-conf", &mirror);
    let reference = format!("{mirror}/library/app:v1");
    let podman = Podman::new(&conf);
    let refused = run(podman.pull_command(&reference, &["--tls-verify=false"])).await;
    assert!(!refused.status.success(), "no credentials, no pull");
    assert!(
        challenged(&proxy) > 0.0,
        "refused by the mirror's challenge"
    );
    let creds = ["--tls-verify=false", "--creds", "alice:wonderland"];
    run_ok(podman.pull_command(&reference, &creds)).await;
    assert_eq!(podman.digest(&reference).await, up.app.digest);
}

#[tokio::test]
async fn containerd_pulls_with_user_and_fails_without() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, mirror) = guarded(&up, dir.path()).await;
    let hosts = default_hosts_dir(&snippet("docs/deploy.md", "containerd-hosts", &mirror));
    let containerd = Containerd::start().await;
    let reference = "docker.io/library/app:v1";
    let refused = run(containerd.pull_command(hosts.path(), reference, &[])).await;
    assert!(!refused.status.success(), "no credentials, no pull");
    assert!(
        challenged(&proxy) > 0.0,
        "refused by the mirror's challenge"
    );
    let before = proxy.metric("pullthrough_requests_total", &[("kind", "blob")]);
    run_ok(containerd.pull_command(hosts.path(), reference, &["--user", "alice:wonderland"])).await;
    assert_eq!(containerd.digest(reference).await, up.app.digest);
    assert!(
        proxy.metric("pullthrough_requests_total", &[("kind", "blob")]) > before,
        "the blobs came through the mirror"
    );
}

#[tokio::test]
async fn dockerd_sends_the_login_it_is_given_for_mirror_and_prefixed_pulls() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, mirror) = guarded(&up, dir.path()).await;
    let user_data = snippet("docs/deploy.md", "ecs-user-data", &mirror);
    let dockerd = Dockerd::start(&heredoc(&user_data, "JSON")).await;

    let refused = dockerd.pull_answer("library/app", None).await;
    assert!(
        Dockerd::pull_failed(&refused),
        "no login, no pull: {refused}"
    );
    assert!(
        challenged(&proxy) > 0.0,
        "refused by the mirror's challenge"
    );

    // Through registry-mirrors dockerd sends Docker Hub's login.
    let hub = ("alice", "wonderland", "https://index.docker.io/v1/");
    let pulled = dockerd.pull_answer("library/app", Some(hub)).await;
    assert!(!Dockerd::pull_failed(&pulled), "{pulled}");
    assert!(
        dockerd
            .repo_digests("app:v1")
            .await
            .contains(&format!("app@{}", up.app.digest))
    );

    // A reference naming the mirror sends the mirror's own login.
    let image = format!("{mirror}/myorg/secret");
    let own = ("robot", "tok-robot", mirror.as_str());
    let pulled = dockerd.pull_answer(&image, Some(own)).await;
    assert!(!Dockerd::pull_failed(&pulled), "{pulled}");
    let wrong = dockerd
        .pull_answer(&image, Some(("ci", "ci-pass", mirror.as_str())))
        .await;
    assert!(
        Dockerd::pull_failed(&wrong),
        "ci may not read myorg/secret: {wrong}"
    );
}

#[tokio::test]
async fn the_fair_share_of_counted_pulls_goes_by_client_name_not_address() {
    let sim = HubSim::start_with(SimOptions {
        rate_limit: Some(10),
        ..SimOptions::default()
    })
    .await;
    for i in 0..6 {
        sim.push_image(&format!("library/img{i}"), "1", &[random_bytes(2000, i)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, &dir.path().join("data"));
    with_credentials(&mut cfg, dir.path());
    cfg.budget.client_share_percent = 30;
    // At or below 6 pulls left the budget is at its reserve: with another
    // client pulling, a share binds (it is work-conserving otherwise).
    cfg.budget.reserve_percent = 60;
    let proxy = Proxy::start(cfg).await;
    let client = Client::new(&proxy.url);
    let manifest = |i: u64| format!("/v2/library/img{i}/manifests/1");
    let alice = || basic("alice", "wonderland");
    let robot = || authorization("Bearer tok-robot");
    assert_eq!(get(&client, &manifest(5), robot()).await.status, 200);
    for i in 0..3 {
        assert_eq!(get(&client, &manifest(i), alice()).await.status, 200);
    }
    let refused = get(&client, &manifest(3), alice()).await;
    assert_eq!(
        refused.status, 429,
        "a fourth pull is over a 30% share of 10"
    );
    let message = String::from_utf8_lossy(&refused.body).to_string();
    assert!(
        message.contains("alice has spent its fair share"),
        "{message}"
    );
    assert_eq!(
        get(&client, &manifest(3), robot()).await.status,
        200,
        "another client from the same address has its own share"
    );
}
