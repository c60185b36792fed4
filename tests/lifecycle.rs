//! A replica's life as an operator and an orchestrator see it: the
//! configuration it prints can be fed back to it, `/readyz` says whether
//! it can serve (and why not), and SIGTERM stops it within its drain
//! bound without leaving half-written downloads behind.

mod support;

use std::time::{Duration, Instant};

use support::client::Client;
use support::hubsim::{HubSim, SimOptions};
use support::process::{Replica, run_to_end};
use support::proxy::{self, Proxy};
use support::random_bytes;

/// How long the server lets requests run on after SIGTERM (`server::DRAIN`).
const DRAIN: Duration = Duration::from_secs(10);

async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `pullthrough config` with `args` and `env`; its stdout.
async fn print_config(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    command.arg("config").args(args).envs(env.iter().copied());
    let output = run_to_end(command, Duration::from_secs(30)).await;
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_printed_configuration_is_accepted_again_without_its_secrets() {
    let secret = [
        ("PULLTHROUGH_UPSTREAM_DOCKER_IO_USERNAME", "robot"),
        ("PULLTHROUGH_UPSTREAM_DOCKER_IO_PASSWORD", "hunter2"),
    ];
    let flags = ["--disk-max-bytes", "20GiB", "--tag-ttl", "90s"];
    let printed = print_config(&flags, &secret).await;
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("password = \"<redacted>\""), "{printed}");
    assert!(printed.contains("max_bytes = \"20GiB\""), "{printed}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pullthrough.toml");
    std::fs::write(&file, &printed).unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(print_config(&["--config", file], &[]).await, printed);
}

#[tokio::test]
async fn readiness_fails_with_its_reason_when_the_data_directory_takes_no_writes() {
    let sim = HubSim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxy::config(&sim.registry_url, dir.path());
    config.disk.max_bytes = Some(bytesize::ByteSize::gib(1));
    let proxy = Proxy::start(config).await;
    let (status, ready) = get_json(&format!("{}/readyz", proxy.url)).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (200, Some("ready")),
        "{ready}"
    );
    assert_eq!(ready["disk"]["capacity_bytes"], 1 << 30, "{ready}");

    // The directory downloads go to is gone, and a file sits in its place.
    let tmp = dir.path().join("cache/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"in the way").unwrap();
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..40 {
        answer = get_json(&format!("{}/readyz", proxy.url)).await;
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, ready) = answer;
    assert_eq!(status, 503, "{ready}");
    let reason = ready["reason"].as_str().unwrap();
    assert!(reason.contains("data directory not writable"), "{reason}");
    let (status, health) = get_json(&format!("{}/healthz", proxy.url)).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("ok")),
        "alive all the same"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_refuses_new_connections_drains_within_its_bound_and_leaves_no_temp_files() {
    // 8 MiB at 256 KiB/s: the download is still running when the drain ends.
    let sim = HubSim::start_with(SimOptions {
        cdn_bytes_per_sec: Some(256 * 1024),
        ..SimOptions::default()
    })
    .await;
    let layer = random_bytes(8 * 1024 * 1024, 5);
    let image = sim.push_image("library/slow", "v1", &[layer]);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut replica = Replica::start(&sim.registry_url, &data_dir, &[], &[]).await;
    let tmp = data_dir.join("cache/tmp");

    let client = Client::new(&replica.url);
    assert_eq!(client.manifest("library/slow", "v1").await.status, 200);
    let blob_url = format!(
        "{}/v2/library/slow/blobs/{}",
        replica.url, image.layer_digests[0]
    );
    let mut download = reqwest::get(blob_url).await.unwrap();
    assert_eq!(download.status(), 200);
    assert!(
        download.chunk().await.unwrap().is_some(),
        "bytes are flowing"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        1,
        "one download in tmp/"
    );
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while let Ok(Some(chunk)) = download.chunk().await {
            received += chunk.len();
        }
        received
    });

    // SAFETY: kill(2) with a valid signal and the pid of our own child.
    assert_eq!(
        unsafe { libc::kill(replica.pid() as i32, libc::SIGTERM) },
        0
    );
    let signalled = Instant::now();
    let addr = replica.url.trim_start_matches("http://").to_owned();
    let mut refused = false;
    while signalled.elapsed() < Duration::from_secs(2) {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections are refused soon after SIGTERM");
    assert!(
        replica.exited(Duration::ZERO).await.is_none(),
        "refusing while the download drains, not because the process died"
    );

    let status = replica.exited(DRAIN + Duration::from_secs(5)).await;
    let took = signalled.elapsed();
    assert!(status.is_some(), "still running {took:?} after SIGTERM");
    assert!(status.unwrap().success(), "{status:?}");
    assert!(
        took >= DRAIN - Duration::from_secs(1),
        "the download had its drain: {took:?}"
    );
    let received = reader.await.unwrap();
    assert!(received < 8 * 1024 * 1024, "the slow download was cut off");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_while_the_replica_starts_wait_for_it_and_are_served() {
    let sim = HubSim::start().await;
    sim.push_image("library/early", "1", &[random_bytes(1000, 60)]);
    // An S3 endpoint that accepts connections and never answers: the
    // bucket check holds start-up for its 3 s timeout, after which the
    // replica starts degraded.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pullthrough.toml");
    std::fs::write(&config, "[s3]\ntimeout = \"3s\"\n").unwrap();
    let flags = [
        "--config",
        config.to_str().unwrap(),
        "--s3-bucket",
        "slow",
        "--s3-endpoint",
        &endpoint,
    ];
    let env = [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_REGION", "us-east-1"),
    ];
    let (mut command, port) =
        support::process::serve_command(&sim.registry_url, &dir.path().join("data"), &flags, &env);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut starting = false;
    for _ in 0..200 {
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await {
            let body: serde_json::Value = response.json().await.unwrap();
            starting = body["reason"] == "starting";
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        starting,
        "the replica answers /readyz with `starting` first"
    );

    let asked = Instant::now();
    let client = Client::new(&base);
    let (base_check, manifest) = tokio::join!(client.get("/v2/"), client.manifest("early", "1"));
    assert_eq!(base_check.status, 200, "no 503 while starting");
    assert_eq!(manifest.status, 200, "{:?}", manifest.body);
    assert!(
        asked.elapsed() > Duration::from_millis(500),
        "held until the replica served"
    );
    let (status, body) = get_json(&format!("{base}/readyz")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let _ = child.kill();
    let _ = child.wait();
    held.abort();
}
