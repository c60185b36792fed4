//! Every real client follows the redirects to the bucket (`s3.redirect`):
//! dockerd through `registry-mirrors`, containerd's ctr through a
//! `hosts.toml` (its requests carry `?ns=docker.io`), podman through a
//! registries.conf mirror, skopeo, and oras-py pull warm images (and an
//! artifact) through a replica on s3s-fs whose layers are answered `307`
//! to presigned URLs. Client authentication is on, so each client sends
//! the mirror its credentials; none sends them, or any `Authorization`,
//! to the bucket (S3 refuses a presigned request that carries one). The
//! bucket is reached through a tap on 127.0.0.2, another host than the
//! mirror, as S3 is in production: Go and Python clients keep
//! `Authorization` on a redirect to the same host. Another tap in front of
//! the mirror shows that the clients did send it their credentials.

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use support::artifact::{EMPTY, OCI_MANIFEST, bundle};
use support::client::Client;
use support::daemons::{Containerd, Dockerd, Podman, default_hosts_dir, run_ok};
use support::docs::{heredoc, snippet};
use support::hubsim::HubSim;
use support::image::{Format, Image, image};
use support::process::Replica;
use support::registry::require;
use support::s3::{S3Server, SECRET_KEY, aws_env};
use support::tap::{BucketTap, header};
use support::{random_bytes, sha256_digest, venv_python, wait_until_async};

const GUIDE: &str = "docs/deploy.md";
const BUCKET: &str = "pullthrough-cache";
const PREFIX: &str = "fleet/";
/// The mirror's one user, in its htpasswd file.
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// A Docker Hub image of two layers over 1 MiB (redirected) and a small
/// config (streamed).
const IMAGE: &str = "library/big";
/// An OCI artifact of two files over 1 MiB, for oras.
const BUNDLE: &str = "myorg/bundle";
const TAG: &str = "v1";
/// The User-Agent of a client excluded from redirects
/// (`s3.no_redirect_user_agents`), in every world.
const LEAKY: &str = "Leaky-Client/";

