//! The deployment files in `deploy/` are what their ecosystems' own
//! validators accept (`cfn-lint`, `kubernetes-validate`, installed by
//! tests/run), and they agree with the code: every variable they set is
//! one pullthrough reads and configures it as meant, their ports are the
//! one it listens on, their probes ask endpoints it serves, the task
//! role allows exactly the S3 calls it makes, the ConfigMap passes
//! `pullthrough config --check`, the stop timeouts outlast the drain, and
//! the nodes' snippets are the guides' tested ones.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use pullthrough::config::BUILT_IN_UPSTREAMS;
use serde_json::Value;
use support::cfn::{REGION, Stack, scalar};
use support::docs::{PLACEHOLDER, snippet};
use support::process::run_to_end;
use support::{iam, kube, reads};

const TEMPLATE: &str = "deploy/cloudformation/pullthrough.yaml";

/// The parameters every stack needs (no defaults), as in the README's
/// deploy command.
const REQUIRED: [(&str, &str); 3] = [
    ("VpcId", "vpc-0123456789abcdef0"),
    (
        "SubnetIds",
        "subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb",
    ),
    (
        "Image",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/pullthrough:1",
    ),
];

fn stack(extra: &[(&str, &str)]) -> Stack {
    let mut parameters = REQUIRED.to_vec();
    parameters.extend_from_slice(extra);
    Stack::load(TEMPLATE, &parameters)
}

/// The stack with each choice its parameters offer.
fn every_stack() -> Vec<(String, Stack)> {
    let alb = [
        ("LoadBalancerType", "alb"),
        (
            "CertificateArn",
            "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
        ),
        ("DomainName", "mirror.example.com"),
    ];
    let hub = (
        "DockerHubSecretArn",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:pullthrough/dockerhub-AbCdEf",
    );
    let ec2 = [("LaunchType", "EC2"), ("ClusterName", "nodes")];
    let mut all = vec![("defaults".to_owned(), stack(&[]))];
    all.push(("alb".to_owned(), stack(&alb)));
    all.push(("docker hub".to_owned(), stack(&[hub])));
    all.push(("ec2".to_owned(), stack(&ec2)));
    all.push((
        "s3 endpoint, named bucket".to_owned(),
        stack(&[
            ("S3GatewayRouteTableIds", "rtb-1,rtb-2"),
            ("BucketName", "my-mirror-cache"),
        ]),
    ));
    all
}

