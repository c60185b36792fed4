//! Fuzz target: an upstream's `WWW-Authenticate` challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::Challenge;

fuzz_target!(|data: &[u8]| {
    let _ = Challenge::parse(&pullthrough_fuzz::text(data));
});
