//! The README's ECS snippets say what the code does: the task
//! definition's variables (the password filled from Secrets Manager)
//! configure the upstream credentials and the S3 tier, and the task
//! role's policy allows the S3 calls the tier makes, on the prefix the
//! task uses, and nothing more.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use pullthrough::config::{DOCKER_HUB, Secret};
use support::docs::{PLACEHOLDER, snippet};
use support::iam;
use support::process::run_to_end;

fn readme(name: &str) -> serde_json::Value {
    serde_json::from_str(&snippet("README.md", name, PLACEHOLDER)).expect("valid JSON")
}

/// The environment ECS gives the container: `environment`, plus each
/// secret's value as Secrets Manager would fill it in.
fn container_env(task: &serde_json::Value, secret_value: &str) -> BTreeMap<String, String> {
    let container = &task["containerDefinitions"][0];
    let mut env = BTreeMap::new();
    for pair in container["environment"].as_array().unwrap() {
        env.insert(
            pair["name"].as_str().unwrap().to_owned(),
            pair["value"].as_str().unwrap().to_owned(),
        );
    }
    for secret in container["secrets"].as_array().unwrap() {
        let from = secret["valueFrom"].as_str().unwrap();
        assert!(from.starts_with("arn:aws:secretsmanager:"), "{from}");
        env.insert(
            secret["name"].as_str().unwrap().to_owned(),
            secret_value.to_owned(),
        );
    }
    env
}

#[tokio::test]
async fn the_task_definition_configures_the_credentials_and_the_bucket() {
    let task = readme("ecs-task-definition");
    let env = container_env(&task, "from-secrets-manager");
    assert!(
        !task.to_string().contains("from-secrets-manager"),
        "the password is not in the task definition"
    );
    // The container's command line, with the container's environment.
    let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    command.arg("config").envs(&env);
    let output = run_to_end(command, Duration::from_secs(30)).await;
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{printed}");
    assert!(!printed.contains("from-secrets-manager"), "{printed}");
    let config: toml::Value = toml::from_str(&printed).unwrap();
    let hub = &config["upstreams"][DOCKER_HUB];
    assert_eq!(hub["username"].as_str(), Some("mirrorbot"));
    // Set, and redacted when printed.
    assert_eq!(hub["password"].as_str(), Some(Secret::REDACTED));
    assert_eq!(config["s3"]["bucket"].as_str(), Some("my-mirror-cache"));
    assert_eq!(config["s3"]["prefix"].as_str(), Some("pullthrough/"));
}

#[test]
fn the_task_role_policy_allows_the_tiers_calls_on_the_prefix_only() {
    let task = readme("ecs-task-definition");
    let env = container_env(&task, "x");
    let bucket = &env["PULLTHROUGH_S3_BUCKET"];
    let prefix = &env["PULLTHROUGH_S3_PREFIX"];
    let policy = readme("ecs-task-role-policy");
    // What the S3 tier calls, read from the code: HeadBucket at start-up
    // on the bucket; the objects' reads, writes, multipart uploads, aborts
    // and deletes on the prefix.
    assert_eq!(iam::granted(&policy), iam::needed(bucket, prefix));
}

#[test]
fn the_bucket_policy_for_redirects_denies_cache_reads_from_outside_the_vpc_endpoint() {
    let task = readme("ecs-task-definition");
    let env = container_env(&task, "x");
    let objects = format!(
        "arn:aws:s3:::{}/{}*",
        env["PULLTHROUGH_S3_BUCKET"], env["PULLTHROUGH_S3_PREFIX"]
    );
    let policy = readme("s3-bucket-policy-vpce");
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "{policy}");
    let deny = &statements[0];
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Principal"], "*");
    // Presigned URLs are GETs; the task role's other calls are untouched.
    assert_eq!(deny["Action"], "s3:GetObject");
    assert_eq!(deny["Resource"].as_str(), Some(objects.as_str()));
    let vpce = &deny["Condition"]["StringNotEquals"]["aws:SourceVpce"];
    assert!(
        vpce.as_str().is_some_and(|v| v.starts_with("vpce-")),
        "{deny}"
    );
}
