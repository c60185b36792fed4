//! Fuzz target: a client's `Accept` lines (one per input line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::{AcceptSet, KNOWN_MANIFEST_TYPES};

fuzz_target!(|data: &[u8]| {
    let headers = pullthrough_fuzz::headers(http::header::ACCEPT, data);
    let set = AcceptSet::from_headers(&headers);
    assert!(set.types().all(|t| KNOWN_MANIFEST_TYPES.contains(&t)));
    let _ = set.header_value();
});
