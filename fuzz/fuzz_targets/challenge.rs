//! Fuzz target: An upstream's `WWW-Authenticate` challenge.
#![no_main]

use pullthrough::parsers::Challenge;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Challenge::parse(&pullthrough_fuzz::text(data));
});
