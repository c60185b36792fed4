//! Real clients pulling through a running pullthrough from a real registry
//! (Debian's `docker-registry`, distribution 2.8).

mod support;

use std::path::Path;
use std::process::Command;

use support::image::{Format, image, index};
use support::proxy::{Proxy, config};
use support::registry::{DockerRegistry, require};
use support::sha256_digest;

/// Upstream requests pullthrough has sent so far, of every kind.
fn upstream_requests(proxy: &Proxy) -> f64 {
    proxy.metric("pullthrough_upstream_requests_total", &[])
}

fn upstream_requests_of(proxy: &Proxy, kind: &str) -> f64 {
    proxy.metric("pullthrough_upstream_requests_total", &[("kind", kind)])
}

/// Runs a client command off the test's runtime, which also serves the proxy.
async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("client starts"))
        .await
        .unwrap()
}

/// `skopeo copy` from `source` into a `dir:` layout; returns the digest of
/// the manifest it wrote.
async fn skopeo_copy(source: String, dest: &Path, extra: &[&str]) -> String {
    let skopeo = require("skopeo");
    let mut command = Command::new(skopeo);
    command
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .args(extra)
        .arg(&source);
    command.arg(format!("dir:{}", dest.display()));
    let output = run(command).await;
    assert!(
        output.status.success(),
        "skopeo copy {source}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    sha256_digest(&std::fs::read(dest.join("manifest.json")).unwrap())
}

#[tokio::test]
async fn skopeo_pulls_single_and_multi_arch_images_through_pullthrough() {
    let registry = DockerRegistry::start().await;
    let single = image(Format::Docker, "amd64", &[400_000, 2_000], 1);
    registry
        .push_image("library/hello", Some("1"), &single)
        .await;
    let amd64 = image(Format::Oci, "amd64", &[300_000], 2);
    let arm64 = image(Format::Oci, "arm64", &[300_000], 3);
    registry.push_image("library/multi", None, &amd64).await;
    registry.push_image("library/multi", None, &arm64).await;
    let (list, list_digest) = index(Format::Oci, &[&amd64, &arm64]);
    registry
        .push_manifest("library/multi", "1", Format::Oci.index_type(), list)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(config(&registry.url, dir.path())).await;
    let mirror = proxy.url.trim_start_matches("http://").to_owned();
    let out = tempfile::tempdir().unwrap();

    let copied = skopeo_copy(
        format!("docker://{mirror}/hello:1"),
        &out.path().join("a"),
        &[],
    )
    .await;
    assert_eq!(
        copied, single.digest,
        "skopeo gets the upstream's exact manifest"
    );
    let after_cold = upstream_requests(&proxy);
    let again = skopeo_copy(
        format!("docker://{mirror}/hello:1"),
        &out.path().join("b"),
        &[],
    )
    .await;
    assert_eq!(again, single.digest);
    assert_eq!(
        upstream_requests(&proxy),
        after_cold,
        "a second pull makes no upstream request"
    );

    // One platform of a multi-arch image: only that platform is fetched.
    let blob_gets_before = upstream_requests_of(&proxy, "blob_get");
    let arm = skopeo_copy(
        format!("docker://{mirror}/multi:1"),
        &out.path().join("c"),
        &["--override-arch", "arm64"],
    )
    .await;
    assert_eq!(arm, arm64.digest);
    assert_eq!(
        upstream_requests_of(&proxy, "blob_get") - blob_gets_before,
        2.0,
        "arm64's config and layer only"
    );
    // The index itself passes through byte-exact.
    let mut inspect = Command::new(require("skopeo"));
    inspect.args([
        "--insecure-policy",
        "inspect",
        "--raw",
        "--tls-verify=false",
    ]);
    inspect.arg(format!("docker://{mirror}/multi:1"));
    let raw = run(inspect).await;
    assert!(raw.status.success());
    assert_eq!(sha256_digest(&raw.stdout), list_digest);
}
