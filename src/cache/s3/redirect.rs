//! Redirects to the bucket: a warm blob's bytes go from S3 straight to the
//! node that asked, through a presigned GET URL, instead of through the
//! replica (`s3.redirect`).
//!
//! Only a blob the bucket is known to hold is redirected: a HEAD says so
//! (remembered briefly, so a rollout's thousands of requests cost a few
//! HEADs), or this replica's own finished upload did. A blob whose upload
//! is still running is not in the bucket yet (S3 shows a multipart upload
//! only once complete), so it is streamed. A URL never outlives the
//! credentials that sign it: they are resolved here, not by the SDK's
//! cache, so their expiry is known, and a URL that would have less than
//! [`MIN_LIFE`] left is not handed out at all (the blob is streamed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::presigning::PresigningConfig;
use moka::Expiry;
use moka::future::Cache;

use super::S3Tier;
use crate::cache::ObjectKey;
use crate::clock::now_ms;
use crate::config::S3Config;

/// The shortest life a URL handed out may have: time for a client to
/// follow it, even a slow one.
pub const MIN_LIFE: Duration = Duration::from_secs(60);
/// Credentials are used for URLs until this long before they expire.
const MARGIN: Duration = Duration::from_secs(60);
/// Credentials about to expire are asked for again at most this often
/// (the provider may keep handing out the same ones until it rotates).
const REFRESH_EVERY_MS: u64 = 30_000;
/// How long a HEAD's answer is trusted: an object found stays briefly (a
/// lifecycle rule may expire it, and a bucket that stopped answering is
/// only noticed by asking it), one not found only a moment (its upload
/// may be finishing).
const PRESENT_FOR: Duration = Duration::from_secs(15);
const ABSENT_FOR: Duration = Duration::from_secs(5);
/// Bound on remembered HEAD answers.
const KNOWN_CAPACITY: u64 = 100_000;

/// A redirect for one blob GET.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// The presigned GET URL of the object.
    pub url: String,
    /// The blob's size, as the bucket holds it.
    pub size: u64,
}

/// Redirect settings and state of the shared tier; present only with
/// `s3.redirect` on.
pub struct Redirects {
    signer: Signer,
    min_size: u64,
    /// What the bucket holds, by blob: its size, or `None` for absent.
    known: Cache<ObjectKey, Option<u64>>,
    /// URLs signed for blobs, while they may be handed out.
    signed: Cache<ObjectKey, Signed>,
}

/// How long a HEAD's answer is kept: longer when present.
struct KnownFor;

impl KnownFor {
    fn life(held: &Option<u64>) -> Option<Duration> {
        Some(if held.is_some() {
            PRESENT_FOR
        } else {
            ABSENT_FOR
        })
    }
}

impl Expiry<ObjectKey, Option<u64>> for KnownFor {
    fn expire_after_create(
        &self,
        _: &ObjectKey,
        held: &Option<u64>,
        _: Instant,
    ) -> Option<Duration> {
        KnownFor::life(held)
    }

    /// A finished upload replacing an absent answer is kept as present
    /// (moka's default would keep the absent answer's few seconds left).
    fn expire_after_update(
        &self,
        _: &ObjectKey,
        held: &Option<u64>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        KnownFor::life(held)
    }
}

impl Redirects {
    /// Sets redirects up as `config` says; `None` when they are off.
    /// `shared` is the tier's own AWS configuration (region, credentials
    /// chain, timeouts).
    pub async fn new(config: &S3Config, shared: &aws_config::SdkConfig) -> Option<Redirects> {
        if !config.redirect {
            return None;
        }
        let mut base = aws_sdk_s3::config::Builder::from(shared);
        if let Some(endpoint) = config.public_endpoint.as_ref().or(config.endpoint.as_ref()) {
            base = base.endpoint_url(endpoint).force_path_style(true);
        }
        let signer = Signer {
            base,
            provider: shared.credentials_provider(),
            bucket: config.bucket.clone(),
            expiry: config.redirect_expiry,
            current: ArcSwapOption::empty(),
            refreshing: tokio::sync::Mutex::new(()),
            refreshed_at_ms: AtomicU64::new(0),
        };
        if signer.provider.is_none() {
            tracing::warn!(
                "s3.redirect is on but no AWS credentials are configured to sign URLs with: blobs are streamed"
            );
        }
        signer.refresh().await;
        Some(Redirects {
            signer,
            min_size: config.redirect_min_size.0,
            known: Cache::builder()
                .max_capacity(KNOWN_CAPACITY)
                .expire_after(KnownFor)
                .build(),
            signed: Cache::builder()
                .max_capacity(KNOWN_CAPACITY)
                .expire_after(ReuseFor)
                .build(),
        })
    }

