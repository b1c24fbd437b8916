//! The rate-limit headers a caller sees: `retry-after` on 429, and the IETF fields of
//! draft-ietf-httpapi-ratelimit-headers (`ratelimit-policy: "team";q=10;w=2` and
//! `ratelimit: "team";r=7;t=1`) on every answer to an admitted or refused call.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Policy;

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whole seconds, rounded up, and never 0 for a wait that is not zero.
pub fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    if wait.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// The `ratelimit-policy` value of a team: its burst and the seconds to refill it. Made once per
/// team, not per call.
pub fn policy_value(policy: Policy) -> HeaderValue {
    let window = whole_seconds(Duration::from_secs_f64(
        f64::from(policy.burst) / policy.per_second,
    ))
    .max(1);
    HeaderValue::from_str(&format!("\"team\";q={};w={window}", policy.burst))
        .expect("digits and quotes are a valid header value")
}

/// The team's quota policy and what is left of it after this call. The `ratelimit` value is
/// written digit by digit into one buffer: it is made for every call.
pub fn apply(headers: &mut HeaderMap, policy: &HeaderValue, remaining: u32, reset_after: Duration) {
    let mut digits = itoa::Buffer::new();
    let mut state = bytes::BytesMut::with_capacity(32);
    state.extend_from_slice(b"\"team\";r=");
    state.extend_from_slice(digits.format(remaining).as_bytes());
    state.extend_from_slice(b";t=");
    state.extend_from_slice(digits.format(whole_seconds(reset_after)).as_bytes());
    headers.insert(RATELIMIT_POLICY, policy.clone());
    if let Ok(state) = HeaderValue::from_maybe_shared(state.freeze()) {
        headers.insert(RATELIMIT, state);
    }
}

/// `retry-after` in whole seconds (at least 1).
pub fn retry_after(headers: &mut HeaderMap, wait: Duration) {
    headers.insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(whole_seconds(wait).max(1)),
    );
}

/// The wait an upstream 429 asks for: `retry-after` in seconds or as an HTTP date.
pub fn upstream_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_to_system_time(value)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_to_system_time(value: &str) -> Option<std::time::SystemTime> {
    let parsed = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let secs = u64::try_from(parsed.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }

    #[test]
    fn ietf_fields() {
        let mut headers = HeaderMap::new();
        let policy = policy_value(Policy {
            per_second: 5.0,
            burst: 10,
        });
        apply(&mut headers, &policy, 7, Duration::from_millis(600));
        assert_eq!(headers[RATELIMIT_POLICY], "\"team\";q=10;w=2");
        assert_eq!(headers[RATELIMIT], "\"team\";r=7;t=1");
    }

    #[test]
    fn upstream_retry_after_in_seconds_or_date() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(upstream_retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(upstream_retry_after(&headers), Some(Duration::ZERO));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(upstream_retry_after(&headers), None);
    }
}
