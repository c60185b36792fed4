//! Fuzz target: repository names, tags, references and `/v2/` paths from a client's URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullthrough::parsers::{Reference, RepoName, Tag, V2Path};

fuzz_target!(|data: &[u8]| {
    let text = pullthrough_fuzz::text(data);
    if let Ok(name) = RepoName::parse(&text) {
        assert_eq!(name.as_str(), text);
    }
    if let Ok(tag) = Tag::parse(&text) {
        assert!(tag.as_str().len() <= 128);
    }
    if let Ok(reference) = Reference::parse(&text) {
        assert_eq!(reference.to_string(), text);
    }
    let _ = V2Path::parse(&text);
});
