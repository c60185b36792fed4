//! The `Link` header by which registries page lists (`tags/list`,
//! referrers): where the next page is.

/// The query of the `rel="next"` target of a `Link` header (the part after
/// `?`, which is all that identifies a page; its path names the list as
/// upstream knows it). `None` without a next page or without a query.
pub fn next_page(link: &str) -> Option<&str> {
    let target = link
        .split(',')
        .find(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))?;
    let (_, rest) = target.split_once('<')?;
    let (url, _) = rest.split_once('>')?;
    let (_, query) = url.split_once('?')?;
    Some(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_found_among_the_links() {
        let link = "</v2/x/tags/list?last=a>; rel=\"prev\", <https://r.example/v2/y/tags/list?n=2&last=b>; rel=\"next\"";
        assert_eq!(next_page(link), Some("n=2&last=b"));
        assert_eq!(next_page("</v2/x/tags/list?last=a>; rel=\"prev\""), None);
        assert_eq!(next_page("</v2/x/tags/list>; rel=next"), None);
        assert_eq!(next_page("garbage"), None);
    }
}
