//! The request-id policy: every call that reaches Contabo carries a valid `x-request-id`.
//!
//! Contabo requires `x-request-id` to match
//! `^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-5][0-9A-Fa-f]{3}-[089abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$`.
//! A caller's value that matches is kept (it joins our logs and audit to Contabo's audit);
//! anything else is replaced by a fresh UUID. The id that upstream received is echoed back.
//!
//! Generated ids are version 1 (time-based, with a random node id per process): ids made one after
//! another sort one after another, so the audit log's request-id index grows at one place instead
//! of touching a random page per record (random v4 keys doubled what every audit commit wrote).

use http::{HeaderMap, HeaderName, HeaderValue};

/// A `HeaderName` constant, not a string: a string name is parsed and checked on every use.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACE_HEADER: &str = "x-trace-id";

/// A request id known to match Contabo's pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

/// This process's node id for version 1 UUIDs: random, with the multicast bit set as RFC 9562
/// asks of a node id that is not a MAC address. The shared clock sequence of the `uuid` crate keeps
/// ids made in the same clock tick apart.
fn node_id() -> &'static [u8; 6] {
    static NODE: std::sync::OnceLock<[u8; 6]> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let random = uuid::Uuid::new_v4();
        let mut node = [0u8; 6];
        node.copy_from_slice(&random.as_bytes()[..6]);
        node[0] |= 0x01;
        node
    })
}

/// What happened to the caller's request id, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Kept,
    Generated,
    ReplacedMalformed,
}

impl RequestId {
    pub fn generate() -> Self {
        let id = uuid::Uuid::now_v1(node_id());
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

    /// The id the per-call wrapper gave this call (it stores it in the request's extensions);
    /// outside the wrapper, the policy applied to the headers.
    pub fn of_call(extensions: &http::Extensions, headers: &HeaderMap) -> Self {
        extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| Self::from_headers(headers).0)
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
    fn generated_ids_are_unique_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..20_000)
                        .map(|_| RequestId::generate().as_str().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(seen.insert(id), "a generated request id repeated");
            }
        }
        assert_eq!(seen.len(), 80_000);
    }

    #[test]
    fn ids_generated_in_a_row_sort_in_order() {
        // Within one wrap of the 32-bit low time field (about 7 minutes); a run of 1000 ids made
        // in a row crosses a wrap at most once.
        let ids: Vec<String> = (0..1000)
            .map(|_| RequestId::generate().as_str().to_string())
            .collect();
        let out_of_order = ids.windows(2).filter(|w| w[0] >= w[1]).count();
        assert!(
            out_of_order <= 1,
            "{out_of_order} ids sorted before their predecessor"
        );
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
