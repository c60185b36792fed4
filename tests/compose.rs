//! docker-compose.yml cannot run here (no image can be pulled), so its
//! wiring is checked instead: service names, the one published port, the
//! replicas' environment against the configuration reference, the bucket
//! and credentials against MinIO's, the load balancer against the replicas,
//! and the replicas' health check against a replica started with exactly
//! that environment in front of a real S3 API.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use support::process::run_to_end;
use support::s3::S3Server;
use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn compose() -> Yaml {
    YamlLoader::load_from_str(&read("docker-compose.yml"))
        .unwrap()
        .remove(0)
}

fn text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect()
}

fn list(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| v.iter().map(text).collect())
        .unwrap_or_default()
}

const REPLICAS: [&str; 2] = ["pullthrough-a", "pullthrough-b"];

#[test]
fn services_and_the_one_mirror_port() {
    let c = compose();
    let names: Vec<String> = c["services"].as_hash().unwrap().keys().map(text).collect();
    assert_eq!(
        names,
        [
            "minio",
            "create-bucket",
            "pullthrough-a",
            "pullthrough-b",
            "mirror"
        ]
    );
    for (name, service) in c["services"].as_hash().unwrap() {
        let ports = list(&service["ports"]);
        if text(name) == "mirror" {
            assert_eq!(ports, ["5000:5000"]);
        } else {
            assert!(
                ports.is_empty(),
                "only the mirror publishes a port, not {}",
                text(name)
            );
        }
    }
    // The load balancer spreads the mirror port over both replicas' listen port.
    let lb = read("deploy/nginx-lb.conf");
    assert!(lb.contains("listen 5000;"));
    for replica in REPLICAS {
        let listen = environment(&c["services"][replica])["PULLTHROUGH_LISTEN"].clone();
        let port = listen.rsplit(':').next().unwrap();
        assert!(
            lb.contains(&format!("server {replica}:{port}")),
            "nginx-lb.conf sends to {replica}:{port}"
        );
    }
}

#[test]
fn the_replicas_share_minios_bucket_with_minios_credentials() {
    let c = compose();
    let minio = environment(&c["services"]["minio"]);
    let create = list(&c["services"]["create-bucket"]["command"]).join(" ");
    let a = environment(&c["services"]["pullthrough-a"]);
    assert_eq!(
        a,
        environment(&c["services"]["pullthrough-b"]),
        "both replicas are configured alike"
    );
    assert_ne!(
        list(&c["services"]["pullthrough-a"]["volumes"]),
        list(&c["services"]["pullthrough-b"]["volumes"])
    );
    assert_eq!(a["AWS_ACCESS_KEY_ID"], minio["MINIO_ROOT_USER"]);
    assert_eq!(a["AWS_SECRET_ACCESS_KEY"], minio["MINIO_ROOT_PASSWORD"]);
    assert!(
        create.contains(&format!("local/{}", a["PULLTHROUGH_S3_BUCKET"])),
        "{create}"
    );
    assert!(create.contains(&a["PULLTHROUGH_S3_ENDPOINT"]), "{create}");
    assert_eq!(a["PULLTHROUGH_S3_ENDPOINT"], "http://minio:9000");

    // Every pullthrough setting used is in the README's configuration reference.
    let readme = read("README.md");
    for key in a.keys().filter(|k| k.starts_with("PULLTHROUGH_")) {
        assert!(readme.contains(&format!("`{key}`")), "{key} is documented");
    }
}

#[tokio::test]
async fn a_replica_with_the_compose_environment_passes_its_health_check() {
    let c = compose();
    let service = &c["services"]["pullthrough-a"];
    let mut env = environment(service);
    // MinIO's stand-in: a real S3 API with the same credentials and bucket.
    let s3 = S3Server::start_with(&env["AWS_ACCESS_KEY_ID"], &env["AWS_SECRET_ACCESS_KEY"]).await;
    s3.create_bucket(&env["PULLTHROUGH_S3_BUCKET"]).await;
    let port = support::registry::free_port();
    let dir = tempfile::tempdir().unwrap();
    env.insert("PULLTHROUGH_S3_ENDPOINT".into(), s3.endpoint.clone());
    env.insert("PULLTHROUGH_LISTEN".into(), format!("127.0.0.1:{port}"));
    env.insert(
        "PULLTHROUGH_DATA_DIR".into(),
        dir.path().display().to_string(),
    );

    let mut config = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    config.arg("config").env_clear().envs(&env);
    let printed = run_to_end(config, std::time::Duration::from_secs(20)).await;
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("bucket = \"pullthrough-cache\"")
            && printed.contains("prefix = \"cache/\""),
        "{printed}"
    );

    let mut serve = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    serve
        .arg("serve")
        .env_clear()
        .envs(&env)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    serve.stdout(std::process::Stdio::null());
    let mut child = serve.spawn().unwrap();
    // The compose health check, pointed at this replica's port.
    let test = list(&service["healthcheck"]["test"]);
    assert_eq!(test[..3], ["CMD", "curl", "-fsS"]);
    let url = test[3].replace("127.0.0.1:5000", &format!("127.0.0.1:{port}"));
    let mut healthy = None;
    for _ in 0..100 {
        let mut curl = Command::new("curl");
        curl.args(["-fsS", &url]);
        let out = run_to_end(curl, std::time::Duration::from_secs(5)).await;
        if out.status.success() {
            healthy = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let healthy = healthy.expect("the health check passes");
    assert!(healthy.contains("\"s3\":\"ok\""), "{healthy}");
}
