//! The request-id policy: every call that reaches Contabo carries a valid `x-request-id`.
//!
//! Contabo requires `x-request-id` to match
//! `^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-5][0-9A-Fa-f]{3}-[089abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$`.
//! A caller's value that matches is kept (it joins our logs and audit to Contabo's audit);
//! anything else is replaced by a fresh UUID v4. The id that upstream received is echoed back.

use http::{HeaderMap, HeaderValue};

pub const HEADER: &str = "x-request-id";
pub const TRACE_HEADER: &str = "x-trace-id";

/// A request id known to match Contabo's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

/// What happened to the caller's request id, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Kept,
    Generated,
    ReplacedMalformed,
}

impl RequestId {
    pub fn generate() -> Self {
        let id = uuid::Uuid::new_v4();
        let mut buf = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buf);
        Self(HeaderValue::from_str(text).expect("a UUID is a valid header value"))
    }

    /// Applies the policy to the caller's headers.
    pub fn from_headers(headers: &HeaderMap) -> (Self, Origin) {
        match headers.get(HEADER) {
            None => (Self::generate(), Origin::Generated),
            Some(v) if matches_contabo_pattern(v.as_bytes()) => (Self(v.clone()), Origin::Kept),
            Some(_) => (Self::generate(), Origin::ReplacedMalformed),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens can be inside: checked on construction.
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Contabo's pattern, checked position by position: 8-4-4-4-12 hex digits, the version digit
/// 0-5 and the variant digit one of 0, 8, 9, a, b.
pub fn matches_contabo_pattern(value: &[u8]) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    if value.len() != 36 {
        return false;
    }
    let mut groups = value.split(|b| *b == b'-');
    for (index, expected_len) in GROUPS.iter().enumerate() {
        let Some(group) = groups.next() else {
            return false;
        };
        if group.len() != *expected_len || !group.iter().all(u8::is_ascii_hexdigit) {
            return false;
        }
        match index {
            2 if !(b'0'..=b'5').contains(&group[0]) => return false,
            3 if !b"089abAB".contains(&group[0]) => return false,
            _ => {}
        }
    }
    groups.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern() {
        let ok = [
            "04e0f898-37b4-48bc-a794-1a57abe6aa31",
            "04E0F898-37B4-08BC-B794-1A57ABE6AA31",
            "00000000-0000-5000-0000-000000000000",
        ];
        let bad = [
            "",
            "not-a-uuid",
            "04e0f898-37b4-68bc-a794-1a57abe6aa31", // version 6
            "04e0f898-37b4-48bc-c794-1a57abe6aa31", // variant c
            "04e0f898-37b4-48bc-a794-1a57abe6aa3",  // short
            "04e0f89837b4-48bc-a794-1a57abe6aa31-",
            "04e0f898-37b4-48bc-a794-1a57abe6aa3g",
            "04e0f898-37b4-48bc-a794--a57abe6aa31",
        ];
        for v in ok {
            assert!(matches_contabo_pattern(v.as_bytes()), "{v}");
        }
        for v in bad {
            assert!(!matches_contabo_pattern(v.as_bytes()), "{v}");
        }
    }

    #[test]
    fn generated_ids_match() {
        for _ in 0..100 {
            assert!(matches_contabo_pattern(
                RequestId::generate().as_str().as_bytes()
            ));
        }
    }

    #[test]
    fn policy() {
        let mut h = HeaderMap::new();
        assert_eq!(RequestId::from_headers(&h).1, Origin::Generated);
        h.insert(
            HEADER,
            "04e0f898-37b4-48bc-a794-1a57abe6aa31".parse().unwrap(),
        );
        let (id, origin) = RequestId::from_headers(&h);
        assert_eq!(
            (id.as_str(), origin),
            ("04e0f898-37b4-48bc-a794-1a57abe6aa31", Origin::Kept)
        );
        h.insert(HEADER, "abc".parse().unwrap());
        let (id, origin) = RequestId::from_headers(&h);
        assert_eq!(origin, Origin::ReplacedMalformed);
        assert_ne!(id.as_str(), "abc");
    }
}
