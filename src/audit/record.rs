//! One audit record, how request and response bodies are stored in it (redacted, described or
//! truncated), and its canonical form for the hash chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The hash before the first record of a chain.
pub use crate::signed_checkpoint::GENESIS_HASH;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written before forwarding; a record left pending means the gateway stopped mid-call.
    #[default]
    Pending,
    Forwarded,
    Rejected,
    UpstreamError,
    GatewayError,
    /// The gateway stopped (shutdown, a crash of the call) before the call's outcome was known.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Forwarded => "forwarded",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::GatewayError => "gateway_error",
            Outcome::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Pending,
            Outcome::Forwarded,
            Outcome::Rejected,
            Outcome::UpstreamError,
            Outcome::GatewayError,
            Outcome::Interrupted,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// An unknown stored outcome reads as `gateway_error`: the record then no longer matches its
/// hash, so verification names it instead of the read failing.
impl From<String> for Outcome {
    fn from(stored: String) -> Self {
        Outcome::parse(&stored).unwrap_or(Outcome::GatewayError)
    }
}

/// The columns of `audit_records` in table order, with their PostgreSQL types: the one list the
/// store's statements, PostgreSQL's batch recordset and the CSV header are built from.
/// [`AuditRecord`]'s fields are declared in the same order (a unit test holds them together).
pub const COLUMNS: [(&str, &str); 19] = [
    ("id", "BIGINT"),
    ("ts", "TEXT"),
    ("client", "TEXT"),
    ("role", "TEXT"),
    ("method", "TEXT"),
    ("path", "TEXT"),
    ("query", "TEXT"),
    ("request_id", "TEXT"),
    ("trace_id", "TEXT"),
    ("client_ip", "TEXT"),
    ("request_body", "TEXT"),
    ("status", "BIGINT"),
    ("outcome", "TEXT"),
    ("response_body", "TEXT"),
    ("duration_ms", "DOUBLE PRECISION"),
    ("upstream_ms", "DOUBLE PRECISION"),
    ("seq", "BIGINT"),
    ("prev_hash", "TEXT"),
    ("hash", "TEXT"),
];

/// The column names, comma-separated in table order (for SELECT and INSERT lists).
pub fn column_list() -> &'static str {
    static LIST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        COLUMNS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    });
    &LIST
}

/// A record as stored (read back by name with `sqlx::FromRow`). `id`, `seq`, `prev_hash` and
/// `hash` are set by the store.
#[derive(Debug, Clone, Default, Serialize, PartialEq, sqlx::FromRow)]
pub struct AuditRecord {
    pub id: i64,
    pub ts: String,
    pub client: String,
    pub role: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub request_id: String,
    pub trace_id: String,
    pub client_ip: String,
    pub request_body: String,
    pub status: Option<i64>,
    #[sqlx(try_from = "String")]
    pub outcome: Outcome,
    pub response_body: String,
    pub duration_ms: Option<f64>,
    pub upstream_ms: Option<f64>,
    pub seq: Option<i64>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

impl AuditRecord {
    /// The chain hash of this (finalised) record after `prev_hash`: SHA-256 over the previous hash
    /// and a canonical JSON array of every field but the hashes ([`Canonical`]).
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        serde_json::to_writer(HashWriter(&mut hasher), &Canonical(self))
            .expect("hashing never fails to write");
        hex::encode(hasher.finalize())
    }
}

/// The canonical form a record's hash covers: a JSON array of its fields in a fixed order (id,
/// seq, ts, client, role, method, path, query, request_id, trace_id, client_ip, request_body,
/// status, outcome, response_body, duration_ms, upstream_ms). Written straight into the hasher:
/// the writer hashes every record of a batch in turn, in the chain's serial path.
struct Canonical<'a>(&'a AuditRecord);

impl Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let r = self.0;
        let mut seq = serializer.serialize_seq(Some(17))?;
        seq.serialize_element(&r.id)?;
        seq.serialize_element(&r.seq)?;
        for text in [
            &r.ts,
            &r.client,
            &r.role,
            &r.method,
            &r.path,
            &r.query,
            &r.request_id,
            &r.trace_id,
            &r.client_ip,
            &r.request_body,
        ] {
            seq.serialize_element(text)?;
        }
        seq.serialize_element(&r.status)?;
        seq.serialize_element(r.outcome.as_str())?;
        seq.serialize_element(&r.response_body)?;
        seq.serialize_element(&r.duration_ms)?;
        seq.serialize_element(&r.upstream_ms)?;
        seq.end()
    }
}

