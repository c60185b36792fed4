//! Fuzz target: a client's `Range` header against an object size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::{ByteRange, range};

fuzz_target!(|data: &[u8]| {
    let (size, header) = pullthrough_fuzz::number_and_text(data);
    if let ByteRange::Partial { start, end } = range(Some(&header), size) {
        assert!(start <= end && end < size);
    }
});
