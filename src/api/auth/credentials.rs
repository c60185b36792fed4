//! Who a request's `Authorization` header says it is: an htpasswd user
//! (bcrypt only), or the name of a static token.
//!
//! bcrypt is slow by design (tens of milliseconds a check), and a client
//! sends its Basic credentials with every blob request: a check runs on the
//! blocking pool, at most one per CPU at once (a flood of wrong passwords
//! delays logins, not file I/O), and a pair that passed is remembered (by
//! its SHA-256, never in clear) for a few minutes. Tokens are compared by their SHA-256
//! in constant time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use crate::config::AuthConfig;

/// How long a verified Basic pair is remembered.
const REMEMBER: Duration = Duration::from_secs(300);
/// How many verified pairs are remembered.
const REMEMBERED: u64 = 10_000;

/// The configured users and tokens.
pub struct Credentials {
    /// User name → bcrypt hash.
    users: HashMap<String, String>,
    /// SHA-256 of each token, with its name.
    tokens: Vec<([u8; 32], Arc<str>)>,
    /// SHA-256 of `user:password` pairs that passed → the user.
    verified: moka::future::Cache<[u8; 32], Arc<str>>,
    /// bcrypt checks running at once.
    checks: tokio::sync::Semaphore,
}

impl Credentials {
    /// Reads the htpasswd and token files `config` names.
    pub fn load(config: &AuthConfig) -> Result<Credentials, AuthError> {
        let mut users = HashMap::new();
        if let Some(path) = &config.htpasswd {
            for (line, user, hash) in entries(path)? {
                if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                    return Err(AuthError::file(
                        path,
                        line,
                        "only bcrypt hashes (htpasswd -B)",
                    ));
                }
                users.insert(user, hash);
            }
        }
        let mut tokens: Vec<_> = config
            .tokens
            .iter()
            .map(|(name, token)| (sha256(token.expose().as_bytes()), Arc::from(name.as_str())))
            .collect();
        if let Some(path) = &config.tokens_file {
            for (_, name, token) in entries(path)? {
                tokens.push((sha256(token.as_bytes()), Arc::from(name)));
            }
        }
        Ok(Credentials {
            users,
            tokens,
            verified: moka::future::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(REMEMBER)
                .build(),
            checks: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        })
    }

    /// The client the header names, or `None` when it is missing, of
    /// another scheme, or wrong.
    pub async fn identify(&self, header: Option<&HeaderValue>) -> Option<Arc<str>> {
        let text = header?.to_str().ok()?;
        let (scheme, value) = text.split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.token(value.as_bytes());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(value).ok()?;
        let pair = String::from_utf8(decoded).ok()?;
        let (user, password) = pair.split_once(':')?;
        self.basic(user, password).await
    }

    fn token(&self, presented: &[u8]) -> Option<Arc<str>> {
        let presented = sha256(presented);
        let mut found = None;
        for (hash, name) in &self.tokens {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// An htpasswd user and password, or a token's name and the token.
    async fn basic(&self, user: &str, password: &str) -> Option<Arc<str>> {
        if let Some(name) = self.token(password.as_bytes())
            && &*name == user
        {
            return Some(name);
        }
        let hash = self.users.get(user)?.clone();
        let key = sha256(format!("{user}:{password}").as_bytes());
        if let Some(name) = self.verified.get(&key).await {
            return Some(name);
        }
        let _turn = self.checks.acquire().await.ok()?;
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()?
            .ok()?;
        if !ok {
            return None;
        }
        let name: Arc<str> = Arc::from(user);
        self.verified.insert(key, name.clone()).await;
        Some(name)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The `name:value` lines of a file, skipping blank lines and `#` comments,
/// with their line numbers.
fn entries(path: &Path) -> Result<Vec<(usize, String, String)>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                out.push((i + 1, name.to_owned(), value.to_owned()));
            }
            _ => return Err(AuthError::file(path, i + 1, "expected name:value")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded = STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn credentials() -> (Credentials, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash("hunter2", 4).unwrap();
        std::fs::write(&htpasswd, format!("# users\nalice:{hash}\n")).unwrap();
        let mut config = AuthConfig {
            htpasswd: Some(htpasswd),
            ..AuthConfig::default()
        };
        config.tokens.insert("ci".into(), Secret::new("tok-123"));
        (Credentials::load(&config).unwrap(), dir)
    }

    #[tokio::test]
    async fn basic_users_and_tokens_are_identified_and_wrong_ones_are_not() {
        let (c, _dir) = credentials();
        let named = |v: Option<Arc<str>>| v.map(|n| n.to_string());
        let bearer = HeaderValue::from_static("Bearer tok-123");
        assert_eq!(
            named(c.identify(Some(&basic("alice", "hunter2"))).await).as_deref(),
            Some("alice")
        );
        assert_eq!(
            named(c.identify(Some(&basic("alice", "hunter2"))).await).as_deref(),
            Some("alice"),
            "remembered"
        );
        assert_eq!(
            named(c.identify(Some(&bearer)).await).as_deref(),
            Some("ci")
        );
        assert_eq!(
            named(c.identify(Some(&basic("ci", "tok-123"))).await).as_deref(),
            Some("ci")
        );
        for wrong in [
            basic("alice", "hunter3"),
            basic("bob", "hunter2"),
            basic("alice", "tok-123"),
            HeaderValue::from_static("Bearer tok-12"),
            HeaderValue::from_static("Basic !!!"),
            HeaderValue::from_static("Digest x"),
        ] {
            assert_eq!(c.identify(Some(&wrong)).await, None, "{wrong:?}");
        }
        assert_eq!(c.identify(None).await, None);
    }

    #[test]
    fn non_bcrypt_hashes_and_malformed_lines_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, "alice:$apr1$abc$def\n").unwrap();
        let config = AuthConfig {
            htpasswd: Some(htpasswd.clone()),
            ..AuthConfig::default()
        };
        let err = Credentials::load(&config).err().unwrap().to_string();
        assert!(err.contains("line 1") && err.contains("bcrypt"), "{err}");
        std::fs::write(&htpasswd, "\nalice\n").unwrap();
        let err = Credentials::load(&config).err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
