//! Fuzz target: an upstream's `ratelimit-*` and `Retry-After` headers.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::{quota, retry_after};

fuzz_target!(|data: &[u8]| {
    let remaining = http::HeaderName::from_static("ratelimit-remaining");
    let _ = quota(
        &pullthrough_fuzz::headers(remaining, data),
        "ratelimit-remaining",
    );
    let headers = pullthrough_fuzz::headers(http::header::RETRY_AFTER, data);
    if let Some(wait) = retry_after(&headers, SystemTime::now()) {
        assert!(wait <= Duration::from_secs(86_400));
    }
});