fn container(stack: &Stack) -> Value {
    let task = stack.resource("TaskDefinition").unwrap();
    let containers = task["Properties"]["ContainerDefinitions"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    containers[0].clone()
}

/// The container's environment, each secret filled in as
/// `<secret>-<its name>`.
fn ecs_env(container: &Value, secret: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for pair in container["Environment"].as_array().unwrap() {
        env.insert(scalar(&pair["Name"]), scalar(&pair["Value"]));
    }
    for pair in container["Secrets"].as_array().unwrap() {
        let name = scalar(&pair["Name"]);
        env.insert(name.clone(), format!("{secret}-{name}"));
    }
    env
}

/// Runs the validator tests/run installs, at its pinned version, failing
/// (never skipping) when it is missing.
async fn validate(tool: &str, args: &[&str]) -> (bool, String) {
    let mut command = Command::new(support::pinned_tool(tool));
    command.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    let output = run_to_end(command, Duration::from_secs(300)).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

/// `pullthrough <args>` with only `env` in its environment.
async fn pullthrough(args: &[&str], env: &BTreeMap<String, String>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pullthrough"));
    command.args(args).env_clear().envs(env);
    let output = run_to_end(command, Duration::from_secs(30)).await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn built_in_upstreams() -> Vec<String> {
    BUILT_IN_UPSTREAMS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect()
}

/// The README's "Health checks" table: who asks, and which endpoint.
fn readme_health_checks() -> BTreeMap<String, String> {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let table = readme.split_once("### Health checks").unwrap().1;
    table
        .lines()
        .skip_while(|l| !l.starts_with("| who asks"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            (cells[1].replace('`', ""), cells[2].replace('`', ""))
        })
        .collect()
}

#[tokio::test]
async fn cfn_lint_finds_nothing_in_the_template() {
    let (ok, said) = validate(
        "cfn-lint",
        // Informational findings too: none is left.
        &[
            "--format",
            "parseable",
            "--include-checks",
            "I",
            "--",
            TEMPLATE,
        ],
    )
    .await;
    assert!(ok && said.trim().is_empty(), "cfn-lint {TEMPLATE}:\n{said}");
}

#[tokio::test]
async fn kubernetes_validate_passes_every_manifest_strictly() {
    // Every file in the directory is applied by `kubectl apply -k`.
    let listed: BTreeSet<String> = kube::manifests().into_keys().collect();
    let present: BTreeSet<String> =
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(kube::DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
            .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    let files: Vec<String> = listed
        .iter()
        .map(|f| format!("{}/{f}", kube::DIR))
        .collect();
    let mut args = vec!["--strict", "--kubernetes-version", "1.37.0"];
    args.extend(files.iter().map(String::as_str));
    let (ok, said) = validate("kubernetes-validate", &args).await;
    assert!(ok, "kubernetes-validate:\n{said}");
    for file in &files {
        assert!(said.contains(&format!("{file} passed")), "{file}:\n{said}");
    }
}

#[tokio::test]
async fn the_stack_sets_only_variables_pullthrough_reads_and_they_configure_it() {
    for (choice, stack) in every_stack() {
        let container = container(&stack);
        let env = ecs_env(&container, "from-secrets-manager");
        for name in env.keys() {
            assert!(
                reads::reads(name, &built_in_upstreams()),
                "{choice}: the task sets {name}, which pullthrough does not read"
            );
        }
        let (ok, printed) = pullthrough(&["config"], &env).await;
        assert!(ok, "{choice}: {printed}");
        for (name, value) in &env {
            if name.ends_with("_PASSWORD") || name.ends_with("_SECRET") {
                assert!(
                    !printed.contains(value),
                    "{name} is printed redacted: {printed}"
                );
            }
        }
        let config: toml::Value = toml::from_str(&printed).unwrap();
        let bucket = scalar(&stack.output("BucketName"));
        assert_eq!(config["s3"]["bucket"].as_str(), Some(bucket.as_str()));
        assert_eq!(config["s3"]["prefix"].as_str(), Some("pullthrough/"));
        assert_eq!(config["s3"]["region"].as_str(), Some(REGION));
        assert_eq!(config["data_dir"].as_str(), Some("/var/cache/pullthrough"));
        let peers = config["cluster"]["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].as_str().unwrap(), scalar(&stack.output("Peers")));
        let hub = &config["upstreams"]["docker.io"];
        assert_eq!(
            hub.get("password").is_some(),
            stack.condition("HasDockerHubSecret"),
            "{choice}: the Docker Hub secret is used when given"
        );
    }
}

#[test]
fn the_stack_uses_the_one_port_pullthrough_listens_on() {
    for (choice, stack) in every_stack() {
        let container = container(&stack);
        let env = ecs_env(&container, "x");
        let port = port_of(&env["PULLTHROUGH_LISTEN"]);
        let port_value = serde_json::json!(port);
        assert_eq!(
            container["PortMappings"][0]["ContainerPort"], port_value,
            "{choice}"
        );
        let service = stack.resource("Service").unwrap()["Properties"].clone();
        assert_eq!(service["LoadBalancers"][0]["ContainerPort"], port_value);
        assert_eq!(
            service["LoadBalancers"][0]["ContainerName"],
            container["Name"]
        );
        let group = stack.resource("TargetGroup").unwrap()["Properties"].clone();
        assert_eq!(group["Port"], port_value, "{choice}");
        assert_eq!(
            scalar(&group["HealthCheckPort"]),
            port.to_string(),
            "{choice}"
        );
        // Every rule into the tasks opens that port, the peers' included.
        let tasks = stack.resource("TaskSecurityGroup").unwrap();
        let mut rules: Vec<Value> = tasks["Properties"]["SecurityGroupIngress"]
            .as_array()
            .unwrap()
            .clone();
        for (_, rule) in stack.resources_of("AWS::EC2::SecurityGroupIngress") {
            assert_eq!(rule["Properties"]["GroupId"], "TaskSecurityGroup");
            rules.push(rule["Properties"].clone());
        }
        for rule in &rules {
            assert_eq!(
                (&rule["FromPort"], &rule["ToPort"]),
                (&port_value, &port_value),
                "{choice}: {rule}"
            );
        }
        assert!(
            rules
                .iter()
                .any(|r| r["SourceSecurityGroupId"] == "TaskSecurityGroup"),
            "{choice}: the tasks reach each other"
        );
        // The peers are the Cloud Map service's records, on that port.
        let discovery = stack.resource("DiscoveryService").unwrap()["Properties"].clone();
        let namespace = stack.resource("DiscoveryNamespace").unwrap()["Properties"].clone();
        assert_eq!(
            env["PULLTHROUGH_PEERS"],
            format!(
                "dns:{}.{}:{port}",
                scalar(&discovery["Name"]),
                scalar(&namespace["Name"])
            )
        );
        assert_eq!(discovery["DnsConfig"]["DnsRecords"][0]["Type"], "A");
        assert_eq!(
            service["ServiceRegistries"][0]["RegistryArn"],
            "DiscoveryService.Arn"
        );
        // The NLB forwards the mirror's port as it is.
        let listener = stack.resource("Listener").unwrap()["Properties"].clone();
        let address = scalar(&stack.output("MirrorAddress"));
        if stack.condition("IsNlb") {
            assert_eq!(listener["Port"], port_value);
            assert!(address.ends_with(&format!(":{port}")), "{address}");
        } else {
            assert_eq!(listener["Protocol"], "HTTPS");
            assert!(address.starts_with("https://"), "{address}");
        }
    }
}

#[test]
fn the_stack_checks_health_and_readiness_where_the_readme_says() {
    let table = readme_health_checks();
    for (choice, stack) in every_stack() {
        let container = container(&stack);
        let command: Vec<String> = container["HealthCheck"]["Command"]
            .as_array()
            .unwrap()
            .iter()
            .map(scalar)
            .collect();
        assert_eq!(command[..3], ["CMD", "curl", "-fsS"], "{choice}");
        let url = url::Url::parse(&command[3]).unwrap();
        assert_eq!(url.path(), table["ECS container health check"]);
        let port = port_of(&ecs_env(&container, "x")["PULLTHROUGH_LISTEN"]);
        assert_eq!(url.port(), Some(port));
        let group = stack.resource("TargetGroup").unwrap()["Properties"].clone();
        assert_eq!(
            group["HealthCheckPath"],
            table["ALB or NLB target group"].as_str()
        );
        assert_eq!(group["HealthCheckProtocol"], "HTTP");
    }
}

#[test]
fn the_stack_and_the_pods_stop_later_than_the_drain() {
    let drain = pullthrough::server::DRAIN.as_secs();
    let stop = container(&stack(&[]))["StopTimeout"].as_u64().unwrap();
    assert!(
        stop > drain,
        "ECS stopTimeout {stop} s within the drain of {drain} s"
    );
    let deployment = kube::resource("Deployment", "pullthrough");
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop: u64 = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .map_or(0, |c| scalar(&c[1]).parse().unwrap());
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} s within preStop {pre_stop} s and the drain of {drain} s"
    );
}

#[test]
fn the_task_role_allows_exactly_the_s3_calls_the_code_makes() {
    for (choice, stack) in every_stack() {
        let env = ecs_env(&container(&stack), "x");
        let role = stack.resource("TaskRole").unwrap();
        let policies = role["Properties"]["Policies"].as_array().unwrap();
        assert_eq!(policies.len(), 1, "{choice}: one policy");
        assert!(role["Properties"].get("ManagedPolicyArns").is_none());
        let granted = iam::granted(&policies[0]["PolicyDocument"]);
        let needed = iam::needed(&env["PULLTHROUGH_S3_BUCKET"], &env["PULLTHROUGH_S3_PREFIX"]);
        assert_eq!(granted, needed, "{choice}");
    }
}

#[test]
fn the_execution_role_reads_every_secret_the_task_is_given() {
    for (choice, stack) in every_stack() {
        let role = stack.resource("ExecutionRole").unwrap();
        let mut readable = BTreeSet::new();
        for policy in role["Properties"]["Policies"].as_array().unwrap() {
            for statement in policy["PolicyDocument"]["Statement"].as_array().unwrap() {
                assert_eq!(statement["Action"], "secretsmanager:GetSecretValue");
                for arn in statement["Resource"].as_array().unwrap() {
                    readable.insert(scalar(arn));
                }
            }
        }
        for secret in container(&stack)["Secrets"].as_array().unwrap() {
            let from = scalar(&secret["ValueFrom"]);
            // `arn:…:secret:name-AbCdEf:key::` names a key of a JSON secret.
            let arn = match from.split_once(":secret:") {
                Some((head, rest)) => format!("{head}:secret:{}", rest.split(':').next().unwrap()),
                None => from.clone(),
            };
            assert!(
                readable.contains(&arn),
                "{choice}: {from} is readable: {readable:?}"
            );
        }
    }
}

#[tokio::test]
async fn the_generated_cluster_secret_is_one_pullthrough_accepts() {
    let stack = stack(&[]);
    let secret = stack.resource("ClusterSecret").unwrap();
    let length = secret["Properties"]["GenerateSecretString"]["PasswordLength"]
        .as_u64()
        .unwrap() as usize;
    let mut env = ecs_env(&container(&stack), "");
    env.insert("PULLTHROUGH_CLUSTER_SECRET".into(), "k".repeat(length));
    let (ok, said) = pullthrough(&["config", "--check"], &env).await;
    assert!(ok, "a generated secret of {length} characters: {said}");
}

#[test]
fn the_bucket_is_private_encrypted_and_bounded_by_the_readmes_rule() {
    let rule: Value =
        serde_json::from_str(&snippet("README.md", "s3-lifecycle", PLACEHOLDER)).unwrap();
    let rule = &rule["Rules"][0];
    let stack = stack(&[]);
    let prefix = ecs_env(&container(&stack), "x")["PULLTHROUGH_S3_PREFIX"].clone();
    let bucket = stack.resource("Bucket").unwrap()["Properties"].clone();
    let ours = &bucket["LifecycleConfiguration"]["Rules"][0];
    assert_eq!(ours["Status"], rule["Status"]);
    assert_eq!(
        scalar(&ours["Prefix"]),
        prefix,
        "the rule covers what the tasks write"
    );
    assert_eq!(rule["Filter"]["Prefix"].as_str(), Some(prefix.as_str()));
    assert_eq!(
        scalar(&ours["ExpirationInDays"]),
        scalar(&rule["Expiration"]["Days"])
    );
    assert_eq!(
        ours["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
        rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
    );
    let block = &bucket["PublicAccessBlockConfiguration"];
    for setting in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[setting], true, "{setting}");
    }
    assert!(
        !bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            ["ServerSideEncryptionByDefault"]["SSEAlgorithm"]
            .is_null()
    );
}

#[test]
fn the_node_user_data_is_the_guides_tested_snippet() {
    let stack = stack(&[("NodeClusterName", "my-cluster")]);
    let mirror = scalar(&stack.output("MirrorAddress"));
    let mirror = mirror.strip_prefix("http://").unwrap();
    assert_eq!(
        scalar(&stack.output("NodeUserData")),
        snippet("docs/deploy.md", "ecs-user-data", mirror)
    );
}

#[tokio::test]
async fn the_manifests_set_only_variables_pullthrough_reads_and_the_configmap_passes_check() {
    let deployment = kube::resource("Deployment", "pullthrough");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["enableServiceLinks"], false,
        "a Service's link variables (PULLTHROUGH_PORT, …) stay out of pullthrough's PULLTHROUGH_* namespace"
    );
    let container = &pod["containers"][0];
    let configmap = kube::resource("ConfigMap", "pullthrough");
    let (key, toml_text) = configmap["data"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let toml_text = toml_text.as_str().unwrap();
    let file: toml::Value = toml::from_str(toml_text).unwrap();
    let mut upstreams = built_in_upstreams();
    if let Some(table) = file.get("upstreams").and_then(|u| u.as_table()) {
        upstreams.extend(table.keys().cloned());
    }
    let mut env = kube::container_env(container, &"s".repeat(32), "10.1.2.3");
    for name in env.keys() {
        assert!(
            reads::reads(name, &upstreams),
            "the Deployment sets {name}, which pullthrough does not read"
        );
    }
    // The file pullthrough is told to read is the ConfigMap's, mounted.
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == m["name"]);
            volume.is_some_and(|v| v["configMap"]["name"] == "pullthrough")
        })
        .expect("the ConfigMap is mounted");
    assert_eq!(
        env["PULLTHROUGH_CONFIG"],
        format!("{}/{key}", scalar(&mount["mountPath"]))
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(key);
    std::fs::write(&path, toml_text).unwrap();
    env.insert("PULLTHROUGH_CONFIG".into(), path.display().to_string());
    let (ok, said) = pullthrough(&["config", "--check"], &env).await;
    assert!(ok, "pullthrough config --check on the ConfigMap: {said}");
    // The data directory is the cache volume.
    let data_dir = file["data_dir"].as_str().unwrap();
    let cache = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == data_dir)
        .unwrap_or_else(|| panic!("{data_dir} is a volume"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == cache["name"])
        .unwrap();
    assert!(!volume["emptyDir"].is_null(), "{volume}");
}

