//! The real clients (skopeo, podman, containerd's ctr, dockerd through the
//! Engine API) pulling through pullthrough from two upstreams at once: the
//! Docker Hub simulator as docker.io, and a real distribution registry
//! (Debian's `docker-registry`) as ghcr.io. The client configurations come
//! from the deployment guide's snippets.

mod support;

use std::process::Command;

use support::daemons::{Containerd, Dockerd, Podman, default_hosts_dir, run_ok};
use support::docs::{heredoc, snippet};
use support::hubsim::HubSim;
use support::image::{Format, Image, image, index};
use support::proxy::{Proxy, config};
use support::registry::{DockerRegistry, require};
use support::sha256_digest;

const GUIDE: &str = "docs/deploy.md";

/// Two upstreams, their images, and pullthrough in front of both.
struct World {
    sim: HubSim,
    _registry: DockerRegistry,
    proxy: Proxy,
    /// `127.0.0.1:<port>` of pullthrough.
    mirror: String,
    /// `library/nginx:1.27` on docker.io, single-arch Docker schema 2.
    nginx: Image,
    /// `org/app:1` on ghcr.io: an OCI index over amd64 and arm64.
    app_index: String,
    app_amd64: Image,
    app_arm64: Image,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let sim = HubSim::start().await;
    let nginx = image(Format::Docker, "amd64", &[200_000, 3_000], 10);
    sim.put_blob(nginx.config.clone());
    for layer in &nginx.layers {
        sim.put_blob(layer.clone());
    }
    sim.put_manifest(
        "library/nginx",
        Some("1.27"),
        Format::Docker.manifest_type(),
        nginx.manifest.clone(),
    );

    let registry = DockerRegistry::start().await;
    let app_amd64 = image(Format::Oci, "amd64", &[150_000], 11);
    let app_arm64 = image(Format::Oci, "arm64", &[150_000], 12);
    registry.push_image("org/app", None, &app_amd64).await;
    registry.push_image("org/app", None, &app_arm64).await;
    let (list, app_index) = index(Format::Oci, &[&app_amd64, &app_arm64]);
    registry
        .push_manifest("org/app", "1", Format::Oci.index_type(), list)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sim.registry_url, dir.path());
    cfg.upstreams.insert(
        "ghcr.io".into(),
        pullthrough::config::UpstreamConfig::new(&registry.url),
    );
    let proxy = Proxy::start(cfg).await;
    let mirror = proxy.url.trim_start_matches("http://").to_owned();
    World {
        sim,
        _registry: registry,
        proxy,
        mirror,
        nginx,
        app_index,
        app_amd64,
        app_arm64,
        _dir: dir,
    }
}

impl World {
    /// Requests pullthrough has sent upstream, of one upstream or (`None`) all.
    fn upstream_requests(&self, upstream: Option<&str>) -> f64 {
        let labels: Vec<(&str, &str)> = upstream.map(|u| ("upstream", u)).into_iter().collect();
        self.proxy
            .metric("pullthrough_upstream_requests_total", &labels)
    }

    /// Blob downloads pullthrough started from ghcr.io.
    fn ghcr_blob_gets(&self) -> f64 {
        self.proxy.metric(
            "pullthrough_upstream_requests_total",
            &[("upstream", "ghcr.io"), ("kind", "blob_get")],
        )
    }

    /// Checks that each upstream was reached, only amd64's blobs were
    /// fetched from the multi-arch image, and then that pulling everything
    /// again with `pull_again` costs no upstream request.
    async fn check_routing_and_warm_pull(&self, pull_again: impl AsyncFnOnce()) {
        assert!(
            self.upstream_requests(Some("docker.io")) > 0.0,
            "docker.io was reached"
        );
        assert!(
            self.upstream_requests(Some("ghcr.io")) > 0.0,
            "ghcr.io was reached"
        );
        assert_eq!(
            self.ghcr_blob_gets(),
            2.0,
            "amd64's config and layer only, not arm64's"
        );
        assert_eq!(
            self.sim.rate_limit_remaining("127.0.0.1"),
            99,
            "one counted pull for nginx:1.27"
        );
        let before = self.upstream_requests(None);
        pull_again().await;
        assert_eq!(
            self.upstream_requests(None),
            before,
            "a second pull makes no upstream request"
        );
        assert!(self.proxy.outcomes("hit-memory") > 0);
    }
}

#[tokio::test]
async fn skopeo_copies_from_both_upstreams() {
    let w = world().await;
    let out = tempfile::tempdir().unwrap();
    let copy = |source: String, dest: &'static str, extra: &'static [&'static str]| {
        let dest = out.path().join(dest);
        async move {
            let mut skopeo = Command::new(require("skopeo"));
            skopeo
                .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
                .args(extra);
            skopeo.arg(source).arg(format!("dir:{}", dest.display()));
            run_ok(skopeo).await;
            sha256_digest(&std::fs::read(dest.join("manifest.json")).unwrap())
        }
    };
    let m = &w.mirror;
    assert_eq!(
        copy(format!("docker://{m}/nginx:1.27"), "a", &[]).await,
        w.nginx.digest
    );
    assert_eq!(
        copy(
            format!("docker://{m}/ghcr.io/org/app:1"),
            "b",
            &["--override-arch", "amd64"]
        )
        .await,
        w.app_amd64.digest
    );
    w.check_routing_and_warm_pull(async || {
        assert_eq!(
            copy(
                format!("docker://{m}/docker.io/library/nginx:1.27"),
                "c",
                &[]
            )
            .await,
            w.nginx.digest
        );
        assert_eq!(
            copy(
                format!("docker://{m}/ghcr.io/org/app:1"),
                "d",
                &["--override-arch", "amd64"]
            )
            .await,
            w.app_amd64.digest
        );
    })
    .await;

    // Another platform fetches that platform's blobs only; the index is byte-exact.
    assert_eq!(
        copy(
            format!("docker://{m}/ghcr.io/org/app:1"),
            "e",
            &["--override-arch", "arm64"]
        )
        .await,
        w.app_arm64.digest
    );
    assert_eq!(w.ghcr_blob_gets(), 4.0);
    let mut inspect = Command::new(require("skopeo"));
    inspect
        .args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
        ])
        .arg(format!("docker://{m}/ghcr.io/org/app:1"));
    assert_eq!(sha256_digest(run_ok(inspect).await.as_bytes()), w.app_index);
}