    /// Whether a blob of `size` bytes is worth redirecting.
    pub fn worth(&self, size: u64) -> bool {
        size >= self.min_size
    }

    /// What the bucket holds of `key` (its size), asking `head` only when
    /// not known; concurrent askers share one HEAD.
    pub async fn held(
        &self,
        key: &ObjectKey,
        head: impl Future<Output = Option<u64>>,
    ) -> Option<u64> {
        self.known.get_with_by_ref(key, head).await
    }

    /// What the bucket is known to hold of `key` right now, without asking.
    async fn known(&self, key: &ObjectKey) -> Option<u64> {
        self.known.get(key).await.flatten()
    }

    /// Records that the bucket now holds `key` (an upload finished).
    pub async fn stored(&self, key: &ObjectKey, size: u64) {
        self.known.insert(key.clone(), Some(size)).await;
    }

    /// Forgets what was known of `key` (it was found damaged and deleted).
    pub async fn forget(&self, key: &ObjectKey) {
        self.known.invalidate(key).await;
        self.signed.invalidate(key).await;
    }

    /// A fresh presigned GET URL for `object_key`, or `None` when none with
    /// [`MIN_LIFE`] left can be made now.
    pub async fn sign(&self, object_key: &str) -> Option<String> {
        self.signer.sign(object_key).await.map(|(url, _)| url)
    }

    /// A presigned GET URL for blob `key` (at `object_key`): one signed
    /// before while it has [`MIN_LIFE`] left, so a rollout's thousands of
    /// GETs of one layer cost one signature; else a fresh one.
    pub async fn url_for(&self, key: &ObjectKey, object_key: &str) -> Option<String> {
        let signed = self
            .signed
            .optionally_get_with_by_ref(key, async {
                let (url, life) = self.signer.sign(object_key).await?;
                Some(Signed {
                    url,
                    reuse_for: life.saturating_sub(MIN_LIFE),
                })
            })
            .await?;
        Some(signed.url)
    }
}

/// A URL signed for a blob, handed out again while it has time left.
#[derive(Clone)]
struct Signed {
    url: String,
    /// Its life less [`MIN_LIFE`].
    reuse_for: Duration,
}

/// Keeps a signed URL as long as it may be handed out.
struct ReuseFor;

impl Expiry<ObjectKey, Signed> for ReuseFor {
    fn expire_after_create(&self, _: &ObjectKey, signed: &Signed, _: Instant) -> Option<Duration> {
        Some(signed.reuse_for)
    }
}

impl S3Tier {
    /// A redirect for a GET of blob `key` (`size` bytes, when this replica
    /// knows): when redirects are on, the tier is healthy, the blob is worth
    /// it, and the bucket holds it whole; else `None`, and it is streamed.
    pub async fn redirect(&self, key: &ObjectKey, size: Option<u64>) -> Option<Redirect> {
        let redirects = self.redirects.as_ref()?;
        if size.is_some_and(|s| !redirects.worth(s)) {
            return None;
        }
        // A degraded bucket is not redirected to. Past its backoff, this
        // request's own HEAD is the probe that may end the degraded state.
        if self.is_degraded()
            && (!self.available() || self.size_of(key).await.is_none() || self.is_degraded())
        {
            return None;
        }
        let held = redirects.held(key, self.size_of(key)).await?;
        // A bucket object of another size than the blob is not the blob.
        if !redirects.worth(held) || size.is_some_and(|s| s != held) {
            return None;
        }
        let url = redirects.url_for(key, &self.object_key(key)).await?;
        Some(Redirect { url, size: held })
    }

    /// A redirect for a GET of blob `key` when the bucket is already known
    /// to hold it (a HEAD or an upload said so moments ago): answered
    /// before any local tier is looked at, so a rollout's redirects cost no
    /// disk lookup. `None` when not known; [`S3Tier::redirect`] then asks.
    pub async fn known_redirect(&self, key: &ObjectKey) -> Option<Redirect> {
        let redirects = self.redirects.as_ref()?;
        if self.is_degraded() {
            return None;
        }
        let held = redirects.known(key).await?;
        if !redirects.worth(held) {
            return None;
        }
        let url = redirects.url_for(key, &self.object_key(key)).await?;
        Some(Redirect { url, size: held })
    }

    /// Whether blob GETs may be redirected to the bucket (`s3.redirect`).
    pub fn redirects(&self) -> bool {
        self.redirects.is_some()
    }
}

