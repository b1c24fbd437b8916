//! Derives the route classes from Contabo's OpenAPI specs and proves that the checked-in table
//! `src/routes/table.rs` is exactly that derivation: every operation of either spec, nothing else.
//!
//! Two specs, because clients use both: `spec/contabo-openapi.yaml` (the one `cntb` v1.5.5 ships)
//! and `spec/contabo-openapi-current.yaml` (Contabo's API today: DNS, domains and their audits,
//! without the internal `createTicket`). An operation in both keeps the older spec's place in the
//! table, and its secret fields are those of either.
//!
//! `UPDATE_ROUTE_TABLE=1 cargo test --test route_table` rewrites the table after a spec update.

use std::collections::BTreeSet;

use contabo_gateway::routes::{CacheGroup, OPERATIONS};
use serde_yaml::Value;

const SPECS: [&str; 2] = [
    "spec/contabo-openapi.yaml",
    "spec/contabo-openapi-current.yaml",
];
const TABLE: &str = "src/routes/table.rs";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Response schema properties that carry secrets: the IDM client secret, the S3 secret key, the
/// value of a stored secret (password or SSH key) and a domain's transfer auth code.
const SECRET_PROPERTIES: [(&str, &str); 5] = [
    ("ClientResponse", "secret"),
    ("ClientSecretResponse", "secret"),
    ("CredentialData", "secretKey"),
    ("SecretResponse", "value"),
    ("DomainAuthCodeResponse", "authCode"),
];

struct Derived {
    operation_id: String,
    method: String,
    path: String,
    mutates: bool,
    secret_fields: BTreeSet<String>,
    cached_as: Option<&'static str>,
    invalidates: Vec<&'static str>,
}

fn spec(path: &str) -> Value {
    let text = std::fs::read_to_string(path).expect("the spec is checked in");
    serde_yaml::from_str(&text).expect("the spec is YAML")
}

/// Walks a schema (following $ref, allOf/oneOf/anyOf, items and properties) and collects the
/// secret properties it can contain.
fn collect_secrets(
    spec: &Value,
    schema: &Value,
    seen: &mut BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap().to_string();
        if !seen.insert(name.clone()) {
            return;
        }
        let target = &spec["components"]["schemas"][name.as_str()];
        for (owner, property) in SECRET_PROPERTIES {
            if owner == name && target["properties"].get(property).is_some() {
                out.insert(property.to_string());
            }
        }
        collect_secrets(spec, target, seen, out);
        return;
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_sequence) {
            for s in list {
                collect_secrets(spec, s, seen, out);
            }
        }
    }
    if let Some(items) = schema.get("items") {
        collect_secrets(spec, items, seen, out);
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_mapping) {
        for s in props.values() {
            collect_secrets(spec, s, seen, out);
        }
    }
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// The operations of every spec, merged by method and path.
fn derive() -> Vec<Derived> {
    let mut rows: Vec<Derived> = Vec::new();
    for path in SPECS {
        for row in derive_one(&spec(path)) {
            match rows
                .iter_mut()
                .find(|r| r.method == row.method && r.path == row.path)
            {
                Some(known) => {
                    assert_eq!(
                        known.operation_id, row.operation_id,
                        "{} {}",
                        row.method, row.path
                    );
                    known.secret_fields.extend(row.secret_fields);
                }
                None => rows.push(row),
            }
        }
    }
    rows
}

fn derive_one(spec: &Value) -> Vec<Derived> {
    let mut rows = Vec::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let mut secret_fields = BTreeSet::new();
            for (status, response) in op["responses"].as_mapping().unwrap() {
                let status = match status {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                let schema = response["content"]["application/json"].get("schema");
                if let (true, Some(schema)) = (status.starts_with('2'), schema) {
                    collect_secrets(spec, schema, &mut BTreeSet::new(), &mut secret_fields);
                }
            }
            let mutates = method != "get";
            let cached_as = match (method, path) {
                ("get", "/v1/users" | "/v1/users/{userId}") => Some("Users"),
                ("get", "/v1/users/client") => Some("Client"),
                _ => None,
            };
            let invalidates = match (mutates, path) {
                (true, "/v1/users/client/secret") => vec!["Client"],
                (true, p) if under(p, "/v1/users") || under(p, "/v1/roles") => vec!["Users"],
                _ => vec![],
            };
            rows.push(Derived {
                operation_id: op["operationId"].as_str().unwrap().to_string(),
                method: method.to_uppercase(),
                path: path.to_string(),
                mutates,
                secret_fields,
                cached_as,
                invalidates,
            });
        }
    }
    rows
}

