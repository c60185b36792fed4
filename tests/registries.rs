//! Each built-in upstream as the simulator plays it (see
//! `tests/support/hubsim/profile.rs` and `docs/registries.md`): its token
//! realm on its own host, on another host or none at all, its blob redirect
//! status, registry.k8s.io's redirect to another registry. Through
//! pullthrough, each gets a cold pull, a warm pull that asks upstream
//! nothing, and a tag revalidation by one HEAD; routing by path prefix and
//! by `?ns=`, and the `library/` rule for docker.io only. A raw client
//! checks that each profile challenges and redirects as its registry does.

mod support;

use std::time::Duration;

use pullthrough::config::UpstreamConfig;
use reqwest::StatusCode;
use support::client::Client;
use support::hubsim::profile::{Profile, SimAuth};
use support::hubsim::{HubSim, SimOptions};
use support::image::{Format, Image, image};
use support::proxy::{Proxy, config};
use support::simclient::{client, header_str, token};

/// A tag TTL short enough to wait out.
const TTL: Duration = Duration::from_secs(1);

/// One profile's simulator with `app:1.0` on it and pullthrough in front.
struct Played {
    profile: Profile,
    options: SimOptions,
    sim: HubSim,
    proxy: Proxy,
    app: Image,
    _dir: tempfile::TempDir,
}

