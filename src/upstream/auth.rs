//! Registry authentication: the Bearer token flow and Basic credentials.
//!
//! A 401 carries a `WWW-Authenticate` challenge naming a token realm. The
//! token for a scope is fetched once and reused by every request on that
//! scope until `expires_in` runs out; concurrent requests for a missing token
//! share one fetch. The realm is remembered, so later scopes get their token
//! before the first request instead of after a 401.
//!
//! An upstream may redirect to other hosts (registry.k8s.io sends every
//! manifest request to another registry with its own realm). Everything is
//! therefore kept per origin: the scheme an origin asked for, and tokens
//! keyed by origin, realm, service and scope, so a token one host issued is
//! never sent to another. The configured credentials belong to the
//! upstream's own origin: other origins only get anonymous tokens, and a
//! realm gets them only where the egress policy (`egress`) trusts it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;
use moka::Expiry;
use moka::future::Cache;
use reqwest::Url;
use serde::Deserialize;

use super::egress::Egress;
use super::error::{ErrorKind, UpstreamError};
use crate::config::Secret;

/// Spec default when a token reply has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."` or `Basic ...`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `key="value", key=value` pairs; quoted values may hold commas.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_owned(),
                quoted.get(end + 1..).unwrap_or(""),
            )
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',');
    }
    params
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
struct Token {
    header: HeaderValue,
    lifetime: Duration,
}

struct TokenLifetime;

impl Expiry<String, Token> for TokenLifetime {
    fn expire_after_create(&self, _: &String, token: &Token, _: Instant) -> Option<Duration> {
        Some(token.lifetime)
    }
}

#[derive(Deserialize)]
struct TokenReply {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// What a 401 taught us about how this upstream authenticates.
#[derive(Clone, Debug)]
enum Scheme {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// Authentication state of one upstream; shared by all its requests.
pub struct Authenticator {
    upstream: String,
    /// Where tokens may be fetched from and which realms get the credentials.
    egress: Arc<Egress>,
    credentials: Option<(String, Secret)>,
    /// What each origin asked for, by its ASCII serialization.
    schemes: RwLock<HashMap<String, Scheme>>,
    tokens: Cache<String, Token>,
}

impl Authenticator {
    /// Anonymous when `credentials` is `None`; `egress` knows the
    /// upstream's own origin, the only one the credentials go to.
    pub fn new(upstream: &str, egress: Arc<Egress>, credentials: Option<(String, Secret)>) -> Self {
        Authenticator {
            upstream: upstream.to_owned(),
            egress,
            credentials,
            schemes: RwLock::new(HashMap::new()),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenLifetime)
                .build(),
        }
    }

    /// Remembers how `origin` asked to be authenticated.
    pub fn learn(&self, origin: &str, challenge: &Challenge) {
        let scheme = match challenge {
            Challenge::Bearer { realm, service, .. } => Scheme::Bearer {
                realm: realm.clone(),
                service: service.clone(),
            },
            Challenge::Basic => Scheme::Basic,
        };
        self.schemes
            .write()
            .expect("auth lock")
            .insert(origin.to_owned(), scheme);
    }

    /// The `Authorization` header for a request to `origin` on `scope`,
    /// fetching a token when needed; `None` before `origin` challenged.
    pub async fn authorization(
        &self,
        origin: &str,
        scope: &str,
        timeout: Duration,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        let scheme = self.scheme_of(origin);
        match scheme {
            None => Ok(None),
            Some(Scheme::Basic) => Ok(self.basic_header(origin)),
            Some(Scheme::Bearer { realm, service }) => {
                let key = token_key(origin, &realm, service.as_deref(), scope);
                let fetch = self.fetch_token(origin, &realm, service.as_deref(), scope, timeout);
                let token = self
                    .tokens
                    .try_get_with(key, fetch)
                    .await
                    .map_err(|e: Arc<UpstreamError>| (*e).clone())?;
                Ok(Some(token.header))
            }
        }
    }

    /// Forgets `origin`'s token for `scope` after it was refused, so the next
    /// request fetches a new one.
    pub async fn forget(&self, origin: &str, scope: &str) {
        if let Some(Scheme::Bearer { realm, service }) = self.scheme_of(origin) {
            self.tokens
                .invalidate(&token_key(origin, &realm, service.as_deref(), scope))
                .await;
        }
    }

    fn scheme_of(&self, origin: &str) -> Option<Scheme> {
        self.schemes.read().expect("auth lock").get(origin).cloned()
    }