fn render(rows: &[Derived]) -> String {
    let mut out = String::from(
        "// @generated by tests/route_table.rs from spec/contabo-openapi.yaml and\n\
         // spec/contabo-openapi-current.yaml. Do not edit:\n\
         // UPDATE_ROUTE_TABLE=1 cargo test --test route_table regenerates it.\n\
         use super::{CacheGroup, Operation};\n\n\
         #[rustfmt::skip]\n\
         pub static OPERATIONS: &[Operation] = &[\n",
    );
    for r in rows {
        let secrets: Vec<String> = r.secret_fields.iter().map(|s| format!("{s:?}")).collect();
        let cached = r
            .cached_as
            .map_or("None".to_string(), |g| format!("Some(CacheGroup::{g})"));
        let invalidates: Vec<String> = r
            .invalidates
            .iter()
            .map(|g| format!("CacheGroup::{g}"))
            .collect();
        out.push_str(&format!(
            "    Operation {{ operation_id: {:?}, method: {:?}, path: {:?}, mutates: {}, secret_fields: &[{}], cached_as: {}, invalidates: &[{}] }},\n",
            r.operation_id,
            r.method,
            r.path,
            r.mutates,
            secrets.join(", "),
            cached,
            invalidates.join(", "),
        ));
    }
    out.push_str("];\n");
    out
}

#[test]
fn table_is_the_derivation_of_the_spec() {
    let rows = derive();
    let rendered = render(&rows);
    if std::env::var_os("UPDATE_ROUTE_TABLE").is_some() {
        std::fs::write(TABLE, &rendered).unwrap();
    }
    let checked_in = std::fs::read_to_string(TABLE).unwrap();
    assert!(
        checked_in == rendered,
        "src/routes/table.rs is not the derivation of the spec; run UPDATE_ROUTE_TABLE=1 cargo test --test route_table"
    );
}

#[test]
fn table_covers_every_operation_of_the_spec() {
    let rows = derive();
    assert_eq!(
        rows.len(),
        124,
        "90 operations of the older spec, 123 of today's, 89 in both"
    );
    assert_eq!(OPERATIONS.len(), rows.len());
    for r in &rows {
        let op = OPERATIONS
            .iter()
            .find(|o| o.method == r.method && o.path == r.path)
            .unwrap_or_else(|| panic!("{} {} missing from the table", r.method, r.path));
        assert_eq!(op.operation_id, r.operation_id);
        assert_eq!(op.mutates, r.mutates);
        let fields: BTreeSet<String> = op.secret_fields.iter().map(|s| s.to_string()).collect();
        assert_eq!(fields, r.secret_fields, "{} {}", r.method, r.path);
    }
}

#[test]
fn secret_bearing_routes_are_the_expected_ones() {
    let secret_routes: BTreeSet<String> = OPERATIONS
        .iter()
        .filter(|o| o.carries_secrets())
        .map(|o| format!("{} {}", o.method, o.path))
        .collect();
    for expected in [
        "GET /v1/users/client",
        "PUT /v1/users/client/secret",
        "GET /v1/users/{userId}/object-storages/credentials",
        "GET /v1/users/{userId}/object-storages/{objectStorageId}/credentials/{credentialId}",
        "PATCH /v1/users/{userId}/object-storages/{objectStorageId}/credentials/{credentialId}",
        "GET /v1/secrets/{secretId}",
        "POST /v1/domains/{domain}/generate-auth-code",
    ] {
        assert!(
            secret_routes.contains(expected),
            "{expected} not secret-bearing: {secret_routes:?}"
        );
    }
    assert!(!secret_routes.contains("GET /v1/users/{userId}"));
    let cached: Vec<_> = OPERATIONS
        .iter()
        .filter(|o| o.cached_as.is_some())
        .collect();
    assert_eq!(cached.len(), 3);
    assert!(
        OPERATIONS
            .iter()
            .filter(|o| o.invalidates.contains(&CacheGroup::Users))
            .all(|o| o.mutates
                && (o.path.starts_with("/v1/users") || o.path.starts_with("/v1/roles")))
    );
}
