//! What the S3 tier may do, read from the code, and what a policy grants:
//! every deployment's policy (the README's, the CloudFormation task role)
//! is checked to grant exactly the calls the code makes, on the bucket and
//! prefix the deployment configures.

use std::collections::{BTreeMap, BTreeSet};

/// Each S3 operation the code may call, the IAM action that authorizes
/// it, and whether that action is granted on the bucket rather than on
/// the objects under the prefix.
const S3_OPERATIONS: [(&str, &str, bool); 9] = [
    // At start-up, to check the bucket and the credentials.
    ("head_bucket", "s3:ListBucket", true),
    ("head_object", "s3:GetObject", false),
    ("get_object", "s3:GetObject", false),
    ("put_object", "s3:PutObject", false),
    // The multipart upload of a large blob.
    ("create_multipart_upload", "s3:PutObject", false),
    ("upload_part", "s3:PutObject", false),
    ("complete_multipart_upload", "s3:PutObject", false),
    // After a failed upload.
    ("abort_multipart_upload", "s3:AbortMultipartUpload", false),
    // An object that failed verification (and doctor's probe object).
    ("delete_object", "s3:DeleteObject", false),
];

/// The S3 client's methods that are not S3 operations.
const NOT_OPERATIONS: [&str; 2] = ["clone", "config"];

/// The S3 operations the code calls: every `client.<operation>()` in the
/// source files that use the S3 SDK. An operation missing from the table
/// above fails here, so that a new call is given its IAM action (and every
/// policy checked against this list learns of it).
pub fn operations_the_code_calls() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in super::source_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.contains("aws_sdk_s3") {
            continue;
        }
        let squeezed: String = text.split_whitespace().collect();
        for (i, _) in squeezed.match_indices("client.") {
            let call = &squeezed[i + "client.".len()..];
            let name: String = call
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // Every method of the SDK's client is an operation but these
            // (a builder may be sent statements later, so `.send()` is no
            // sign).
            if name.is_empty()
                || !call[name.len()..].starts_with("()")
                || NOT_OPERATIONS.contains(&name.as_str())
            {
                continue;
            }
            assert!(
                S3_OPERATIONS.iter().any(|(op, _, _)| *op == name),
                "{} calls S3's {name}: add its IAM action to tests/support/iam.rs, \
                 the README's ecs-task-role-policy and the CloudFormation task role",
                file.display()
            );
            found.insert(name);
        }
    }
    assert!(
        found.contains("head_bucket"),
        "the S3 calls were found: {found:?}"
    );
    found
}

/// The grants the code needs, by resource ARN: the bucket's actions on
/// the bucket, the objects' on `<bucket>/<prefix>*`.
pub fn needed(bucket: &str, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for operation in operations_the_code_calls() {
        let (_, action, on_bucket) = S3_OPERATIONS
            .iter()
            .find(|(op, _, _)| *op == operation)
            .unwrap();
        let resource = if *on_bucket {
            format!("arn:aws:s3:::{bucket}")
        } else {
            format!("arn:aws:s3:::{bucket}/{prefix}*")
        };
        grants
            .entry(resource)
            .or_default()
            .insert(action.to_string());
    }
    grants
}

/// What a policy document allows, by resource ARN. Every statement must
/// be an `Allow` of actions on one resource.
pub fn granted(policy: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        let actions: Vec<String> = match &statement["Action"] {
            serde_json::Value::String(one) => vec![one.clone()],
            many => many
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
        };
        let resource = statement["Resource"].as_str().unwrap().to_owned();
        granted.entry(resource).or_default().extend(actions);
    }
    granted
}