    /// The configured credentials, for the upstream's own origin only.
    fn credentials_for(&self, origin: &str) -> Option<&(String, Secret)> {
        let home = Url::parse(origin).is_ok_and(|url| self.egress.is_home(&url));
        self.credentials.as_ref().filter(|_| home)
    }

    fn basic_header(&self, origin: &str) -> Option<HeaderValue> {
        let (user, password) = self.credentials_for(origin)?;
        let encoded = BASE64.encode(format!("{user}:{}", password.expose()));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    async fn fetch_token(
        &self,
        origin: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        timeout: Duration,
    ) -> Result<Token, UpstreamError> {
        let fail = |kind, detail: String| UpstreamError::new(&self.upstream, kind, detail);
        let mut query: Vec<(&str, &str)> = Vec::new();
        if !scope.is_empty() {
            query.push(("scope", scope));
        }
        if let Some(service) = service {
            query.push(("service", service));
        }
        let realm = Url::parse(realm)
            .map_err(|e| fail(ErrorKind::Invalid, format!("token realm {realm:?}: {e}")))?;
        self.egress.check_realm(&realm).await?;
        let client = self.egress.client(&realm);
        let mut request = client.get(realm.clone()).query(&query).timeout(timeout);
        if let Some((user, password)) = self.credentials_for(origin)
            && self.egress.may_send_credentials(&realm)
        {
            request = request.basic_auth(user, Some(password.expose()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| UpstreamError::from_reqwest(&self.upstream, &e))?;
        let status = response.status();
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            return Err(fail(
                ErrorKind::Denied,
                format!("token realm refused the credentials ({status})"),
            ));
        }
        if !status.is_success() {
            return Err(fail(
                ErrorKind::Status(status.as_u16()),
                format!("token realm answered {status}"),
            ));
        }
        let reply: TokenReply = response
            .json()
            .await
            .map_err(|e| fail(ErrorKind::Invalid, format!("token reply: {e}")))?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| fail(ErrorKind::Invalid, "token reply has no token".into()))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            fail(
                ErrorKind::Invalid,
                "token is not a valid header value".into(),
            )
        })?;
        header.set_sensitive(true);
        let lifetime = reply
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // Stop using a token a little before upstream does.
        let margin = (lifetime / 10).min(Duration::from_secs(10));
        Ok(Token {
            header,
            lifetime: lifetime - margin,
        })
    }
}

fn token_key(origin: &str, realm: &str, service: Option<&str>, scope: &str) -> String {
    format!("{origin}|{realm}|{}|{scope}", service.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }
        );
    }

    #[test]
    fn parses_quoted_commas_and_basic() {
        let c = Challenge::parse(r#"Bearer realm="r", scope="repository:a:pull,push""#).unwrap();
        let Challenge::Bearer { scope, service, .. } = c else {
            panic!()
        };
        assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
        assert_eq!(service, None);
        assert_eq!(
            Challenge::parse(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    #[tokio::test]
    async fn what_one_origin_asked_for_is_never_sent_to_another() {
        let home = "https://registry.example";
        let other = "https://bucket.example";
        let credentials = Some(("user".to_owned(), Secret::new("pw".to_owned())));
        let cfg = crate::config::UpstreamConfig::new(home);
        let egress = Egress::new(
            "example",
            &Url::parse(home).unwrap(),
            &cfg,
            reqwest::Client::new(),
            reqwest::Client::builder,
            crate::metrics::Metrics::new(),
        )
        .unwrap();
        let auth = Authenticator::new("example", Arc::new(egress), credentials);
        let timeout = Duration::from_secs(1);
        auth.learn(home, &Challenge::Basic);
        let at_home = auth.authorization(home, "", timeout).await;
        assert!(matches!(at_home, Ok(Some(_))));
        assert_eq!(auth.authorization(other, "", timeout).await, Ok(None));
        // Basic asked for by another origin still gets no credentials.
        auth.learn(other, &Challenge::Basic);
        assert_eq!(auth.authorization(other, "", timeout).await, Ok(None));
    }

    #[test]
    fn token_keys_name_the_origin_and_the_realm() {
        let a = token_key("https://a", "https://auth/token", None, "repository:x:pull");
        let b = token_key("https://b", "https://auth/token", None, "repository:x:pull");
        let c = token_key(
            "https://a",
            "https://other/token",
            None,
            "repository:x:pull",
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
