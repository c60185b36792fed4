//! Reads Docker Hub's `ratelimit-*` headers, so operators see how many pulls
//! are left before upstream starts answering 429.

use http::HeaderMap;

use crate::metrics::Metrics;

/// Parses `76;w=21600` into 76.
fn leading_number(headers: &HeaderMap, name: &str) -> Option<i64> {
    let text = headers.get(name)?.to_str().ok()?;
    text.split(';').next()?.trim().parse().ok()
}

/// Records the limit and what remains of it, when upstream sent them, and
/// warns when fewer than a tenth of the pulls are left.
pub(super) fn observe(metrics: &Metrics, upstream: &str, headers: &HeaderMap) {
    let Some(remaining) = leading_number(headers, "ratelimit-remaining") else {
        return;
    };
    metrics
        .ratelimit_remaining
        .with_label_values(&[upstream])
        .set(remaining);
    if let Some(limit) = leading_number(headers, "ratelimit-limit") {
        metrics
            .ratelimit_limit
            .with_label_values(&[upstream])
            .set(limit);
        if remaining * 10 < limit {
            tracing::warn!(
                upstream,
                remaining,
                limit,
                "upstream pull limit nearly spent"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_hub_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        headers.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        let metrics = Metrics::new();
        observe(&metrics, "docker.io", &headers);
        assert_eq!(
            metrics
                .ratelimit_remaining
                .with_label_values(&["docker.io"])
                .get(),
            76
        );
        assert_eq!(
            metrics
                .ratelimit_limit
                .with_label_values(&["docker.io"])
                .get(),
            100
        );
        assert_eq!(leading_number(&headers, "missing"), None);
    }
}