/// Feeds what serde_json writes into a running SHA-256.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Milliseconds rounded to microseconds, so a value reads back from any store bit-identical.
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The current time as RFC 3339 UTC with milliseconds and `Z`.
pub fn now_ts() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// How request and response bodies are kept in a record: JSON with secrets redacted (the keys in
/// `[audit] redact_keys`, case-insensitive, at any depth), anything else as a short description,
/// and at most `max_bytes` with a marker when cut.
pub struct BodyPolicy {
    redact_keys: Vec<String>,
    /// The keys in ASCII lower case (and `userdata` when it is digested), to rule them out of a
    /// body without parsing it.
    lowercase_keys: Vec<memchr::memmem::Finder<'static>>,
    max_bytes: usize,
    /// Whether `userData` (cloud-init, often with passwords in it) is stored as sent.
    store_user_data: bool,
}

/// The key of an instance's cloud-init document.
const USER_DATA: &str = "userData";

impl BodyPolicy {
    pub fn new(redact_keys: &[String], max_bytes: usize, store_user_data: bool) -> Self {
        let lowercase_keys = redact_keys
            .iter()
            .map(String::as_str)
            .chain((!store_user_data).then_some(USER_DATA))
            .map(|k| memchr::memmem::Finder::new(k.to_ascii_lowercase().as_bytes()).into_owned())
            .collect();
        Self {
            redact_keys: redact_keys.to_vec(),
            lowercase_keys,
            max_bytes,
            store_user_data,
        }
    }

