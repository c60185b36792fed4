//! A blob download that outlives its source: when the stream it reads
//! breaks off mid-way (the bucket throttles or resets a connection, the
//! owner replica is killed, upstream resets more often than its own
//! resumes allow), the rest is asked of the next source that may have the
//! blob, with a range from the byte reached, and the clients already
//! streaming are never cut off while any source can still serve.
//!
//! The order: the bucket first (inside the network, and it holds every
//! blob the fleet has fetched, so an upstream outage cannot fail cached
//! content), then upstream. Each fallback is tried at most once, and the
//! bucket is asked even while its tier is being skipped after a failure:
//! nothing else is left by then. The flight hashes the whole stream, so a
//! splice yields correct bytes or a failed download, never a mix that is
//! served as good.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::cache::{ObjectKey, S3Tier, Source, SourceError};
use crate::reference::RepoName;
use crate::upstream::Upstream;

/// A stream of a blob's bytes from some source.
type Feed = Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send + Unpin>;

/// A source to ask for the rest of a blob.
pub(super) enum Rest {
    /// The shared tier, even while it is skipped.
    Bucket(Arc<S3Tier>),
    /// The upstream registry, with `Range`.
    Upstream(Arc<Upstream>, RepoName),
}

impl Rest {
    /// The blob's bytes from `offset` to `size`, if this source has them.
    async fn open(&self, key: &ObjectKey, offset: u64, size: u64) -> Result<Feed, SourceError> {
        match self {
            Rest::Bucket(s3) => match s3.open_rest(key, offset, size).await {
                Some(source) => Ok(source.body),
                None => Err(Arc::new(std::io::Error::other(
                    "the bucket cannot give the rest",
                ))),
            },
            Rest::Upstream(upstream, repo) => {
                let rest = upstream
                    .get_blob_from(repo, &key.digest, offset, size)
                    .await;
                let rest = rest.map_err(|e| Arc::new(e) as SourceError)?;
                Ok(Box::new(rest.body.map_err(|e| Arc::new(e) as SourceError)))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Rest::Bucket(_) => "the bucket",
            Rest::Upstream(..) => "upstream",
        }
    }
}

/// `source` for `key`, with the rest asked of `rests` in order if it breaks
/// off mid-stream.
pub(super) fn spliced(source: Source, key: ObjectKey, rests: Vec<Rest>) -> Source {
    let splice = Splice {
        feed: Some(source.body),
        received: 0,
        size: source.size,
        key,
        rests: rests.into_iter(),
    };
    let body = futures_util::stream::unfold(splice, |mut splice| async move {
        let item = splice.next().await?;
        Some((item, splice))
    });
    Source {
        body: Box::new(Box::pin(body)),
        ..source
    }
}

struct Splice {
    /// The stream read now; `None` once every source failed.
    feed: Option<Feed>,
    received: u64,
    size: Option<u64>,
    key: ObjectKey,
    rests: std::vec::IntoIter<Rest>,
}

impl Splice {
    async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        let mut broken = match self.feed.as_mut()?.next().await? {
            Ok(bytes) => {
                self.received += bytes.len() as u64;
                return Some(Ok(bytes));
            }
            Err(e) => e,
        };
        self.feed = None;
        let offset = self.received;
        let Some(size) = self.size.filter(|size| offset < *size) else {
            return Some(Err(broken));
        };
        for rest in self.rests.by_ref() {
            tracing::warn!(digest = %self.key.digest, offset, size, error = %broken,
                "a blob's source broke off; asking {} for the rest", rest.name());
            match rest.open(&self.key, offset, size).await {
                Ok(feed) => {
                    self.feed = Some(feed);
                    return Box::pin(self.next()).await;
                }
                Err(e) => broken = e,
            }
        }
        Some(Err(broken))
    }
}