#[test]
fn the_manifests_use_the_one_port_pullthrough_listens_on_and_find_the_peers() {
    let configmap = kube::resource("ConfigMap", "pullthrough");
    let file: toml::Value =
        toml::from_str(configmap["data"]["pullthrough.toml"].as_str().unwrap()).unwrap();
    let port = port_of(file["listen"].as_str().unwrap());
    let deployment = kube::resource("Deployment", "pullthrough");
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let container_port = &pod["containers"][0]["ports"][0];
    assert_eq!(container_port["containerPort"], serde_json::json!(port));
    let port_name = container_port["name"].clone();
    let namespace = scalar(&kube::kustomization()["namespace"]);
    let mut headless = None;
    for (file, manifest) in kube::manifests() {
        if manifest["kind"] != "Service" {
            continue;
        }
        let spec = &manifest["spec"];
        for (key, value) in spec["selector"].as_object().unwrap() {
            assert_eq!(&labels[key], value, "{file} selects the pods");
        }
        let ports = spec["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{file}");
        assert_eq!(ports[0]["targetPort"], port_name, "{file}");
        if spec["clusterIP"] == "None" {
            assert_eq!(ports[0]["port"], serde_json::json!(port), "{file}");
            headless = Some(scalar(&manifest["metadata"]["name"]));
        }
    }
    let headless = headless.expect("a headless Service for the peers");
    let peers: Vec<&str> = file["cluster"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        peers,
        [format!(
            "dns:{headless}.{namespace}.svc.cluster.local:{port}"
        )]
    );
    for (file, manifest) in kube::manifests() {
        if let Some(ns) = manifest["metadata"]["namespace"].as_str() {
            assert_eq!(ns, namespace, "{file}");
        }
    }
    // The disruption budget covers the pods.
    let budget = kube::resource("PodDisruptionBudget", "pullthrough");
    for (key, value) in budget["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&labels[key], value);
    }
}

