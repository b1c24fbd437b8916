//! Redaction of secrets in JSON bodies.
//!
//! A secret-bearing response (the client `secret`, an S3 `secretKey`, a stored secret's `value`) is
//! shown in the clear only to admins. For everyone else the value is replaced by the string
//! "[REDACTED]", so typed clients still parse the response.

use serde_json::Value;

pub const REDACTED: &str = "[REDACTED]";

/// Replaces the value of every key in `keys` (case-insensitive, at any depth). Returns how many
/// values were replaced.
pub fn redact_keys(value: &mut Value, keys: &[&str]) -> usize {
    match value {
        Value::Object(map) => map
            .iter_mut()
            .map(|(k, v)| {
                if keys.iter().any(|s| s.eq_ignore_ascii_case(k)) {
                    *v = Value::String(REDACTED.into());
                    1
                } else {
                    redact_keys(v, keys)
                }
            })
            .sum(),
        Value::Array(items) => items.iter_mut().map(|v| redact_keys(v, keys)).sum(),
        _ => 0,
    }
}

/// Redacts a JSON body. `None` when the body is not JSON: the caller must then refuse to pass it on,
/// since it cannot be shown to be free of secrets.
pub fn redact_json_body(body: &[u8], keys: &[&str]) -> Option<Vec<u8>> {
    if body.is_empty() {
        return Some(Vec::new());
    }
    let mut value: Value = serde_json::from_slice(body).ok()?;
    redact_keys(&mut value, keys);
    serde_json::to_vec(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_case_insensitive() {
        let mut v = json!({"data": [{"secret": "s1", "id": "x", "inner": {"SecretKey": "k"}}], "secret2": "keep"});
        assert_eq!(redact_keys(&mut v, &["secret", "secretKey"]), 2);
        assert_eq!(v["data"][0]["secret"], REDACTED);
        assert_eq!(v["data"][0]["inner"]["SecretKey"], REDACTED);
        assert_eq!(v["data"][0]["id"], "x");
        assert_eq!(v["secret2"], "keep");
    }

    #[test]
    fn non_json_is_refused() {
        assert!(redact_json_body(b"not json", &["secret"]).is_none());
        assert_eq!(redact_json_body(b"", &["secret"]), Some(vec![]));
    }
}
