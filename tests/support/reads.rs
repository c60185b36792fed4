//! The environment variables pullthrough reads, found in its source, so
//! that a deployment file setting one it does not read (a typo, a renamed
//! variable) fails a test instead of being ignored in production.

use std::collections::BTreeSet;

use pullthrough::config::env_key;

/// What the AWS SDK's default chain reads (region, keys, the web identity
/// of IRSA): pullthrough takes its S3 credentials from there.
const AWS_SDK: [&str; 7] = [
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_EC2_METADATA_DISABLED",
];

/// The ways the source names a variable it reads: clap's `env = "…"`,
/// `env("…")` in configuration loading, `std::env::var("…")`, and the log
/// filter's `try_from_env("…")`.
const READS: [&str; 4] = ["env = \"", "env(\"", "env::var(\"", "try_from_env(\""];

/// Every variable named literally where the source reads one.
pub fn literal_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in super::source_files(&root) {
        let text = std::fs::read_to_string(&file).unwrap();
        for read in READS {
            for (i, _) in text.match_indices(read) {
                let name: String = text[i + read.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if text[i + read.len() + name.len()..].starts_with('"') && !name.is_empty() {
                    names.insert(name);
                }
            }
        }
    }
    for expected in ["PULLTHROUGH_LISTEN", "PULLTHROUGH_CLUSTER_SECRET", "POD_IP"] {
        assert!(
            names.contains(expected),
            "the source no longer reads {expected} the way tests/support/reads.rs looks for \
             (or at all); found only {names:?}"
        );
    }
    names
}

/// Whether pullthrough reads `name` when `upstreams` are configured: a
/// literal name, an upstream's `PULLTHROUGH_UPSTREAM_<NAME>_USERNAME` or
/// `_PASSWORD` (the form `config.rs` builds; checked to be still there),
/// or one of the AWS SDK's.
pub fn reads(name: &str, upstreams: &[String]) -> bool {
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs"),
    )
    .unwrap();
    for built in [
        "\"PULLTHROUGH_UPSTREAM_{}\"",
        "\"{prefix}_USERNAME\"",
        "\"{prefix}_PASSWORD\"",
    ] {
        assert!(
            config.contains(built),
            "src/config.rs builds credential variables as {built}"
        );
    }
    let credential = upstreams.iter().any(|upstream| {
        ["USERNAME", "PASSWORD"]
            .iter()
            .any(|part| name == format!("PULLTHROUGH_UPSTREAM_{}_{part}", env_key(upstream)))
    });
    credential || AWS_SDK.contains(&name) || literal_names().contains(name)
}