/// Docker Hub's simulator with the image and the artifact, s3s-fs behind
/// the tap, and one replica redirecting to it with client authentication
/// on and [`LEAKY`] excluded; everything already in the bucket.
struct World {
    s3: S3Server,
    tap: BucketTap,
    replica: Replica,
    /// The tap in front of the replica, on 127.0.0.3, which the clients
    /// are given as the mirror.
    front: BucketTap,
    /// `127.0.0.3:<port>` of the mirror, through `front`.
    mirror: String,
    image: Image,
    /// The artifact's files (name, bytes), and its manifest's digest.
    files: Vec<(&'static str, Bytes)>,
    bundle: String,
    _sim: HubSim,
    _dir: tempfile::TempDir,
}

/// A client's figures over one pull.
#[derive(Debug)]
struct Figures {
    redirected: f64,
    redirected_bytes: f64,
    streamed_bytes: f64,
    /// The heads of the GETs the mirror and the bucket were sent.
    mirror_gets: Vec<String>,
    bucket_gets: Vec<String>,
}

async fn world() -> World {
    let sim = HubSim::start().await;
    let image = image(Format::Docker, "amd64", &[2_500_000, 1_600_000], 41);
    sim.put_blob(image.config.clone());
    for layer in &image.layers {
        sim.put_blob(layer.clone());
    }
    let media_type = Format::Docker.manifest_type();
    sim.put_manifest(IMAGE, Some(TAG), media_type, image.manifest.clone());
    let files = vec![
        ("model.bin", random_bytes(2_200_000, 42)),
        ("data.bin", random_bytes(1_300_000, 43)),
    ];
    let manifest = bundle("application/vnd.pullthrough.test.bundle", &files);
    for (_, bytes) in &files {
        sim.put_blob(bytes.clone());
    }
    sim.put_blob(Bytes::from_static(EMPTY));
    let bundle = sim.put_manifest(BUNDLE, Some(TAG), OCI_MANIFEST, manifest);

    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let tap = BucketTap::start(&s3.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
    let config = dir.path().join("pullthrough.toml");
    let agents = serde_json::to_string(&[LEAKY]).unwrap();
    std::fs::write(
        &config,
        format!(
            "[auth]\nhtpasswd = {:?}\n\n[s3]\nno_redirect_user_agents = {agents}\n",
            htpasswd.display().to_string()
        ),
    )
    .unwrap();
    let flags = [
        "--config",
        config.to_str().unwrap(),
        "--s3-bucket",
        BUCKET,
        "--s3-prefix",
        PREFIX,
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-redirect",
        "--s3-public-endpoint",
        &tap.endpoint,
    ];
    let replica = Replica::start(
        &sim.registry_url,
        &dir.path().join("data"),
        &flags,
        &aws_env(SECRET_KEY),
    )
    .await;
    let front = BucketTap::start_at("127.0.0.3", &replica.url).await;
    let mirror = front.endpoint.trim_start_matches("http://").to_owned();
    let world = World {
        s3,
        tap,
        replica,
        front,
        mirror,
        image,
        files,
        bundle,
        _sim: sim,
        _dir: dir,
    };
    world.warm().await;
    world
}

/// `Authorization: Basic` for the mirror's user.
fn basic() -> HeaderMap {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Basic {encoded}")).unwrap();
    headers.insert(AUTHORIZATION, value);
    headers
}

/// The bucket key of a blob.
fn key(bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let hex = digest.trim_start_matches("sha256:");
    format!("{PREFIX}blobs/sha256/{}/{hex}", &hex[..2])
}

impl World {
    /// Every blob of the image and the artifact, by repository.
    fn blobs(&self) -> Vec<(&'static str, Bytes)> {
        let mut blobs = vec![(IMAGE, self.image.config.clone())];
        blobs.extend(self.image.layers.iter().map(|l| (IMAGE, l.clone())));
        blobs.extend(self.files.iter().map(|(_, b)| (BUNDLE, b.clone())));
        blobs
    }

    /// Brings every blob into the cache with a GET each (a cold miss,
    /// streamed) and waits until the bucket holds them all: the uploads
    /// run after the downloads.
    async fn warm(&self) {
        let client = Client::new(&self.replica.url);
        for (repo, bytes) in self.blobs() {
            let digest = sha256_digest(&bytes);
            let path = format!("/v2/{repo}/blobs/{digest}");
            let answer = client.send("GET", &path, basic()).await.unwrap();
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(answer.body_digest(), digest, "{path}");
        }
        let keys: Vec<String> = self.blobs().iter().map(|(_, b)| key(b)).collect();
        wait_until_async(async || {
            let held = self.s3.keys(BUCKET, PREFIX).await;
            keys.iter().all(|k| held.contains(k))
        })
        .await;
        assert_eq!(self.redirected().await, 0.0, "cold misses are streamed");
        self.tap.clear();
    }

    async fn redirected(&self) -> f64 {
        let via = [("via", "redirect")];
        self.replica
            .metric("pullthrough_blob_answers_total", &via)
            .await
    }

    async fn answer_bytes(&self, via: &str) -> f64 {
        let via = [("via", via)];
        self.replica
            .metric("pullthrough_blob_answer_bytes_total", &via)
            .await
    }

    /// Requests the mirror answered 401: its challenge for credentials.
    async fn challenged(&self) -> f64 {
        let status = [("status", "401")];
        self.replica
            .metric("pullthrough_requests_total", &status)
            .await
    }

    /// Runs `pull` and returns what it cost the replica and what reached
    /// the bucket.
    async fn measure(&self, pull: impl AsyncFnOnce()) -> Figures {
        self.tap.clear();
        self.front.clear();
        let redirected = self.redirected().await;
        let redirected_bytes = self.answer_bytes("redirect").await;
        let streamed_bytes = self.answer_bytes("stream").await;
        pull().await;
        let figures = Figures {
            redirected: self.redirected().await - redirected,
            redirected_bytes: self.answer_bytes("redirect").await - redirected_bytes,
            streamed_bytes: self.answer_bytes("stream").await - streamed_bytes,
            mirror_gets: self.front.gets(),
            bucket_gets: self.tap.gets(),
        };
        eprintln!(
            "redirected {} ({} bytes), streamed {} bytes, {} GETs at the bucket",
            figures.redirected,
            figures.redirected_bytes,
            figures.streamed_bytes,
            figures.bucket_gets.len()
        );
        figures
    }

    /// Checks that the client was challenged by the mirror and sent it
    /// credentials for each of `large` blobs, was redirected once for
    /// each (their bytes counted as the bucket's), fetched each from the
    /// bucket through the tap, had the
    /// replica stream only the rest (`small` bytes), and sent the bucket
    /// no `Authorization`.
    async fn check_followed(&self, figures: &Figures, large: &[Bytes], small: usize) {
        assert!(
            self.challenged().await > 0.0,
            "the mirror asked for credentials"
        );
        for blob in large {
            let path = format!("/blobs/{}", sha256_digest(blob));
            let mut asked = figures
                .mirror_gets
                .iter()
                .filter(|h| h.lines().next().is_some_and(|l| l.contains(&path)));
            assert!(
                asked.any(|h| header(h, "authorization").is_some()),
                "the mirror was sent credentials for {path}: {figures:?}"
            );
        }
        assert_eq!(figures.redirected, large.len() as f64, "{figures:?}");
        let sizes: usize = large.iter().map(Bytes::len).sum();
        assert_eq!(figures.redirected_bytes, sizes as f64, "{figures:?}");
        for blob in large {
            let object = format!("GET /{BUCKET}/{}?", key(blob));
            let fetched = figures
                .bucket_gets
                .iter()
                .filter(|h| h.starts_with(&object));
            assert_eq!(fetched.count(), 1, "{object}: {figures:?}");
        }
        assert_eq!(figures.bucket_gets.len(), large.len(), "{figures:?}");
        assert!(
            figures
                .bucket_gets
                .iter()
                .all(|h| h.contains("X-Amz-Signature=")),
            "presigned: {figures:?}"
        );
        assert_eq!(figures.streamed_bytes, small as f64, "{figures:?}");
        assert_eq!(
            self.tap.with_authorization(),
            Vec::<String>::new(),
            "nothing carried Authorization to the bucket"
        );
    }

    /// Checks the image's blobs went as [`World::check_followed`] says.
    async fn check_image_followed(&self, figures: &Figures) {
        let config = self.image.config.len();
        self.check_followed(figures, &self.image.layers, config)
            .await;
    }
}

#[tokio::test]
async fn dockerd_follows_the_redirects_through_registry_mirrors() {
    let w = world().await;
    let user_data = snippet(GUIDE, "ecs-user-data", &w.mirror);
    let dockerd = Dockerd::start(&heredoc(&user_data, "JSON")).await;
    // Through registry-mirrors dockerd sends Docker Hub's login.
    let hub = (USER, PASSWORD, "https://index.docker.io/v1/");
    let figures = w
        .measure(async || {
            let pulled = dockerd.pull_answer(IMAGE, Some(hub)).await;
            assert!(!Dockerd::pull_failed(&pulled), "{pulled}");
        })
        .await;
    let reference = format!("big:{TAG}");
    let digests = dockerd.repo_digests(&reference).await;
    assert!(
        digests.contains(&format!("big@{}", w.image.digest)),
        "{digests:?}"
    );
    let inspect = dockerd
        .api("GET", &format!("/images/{reference}/json"))
        .await;
    let inspected: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspected["Id"], sha256_digest(&w.image.config));
    w.check_image_followed(&figures).await;
}

#[tokio::test]
async fn containerd_follows_the_redirects_through_a_hosts_toml() {
    let w = world().await;
    let hosts = default_hosts_dir(&snippet(GUIDE, "containerd-hosts", &w.mirror));
    let containerd = Containerd::start().await;
    let reference = format!("docker.io/{IMAGE}:{TAG}");
    let login = format!("{USER}:{PASSWORD}");
    let figures = w
        .measure(async || {
            let pull = containerd.pull_command(hosts.path(), &reference, &["--user", &login]);
            run_ok(pull).await;
        })
        .await;
    assert_eq!(containerd.digest(&reference).await, w.image.digest);
    let blob_gets = figures.mirror_gets.iter().filter(|h| h.contains("/blobs/"));
    assert!(
        blob_gets.clone().count() >= 3 && blob_gets.clone().all(|h| h.contains("?ns=docker.io ")),
        "routed by ns: {figures:?}"
    );
    w.check_image_followed(&figures).await;
}

#[tokio::test]
async fn podman_follows_the_redirects_through_a_registries_conf_mirror() {
    let w = world().await;
    let podman = Podman::new(&snippet(GUIDE, "registries-conf", &w.mirror));
    // `--creds` is never sent to a mirror: the mirror's login comes from
    // the auth file, under its own host, as `podman login` writes it.
    let auth = tempfile::tempdir().unwrap();
    let authfile = auth.path().join("auth.json");
    let login = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let auths = serde_json::json!({"auths": {&w.mirror: {"auth": login}}});
    std::fs::write(&authfile, auths.to_string()).unwrap();
    let reference = format!("docker.io/{IMAGE}:{TAG}");
    let figures = w
        .measure(async || {
            let extra = ["--authfile", authfile.to_str().unwrap()];
            run_ok(podman.pull_command(&reference, &extra)).await;
        })
        .await;
    assert_eq!(podman.digest(&reference).await, w.image.digest);
    w.check_image_followed(&figures).await;
}

/// `skopeo copy` of the image from the mirror into `dest`.
fn skopeo_copy(mirror: &str, dest: &Path) -> Command {
    let mut skopeo = Command::new(require("skopeo"));
    skopeo.args(["--insecure-policy", "copy", "--src-tls-verify=false"]);
    skopeo.args(["--src-creds", &format!("{USER}:{PASSWORD}")]);
    skopeo.arg(format!("docker://{mirror}/{IMAGE}:{TAG}"));
    skopeo.arg(format!("dir:{}", dest.display()));
    skopeo
}

#[tokio::test]
async fn skopeo_follows_the_redirects() {
    let w = world().await;
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("big");
    let figures = w
        .measure(async || {
            run_ok(skopeo_copy(&w.mirror, &dest)).await;
        })
        .await;
    let manifest = std::fs::read(dest.join("manifest.json")).unwrap();
    assert_eq!(sha256_digest(&manifest), w.image.digest);
    for blob in w.image.layers.iter().chain([&w.image.config]) {
        let digest = sha256_digest(blob);
        let file = dest.join(digest.trim_start_matches("sha256:"));
        assert!(std::fs::read(file).unwrap() == *blob, "{digest}");
    }
    w.check_image_followed(&figures).await;
}

#[tokio::test]
async fn oras_py_follows_the_redirects_for_an_artifact() {
    let w = world().await;
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/oras_pull.py");
    let reference = format!("{}/{BUNDLE}:{TAG}", w.mirror);
    let mut oras = Command::new(venv_python());
    oras.arg(script)
        .args([&w.mirror, &reference])
        .arg(out.path().join("bundle"))
        // No docker config of the machine's: the credentials are these.
        .env("HOME", out.path())
        .env("ORAS_USER", USER)
        .env("ORAS_PASS", PASSWORD);
    let figures = w
        .measure(async || {
            run_ok(oras).await;
        })
        .await;
    for (name, bytes) in &w.files {
        let pulled = std::fs::read(out.path().join("bundle").join(name)).unwrap();
        assert!(pulled == *bytes, "{name}");
    }
    // The manifest, by digest, is the one pushed.
    let client = Client::new(&w.replica.url);
    let path = format!("/v2/{BUNDLE}/manifests/{TAG}");
    let mut headers = basic();
    headers.insert(ACCEPT, HeaderValue::from_static(OCI_MANIFEST));
    let manifest = client.send("GET", &path, headers).await.unwrap();
    assert_eq!(manifest.body_digest(), w.bundle);
    let large: Vec<Bytes> = w.files.iter().map(|(_, b)| b.clone()).collect();
    w.check_followed(&figures, &large, 0).await;
}

/// The check has teeth: a client that keeps `Authorization` on a redirect
/// to another host (curl with `--location-trusted`) is seen doing so at
/// the tap (s3s-fs still answers it; S3 would refuse it). Such a client is
/// streamed by the mirror once its User-Agent is in
/// `s3.no_redirect_user_agents`.
#[tokio::test]
async fn a_client_that_sends_the_bucket_authorization_is_seen_and_can_be_streamed_instead() {
    let w = world().await;
    let layer = &w.image.layers[0];
    let url = format!(
        "http://{}/v2/{IMAGE}/blobs/{}",
        w.mirror,
        sha256_digest(layer)
    );
    let curl = |agent: &str, out: &Path| {
        let mut curl = Command::new(require("curl"));
        curl.args([
            "-sSf",
            "--location-trusted",
            "-u",
            &format!("{USER}:{PASSWORD}"),
        ])
        .args(["-A", agent, "-o"])
        .arg(out)
        .arg(&url);
        curl
    };
    let out = tempfile::tempdir().unwrap();
    let leaked = out.path().join("leaked");
    let figures = w
        .measure(async || {
            run_ok(curl("curl/7", &leaked)).await;
        })
        .await;
    assert!(std::fs::read(&leaked).unwrap() == *layer);
    assert_eq!((figures.redirected, figures.bucket_gets.len()), (1.0, 1));
    let carried = w.tap.with_authorization();
    assert_eq!(carried.len(), 1, "{figures:?}");
    assert!(header(&carried[0], "authorization").is_some_and(|v| v.starts_with("Basic ")));

    let streamed = out.path().join("streamed");
    let figures = w
        .measure(async || {
            run_ok(curl("leaky-client/1.0", &streamed)).await;
        })
        .await;
    assert!(std::fs::read(&streamed).unwrap() == *layer);
    assert_eq!(figures.redirected, 0.0, "{figures:?}");
    assert_eq!(figures.streamed_bytes, layer.len() as f64);
    assert_eq!(figures.bucket_gets, Vec::<String>::new());
}
