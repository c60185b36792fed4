//! How blob GETs were answered: streamed by this replica, or redirected to
//! the bucket (`s3.redirect`), in requests and bytes, so an operator sees
//! what share of the bytes the bucket carries.

use prometheus::{IntCounter, IntCounterVec, Registry};

use super::counter;

/// The blob answers' collectors, their label values resolved once.
pub struct BlobCollectors {
    /// Blob GETs answered with a redirect to a presigned bucket URL.
    pub redirected: IntCounter,
    /// Bytes of those blobs (the requested range), which the bucket sends.
    pub redirected_bytes: IntCounter,
    /// Blob GETs whose bytes this replica sent.
    pub streamed: IntCounter,
    /// Bytes of those answers.
    pub streamed_bytes: IntCounter,
    /// `pullthrough_served_bytes_total{tier="redirect"}`: the bytes of
    /// redirected blobs in the served-by-tier figures too.
    pub served_by_redirect: IntCounter,
}

impl BlobCollectors {
    /// Registers the two families; `served_bytes` is the served-by-tier
    /// family, which redirects count in under the tier `redirect`.
    pub(super) fn register(registry: &Registry, served_bytes: &IntCounterVec) -> Self {
        let answers = counter(
            registry,
            "pullthrough_blob_answers_total",
            "Successful blob GETs by how their bytes went: stream (sent by this replica, from any tier or upstream) or redirect (to a presigned URL of the bucket, which sends them).",
            &["via"],
        );
        let bytes = counter(
            registry,
            "pullthrough_blob_answer_bytes_total",
            "Bytes of successful blob GETs by how they went: stream (sent by this replica) or redirect (the blob's or the requested range's size, sent by the bucket).",
            &["via"],
        );
        BlobCollectors {
            redirected: answers.with_label_values(&["redirect"]),
            redirected_bytes: bytes.with_label_values(&["redirect"]),
            streamed: answers.with_label_values(&["stream"]),
            streamed_bytes: bytes.with_label_values(&["stream"]),
            served_by_redirect: served_bytes.with_label_values(&["redirect"]),
        }
    }
}
