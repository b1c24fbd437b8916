//! Cache keys: the path and its query with parameters sorted by name, so `?a=1&b=2` and `?b=2&a=1`
//! share an entry, while repeated parameters (such as orderBy) keep their order, which matters.

/// The cache key of a request target.
pub fn cache_key(path: &str, query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return path.to_string();
    };
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    // A stable sort by name only: values of a repeated name stay in the caller's order.
    params.sort_by_key(|p| p.split_once('=').map_or(*p, |(name, _)| name));
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_by_name_keeping_repeated_order() {
        assert_eq!(cache_key("/v1/users", None), "/v1/users");
        assert_eq!(cache_key("/v1/users", Some("")), "/v1/users");
        assert_eq!(
            cache_key("/v1/users", Some("size=5&page=2")),
            cache_key("/v1/users", Some("page=2&size=5"))
        );
        assert_eq!(
            cache_key("/v1/users", Some("orderBy=b&page=1&orderBy=a")),
            "/v1/users?orderBy=b&orderBy=a&page=1"
        );
        assert_ne!(
            cache_key("/v1/users", Some("orderBy=a&orderBy=b")),
            cache_key("/v1/users", Some("orderBy=b&orderBy=a"))
        );
        assert_ne!(
            cache_key("/v1/users", Some("page=1")),
            cache_key("/v1/users", Some("page=2"))
        );
    }
}
