//! `pullthrough config --check`: whether the configuration `serve` would
//! use is valid, in one line, without starting anything. A file shipped
//! with a deployment (a Kubernetes ConfigMap, a file baked into an image)
//! is so checked where it is written, not when a replica fails to start.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::listen::Listening;

/// The verdict on `loaded`, the configuration read from `file` (or the
/// embedded default) with the environment and flags over it, as `serve`
/// loads it. Beyond what loading validates, the TLS certificate and key
/// it names must load, as at start-up. `Ok` says what was checked; `Err`
/// names the bad field (or file) and why.
pub fn check(file: Option<&Path>, loaded: Result<Config, ConfigError>) -> Result<String, String> {
    let what = match file {
        Some(path) => format!("{}", path.display()),
        None => "the embedded default".to_owned(),
    };
    let config = loaded.map_err(|e| format!("invalid configuration: {e}"))?;
    Listening::from_config(&config).map_err(|e| format!("invalid configuration: tls: {e}"))?;
    Ok(format!("configuration ok: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn load(text: &str) -> (tempfile::NamedTempFile, Result<Config, ConfigError>) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let loaded = Config::load(Some(file.path()), Overrides::default(), |_| None);
        (file, loaded)
    }

    #[test]
    fn a_valid_file_is_ok_and_named() {
        let (file, loaded) = load("tag_ttl = \"1m\"\n[memory]\nmax_bytes = \"64MiB\"\n");
        let verdict = check(Some(file.path()), loaded).unwrap();
        assert!(
            verdict.contains(&file.path().display().to_string()),
            "{verdict}"
        );
    }

    #[test]
    fn an_unknown_or_invalid_field_is_named() {
        let (file, loaded) = load("[memory]\nmax_bytez = \"64MiB\"\n");
        let error = check(Some(file.path()), loaded).unwrap_err();
        assert!(error.contains("max_bytez"), "{error}");
        let (file, loaded) = load("[memory]\nmax_bytes = \"1MiB\"\nmax_object_bytes = \"2MiB\"\n");
        let error = check(Some(file.path()), loaded).unwrap_err();
        assert!(error.contains("memory.max_object_bytes"), "{error}");
    }

    #[test]
    fn tls_files_that_do_not_load_are_refused() {
        let (file, loaded) =
            load("[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n");
        let error = check(Some(file.path()), loaded).unwrap_err();
        assert!(error.contains("tls"), "{error}");
    }
}
