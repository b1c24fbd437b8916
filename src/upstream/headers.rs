//! Header hygiene between caller and upstream (RFC 9110 section 7.6.1).
//!
//! Hop-by-hop headers (Connection and every header it names, Keep-Alive, TE, Trailer,
//! Transfer-Encoding, Upgrade, Proxy-*) belong to one connection and are never forwarded. Towards
//! upstream the caller's credentials (Authorization, x-api-key) are removed: the gateway adds its own
//! bearer token.

use http::header::{self, HeaderMap, HeaderName};

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers the gateway sets itself on the upstream request, so the caller's copies are dropped.
const SET_BY_GATEWAY: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::HOST,
    header::CONTENT_LENGTH,
    crate::request_id::HEADER,
];

fn is_hop_by_hop(name: &HeaderName, named_by_connection: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name)
        || name.as_str().starts_with("proxy-")
        || named_by_connection.contains(name)
}

/// The header names listed in Connection headers (comma-separated, case-insensitive), except
/// `keep-alive`, which is removed as hop-by-hop anyway: most answers name nothing else, and then
/// nothing is parsed or allocated.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty() && !name.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect()
}

/// The caller's headers as they go upstream: end-to-end headers only, no caller credentials.
pub fn for_upstream(caller: &HeaderMap) -> HeaderMap {
    let named = named_by_connection(caller);
    // Room for what the gateway adds (request id, Host, Authorization) without regrowing.
    let mut out = HeaderMap::with_capacity(caller.len() + 3);
    for (name, value) in caller {
        if !is_hop_by_hop(name, &named) && !SET_BY_GATEWAY.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The caller's headers that would make upstream answer with less than the whole, plain
/// representation: a compressed one, a byte range, or nothing at all (304, 412).
const PARTIAL_OR_CONDITIONAL: [HeaderName; 7] = [
    header::ACCEPT_ENCODING,
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// Asks for the whole, uncompressed answer: for answers the gateway reads to redact secrets or
/// to cache. A byte range of a secret-bearing document (a bare slice of a JSON string) cannot be
/// shown free of secrets.
pub fn ask_whole(headers: &mut HeaderMap) {
    for name in PARTIAL_OR_CONDITIONAL {
        headers.remove(name);
    }
}

/// Upstream's response headers made fit for the caller, in place: end-to-end headers only. The
/// answer's own map is kept (no copy per call), and only the names it holds are looked at (usually
/// Connection alone is removed).
pub fn for_caller(mut upstream: HeaderMap) -> HeaderMap {
    let named = named_by_connection(&upstream);
    while let Some(name) = upstream
        .keys()
        .find(|name| is_hop_by_hop(name, &named))
        .cloned()
    {
        upstream.remove(name);
    }
    upstream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_credentials() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("trailer", "x".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("authorization", "Bearer team-key".parse().unwrap());
        h.insert("x-api-key", "team-key".parse().unwrap());
        h.insert("x-trace-id", "t1".parse().unwrap());
        h.append("x-multi", "a".parse().unwrap());
        h.append("x-multi", "b".parse().unwrap());
        let up = for_upstream(&h);
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-trace-id", "x-multi"]);
        assert_eq!(up.get_all("x-multi").iter().count(), 2);
        let back = for_caller(h.clone());
        assert!(back.contains_key("authorization") && !back.contains_key("keep-alive"));
        assert!(!back.contains_key("x-secret-hop"));
    }
}
