//! Fuzz target: an upstream's manifest body, with its media type on the first line.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::{Digest, check_manifest, check_manifest_type};

fuzz_target!(|data: &[u8]| {
    let (media_type, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (pullthrough_fuzz::text(&data[..at]), &data[at + 1..]),
        None => (String::new(), data),
    };
    let _ = check_manifest_type(&media_type);
    let body = Bytes::copy_from_slice(body);
    if let Ok(manifest) = check_manifest(None, None, &media_type, body.clone()) {
        assert_eq!(manifest.digest, Digest::sha256_of(&body));
    }
});
