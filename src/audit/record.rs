//! One audit record, how request and response bodies are stored in it (redacted, described or
//! truncated), and its canonical form for the hash chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The hash before the first record of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written before forwarding; a record left pending means the gateway stopped mid-call.
    Pending,
    Forwarded,
    Rejected,
    UpstreamError,
    GatewayError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Forwarded => "forwarded",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::GatewayError => "gateway_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Outcome::Pending,
            Outcome::Forwarded,
            Outcome::Rejected,
            Outcome::UpstreamError,
            Outcome::GatewayError,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// A record as stored. `id`, `seq`, `prev_hash` and `hash` are set by the store.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    /// and a canonical JSON array of every field but the hashes.
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let canonical = serde_json::json!([
            self.id,
            self.seq,
            &self.ts,
            &self.client,
            &self.role,
            &self.method,
            &self.path,
            &self.query,
            &self.request_id,
            &self.trace_id,
            &self.client_ip,
            &self.request_body,
            self.status,
            self.outcome.as_str(),
            &self.response_body,
            self.duration_ms,
            self.upstream_ms,
        ])
        .to_string();
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(canonical.as_bytes());
        hex::encode(hasher.finalize())
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

/// How a body is kept: JSON with secrets redacted (keys case-insensitive, any depth), anything
/// else as a short description, and at most `max_bytes` with a marker when cut.
pub fn stored_body(
    body: &[u8],
    content_type: Option<&str>,
    redact_keys: &[String],
    max_bytes: usize,
) -> String {
    if body.is_empty() {
        return String::new();
    }
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut value) => {
            let keys: Vec<&str> = redact_keys.iter().map(String::as_str).collect();
            crate::redact::redact_keys(&mut value, &keys);
            value.to_string()
        }
        Err(_) => {
            return format!(
                "[non-JSON body: {}, {} bytes]",
                content_type.unwrap_or("no content-type"),
                body.len()
            );
        }
    };
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

    fn keys() -> Vec<String> {
        ["password", "secret", "rootPassword"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn bodies_are_redacted_described_and_truncated() {
        let stored = stored_body(
            br#"{"user":{"Password":"p","name":"n"},"secret":"s"}"#,
            None,
            &keys(),
            1000,
        );
        assert!(
            !stored.contains("\"p\"") && !stored.contains("\"s\""),
            "{stored}"
        );
        assert!(stored.contains("[REDACTED]") && stored.contains("\"n\""));
        assert_eq!(
            stored_body(b"\x00\x01", Some("application/octet-stream"), &keys(), 10),
            "[non-JSON body: application/octet-stream, 2 bytes]"
        );
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        let cut = stored_body(long.as_bytes(), None, &keys(), 20);
        assert!(
            cut.starts_with("{\"a\":\"xxxx") && cut.ends_with("[truncated: 108 bytes in all]"),
            "{cut}"
        );
        assert_eq!(stored_body(b"", None, &keys(), 10), "");
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
        let mut changed = record.clone();
        changed.status = Some(200);
        assert_ne!(h, changed.chain_hash(GENESIS_HASH));
        assert_ne!(h, record.chain_hash(&h));
        assert_eq!(h, record.chain_hash(GENESIS_HASH));
    }
}
