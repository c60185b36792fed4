//! The operator commands, run as the real binary against the Docker Hub
//! simulator: `warm` pulls the chosen platforms of an image through a
//! running mirror and pins it, `status` prints the page's facts, and
//! `doctor` passes on a sound setup and names each fault of a broken one
//! with its fix.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use bytes::Bytes;
use support::hubsim::profile::SimAuth;
use support::hubsim::{Fault, FaultTarget, HubSim, OCI_INDEX, SimImage, SimOptions};
use support::process::run_to_end;
use support::proxy::{self, Proxy};
use support::random_bytes;
use support::registry::free_port;
use support::s3::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};
use support::tap::BucketTap;

fn pullthrough(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    command
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // How full the test machine's disk is must not fail the space check.
        .env("PULLTHROUGH_DISK_MAX_PERCENT", "100");
    command
}

async fn run(command: Command) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = run_to_end(command, Duration::from_secs(120)).await;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr);
    (status.success(), format!("{stdout}{stderr}"))
}

/// Two single-platform images and an index over them (plus an
/// attestation entry, which no platform choice takes), tagged `1.0`.
fn push_multi(sim: &HubSim) -> (SimImage, SimImage, String) {
    let layers =
        |seed: u64| -> Vec<Bytes> { (0..2).map(|n| random_bytes(96 * 1024, seed + n)).collect() };
    let amd = sim.push_image("library/multi", "amd64-only", &layers(100));
    let arm = sim.push_image("library/multi", "arm64-only", &layers(200));
    let entry = |image: &SimImage, os: &str, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": { "os": os, "architecture": arch },
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            entry(&amd, "linux", "amd64"),
            entry(&arm, "linux", "arm64"),
            entry(&amd, "unknown", "unknown"),
        ],
    });
    let digest = sim.put_manifest(
        "library/multi",
        Some("1.0"),
        OCI_INDEX,
        Bytes::from(index.to_string()),
    );
    (amd, arm, digest)
}

fn blobs(image: &SimImage) -> Vec<&String> {
    std::iter::once(&image.config_digest)
        .chain(&image.layer_digests)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pulls_the_chosen_platform_and_pins_it_and_status_reports_it() {
    let sim = HubSim::start().await;
    let (amd, arm, index) = push_multi(&sim);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(proxy::config(&sim.registry_url, dir.path())).await;
    let url = proxy.url.as_str();

    let (ok, out) = run(pullthrough(&[
        "warm",
        "--url",
        url,
        "--platform",
        "linux/arm64",
        "--pin",
        "docker.io/library/multi:1.0",
    ]))
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("warmed 1 images (2 manifests, 3 blobs")
            && out.contains("1 pinned; 0 failures"),
        "{out}"
    );
    // A download is stored just after its last byte is served.
    support::wait_until(|| blobs(&arm).iter().all(|d| proxy.has_blob(d))).await;
    assert!(
        !amd.layer_digests.iter().any(|d| proxy.has_blob(d)),
        "amd64 is not"
    );
    let pins: serde_json::Value = reqwest::get(format!("{url}/_pullthrough/pin"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pins["pins"][0]["pinned"], index.as_str(), "{pins}");

    // Every platform, from a list file, by the short name.
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "# before the rollout\nmulti:1.0\n\n").unwrap();
    let (ok, out) = run(pullthrough(&[
        "warm",
        "--url",
        url,
        "--all-platforms",
        "--file",
        list.to_str().unwrap(),
    ]))
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("(3 manifests, 6 blobs"),
        "the attestation entry is skipped: {out}"
    );
    support::wait_until(|| blobs(&amd).iter().all(|d| proxy.has_blob(d))).await;

    // A tag that does not exist fails the command and says why.
    let (ok, out) = run(pullthrough(&["warm", "--url", url, "nosuch:1"])).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("✗ docker.io/library/nosuch:1: manifest 1: 404"),
        "{out}"
    );
    assert!(out.contains("; 1 failures"), "{out}");

    // `status` shows the same facts as the page.
    let (ok, out) = run(pullthrough(&["status", "--url", url])).await;
    assert!(ok, "{out}");
    assert!(out.contains("hit ratio"), "{out}");
    assert!(
        out.contains("docker.io/library/multi:1.0"),
        "the hottest image: {out}"
    );
    assert!(
        out.contains("404 GET /v2/library/nosuch/manifests/1?ns=docker.io"),
        "{out}"
    );
    let (ok, out) = run(pullthrough(&["status", "--url", url, "--json"])).await;
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let spent = proxy.metric("pullthrough_upstream_pulls_total", &[]);
    assert_eq!(status["pulls"]["spent"].as_f64(), Some(spent));
    assert!(spent >= 3.0, "the index and two platforms");
    let hits = status["requests"]["hits"].as_u64().unwrap();
    assert!(hits >= 3, "the second warm found arm64 cached: {status}");

    // Nothing listens: the status command fails and says where it looked.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, out) = run(pullthrough(&["status", "--url", &closed])).await;
    assert!(!ok);
    assert!(
        out.contains(&format!("cannot reach {closed}/ui/status.json")),
        "{out}"
    );
    proxy.stop().await;
}