#[test]
fn the_pods_check_health_and_readiness_where_the_readme_says() {
    let table = readme_health_checks();
    let deployment = kube::resource("Deployment", "pullthrough");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let port_name = &container["ports"][0]["name"];
    for (probe, who) in [
        ("livenessProbe", "Kubernetes livenessProbe"),
        ("readinessProbe", "Kubernetes readinessProbe"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], table[who].as_str(), "{probe}");
        assert_eq!(&get["port"], port_name, "{probe}");
    }
}

#[test]
fn the_daemonset_writes_the_guides_tested_hosts_toml_for_the_service() {
    let daemonset = kube::resource("DaemonSet", "pullthrough-containerd-hosts");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let script = scalar(&container["command"][2]);
    let body = script
        .split_once("<<TOML\n")
        .expect("a heredoc")
        .1
        .split_once("\nTOML\n")
        .expect("heredoc end")
        .0;
    // The address is the Service's, from its link variables.
    let service = kube::resource("Service", "pullthrough");
    let prefix = scalar(&service["metadata"]["name"])
        .to_uppercase()
        .replace('-', "_");
    let port_name = scalar(&service["spec"]["ports"][0]["name"]).to_uppercase();
    let address = format!("${{{prefix}_SERVICE_HOST}}:${{{prefix}_SERVICE_PORT_{port_name}}}");
    assert!(body.contains(&address), "{body}");
    assert_ne!(pod["enableServiceLinks"], false);
    let expected = snippet("docs/deploy.md", "containerd-hosts", PLACEHOLDER);
    let (comment, expected) = expected.split_once('\n').unwrap();
    assert_eq!(
        format!("{}\n", body.replace(&address, PLACEHOLDER)),
        expected
    );
    // Written where the guide says, on the node.
    let written = comment.trim_start_matches("# ");
    let (host_dir, file) = written.rsplit_once("/_default/").unwrap();
    assert_eq!(file, "hosts.toml");
    let volume = &pod["volumes"][0];
    assert_eq!(volume["hostPath"]["path"].as_str(), Some(host_dir));
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["name"], volume["name"]);
    let in_container = format!("{}/_default", scalar(&mount["mountPath"]));
    assert!(
        script.contains(&format!("dir={in_container}\n")),
        "{script}"
    );
    assert!(
        script.contains("mv \"$dir/hosts.toml.new\" \"$dir/hosts.toml\""),
        "{script}"
    );
}

