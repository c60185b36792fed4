//! The shared tier: one S3 bucket (or any S3 API) that every replica reads
//! and fills, so N replicas behind a load balancer act as one cache.
//!
//! Layout under the configured prefix: `blobs/sha256/ab/<hex>`,
//! `manifests/sha256/ab/<hex>` (media type as the object's Content-Type),
//! and `tags/by-tag/<hash>.json` for tag entries (one per tag).
//!
//! Writes are conditional (`If-None-Match: *`), so replicas never clobber a
//! finished object; an overwrite by a store that ignores the condition is
//! harmless, since only verified bytes are ever written. A failed multipart
//! upload is aborted, so nothing partial is left behind. Blobs are read
//! back in parallel ranged GETs ([`get`]).
//!
//! Degraded, not down: every operation is bounded by a timeout, and after a
//! failure the tier is skipped for a few seconds (reads miss, writes are
//! queued) rather than slowing every request. The first call that succeeds
//! again ends the degraded state, and queued writes are caught up.

mod check;
pub use check::ProbeFailure;
mod get;
mod parts;
mod redirect;
pub use redirect::Redirect;

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};

use super::read::read_whole;
use super::{
    CacheError, Content, Object, ObjectKey, ObjectKind, ObjectMeta, Payload, Tier, Verified,
};
use crate::clock::now_ms;
use crate::config::S3Config;
use crate::metrics::Metrics;

/// Objects larger than this go up in parts of this size.
const PART: u64 = 8 * 1024 * 1024;
/// How long the tier is skipped after a failure.
const BACKOFF_MS: u64 = 5_000;
/// Writes remembered for catching up after an outage.
const MAX_PENDING: usize = 10_000;

/// The S3 tier; share it behind an `Arc`.
pub struct S3Tier {
    client: Client,
    bucket: String,
    prefix: String,
    health: Arc<Health>,
    /// Longest wait for the next bytes of an object being streamed.
    read_timeout: Duration,
    /// Blobs are read in ranged GETs of this many bytes ...
    read_part_size: u64,
    /// ... this many at a time.
    read_concurrency: usize,
    /// Counts those ranged GETs.
    part_reads: IntCounter,
    /// Counts objects that failed verification and were deleted.
    corrupt: IntCounter,
    /// Objects whose upload failed or was skipped while degraded.
    pending: Mutex<HashSet<ObjectKey>>,
    /// Redirects of blob GETs to the bucket, when on.
    redirects: Option<redirect::Redirects>,
}

/// A small object read whole.
pub struct SmallObject {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    /// Its version, to delete it only as it was read.
    pub etag: Option<String>,
}

/// Whether S3 is answering; shared with the streams reading from it.
struct Health {
    bucket: String,
    degraded: AtomicBool,
    retry_at_ms: AtomicU64,
    gauge: IntGauge,
}

impl Health {
    /// Whether to try S3 now: healthy, or degraded long enough to try again.
    fn available(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
            || now_ms() >= self.retry_at_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, what: &str) {
        self.retry_at_ms
            .store(now_ms() + BACKOFF_MS, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::warn!(bucket = %self.bucket, what, "S3 tier degraded: serving from local tiers and upstream");
        }
    }

    fn succeeded(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            tracing::info!(bucket = %self.bucket, "S3 tier recovered");
        }
    }
}

/// Why the tier could not start.
#[derive(Debug, thiserror::Error)]
#[error("S3 bucket {bucket:?}: {message}")]
pub struct S3StartError {
    pub bucket: String,
    pub message: String,
}

fn s3_error(message: impl Into<String>) -> CacheError {
    CacheError::Other {
        tier: "s3",
        message: message.into(),
    }
}

/// The HTTP status of a failed call, when it got that far.
fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

