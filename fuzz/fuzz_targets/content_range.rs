//! Fuzz target: an upstream's `Content-Range` on a resumed blob download.
#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::resumed_at;

fuzz_target!(|data: &[u8]| {
    let (offset, rest) = pullthrough_fuzz::split_number(data);
    let (size, rest) = pullthrough_fuzz::split_number(rest);
    let range = pullthrough_fuzz::text(rest);
    for status in [StatusCode::OK, StatusCode::PARTIAL_CONTENT] {
        if let Ok(skip) = resumed_at(status, Some(&range), None, offset, size) {
            assert!(skip == 0 || skip == offset);
        }
    }
});
