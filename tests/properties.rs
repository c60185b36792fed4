//! Property tests for every parser that reads client or upstream input
//! (`pullthrough::parsers`): none panics on any input, each accepts what
//! its grammar generates and gives it back unchanged, and what it accepts
//! keeps the invariants its callers rely on. The fuzz targets in `fuzz/`
//! drive the same parsers with coverage guidance.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http::StatusCode;
use http::header::{ACCEPT, HeaderValue, RETRY_AFTER};
use proptest::prelude::*;
use pullthrough::parsers::{
    AcceptSet, ByteRange, Challenge, Digest, KNOWN_MANIFEST_TYPES, Reference, RepoName, Tag,
    V2Path, check_manifest, check_manifest_type, quota, range, resumed_at, retry_after,
};

/// Enough cases to find the edge cases of small grammars, few enough that
/// the whole file runs in a few seconds.
fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

/// Any text, weighted towards the characters the grammars care about.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9._/:;=,\" -]{0,80}",
        "[-0-9 ,=a-z/*]{0,40}",
    ]
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, one path component.
fn component() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}"
}

fn repo_name() -> impl Strategy<Value = String> {
    prop::collection::vec(component(), 1..5).prop_map(|parts| parts.join("/"))
}

fn header_map(name: http::HeaderName, values: &[String]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.append(name.clone(), v);
        }
    }
    headers
}

