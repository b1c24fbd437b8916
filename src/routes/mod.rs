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

/// Every field name the route table knows to carry a secret, each once.
pub fn secret_fields() -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = OPERATIONS
        .iter()
        .flat_map(|op| op.secret_fields.iter().copied())
        .collect();
    fields.sort_unstable();
    fields.dedup();
    fields
}

/// The operation a setting names (a `route_costs` key): an operationId, or "METHOD /v1/path" as
/// in the spec.
pub fn named(key: &str) -> Option<&'static Operation> {
    let key = key.trim();
    if let Some((method, path)) = key.split_once(' ') {
        let method = method.trim().to_ascii_uppercase();
        let path = path.trim();
        return OPERATIONS
            .iter()
            .find(|op| op.method == method && op.path == path);
    }
    OPERATIONS.iter().find(|op| op.operation_id == key)
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

    /// Reads a raw (undecoded) request path the way an Express-style upstream routes it: literal
    /// segments compared without regard to case, percent-encoded unreserved characters decoded,
    /// `;params` and a trailing slash ignored. The operation it reaches, and the one spelling of it
    /// the gateway accepts when the path differs from that spelling.
    pub fn classify(&self, method: &Method, path: &str) -> Classified {
        let normalised = normalise(path);
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let mut segments = [""; MAX_SEGMENTS];
        let mut count = 0;
        for segment in normalised.split('/').skip(1) {
            match segments.get_mut(count) {
                Some(slot) => *slot = segment,
                None => return Classified::unknown(path, &normalised),
            }
            count += 1;
        }
        let segments = &segments[..count];
        let template = self.by_length.get(count).and_then(|templates| {
            templates.iter().filter(|t| t.method == *method).find(|t| {
                t.segments
                    .iter()
                    .zip(segments)
                    .all(|(template, actual)| match template {
                        Some(literal) => literal.eq_ignore_ascii_case(actual),
                        None => !actual.is_empty(),
                    })
            })
        });
        let Some(template) = template else {
            return Classified::unknown(path, &normalised);
        };
        let spelled_as_spec = template
            .segments
            .iter()
            .zip(segments)
            .all(|(template, actual)| template.is_none_or(|literal| literal == *actual));
        let canonical = if spelled_as_spec && normalised == path {
            None
        } else {
            let mut canonical = String::with_capacity(path.len());
            for (template, actual) in template.segments.iter().zip(segments) {
                canonical.push('/');
                canonical.push_str(template.unwrap_or(actual));
            }
            Some(canonical)
        };
        Classified {
            operation: Some(template.operation),
            canonical,
        }
    }
}

/// A call's path read against the route table.
#[derive(Debug, PartialEq, Eq)]
pub struct Classified {
    /// The spec operation upstream will execute, if any.
    pub operation: Option<&'static Operation>,
    /// The spelling to send instead, when the path was not sent in it.
    pub canonical: Option<String>,
}

impl Classified {
    fn unknown(path: &str, normalised: &str) -> Self {
        Self {
            operation: None,
            canonical: (normalised != path).then(|| normalised.to_string()),
        }
    }
}

/// The path with what an Express-style router ignores taken out: percent-encoded unreserved
/// characters decoded, `;params` of a segment dropped, a trailing slash dropped. Borrowed when
/// there is nothing to take out (nearly every call).
pub fn normalise(path: &str) -> std::borrow::Cow<'_, str> {
    let bytes = path.as_bytes();
    let trailing_slash = path.len() > 1 && path.ends_with('/');
    if !trailing_slash && memchr::memchr2(b'%', b';', bytes).is_none() {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            out.push('/');
        }
        let segment = segment.split(';').next().unwrap_or("");
        out.push_str(&decode_unreserved(segment));
    }
    while out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    std::borrow::Cow::Owned(out)
}