fn doctor(upstream: &str, data_dir: &Path, s3: &S3Server, secret: &str) -> Command {
    let mut command = pullthrough(&[
        "doctor",
        "--only",
        "docker.io",
        "--upstream",
        &format!("docker.io={upstream}"),
        "--s3-bucket",
        "doctor-bucket",
        "--s3-endpoint",
        &s3.endpoint,
        "--s3-prefix",
        "team/",
    ]);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", REGION);
    command
}

/// The report's line for `subject` and `check`, and the hint under it.
fn line<'o>(out: &'o str, subject: &str, check: &str) -> (&'o str, &'o str) {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| {
            let mut words = l.split_whitespace().skip(1);
            words.next() == Some(subject) && words.next() == Some(check)
        })
        .unwrap_or_else(|| panic!("no {subject} {check} line in:\n{out}"));
    let hint = lines
        .get(at + 1)
        .filter(|l| l.starts_with("    fix:"))
        .copied();
    (lines[at], hint.unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_a_sound_setup() {
    let sim = HubSim::start().await;
    sim.push_image("ratelimitpreview/test", "latest", &[random_bytes(1024, 1)]);
    let s3 = S3Server::start().await;
    s3.create_bucket("doctor-bucket").await;
    let data = tempfile::tempdir().unwrap();
    let (ok, out) = run(doctor(&sim.registry_url, data.path(), &s3, SECRET_KEY)).await;
    assert!(ok, "{out}");
    for (subject, check) in [
        ("docker.io", "dns"),
        ("docker.io", "tcp"),
        ("docker.io", "v2"),
        ("docker.io", "clock"),
        ("docker.io", "budget"),
        ("s3", "access"),
        ("data", "write"),
        ("data", "space"),
    ] {
        let (text, _) = line(&out, subject, check);
        assert!(text.starts_with('✓'), "{text}\n{out}");
    }
    assert!(
        line(&out, "docker.io", "tls").0.starts_with('·'),
        "plain http: {out}"
    );
    assert!(
        line(&out, "docker.io", "budget")
            .0
            .contains("100 of 100 pulls left"),
        "{out}"
    );
    assert!(
        line(&out, "s3", "access")
            .0
            .contains("doctor-bucket/team/doctor/"),
        "{out}"
    );
    assert!(
        line(&out, "s3", "redirect").0.starts_with('·'),
        "redirects are off: {out}"
    );
    assert!(
        s3.keys("doctor-bucket", "team/").await.is_empty(),
        "the probe is deleted"
    );
    assert!(out.contains("0 failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fetches_a_presigned_url_as_nodes_will_when_redirects_are_on() {
    let sim = HubSim::start().await;
    sim.push_image("ratelimitpreview/test", "latest", &[random_bytes(1024, 1)]);
    let s3 = S3Server::start().await;
    s3.create_bucket("doctor-bucket").await;
    let tap = BucketTap::start(&s3.endpoint).await;
    let data = tempfile::tempdir().unwrap();
    let mut command = doctor(&sim.registry_url, data.path(), &s3, SECRET_KEY);
    command.args(["--s3-redirect", "--s3-public-endpoint", &tap.endpoint]);
    let (ok, out) = run(command).await;
    assert!(ok, "{out}");
    let (text, _) = line(&out, "s3", "redirect");
    assert!(
        text.starts_with('✓') && text.contains("127.0.0.2"),
        "{text}"
    );
    let gets = tap.gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(gets[0].contains("team/doctor/") && gets[0].contains("X-Amz-Signature="));
    assert!(tap.with_authorization().is_empty());
    assert!(s3.keys("doctor-bucket", "team/").await.is_empty());

    // Nodes sent to a name nothing answers at: named, with the fix.
    let mut command = doctor(&sim.registry_url, data.path(), &s3, SECRET_KEY);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    command.args(["--s3-redirect", "--s3-public-endpoint", &nowhere]);
    let (ok, out) = run(command).await;
    assert!(!ok, "{out}");
    let (text, hint) = line(&out, "s3", "redirect");
    assert!(
        text.starts_with('✗') && text.contains("presigned GET"),
        "{text}"
    );
    assert!(hint.contains("s3.public_endpoint"), "{hint}");
    assert!(line(&out, "s3", "access").0.starts_with('✓'), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_each_fault_of_a_broken_setup_with_its_fix() {
    let s3 = S3Server::start().await;
    s3.create_bucket("doctor-bucket").await;
    let dir = tempfile::tempdir().unwrap();
    // A file where the data directory should be.
    let data = dir.path().join("data");
    std::fs::write(&data, b"not a directory").unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (ok, out) = run(doctor(&closed, &data, &s3, "a-wrong-secret")).await;
    assert!(!ok, "{out}");

    let (text, hint) = line(&out, "docker.io", "tcp");
    assert!(text.starts_with('✗') && text.contains("refused"), "{text}");
    assert!(
        hint.contains("nothing accepts connections at 127.0.0.1"),
        "{hint}"
    );
    assert!(
        line(&out, "docker.io", "v2").0.starts_with('·'),
        "not run after tcp: {out}"
    );
    let (text, hint) = line(&out, "s3", "access");
    assert!(text.starts_with('✗') && text.contains("403"), "{text}");
    assert!(hint.contains("check the credentials"), "{hint}");
    let (text, hint) = line(&out, "data", "write");
    assert!(text.starts_with('✗'), "{text}");
    assert!(
        hint.contains("must be a directory pullthrough's user can write"),
        "{hint}"
    );
    assert!(out.contains("3 failed"), "{out}");

    // Credentials the registry's token realm refuses.
    let sim = HubSim::start_with(SimOptions {
        users: vec![("ci".into(), "right".into())],
        ..SimOptions::default()
    })
    .await;
    let good = tempfile::tempdir().unwrap();

    // https to a port that speaks plain http.
    let https = sim.registry_url.replace("http://", "https://");
    let (ok, out) = run(doctor(&https, good.path(), &s3, SECRET_KEY)).await;
    assert!(!ok, "{out}");
    assert!(line(&out, "docker.io", "tcp").0.starts_with('✓'), "{out}");
    let (text, hint) = line(&out, "docker.io", "tls");
    assert!(text.starts_with('✗'), "{text}");
    assert!(
        hint.contains("if the port speaks plain http, use an http:// URL"),
        "{hint}"
    );
    assert!(line(&out, "docker.io", "v2").0.starts_with('·'), "{out}");

    // Credentials for a realm on another host than the registry's are
    // withheld (the egress policy) until that host is in auth_hosts.
    let with_credentials = |password: &'static str, config: Option<&Path>| {
        let mut command = doctor(&sim.registry_url, good.path(), &s3, SECRET_KEY);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .env("PULLTHROUGH_UPSTREAM_DOCKER_IO_USERNAME", "ci")
            .env("PULLTHROUGH_UPSTREAM_DOCKER_IO_PASSWORD", password);
        command
    };
    let (ok, out) = run(with_credentials("right", None)).await;
    assert!(!ok, "{out}");
    let (text, hint) = line(&out, "docker.io", "v2");
    assert!(
        text.starts_with('✗') && text.contains("credentials were withheld"),
        "{text}"
    );
    assert!(
        hint.contains("upstreams.\"docker.io\".auth_hosts"),
        "{hint}"
    );

    let trusted = good.path().join("trusted.toml");
    let realm_host = sim.realm_url.trim_start_matches("http://");
    std::fs::write(
        &trusted,
        format!(
            "[upstreams.\"docker.io\"]\nurl = \"{}\"\nauth_hosts = [\"{realm_host}\"]\n",
            sim.registry_url
        ),
    )
    .unwrap();
    let (ok, out) = run(with_credentials("wrong", Some(&trusted))).await;
    assert!(!ok, "{out}");
    let (text, hint) = line(&out, "docker.io", "v2");
    assert!(
        text.starts_with('✗') && text.contains("refused the credentials"),
        "{text}"
    );
    assert!(
        hint.contains(
            "PULLTHROUGH_UPSTREAM_DOCKER_IO_USERNAME and PULLTHROUGH_UPSTREAM_DOCKER_IO_PASSWORD"
        ),
        "{hint}"
    );
    assert!(out.contains("1 failed"), "only the credentials: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_refuses_bytes_that_do_not_match_their_digest() {
    // Warm straight against a registry that corrupts: pullthrough itself
    // never serves such bytes, so its own check is what is under test.
    let sim = HubSim::start_with(SimOptions {
        auth: SimAuth::None,
        ..SimOptions::default()
    })
    .await;
    let image = sim.push_image("library/bent", "1", &[random_bytes(64 * 1024, 5)]);
    sim.set_fault(FaultTarget::Blobs, Fault::WrongBytes, None);
    let (ok, out) = run(pullthrough(&["warm", "--url", &sim.registry_url, "bent:1"])).await;
    assert!(!ok, "{out}");
    let layer = &image.layer_digests[0];
    assert!(
        out.contains(&format!(
            "✗ docker.io/library/bent:1: blob {layer}: the bytes hash to sha256:"
        )),
        "{out}"
    );
    assert!(
        out.contains("warmed 0 images") && out.contains("2 failures"),
        "{out}"
    );

    sim.clear_faults();
    sim.set_fault(FaultTarget::Manifests, Fault::WrongBytes, None);
    let (ok, out) = run(pullthrough(&["warm", "--url", &sim.registry_url, "bent:1"])).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("manifest 1: the bytes hash to sha256:"),
        "{out}"
    );
    assert!(
        out.contains(&format!("not {}", image.manifest_digest)),
        "{out}"
    );
}