/// Every probe path a deployment file names, answered by a replica.
#[tokio::test]
async fn every_probe_path_is_one_pullthrough_serves() {
    let mut paths = BTreeSet::new();
    for (_, stack) in every_stack() {
        let group = stack.resource("TargetGroup").unwrap()["Properties"].clone();
        paths.insert(scalar(&group["HealthCheckPath"]));
        let command = &container(&stack)["HealthCheck"]["Command"];
        paths.insert(
            url::Url::parse(&scalar(&command[3]))
                .unwrap()
                .path()
                .to_owned(),
        );
    }
    let deployment = kube::resource("Deployment", "pullthrough");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        paths.insert(scalar(&container[probe]["httpGet"]["path"]));
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy =
        support::proxy::Proxy::start(support::proxy::config("http://127.0.0.1:9", dir.path()))
            .await;
    for path in &paths {
        let response = reqwest::get(format!("{}{path}", proxy.url)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    assert!(paths.len() >= 2, "{paths:?}");
    proxy.stop().await;
}

/// The Secrets the pods read are the ones the README has you create,
/// with the same keys.
#[test]
fn the_pods_read_the_secrets_the_readme_creates() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let readme: String = readme
        .replace('\\', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let deployment = kube::resource("Deployment", "pullthrough");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut checked = 0;
    for var in container["env"].as_array().unwrap() {
        let secret = &var["valueFrom"]["secretKeyRef"];
        if secret.is_null() {
            continue;
        }
        let (name, key) = (scalar(&secret["name"]), scalar(&secret["key"]));
        let created = readme
            .split_once(&format!("create secret generic {name} "))
            .unwrap_or_else(|| panic!("the README creates the Secret {name}"))
            .1;
        let command = created.split("create secret").next().unwrap();
        let command = command.split("```").next().unwrap();
        assert!(
            command.contains(&format!("--from-literal={key}=")),
            "the README's Secret {name} has the key {key}: {command}"
        );
        checked += 1;
    }
    assert!(checked >= 2);
}
