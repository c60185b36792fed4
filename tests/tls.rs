//! TLS on the listener against a CA made at test time: HTTP/2 through ALPN,
//! a certificate reload (on a change of the files, and on SIGHUP) that new
//! handshakes see while open connections carry on, and skopeo and
//! containerd pulling through it with the CA configured as the README says.

mod support;

use std::process::Command;
use std::time::Duration;

use support::daemons::{Containerd, default_hosts_dir, run_ok};
use support::docs::snippet;
use support::hubsim::HubSim;
use support::image::{Format, Image, image};
use support::proxy::{Proxy, config};
use support::registry::require;
use support::tls::TestCa;

/// pullthrough with TLS from `ca`, in front of the simulator with one image.
struct World {
    sim: HubSim,
    proxy: Proxy,
    /// `library/app:v1`, with real tar layers containerd can unpack.
    image: Image,
    /// Holds cert.pem and key.pem.
    dir: tempfile::TempDir,
}

async fn world(ca: &TestCa, reload_interval: Duration) -> World {
    let sim = HubSim::start().await;
    let image = image(Format::Docker, "amd64", &[100_000], 3);
    sim.put_blob(image.config.clone());
    for layer in &image.layers {
        sim.put_blob(layer.clone());
    }
    sim.put_manifest(
        "library/app",
        Some("v1"),
        Format::Docker.manifest_type(),
        image.manifest.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let mut cfg = config(&sim.registry_url, &dir.path().join("data"));
    cfg.tls.cert = Some(cert);
    cfg.tls.key = Some(key);
    cfg.tls.reload_interval = Some(reload_interval);
    let proxy = Proxy::start(cfg).await;
    assert!(proxy.url.starts_with("https://127.0.0.1:"));
    World {
        sim,
        proxy,
        image,
        dir,
    }
}

impl World {
    /// `127.0.0.1:<port>`
    fn host(&self) -> &str {
        self.proxy.url.trim_start_matches("https://")
    }
}

/// A client that trusts only `ca`.
fn trusting(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.reqwest_root())
        .build()
        .unwrap()
}

#[tokio::test]
async fn http2_is_negotiated_through_alpn_and_http1_still_served() {
    let ca = TestCa::new("ca one");
    let w = world(&ca, Duration::from_secs(5)).await;
    let url = format!("{}/v2/library/app/manifests/v1", w.proxy.url);
    let h2 = trusting(&ca).get(&url).send().await.unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.reqwest_root())
        .http1_only()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (h1.status(), h1.version()),
        (reqwest::StatusCode::OK, reqwest::Version::HTTP_11)
    );
    let plain = reqwest::get(format!("http://{}/v2/", w.host())).await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "no plain HTTP on the TLS port"
    );
    let stranger = trusting(&TestCa::new("another ca")).get(&url).send().await;
    assert!(
        stranger.is_err(),
        "a client that does not trust the CA refuses the handshake"
    );
}

/// Waits until a fresh client trusting only `ca` completes a request.
async fn presented_by(w: &World, ca: &TestCa) {
    let url = format!("{}/v2/", w.proxy.url);
    support::wait_until_async(async || trusting(ca).get(&url).send().await.is_ok()).await;
}

#[tokio::test]
async fn a_changed_certificate_reaches_new_handshakes_and_open_connections_carry_on() {
    let (one, two) = (TestCa::new("ca one"), TestCa::new("ca two"));
    let w = world(&one, Duration::from_millis(200)).await;
    let url = format!("{}/v2/", w.proxy.url);
    let open = trusting(&one);
    assert_eq!(open.get(&url).send().await.unwrap().status(), 200);

    two.server().install(w.dir.path());
    presented_by(&w, &two).await;
    assert!(
        trusting(&one).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
    assert_eq!(
        open.get(&url).send().await.unwrap().status(),
        200,
        "the connection made with the old certificate still serves"
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let (one, two) = (TestCa::new("ca one"), TestCa::new("ca two"));
    // The files are never polled within the test: only the signal reloads.
    let w = world(&one, Duration::from_secs(3600)).await;
    two.server().install(w.dir.path());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("{}/v2/", w.proxy.url);
    assert!(
        trusting(&two).get(&url).send().await.is_err(),
        "not before the signal"
    );
    // SAFETY: kill(2) on our own process with a signal the server handles.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    presented_by(&w, &two).await;
}

#[tokio::test]
async fn skopeo_inspects_through_tls_with_the_ca_in_its_cert_dir() {
    let ca = TestCa::new("ca one");
    let w = world(&ca, Duration::from_secs(5)).await;
    let certs = tempfile::tempdir().unwrap();
    std::fs::write(certs.path().join("ca.crt"), &ca.pem).unwrap();
    let mut skopeo = Command::new(require("skopeo"));
    skopeo
        .args(["--insecure-policy", "inspect", "--raw", "--cert-dir"])
        .arg(certs.path())
        .arg(format!("docker://{}/library/app:v1", w.host()));
    let raw = run_ok(skopeo).await;
    assert_eq!(support::sha256_digest(raw.as_bytes()), w.image.digest);
    assert!(
        w.sim.counters().manifest_gets > 0,
        "fetched through the mirror"
    );
}

#[tokio::test]
async fn containerd_pulls_through_tls_with_the_ca_in_hosts_toml() {
    let ca = TestCa::new("ca one");
    let w = world(&ca, Duration::from_secs(5)).await;
    let ca_file = w.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let toml = snippet("README.md", "containerd-hosts-tls", w.host())
        .replace("/etc/pullthrough/ca.pem", ca_file.to_str().unwrap());
    let hosts = default_hosts_dir(&toml);
    let containerd = Containerd::start().await;
    containerd
        .pull(hosts.path(), "docker.io/library/app:v1")
        .await;
    assert_eq!(
        containerd.digest("docker.io/library/app:v1").await,
        w.image.digest
    );
    assert!(
        w.proxy
            .metric("pullthrough_requests_total", &[("kind", "blob")])
            >= 1.0,
        "containerd's requests reached pullthrough"
    );
}