/// Signs URLs with a snapshot of the credentials whose expiry it knows.
struct Signer {
    /// The presigning client's configuration, but for the credentials.
    base: aws_sdk_s3::config::Builder,
    provider: Option<SharedCredentialsProvider>,
    bucket: String,
    expiry: Duration,
    current: ArcSwapOption<Snapshot>,
    refreshing: tokio::sync::Mutex<()>,
    refreshed_at_ms: AtomicU64,
}

/// One set of credentials and a client that signs with them alone.
struct Snapshot {
    client: Client,
    expires: Option<SystemTime>,
}

impl Snapshot {
    /// How long a URL signed now may live: the configured expiry, cut to
    /// what the credentials have left.
    fn life(&self, expiry: Duration, now: SystemTime) -> Duration {
        match self.expires {
            None => expiry,
            Some(at) => at
                .duration_since(now)
                .unwrap_or_default()
                .saturating_sub(MARGIN)
                .min(expiry),
        }
    }
}

impl Signer {
    /// A fresh URL and how long it is valid.
    async fn sign(&self, object_key: &str) -> Option<(String, Duration)> {
        let mut snapshot = self.current.load_full();
        let short = |s: &Option<Arc<Snapshot>>| {
            s.as_ref()
                .is_none_or(|s| s.life(self.expiry, SystemTime::now()) < self.expiry)
        };
        if short(&snapshot)
            && now_ms().saturating_sub(self.refreshed_at_ms.load(Ordering::Relaxed))
                >= REFRESH_EVERY_MS
        {
            self.refresh().await;
            snapshot = self.current.load_full();
        }
        let snapshot = snapshot?;
        let life = snapshot.life(self.expiry, SystemTime::now());
        if life < MIN_LIFE {
            return None;
        }
        let config = PresigningConfig::expires_in(life).ok()?;
        let signed = snapshot
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object_key)
            .presigned(config)
            .await;
        match signed {
            Ok(request) => Some((request.uri().to_owned(), life)),
            Err(e) => {
                tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "could not presign a blob URL; streaming it");
                None
            }
        }
    }

    /// Asks the credentials chain for credentials and signs with them from
    /// now on; one caller at a time, the others keep the current ones.
    async fn refresh(&self) {
        let Some(provider) = &self.provider else {
            return;
        };
        let Ok(_only) = self.refreshing.try_lock() else {
            return;
        };
        self.refreshed_at_ms.store(now_ms(), Ordering::Relaxed);
        match provider.provide_credentials().await {
            Ok(credentials) => self
                .current
                .store(Some(Arc::new(self.snapshot(credentials)))),
            Err(e) => {
                tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "could not get credentials to presign blob URLs with")
            }
        }
    }

    fn snapshot(&self, credentials: Credentials) -> Snapshot {
        let expires = credentials.expiry();
        let config = self
            .base
            .clone()
            .credentials_provider(SharedCredentialsProvider::new(credentials))
            .build();
        Snapshot {
            client: Client::from_conf(config),
            expires,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(expires: Option<SystemTime>) -> Snapshot {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        Snapshot {
            client: Client::from_conf(config),
            expires,
        }
    }

    #[test]
    fn an_upload_that_finishes_after_an_absent_answer_is_kept_as_present() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let key = ObjectKey::blob(digest.parse().unwrap());
        let (now, left) = (Instant::now(), Some(Duration::from_secs(2)));
        let present = KnownFor.expire_after_update(&key, &Some(7), now, left);
        assert_eq!(present, Some(PRESENT_FOR));
        let absent = KnownFor.expire_after_update(&key, &None, now, left);
        assert_eq!(absent, Some(ABSENT_FOR));
    }

    #[test]
    fn a_url_never_outlives_its_credentials() {
        let now = SystemTime::now();
        let expiry = Duration::from_secs(900);
        assert_eq!(snapshot(None).life(expiry, now), expiry);
        let hours = snapshot(Some(now + Duration::from_secs(6 * 3600)));
        assert_eq!(hours.life(expiry, now), expiry);
        // Ten minutes left: the URL gets nine (a minute's margin).
        let ten = snapshot(Some(now + Duration::from_secs(600)));
        assert_eq!(ten.life(expiry, now), Duration::from_secs(540));
        // Expired, or about to: no life at all, so no URL.
        let gone = snapshot(Some(now - Duration::from_secs(1)));
        assert!(gone.life(expiry, now) < MIN_LIFE);
        let ending = snapshot(Some(now + Duration::from_secs(90)));
        assert!(ending.life(expiry, now) < MIN_LIFE);
    }
}