impl S3Tier {
    /// Connects with credentials from the standard AWS chain and checks the
    /// bucket. Refused credentials or a missing bucket fail start-up; an
    /// unreachable S3 starts the tier degraded.
    pub async fn connect(config: &S3Config, metrics: &Metrics) -> Result<S3Tier, S3StartError> {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(2)))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        let tier = S3Tier {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            health: Arc::new(Health {
                bucket: config.bucket.clone(),
                degraded: AtomicBool::new(false),
                retry_at_ms: AtomicU64::new(0),
                gauge: metrics.s3_degraded.clone(),
            }),
            read_timeout: config.timeout,
            read_part_size: config.read_part_size.0,
            read_concurrency: config.read_concurrency,
            part_reads: metrics.s3_part_reads.clone(),
            corrupt: metrics.cache.corrupt.with_label_values(&["s3"]),
            pending: Mutex::new(HashSet::new()),
            redirects: redirect::Redirects::new(config, &shared).await,
        };
        match tier.client.head_bucket().bucket(&tier.bucket).send().await {
            Ok(_) => Ok(tier),
            Err(e) if status(&e).is_some_and(|s| (400..500).contains(&s)) => Err(S3StartError {
                bucket: tier.bucket.clone(),
                message: format!(
                    "refused ({}): check the AWS credentials, the region, and that the bucket exists; {}",
                    status(&e).unwrap_or(0),
                    DisplayErrorContext(&e)
                ),
            }),
            Err(e) => {
                tracing::warn!(bucket = %tier.bucket, error = %DisplayErrorContext(&e), "S3 unreachable at start; starting degraded");
                tier.failed("start-up check");
                Ok(tier)
            }
        }
    }

    /// Whether the tier is currently failing.
    pub fn is_degraded(&self) -> bool {
        self.health.degraded.load(Ordering::Relaxed)
    }

    fn available(&self) -> bool {
        self.health.available()
    }

    fn failed(&self, what: &str) {
        self.health.failed(what);
    }

    fn succeeded(&self) {
        self.health.succeeded();
    }

    /// Records how a call went: `Some` on success, `None` for an absent
    /// object (404) and for a failure, which is logged and degrades the tier.
    fn settle<T, E>(&self, result: Result<T, SdkError<E>>, what: &str, key: &str) -> Option<T>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match result {
            Ok(out) => {
                self.succeeded();
                Some(out)
            }
            Err(e) if status(&e) == Some(404) => {
                self.succeeded();
                None
            }
            Err(e) => {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "S3 {what} failed");
                self.failed(what);
                None
            }
        }
    }

    /// A blob's size, when the bucket has it (a HEAD costs no download).
    pub async fn size_of(&self, key: &ObjectKey) -> Option<u64> {
        if !self.available() {
            return None;
        }
        let object_key = self.object_key(key);
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await;
        let out = self.settle(head, "head", &object_key)?;
        out.content_length().and_then(|l| u64::try_from(l).ok())
    }

    /// The object key of a cached object.
    fn object_key(&self, key: &ObjectKey) -> String {
        let path = super::object_path(key);
        let parts: Vec<_> = path.iter().map(|p| p.to_string_lossy()).collect();
        format!("{}{}", self.prefix, parts.join("/"))
    }

    /// The object key of a tag record named `name`.
    pub fn tag_key(&self, name: &str) -> String {
        format!("{}tags/{name}", self.prefix)
    }

    /// The object key of shared state named `name`, such as what replicas
    /// know of an upstream's pull budget.
    pub fn state_key(&self, name: &str) -> String {
        format!("{}state/{name}", self.prefix)
    }

    /// Reads a small object whole: `None` when absent, when S3 is down, or
    /// when the object fails the store's checksum (it is then deleted).
    pub async fn get_small(&self, key: &str) -> Option<SmallObject> {
        if !self.available() {
            return None;
        }
        let get = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let out = self.settle(get, "read", key)?;
        let content_type = out.content_type().map(str::to_owned);
        let etag = out.e_tag().map(str::to_owned);
        match out.body.collect().await {
            Ok(body) => Some(SmallObject {
                bytes: body.into_bytes(),
                content_type,
                etag,
            }),
            Err(e) if get::fails_checksum(&e) => {
                self.delete_damaged(key, etag.as_deref()).await;
                None
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "S3 read broke off");
                self.failed("read");
                None
            }
        }
    }

    /// Writes a small object; with `only_if_absent`, a key that exists is
    /// left alone.
    pub async fn put_small(
        &self,
        key: &str,
        bytes: Bytes,
        content_type: Option<&str>,
        only_if_absent: bool,
    ) -> bool {
        if !self.available() {
            return false;
        }
        let mut put = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(S3Body::from(bytes));
        if let Some(ct) = content_type {
            put = put.content_type(ct);
        }
        if only_if_absent {
            put = put.if_none_match("*");
        }
        match put.send().await {
            Ok(_) => {
                self.succeeded();
                true
            }
            Err(e) if status(&e) == Some(412) => {
                self.succeeded();
                true
            }
            Err(e) => {
                tracing::warn!(key, error = %DisplayErrorContext(&e), "S3 write failed");
                self.failed("write");
                false
            }
        }
    }

    /// Uploads a file in parts, conditionally; aborts on any failure.
    async fn put_multipart(
        &self,
        key: &str,
        file: Arc<std::fs::File>,
        size: u64,
    ) -> Result<(), String> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(&e).to_string())?;
        let upload_id = created.upload_id().ok_or("no upload id")?.to_owned();
        let result = self.upload_parts(key, &upload_id, file, size).await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        file: Arc<std::fs::File>,
        size: u64,
    ) -> Result<(), String> {
        let mut parts = Vec::new();
        let mut offset = 0;
        while offset < size {
            let len = PART.min(size - offset);
            let part = read_part(file.clone(), offset, len)
                .await
                .map_err(|e| e.to_string())?;
            let number = i32::try_from(parts.len() + 1).map_err(|e| e.to_string())?;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(S3Body::from(part))
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(uploaded.e_tag().map(str::to_owned))
                    .build(),
            );
            offset += len;
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        match self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .if_none_match("*")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(412) || e.code() == Some("PreconditionFailed") => Ok(()),
            Err(e) => Err(DisplayErrorContext(&e).to_string()),
        }
    }

    /// Notes a finished upload, so a blob can be redirected to at once.
    async fn now_holds(&self, key: &ObjectKey, size: u64) {
        if let Some(redirects) = &self.redirects
            && key.kind == ObjectKind::Blob
        {
            redirects.stored(key, size).await;
        }
    }

    /// Objects that still have to be uploaded after an outage.
    pub fn take_pending(&self) -> Vec<ObjectKey> {
        if !self.available() {
            return Vec::new();
        }
        self.pending.lock().expect("pending lock").drain().collect()
    }

    fn remember(&self, key: &ObjectKey) {
        let mut pending = self.pending.lock().expect("pending lock");
        if pending.len() < MAX_PENDING {
            pending.insert(key.clone());
        }
    }
}