#[tokio::test]
async fn podman_pulls_through_registries_conf_mirrors() {
    let w = world().await;
    let podman = Podman::new(&snippet(GUIDE, "registries-conf", &w.mirror));
    assert_eq!(
        podman.pull("docker.io/library/nginx:1.27").await,
        w.nginx.digest
    );
    assert_eq!(podman.pull("ghcr.io/org/app:1").await, w.app_index);
    w.check_routing_and_warm_pull(async || {
        let fresh = Podman::new(&snippet(GUIDE, "registries-conf", &w.mirror));
        assert_eq!(
            fresh.pull("docker.io/library/nginx:1.27").await,
            w.nginx.digest
        );
        assert_eq!(fresh.pull("ghcr.io/org/app:1").await, w.app_index);
    })
    .await;
}

#[tokio::test]
async fn containerd_pulls_through_a_default_hosts_toml_routed_by_ns() {
    let w = world().await;
    let hosts = default_hosts_dir(&snippet(GUIDE, "containerd-hosts", &w.mirror));
    let containerd = Containerd::start().await;
    containerd
        .pull(hosts.path(), "docker.io/library/nginx:1.27")
        .await;
    containerd.pull(hosts.path(), "ghcr.io/org/app:1").await;
    assert_eq!(
        containerd.digest("docker.io/library/nginx:1.27").await,
        w.nginx.digest
    );
    assert_eq!(containerd.digest("ghcr.io/org/app:1").await, w.app_index);
    assert!(
        w.proxy
            .metric("pullthrough_requests_total", &[("kind", "manifest")])
            >= 3.0,
        "containerd's requests reached pullthrough"
    );
    w.check_routing_and_warm_pull(async || {
        let fresh = Containerd::start().await;
        fresh
            .pull(hosts.path(), "docker.io/library/nginx:1.27")
            .await;
        fresh.pull(hosts.path(), "ghcr.io/org/app:1").await;
    })
    .await;
}

/// Splits `host:port/path:tag` into the Engine API's `fromImage` and `tag`.
fn split_tag(reference: &str) -> (&str, &str) {
    let (image, tag) = reference.rsplit_once(':').unwrap();
    assert!(!tag.contains('/'), "{reference} has a tag");
    (image, tag)
}

#[tokio::test]
async fn dockerd_pulls_through_registry_mirrors_and_path_prefixes_via_the_engine_api() {
    let w = world().await;
    let user_data = snippet(GUIDE, "ecs-user-data", &w.mirror);
    let dockerd = Dockerd::start(&heredoc(&user_data, "JSON")).await;

    // Docker Hub through registry-mirrors, as the ECS agent on EC2 pulls.
    dockerd.pull("nginx", "1.27").await;
    assert!(
        dockerd
            .repo_digests("nginx:1.27")
            .await
            .contains(&format!("nginx@{}", w.nginx.digest))
    );
    let through_mirror = w
        .proxy
        .metric("pullthrough_requests_total", &[("kind", "manifest")]);
    assert!(
        through_mirror >= 1.0,
        "dockerd used the mirror, not a fallback"
    );

    // The path-prefix references of the Fargate guide.
    let task: serde_json::Value =
        serde_json::from_str(&snippet(GUIDE, "fargate-images", &w.mirror)).unwrap();
    let images: Vec<String> = task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap().to_owned())
        .collect();
    for reference in &images {
        let (image, tag) = split_tag(reference);
        dockerd.pull(image, tag).await;
    }
    let app = &images[1];
    let (app_image, _) = split_tag(app);
    assert!(
        dockerd
            .repo_digests(app)
            .await
            .contains(&format!("{app_image}@{}", w.app_index))
    );
    w.check_routing_and_warm_pull(async || {
        dockerd.pull("nginx", "1.27").await;
        for reference in &images {
            let (image, tag) = split_tag(reference);
            dockerd.pull(image, tag).await;
        }
    })
    .await;
}

#[test]
fn the_readme_shows_the_tested_snippets() {
    let m = support::docs::PLACEHOLDER;
    let daemon_json = heredoc(&snippet(GUIDE, "ecs-user-data", m), "JSON");
    assert_eq!(
        snippet("README.md", "daemon-json", m).trim_end(),
        daemon_json
    );
    for name in ["containerd-hosts", "registries-conf"] {
        assert_eq!(
            snippet("README.md", name, m),
            snippet(GUIDE, name, m),
            "{name}"
        );
    }
}
