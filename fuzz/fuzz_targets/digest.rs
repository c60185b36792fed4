//! Fuzz target: digests from clients (`/blobs/<digest>`) and upstreams (`Docker-Content-Digest`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::Digest;

fuzz_target!(|data: &[u8]| {
    let text = pullthrough_fuzz::text(data);
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string(), text);
        let _ = digest.hex();
    }
});
