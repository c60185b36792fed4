//! The `Range` header: one byte range (`a-b`, `a-`, `-n`) is honoured;
//! anything else is ignored and the whole object sent, as RFC 9110 allows.

/// What to send of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole object, status 200.
    Full,
    /// Bytes `start..=end`, status 206.
    Partial { start: u64, end: u64 },
    /// The range lies outside the object, status 416.
    Unsatisfiable,
}

/// Interprets a `Range` header against an object of `size` bytes.
pub fn parse(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let number = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let (Some(first), Some(last)) = (number(first), number(last)) else {
        return ByteRange::Full;
    };
    match (first, last) {
        (Some(start), _) if start >= size => ByteRange::Unsatisfiable,
        (Some(start), Some(end)) if end < start => ByteRange::Full,
        (Some(start), end) => ByteRange::Partial {
            start,
            end: end.map_or(size - 1, |e| e.min(size - 1)),
        },
        (None, Some(0)) => ByteRange::Unsatisfiable,
        (None, Some(_)) if size == 0 => ByteRange::Unsatisfiable,
        (None, Some(suffix)) => ByteRange::Partial {
            start: size.saturating_sub(suffix),
            end: size - 1,
        },
        (None, None) => ByteRange::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(
            parse(Some("bytes=0-9"), 100),
            ByteRange::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse(Some("bytes=90-"), 100),
            ByteRange::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=90-500"), 100),
            ByteRange::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=-10"), 100),
            ByteRange::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=-500"), 100),
            ByteRange::Partial { start: 0, end: 99 }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parse(Some("bytes=100-"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 100), ByteRange::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-5"), 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn ignored_ranges() {
        assert_eq!(parse(None, 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=0-1,5-6"), 100), ByteRange::Full);
        assert_eq!(parse(Some("items=0-1"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=5-1"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=x-1"), 100), ByteRange::Full);
        assert_eq!(parse(Some("bytes=-"), 100), ByteRange::Full);
    }
}