fn one_header(name: &'static str, value: &str) -> HeaderMap {
    header_map(http::HeaderName::from_static(name), &[value.to_owned()])
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn names_tags_and_references_never_panic(s in text()) {
        if let Ok(name) = RepoName::parse(&s) {
            prop_assert_eq!(name.as_str(), s.as_str());
            prop_assert!(s.len() <= 255 && !s.starts_with('/') && !s.contains("//"));
            prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        }
        if let Ok(tag) = Tag::parse(&s) {
            prop_assert_eq!(tag.as_str(), s.as_str());
            prop_assert!(!s.is_empty() && s.len() <= 128);
        }
        if let Ok(reference) = Reference::parse(&s) {
            prop_assert_eq!(reference.to_string(), s.clone());
        }
        let _ = V2Path::parse(&s);
    }

    #[test]
    fn generated_names_and_tags_are_accepted(
        name in repo_name(),
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}",
    ) {
        prop_assert_eq!(RepoName::parse(&name).unwrap().to_string(), name.clone());
        prop_assert_eq!(Tag::parse(&tag).unwrap().as_str().to_owned(), tag.clone());
        let long = format!("{tag}{}", "a".repeat(129 - tag.len()));
        prop_assert!(Tag::parse(&long).is_err(), "129 characters");
        for bad in [format!("{name}/"), format!("/{name}"), format!("{name}//x"), name.to_uppercase() + "A"] {
            prop_assert!(RepoName::parse(&bad).is_err(), "{}", bad);
        }
    }

    #[test]
    fn v2_paths_of_valid_parts_never_panic(name in repo_name(), rest in text()) {
        for kind in ["manifests", "blobs", "tags/list", "referrers"] {
            let _ = V2Path::parse(&format!("{name}/{kind}/{rest}"));
        }
    }

    #[test]
    fn digests_parse_only_in_canonical_form(s in text(), bytes in any::<Vec<u8>>()) {
        if let Ok(digest) = s.parse::<Digest>() {
            prop_assert_eq!(digest.to_string(), s.clone());
            prop_assert!(digest.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        let digest = Digest::sha256_of(&bytes);
        let reparsed: Digest = digest.as_str().parse().unwrap();
        prop_assert_eq!(&reparsed, &digest);
        prop_assert!(digest.as_str().to_uppercase().parse::<Digest>().is_err());
    }

    #[test]
    fn any_range_header_is_honoured_or_ignored(header in text(), size in 0u64..10_000) {
        match range(Some(&header), size) {
            ByteRange::Partial { start, end } => prop_assert!(start <= end && end < size),
            ByteRange::Full | ByteRange::Unsatisfiable => {}
        }
        let _ = range(Some(&format!("bytes={header}")), size);
    }

    #[test]
    fn a_range_inside_the_object_is_exactly_that_range(
        size in 1u64..u64::MAX,
        a in any::<u64>(),
        b in any::<u64>(),
        suffix in 1u64..u64::MAX,
    ) {
        let (start, end) = (a % size, b % size);
        let (start, end) = (start.min(end), start.max(end));
        prop_assert_eq!(
            range(Some(&format!("bytes={start}-{end}")), size),
            ByteRange::Partial { start, end }
        );
        prop_assert_eq!(
            range(Some(&format!("bytes={start}-")), size),
            ByteRange::Partial { start, end: size - 1 }
        );
        prop_assert_eq!(
            range(Some(&format!("bytes=-{suffix}")), size),
            ByteRange::Partial { start: size.saturating_sub(suffix), end: size - 1 }
        );
        prop_assert_eq!(range(Some(&format!("bytes={size}-")), size), ByteRange::Unsatisfiable);
    }

    #[test]
    fn accept_lines_never_panic_and_known_types_round_trip(
        lines in prop::collection::vec(text(), 0..4),
        picked in prop::collection::vec(any::<bool>(), KNOWN_MANIFEST_TYPES.len()),
        q in "(;q=0\\.[0-9])?",
    ) {
        let set = AcceptSet::from_headers(&header_map(ACCEPT, &lines));
        prop_assert!(set.types().all(|t| KNOWN_MANIFEST_TYPES.contains(&t)));
        let chosen: Vec<&str> = KNOWN_MANIFEST_TYPES
            .iter()
            .zip(&picked)
            .filter(|(_, p)| **p)
            .map(|(t, _)| *t)
            .collect();
        let line = chosen.iter().map(|t| format!("{}{q}", t.to_uppercase())).collect::<Vec<_>>().join(", ");
        let parsed = AcceptSet::from_headers(&header_map(ACCEPT, &[line]));
        prop_assert_eq!(parsed.types().collect::<Vec<_>>(), chosen.clone());
        prop_assert_eq!(parsed.header_value(), chosen.join(","));
    }

    #[test]
    fn challenges_never_panic_and_bearer_parameters_round_trip(
        header in text(),
        realm in "[a-zA-Z0-9:/._?=&-]{1,40}",
        service in "[a-zA-Z0-9._ -]{0,20}",
        scope in "[a-z0-9/:,._-]{0,40}",
        scheme in "(Bearer|bearer|BEARER)",
    ) {
        if let Some(Challenge::Bearer { realm, .. }) = Challenge::parse(&header) {
            prop_assert!(header.contains(realm.as_str()));
        }
        let text = format!(r#"{scheme} realm="{realm}", service="{service}",scope="{scope}""#);
        prop_assert_eq!(
            Challenge::parse(&text),
            Some(Challenge::Bearer {
                realm,
                service: Some(service),
                scope: Some(scope),
            })
        );
    }

    #[test]
    fn ratelimit_headers_never_panic_and_read_back(
        junk in text(),
        count in any::<u64>(),
        window in any::<u64>(),
    ) {
        let _ = quota(&one_header("ratelimit-remaining", &junk), "ratelimit-remaining");
        let headers = one_header("ratelimit-limit", &format!("{count};w={window}"));
        prop_assert_eq!(quota(&headers, "ratelimit-limit"), Some((count, Some(window))));
        let huge = one_header("ratelimit-remaining", &format!("{count}{count}{count}"));
        let _ = quota(&huge, "ratelimit-remaining");
    }

    #[test]
    fn retry_after_never_panics_and_is_at_most_a_day(
        junk in text(),
        secs in any::<u64>(),
        ahead in 0u64..1_000_000,
    ) {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        if let Some(wait) = retry_after(&header_map(RETRY_AFTER, &[junk]), now) {
            prop_assert!(wait <= day);
        }
        let wait = retry_after(&header_map(RETRY_AFTER, &[secs.to_string()]), now);
        prop_assert_eq!(wait, Some(Duration::from_secs(secs.min(86_400))));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        let wait = retry_after(&header_map(RETRY_AFTER, &[date]), now).unwrap();
        prop_assert!(wait <= day && wait <= Duration::from_secs(ahead));
    }

    #[test]
    fn content_range_never_panics_and_takes_only_the_rest(
        junk in text(),
        offset in any::<u64>(),
        size in any::<u64>(),
        length in any::<Option<u64>>(),
        status in prop::sample::select(vec![200u16, 206, 416, 500]),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let _ = resumed_at(status, Some(&junk), length, offset, size);
        let _ = resumed_at(status, None, length, offset, size);
        let edge = format!("bytes {offset}-{}/{size}", u64::MAX);
        prop_assert!(resumed_at(StatusCode::PARTIAL_CONTENT, Some(&edge), None, offset, size).is_err());
        if size > 0 && offset < size {
            let exact = format!("bytes {offset}-{}/{size}", size - 1);
            prop_assert_eq!(resumed_at(StatusCode::PARTIAL_CONTENT, Some(&exact), None, offset, size), Ok(0));
        }
    }

    #[test]
    fn manifest_checks_never_panic_and_never_pass_a_wrong_digest(
        body in prop_oneof![any::<Vec<u8>>(), "\\{[a-zA-Z0-9\":,\\[\\]{} .+/-]{0,200}\\}".prop_map(String::into_bytes)],
        media_type in prop_oneof![text(), prop::sample::select(KNOWN_MANIFEST_TYPES.to_vec()).prop_map(str::to_owned)],
    ) {
        let body = Bytes::from(body);
        let _ = check_manifest_type(&media_type);
        if let Ok(manifest) = check_manifest(None, None, &media_type, body.clone()) {
            prop_assert_eq!(manifest.digest, Digest::sha256_of(&body));
        }
        let wrong = Digest::sha256_of(b"something else");
        if wrong != Digest::sha256_of(&body) {
            prop_assert!(check_manifest(Some(&wrong), None, &media_type, body.clone()).is_err());
            prop_assert!(check_manifest(None, Some(&wrong), &media_type, body).is_err());
        }
    }
}