/// `%XX` decoded where it stands for an unreserved character (RFC 3986: letters, digits, `-._~`),
/// which means the same written plain; any other escape is kept as sent.
fn decode_unreserved(segment: &str) -> std::borrow::Cow<'_, str> {
    if !segment.contains('%') {
        return std::borrow::Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut at = 0;
    while at < bytes.len() {
        let decoded = (bytes[at] == b'%')
            .then(|| bytes.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match decoded {
            Some(byte) => {
                out.push(byte as char);
                at += 3;
            }
            None => {
                let len = segment[at..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&segment[at..at + len]);
                at += len;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Longer paths than this match no spec operation.
const MAX_SEGMENTS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    /// The operation of a path spelled as the spec spells it.
    fn find(table: &RouteTable, method: &Method, path: &str) -> Option<&'static Operation> {
        let classified = table.classify(method, path);
        assert_eq!(
            classified.canonical, None,
            "{path} is not the spec's spelling"
        );
        classified.operation
    }

    /// The operation id of a path spelled as the spec spells it; None for any other spelling.
    fn id(method: Method, path: &str) -> Option<&'static str> {
        let classified = RouteTable::default().classify(&method, path);
        match classified.canonical {
            None => classified.operation.map(|op| op.operation_id),
            Some(_) => None,
        }
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

    fn classify(method: Method, path: &str) -> (Option<&'static str>, Option<String>) {
        let c = RouteTable::default().classify(&method, path);
        (c.operation.map(|op| op.operation_id), c.canonical)
    }

    #[test]
    fn other_spellings_reach_the_operation_and_name_its_spelling() {
        let client = Some("retrieveUserClient");
        for variant in [
            "/v1/users/client/",
            "/v1/Users/Client",
            "/v1/USERS/CLIENT/",
            "/v1/users/%63lient",
            "/v1/users/client;x",
            "/v1/users;/client;",
        ] {
            assert_eq!(
                classify(Method::GET, variant),
                (client, Some("/v1/users/client".to_string())),
                "{variant}"
            );
        }
        assert_eq!(classify(Method::GET, "/v1/users/client"), (client, None));
        // Parameters keep their case; only escapes of unreserved characters are decoded.
        assert_eq!(
            classify(Method::PUT, "/v1/Users/client/secret"),
            (
                Some("generateClientSecret"),
                Some("/v1/users/client/secret".into())
            )
        );
        assert_eq!(
            classify(Method::GET, "/v1/users/AbC%7e/"),
            (Some("retrieveUser"), Some("/v1/users/AbC~".into()))
        );
        assert_eq!(
            classify(Method::GET, "/v1/users/a%20b"),
            (Some("retrieveUser"), None)
        );
        assert_eq!(
            classify(
                Method::POST,
                "/v1/compute/instances/12/actions/RESETPASSWORD"
            ),
            (
                Some("resetPasswordAction"),
                Some("/v1/compute/instances/12/actions/resetPassword".into())
            )
        );
        // Paths outside the spec: only what a router ignores is named.
        assert_eq!(classify(Method::GET, "/v1/nothing"), (None, None));
        assert_eq!(
            classify(Method::GET, "/v1/Nothing/"),
            (None, Some("/v1/Nothing".into()))
        );
    }

    #[test]
    fn classes() {
        let t = RouteTable::default();
        let client = find(&t, &Method::GET, "/v1/users/client").unwrap();
        assert_eq!(client.secret_fields, &["secret"]);
        assert_eq!(client.cached_as, Some(CacheGroup::Client));
        let rotate = find(&t, &Method::PUT, "/v1/users/client/secret").unwrap();
        assert!(rotate.mutates && rotate.carries_secrets());
        assert_eq!(rotate.invalidates, &[CacheGroup::Client]);
        let creds = find(
            &t,
            &Method::GET,
            "/v1/users/u1/object-storages/o1/credentials/7",
        )
        .unwrap();
        assert_eq!(creds.secret_fields, &["secretKey"]);
        assert_eq!(creds.cached_as, None);
        let patch = find(&t, &Method::PATCH, "/v1/users/u1").unwrap();
        assert_eq!(patch.invalidates, &[CacheGroup::Users]);
        let list = find(&t, &Method::GET, "/v1/compute/instances").unwrap();
        assert!(!list.mutates && !list.carries_secrets() && list.cached_as.is_none());
    }
}
