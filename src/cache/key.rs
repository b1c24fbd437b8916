//! Cache keys: the path and its query with parameters sorted by name, so `?a=1&b=2` and `?b=2&a=1`
//! share an entry, while repeated parameters (such as orderBy) keep their order, which matters.

use std::borrow::Cow;

fn name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(name, _)| name)
}

/// The cache key of a request target (`path?query`). Borrowed when the target already is its own
/// key (no query, or parameters already in order): a hit then allocates nothing for its key.
pub fn cache_key(path_and_query: &str) -> Cow<'_, str> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) if !query.is_empty() => (path, query),
        Some((path, _)) => return Cow::Borrowed(path),
        None => return Cow::Borrowed(path_and_query),
    };
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let in_order = params.windows(2).all(|w| name(w[0]) <= name(w[1]));
    if in_order && params.len() == query.split('&').count() {
        return Cow::Borrowed(path_and_query);
    }
    // A stable sort by name only: values of a repeated name stay in the caller's order.
    params.sort_by_key(|p| name(p));
    Cow::Owned(format!("{path}?{}", params.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_name_keeping_repeated_order() {
        assert_eq!(cache_key("/v1/users"), "/v1/users");
        assert!(matches!(cache_key("/v1/users"), Cow::Borrowed(_)));
        assert_eq!(cache_key("/v1/users?"), "/v1/users");
        assert_eq!(
            cache_key("/v1/users?size=5&page=2"),
            cache_key("/v1/users?page=2&size=5")
        );
        assert!(matches!(
            cache_key("/v1/users?page=2&size=5"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            cache_key("/v1/users?orderBy=b&page=1&orderBy=a"),
            "/v1/users?orderBy=b&orderBy=a&page=1"
        );
        assert_ne!(
            cache_key("/v1/users?orderBy=a&orderBy=b"),
            cache_key("/v1/users?orderBy=b&orderBy=a")
        );
        assert_ne!(cache_key("/v1/users?page=1"), cache_key("/v1/users?page=2"));
        assert_eq!(
            cache_key("/v1/users?page=1&&size=2"),
            "/v1/users?page=1&size=2"
        );
    }
}
