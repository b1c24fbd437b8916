//! Contabo route classes, taken from Contabo's OpenAPI spec.
//!
//! For each of the spec's operations: whether it mutates, which fields of its response carry secrets,
//! whether it is a cacheable read and which cached reads it invalidates. The table in `table.rs` is
//! generated from `spec/contabo-openapi.yaml` by `tests/route_table.rs`, which also proves that it
//! covers every operation of the spec. Matching follows the spec: literal segments win over
//! templates, so `/v1/users/client` is never `/v1/users/{userId}`.

mod table;

use http::Method;

pub use table::OPERATIONS;

/// A family of cached reads that writes invalidate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheGroup {
    /// GET /v1/users and GET /v1/users/{userId}
    Users,
    /// GET /v1/users/client
    Client,
}

/// One operation of the Contabo spec.
#[derive(Debug, PartialEq, Eq)]
pub struct Operation {
    pub operation_id: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub mutates: bool,
    /// JSON keys of the response that carry secrets (redacted for every role except admin).
    pub secret_fields: &'static [&'static str],
    pub cached_as: Option<CacheGroup>,
    pub invalidates: &'static [CacheGroup],
}

impl Operation {
    pub fn carries_secrets(&self) -> bool {
        !self.secret_fields.is_empty()
    }

    /// Whether the gateway reads the answer's body (to redact or cache it), so it must be
    /// uncompressed JSON.
    pub fn needs_readable_body(&self) -> bool {
        self.carries_secrets() || self.cached_as.is_some()
    }
}

#[derive(Debug)]
struct Template {
    method: Method,
    segments: Vec<Option<&'static str>>, // None = a {parameter}
    operation: &'static Operation,
}

/// Finds the spec operation of a method and path.
#[derive(Debug)]
pub struct RouteTable {
    /// Templates grouped by segment count (index), most specific first within each group.
    by_length: Vec<Vec<Template>>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::new(OPERATIONS)
    }
}

impl RouteTable {
    pub fn new(operations: &'static [Operation]) -> Self {
        let mut templates: Vec<Template> = operations
            .iter()
            .map(|operation| Template {
                method: operation.method.parse().expect("spec methods are valid"),
                segments: operation
                    .path
                    .split('/')
                    .skip(1)
                    .map(|s| (!s.starts_with('{')).then_some(s))
                    .collect(),
                operation,
            })
            .collect();
        // Most specific first: at the first segment where two templates differ in kind, the literal
        // one wins. Sorting once means the first match is the right one.
        templates.sort_by(|a, b| {
            let kinds = |t: &Template| t.segments.iter().map(Option::is_none).collect::<Vec<_>>();
            kinds(a).cmp(&kinds(b))
        });
        let longest = templates
            .iter()
            .map(|t| t.segments.len())
            .max()
            .unwrap_or(0);
        let mut by_length: Vec<Vec<Template>> = (0..=longest).map(|_| Vec::new()).collect();
        for template in templates {
            by_length[template.segments.len()].push(template);
        }
        Self { by_length }
    }

    /// The operation for `method` and a raw (undecoded) request path. HEAD matches like GET.
    pub fn find(&self, method: &Method, path: &str) -> Option<&'static Operation> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        // Split once; no spec path has more than MAX_SEGMENTS segments.
        let mut segments = [""; MAX_SEGMENTS];
        let mut count = 0;
        for segment in path.split('/').skip(1) {
            *segments.get_mut(count)? = segment;
            count += 1;
        }
        let segments = &segments[..count];
        self.by_length
            .get(count)?
            .iter()
            .filter(|t| t.method == *method)
            .find(|t| {
                t.segments
                    .iter()
                    .zip(segments)
                    .all(|(template, actual)| match template {
                        Some(literal) => literal == actual,
                        None => !actual.is_empty(),
                    })
            })
            .map(|t| t.operation)
    }
}

/// Longer paths than this match no spec operation.
const MAX_SEGMENTS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(method: Method, path: &str) -> Option<&'static str> {
        RouteTable::default()
            .find(&method, path)
            .map(|op| op.operation_id)
    }

    #[test]
    fn literals_win_over_templates() {
        assert_eq!(
            id(Method::GET, "/v1/users/client"),
            Some("retrieveUserClient")
        );
        assert_eq!(
            id(Method::GET, "/v1/users/is-password-set"),
            Some("retrieveUserIsPasswordSet")
        );
        assert_eq!(
            id(Method::GET, "/v1/users/audits"),
            Some("retrieveUserAuditsList")
        );
        assert_eq!(id(Method::GET, "/v1/users/abc-123"), Some("retrieveUser"));
        assert_eq!(id(Method::HEAD, "/v1/users/abc-123"), Some("retrieveUser"));
        assert_eq!(
            id(Method::GET, "/v1/compute/instances/actions/audits"),
            Some("retrieveInstancesActionsAuditsList")
        );
        assert_eq!(
            id(Method::PUT, "/v1/users/client/secret"),
            Some("generateClientSecret")
        );
        assert_eq!(id(Method::GET, "/v1/nothing"), None);
        assert_eq!(id(Method::GET, "/v1/users/"), None);
    }

    #[test]
    fn classes() {
        let t = RouteTable::default();
        let client = t.find(&Method::GET, "/v1/users/client").unwrap();
        assert_eq!(client.secret_fields, &["secret"]);
        assert_eq!(client.cached_as, Some(CacheGroup::Client));
        let rotate = t.find(&Method::PUT, "/v1/users/client/secret").unwrap();
        assert!(rotate.mutates && rotate.carries_secrets());
        assert_eq!(rotate.invalidates, &[CacheGroup::Client]);
        let creds = t
            .find(
                &Method::GET,
                "/v1/users/u1/object-storages/o1/credentials/7",
            )
            .unwrap();
        assert_eq!(creds.secret_fields, &["secretKey"]);
        assert_eq!(creds.cached_as, None);
        let patch = t.find(&Method::PATCH, "/v1/users/u1").unwrap();
        assert_eq!(patch.invalidates, &[CacheGroup::Users]);
        let list = t.find(&Method::GET, "/v1/compute/instances").unwrap();
        assert!(!list.mutates && !list.carries_secrets() && list.cached_as.is_none());
    }
}