    /// The query string as stored: the value of every parameter named like a redacted key
    /// (ignoring case) is `[REDACTED]`.
    pub fn store_query(&self, query: &str) -> String {
        if query.is_empty() {
            return String::new();
        }
        query
            .split('&')
            .map(|pair| {
                let name = pair.split('=').next().unwrap_or("");
                let secret = self
                    .redact_keys
                    .iter()
                    .any(|key| key.eq_ignore_ascii_case(name));
                if secret {
                    format!("{name}=[REDACTED]")
                } else {
                    pair.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The body as stored. A JSON body that cannot hold a secret is kept as sent; one where a key
    /// had to be replaced is re-serialised (compact, keys in order) with "[REDACTED]" values.
    pub fn store(&self, body: &[u8], content_type: Option<&str>) -> String {
        if body.is_empty() {
            return String::new();
        }
        let describe = || {
            format!(
                "[non-JSON body: {}, {} bytes]",
                content_type.unwrap_or("no content-type"),
                body.len()
            )
        };
        let text = if self.may_name_a_key(body) {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(mut value) => {
                    let keys: Vec<&str> = self.redact_keys.iter().map(String::as_str).collect();
                    crate::redact::redact_keys(&mut value, &keys);
                    if !self.store_user_data {
                        digest_user_data(&mut value);
                    }
                    value.to_string()
                }
                Err(_) => return describe(),
            }
        } else {
            match std::str::from_utf8(body) {
                Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                    text.to_owned()
                }
                _ => return describe(),
            }
        };
        truncated(text, self.max_bytes)
    }

    /// Whether the body may name a key to redact: it contains one of them (ignoring ASCII case)
    /// anywhere, or an escape (`\u0070assword` is a key named "password" once parsed).
    fn may_name_a_key(&self, body: &[u8]) -> bool {
        if memchr::memchr(b'\\', body).is_some() {
            return true;
        }
        let lowercase = body.to_ascii_lowercase();
        self.lowercase_keys
            .iter()
            .any(|key| key.find(&lowercase).is_some())
    }
}

/// Replaces every `userData` value (any depth, any case) by its SHA-256 and size: enough to tell
/// which cloud-init document a call sent without keeping the passwords it often holds.
fn digest_user_data(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                if key.eq_ignore_ascii_case(USER_DATA) {
                    let text = match &*inner {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    *inner = Value::String(format!(
                        "[userData: sha256 {}, {} bytes]",
                        hex::encode(Sha256::digest(text.as_bytes())),
                        text.len()
                    ));
                } else {
                    digest_user_data(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(digest_user_data),
        _ => {}
    }
}

/// At most `max_bytes` of `text` (cut at a character boundary), with a marker when cut.
fn truncated(text: String, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text;
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}...[truncated: {} bytes in all]",
        &text[..cut],
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record's fields and the table's columns are one list: same names, same order (the
    /// store binds by position and reads by name; exports and PostgreSQL's recordset use the
    /// names).
    #[test]
    fn the_record_declares_the_tables_columns_in_order() {
        let record = AuditRecord::default();
        let json = serde_json::to_string(&record).unwrap();
        let positions: Vec<usize> = COLUMNS
            .iter()
            .map(|(name, _)| {
                json.find(&format!("\"{name}\":"))
                    .unwrap_or_else(|| panic!("{name} is not a field: {json}"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "fields out of column order: {json}"
        );
        let fields = serde_json::to_value(&record).unwrap();
        assert_eq!(fields.as_object().unwrap().len(), COLUMNS.len());
        let columns: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
        assert_eq!(column_list().split(", ").collect::<Vec<_>>(), columns);
    }

    fn policy(max_bytes: usize) -> BodyPolicy {
        BodyPolicy::new(
            &["password", "secret", "rootPassword"].map(String::from),
            max_bytes,
            false,
        )
    }

    #[test]
    fn user_data_is_stored_as_its_digest_and_secret_query_parameters_redacted() {
        let cloud_init = "#cloud-config\npassword: hunter2\n";
        let body = serde_json::json!({"imageId": "i", "userData": cloud_init}).to_string();
        let stored = policy(10_000).store(body.as_bytes(), None);
        assert!(!stored.contains("hunter2"), "{stored}");
        let digest = hex::encode(Sha256::digest(cloud_init.as_bytes()));
        assert!(
            stored.contains(&digest) && stored.contains(&format!("{} bytes", cloud_init.len()))
        );
        let kept = BodyPolicy::new(&[], 10_000, true).store(body.as_bytes(), None);
        assert!(kept.contains("hunter2"));
        assert_eq!(
            policy(100).store_query("a=1&Password=x&secret&b=2"),
            "a=1&Password=[REDACTED]&secret=[REDACTED]&b=2"
        );
    }

    #[test]
    fn bodies_are_redacted_described_and_truncated() {
        let stored = policy(1000).store(
            br#"{"user":{"Password":"p","name":"n"},"secret":"s"}"#,
            None,
        );
        assert!(
            !stored.contains("\"p\"") && !stored.contains("\"s\""),
            "{stored}"
        );
        assert!(stored.contains("[REDACTED]") && stored.contains("\"n\""));
        assert_eq!(
            policy(10).store(b"\x00\x01", Some("application/octet-stream")),
            "[non-JSON body: application/octet-stream, 2 bytes]"
        );
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        let cut = policy(20).store(long.as_bytes(), None);
        assert!(
            cut.starts_with("{\"a\":\"xxxx") && cut.ends_with("[truncated: 108 bytes in all]"),
            "{cut}"
        );
        assert_eq!(policy(10).store(b"", None), "");
    }

    #[test]
    fn a_body_without_secrets_is_kept_as_sent_and_still_checked_as_json() {
        let sent = br#"{ "displayName": "web-1",  "period": 1 }"#;
        assert_eq!(
            policy(1000).store(sent, None),
            std::str::from_utf8(sent).unwrap()
        );
        // Looks like JSON at a glance, is not: described, never stored raw.
        assert_eq!(
            policy(1000).store(br#"{"displayName": "web-1""#, Some("application/json")),
            "[non-JSON body: application/json, 23 bytes]"
        );
        assert_eq!(
            policy(1000).store(b"{\"a\":\"\xff\"}", Some("application/json")),
            "[non-JSON body: application/json, 9 bytes]"
        );
    }

    #[test]
    fn secrets_behind_escapes_or_in_any_case_are_still_redacted() {
        for body in [
            r#"{"pass\u0077ord":"hunter2"}"#,
            r#"{"PASSWORD":"hunter2"}"#,
            r#"{"a":[{"b":{"RootPassword":"hunter2"}}]}"#,
        ] {
            let stored = policy(1000).store(body.as_bytes(), None);
            assert!(
                !stored.contains("hunter2") && stored.contains("[REDACTED]"),
                "{body} -> {stored}"
            );
        }
    }

    #[test]
    fn the_hash_covers_every_field() {
        let record = AuditRecord {
            id: 1,
            ts: now_ts(),
            client: "c".into(),
            role: "admin".into(),
            method: "POST".into(),
            path: "/v1/x".into(),
            query: String::new(),
            request_id: "r".into(),
            trace_id: String::new(),
            client_ip: "127.0.0.1".into(),
            request_body: "{}".into(),
            status: Some(201),
            outcome: Outcome::Forwarded,
            response_body: "{}".into(),
            duration_ms: Some(1.5),
            upstream_ms: Some(1.0),
            seq: Some(1),
            prev_hash: None,
            hash: None,
        };
        let h = record.chain_hash(GENESIS_HASH);
        // The canonical form is pinned: chains written by earlier versions must still verify.
        let canonical = serde_json::json!([
            1,
            1,
            &record.ts,
            "c",
            "admin",
            "POST",
            "/v1/x",
            "",
            "r",
            "",
            "127.0.0.1",
            "{}",
            201,
            "forwarded",
            "{}",
            1.5,
            1.0
        ])
        .to_string();
        let expected = hex::encode(Sha256::digest(format!("{GENESIS_HASH}{canonical}")));
        assert_eq!(h, expected);
        let mut changed = record.clone();
        changed.status = Some(200);
        assert_ne!(h, changed.chain_hash(GENESIS_HASH));
        assert_ne!(h, record.chain_hash(&h));
        assert_eq!(h, record.chain_hash(GENESIS_HASH));
    }
}
