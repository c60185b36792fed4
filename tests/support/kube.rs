//! The Kubernetes manifests in `deploy/kubernetes`, as the tests read
//! them: the files the kustomization lists, each one resource.

use std::collections::BTreeMap;

use serde_json::Value;

/// The manifests' directory, relative to the crate root.
pub const DIR: &str = "deploy/kubernetes";

fn read(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(DIR)
        .join(file);
    super::cfn::load_yaml(&std::fs::read_to_string(path).unwrap())
}

/// The kustomization itself.
pub fn kustomization() -> Value {
    read("kustomization.yaml")
}

/// Every resource the kustomization lists, by file name.
pub fn manifests() -> BTreeMap<String, Value> {
    kustomization()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| {
            let file = file.as_str().unwrap().to_owned();
            let manifest = read(&file);
            (file, manifest)
        })
        .collect()
}

/// The one resource of `kind` named `name`.
pub fn resource(kind: &str, name: &str) -> Value {
    manifests()
        .into_values()
        .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {DIR}"))
}

/// The environment a container gets: its `value`s, each secret's key as
/// `secret`, and each field reference as `field`.
pub fn container_env(container: &Value, secret: &str, field: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_owned()
        } else if !var["valueFrom"]["secretKeyRef"].is_null() {
            secret.to_owned()
        } else if !var["valueFrom"]["fieldRef"].is_null() {
            field.to_owned()
        } else {
            panic!("{name}: a value, a secret's key or a field");
        };
        env.insert(name, value);
    }
    env
}