async fn read_part(file: Arc<std::fs::File>, offset: u64, len: u64) -> io::Result<Bytes> {
    super::blocking::run(move || {
        let mut buf = vec![0; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset)?;
        Ok(Bytes::from(buf))
    })
    .await?
}

#[async_trait::async_trait]
impl Tier for S3Tier {
    fn name(&self) -> &'static str {
        "s3"
    }

    /// Manifests only, read whole and verified (a shared bucket is trusted
    /// no more than upstream); blobs are streamed through [`S3Tier::open`].
    async fn lookup(&self, key: &ObjectKey) -> Result<Option<Object>, CacheError> {
        if key.kind != ObjectKind::Manifest {
            return Ok(None);
        }
        let Some(small) = self.get_small(&self.object_key(key)).await else {
            return Ok(None);
        };
        let bytes = small.bytes;
        if crate::digest::verify(&key.digest, &bytes).is_err() {
            self.discard_damaged(key, small.etag.as_deref()).await;
            return Ok(None);
        }
        let meta = ObjectMeta {
            size: bytes.len() as u64,
            media_type: small.content_type,
        };
        Ok(Some(Object {
            meta,
            content: Content::Memory(bytes),
        }))
    }

    async fn store(&self, object: &Verified) -> Result<(), CacheError> {
        let key = object.key();
        if !self.available() {
            self.remember(key);
            return Ok(());
        }
        let object_key = self.object_key(key);
        let size = object.meta().size;
        let file = match object.payload() {
            Payload::Bytes(bytes) => {
                let ct = object.meta().media_type.as_deref();
                if self.put_small(&object_key, bytes.clone(), ct, true).await {
                    self.now_holds(key, size).await;
                    return Ok(());
                }
                self.remember(key);
                return Err(s3_error(format!("upload of {object_key} failed")));
            }
            Payload::File(temp) => temp.file().clone(),
            Payload::Cached(file) => file.clone(),
        };
        let result = if size <= PART {
            match read_whole(file.clone(), size).await {
                Ok(bytes) => match self.put_small(&object_key, bytes, None, true).await {
                    true => Ok(()),
                    false => Err("write failed".into()),
                },
                Err(e) => Err(e.to_string()),
            }
        } else {
            self.put_multipart(&object_key, file, size).await
        };
        match result {
            Ok(()) => {
                self.succeeded();
                self.now_holds(key, size).await;
                Ok(())
            }
            Err(message) => {
                self.failed("upload");
                self.remember(key);
                Err(s3_error(format!("upload of {object_key}: {message}")))
            }
        }
    }
}
