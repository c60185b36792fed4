//! Lists relayed from upstream (`tags/list`), told in the client's terms.
//!
//! Upstream names the repository as it knows it: behind a path prefix
//! (`/v2/registry.k8s.io/pause`) or after a redirect to another registry
//! (registry.k8s.io sends `pause` to `k8s-artifacts-prod/images/pause`),
//! that is not the name the client asked for. Its `Link` to the next page
//! names the same path, which this mirror does not route, or routes to the
//! wrong upstream. So the body's `name` becomes the client's, and the next
//! page's link is rebuilt on the client's path, keeping only the paging
//! parameters (`n`, `last`) and the client's `ns`.

use bytes::Bytes;
use http::HeaderValue;
use serde_json::Value;

use super::query_param;

/// The list's body with `name` set to the client's `name`; any other body
/// (not a JSON object) as it came.
pub(super) fn renamed(body: Bytes, name: &str) -> Bytes {
    let Ok(Value::Object(mut list)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    if !list.contains_key("name") {
        return body;
    }
    list.insert("name".into(), Value::from(name));
    serde_json::to_vec(&list).map_or(body, Bytes::from)
}

/// Upstream's `Link` to the next page, rebuilt on the client's `name` and
/// `ns`; `None` when there is no next page (or the link says nothing
/// this mirror can follow).
pub(super) fn next_link(link: &HeaderValue, name: &str, ns: Option<&str>) -> Option<HeaderValue> {
    let query = Some(crate::upstream::next_page(link.to_str().ok()?)?);
    let params: Vec<String> = ["n", "last"]
        .iter()
        .filter_map(|p| query_param(query, p).map(|v| format!("{p}={v}")))
        .collect();
    link_on(&format!("/v2/{name}/tags/list"), &params.join("&"), ns)
}

/// A `Link` to the next page at `path` (the client's) with `query` and the
/// client's `ns`.
pub(super) fn link_on(path: &str, query: &str, ns: Option<&str>) -> Option<HeaderValue> {
    let ns = ns.map(|ns| format!("ns={ns}"));
    let query: Vec<&str> = [Some(query), ns.as_deref()]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    HeaderValue::from_str(&format!("<{path}?{}>; rel=\"next\"", query.join("&"))).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_named_as_the_client_asked() {
        let body =
            Bytes::from_static(br#"{"name":"k8s-artifacts-prod/images/pause","tags":["3.9"]}"#);
        let renamed: Value =
            serde_json::from_slice(&renamed(body, "registry.k8s.io/pause")).unwrap();
        assert_eq!(renamed["name"], "registry.k8s.io/pause");
        assert_eq!(renamed["tags"], serde_json::json!(["3.9"]));
        let odd = Bytes::from_static(b"not json");
        assert_eq!(super::renamed(odd.clone(), "x"), odd);
    }

    #[test]
    fn the_next_page_is_linked_on_the_clients_path() {
        let link = HeaderValue::from_static(
            "</v2/k8s-artifacts-prod/images/pause/tags/list?n=2&last=3.8&other=1>; rel=\"next\"",
        );
        let next = next_link(&link, "pause", Some("registry.k8s.io")).unwrap();
        assert_eq!(
            next,
            "</v2/pause/tags/list?n=2&last=3.8&ns=registry.k8s.io>; rel=\"next\""
        );
        let absolute = HeaderValue::from_static(
            "<https://registry.example/v2/library/x/tags/list?last=b&n=1>; rel=\"next\"",
        );
        assert_eq!(
            next_link(&absolute, "docker.io/library/x", None).unwrap(),
            "</v2/docker.io/library/x/tags/list?n=1&last=b>; rel=\"next\""
        );
        let prev = HeaderValue::from_static("</v2/x/tags/list?last=a>; rel=\"prev\"");
        assert_eq!(next_link(&prev, "x", None), None);
    }
}