async fn play(profile: Profile, seed: u64) -> Played {
    let options = profile.options();
    let sim = HubSim::start_with(options.clone()).await;
    let app = image(Format::Oci, "amd64", &[30_000, 2_000], seed);
    sim.put_blob(app.config.clone());
    for layer in &app.layers {
        sim.put_blob(layer.clone());
    }
    // Where the registry keeps what clients call `app`.
    let repo = match profile {
        Profile::DockerHub => "library/app".to_owned(),
        Profile::K8s => sim.front_repo("app"),
        _ => "app".to_owned(),
    };
    sim.put_manifest(
        &repo,
        Some("1.0"),
        Format::Oci.manifest_type(),
        app.manifest.clone(),
    );
    let url = sim
        .front_url
        .clone()
        .unwrap_or_else(|| sim.registry_url.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    let mut upstream = UpstreamConfig::new(&url);
    upstream.tag_ttl = Some(TTL);
    cfg.upstreams.insert(profile.upstream().into(), upstream);
    let proxy = Proxy::start(cfg).await;
    Played {
        profile,
        options,
        sim,
        proxy,
        app,
        _dir: dir,
    }
}

impl Played {
    /// Requests on one simulator listener whose line contains `text`.
    fn seen(&self, listener: &str, text: &str) -> usize {
        let prefix = format!("{listener} ");
        let requests = self.sim.requests();
        let hits = requests.iter().filter(|r| r.starts_with(&prefix));
        hits.filter(|r| r.contains(text)).count()
    }

    fn context(&self) -> String {
        format!("{:?}: {:?}", self.profile, self.sim.requests())
    }
}

#[tokio::test]
async fn every_built_in_upstream_pulls_cold_then_warm_then_revalidates() {
    for (seed, profile) in (40..).zip(Profile::ALL) {
        let p = play(profile, seed).await;
        let client = Client::new(&p.proxy.url);
        let name = format!("{}/app", profile.upstream());

        // Cold, by path prefix: tokens where this registry keeps its realm.
        assert_eq!(client.pull(&name, "1.0").await, p.app.digest, "{profile:?}");
        let counters = p.sim.counters();
        assert_eq!(counters.cdn_refused_with_auth, 0, "{}", p.context());
        assert_eq!(
            counters.cdn_gets,
            1 + p.app.layers.len() as u64,
            "{}",
            p.context()
        );
        match p.options.auth {
            SimAuth::RealmHost => {
                assert!(p.seen("realm", "GET /token") >= 1, "{}", p.context());
            }
            SimAuth::OwnHost(path) => {
                assert!(
                    p.seen("registry", &format!("GET {path}?")) >= 1,
                    "{}",
                    p.context()
                );
                assert_eq!(p.seen("realm", ""), 0, "{}", p.context());
            }
            SimAuth::None => {
                assert_eq!(counters.tokens, 0, "{}", p.context());
                assert_eq!(counters.unauthorized, 0, "{}", p.context());
            }
        }
        // Only docker.io names a single-component repository `library/...`.
        let library = p.seen("registry", "/library/app/");
        if profile == Profile::DockerHub {
            assert!(library >= 1, "{}", p.context());
        } else {
            assert_eq!(library, 0, "{}", p.context());
        }

        // Warm, by prefix and by `?ns=`: upstream hears nothing.
        p.sim.reset_counters();
        assert_eq!(client.pull(&name, "1.0").await, p.app.digest);
        let ns = profile.upstream();
        let by_ns = format!("/v2/app/manifests/{}?ns={ns}", p.app.digest);
        let answer = client.get(&by_ns).await;
        assert_eq!(answer.status, 200, "{profile:?}");
        assert_eq!(answer.header("docker-content-digest"), p.app.digest);
        let layer = support::sha256_digest(&p.app.layers[0]);
        let blob = client.get(&format!("/v2/app/blobs/{layer}?ns={ns}")).await;
        assert_eq!(blob.status, 200, "{profile:?}");
        assert_eq!(p.sim.counters().total, 0, "{}", p.context());

        // Past the TTL: one HEAD confirms the tag, no pull is spent.
        tokio::time::sleep(TTL + Duration::from_millis(300)).await;
        p.sim.reset_counters();
        assert_eq!(client.pull(&name, "1.0").await, p.app.digest);
        let counters = p.sim.counters();
        assert_eq!(counters.manifest_heads, 1, "{}", p.context());
        assert_eq!(counters.manifest_gets, 0, "{}", p.context());
        assert_eq!(counters.cdn_gets, 0, "{}", p.context());
        assert!(p.proxy.outcomes("revalidated") >= 1, "{profile:?}");
        p.proxy.stop().await;
    }
}

#[tokio::test]
async fn each_profile_challenges_and_redirects_blobs_as_its_registry_does() {
    for (seed, profile) in (50..).zip(Profile::ALL) {
        let p = play(profile, seed).await;
        let c = client();
        let layer = support::sha256_digest(&p.app.layers[0]);
        let url = p
            .sim
            .front_url
            .clone()
            .unwrap_or_else(|| p.sim.registry_url.clone());
        let repo = if profile == Profile::DockerHub {
            "library/app"
        } else {
            "app"
        };
        let blob = format!("{url}/v2/{repo}/blobs/{layer}");

        let bare = c.get(&blob).send().await.unwrap();
        let challenge = bare
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        let token = match (&p.options.auth, profile) {
            // The front asks for nothing; its blobs go straight to storage.
            (_, Profile::K8s) | (SimAuth::None, _) => {
                assert_eq!(challenge, None, "{profile:?}");
                None
            }
            (SimAuth::RealmHost, _) => {
                let realm = format!("realm=\"{}/token\"", p.sim.realm_url);
                assert!(challenge.unwrap().contains(&realm), "{profile:?}");
                Some(token(&c, &p.sim, repo).await)
            }
            (SimAuth::OwnHost(path), _) => {
                let realm = format!("realm=\"{}{path}\"", p.sim.registry_url);
                assert!(challenge.unwrap().contains(&realm), "{profile:?}");
                let scope = format!("service=registry.sim&scope=repository:{repo}:pull");
                let answer = c
                    .get(format!("{}{path}?{scope}", p.sim.registry_url))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), StatusCode::OK, "{profile:?}");
                let v: serde_json::Value = answer.json().await.unwrap();
                Some(v["token"].as_str().unwrap().to_owned())
            }
        };
        let mut request = c.get(&blob);
        if let Some(t) = &token {
            request = request.bearer_auth(t);
        }
        let redirected = request.send().await.unwrap();
        let status = p.options.blob_redirect.unwrap();
        assert_eq!(redirected.status().as_u16(), status, "{profile:?}");
        let location = header_str(&redirected, "location");
        assert!(
            location.starts_with(&p.sim.cdn_url),
            "{profile:?}: {location}"
        );
    }
}
