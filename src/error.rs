//! The one error type of the gateway and its JSON form.
//!
//! Every error the gateway itself produces answers `{"error": code, "message": text, "request_id": id}`
//! with the `x-request-id` header, so a caller can always quote the id in a support case. Messages say
//! what to fix and never carry a secret.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::ratelimit;
use crate::request_id::RequestId;

/// The methods forwarded to Contabo: those its spec uses, plus HEAD and OPTIONS (the `allow` of a
/// 405).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("role {role} may not {method} {path}; role {role} may make {allowance}")]
    Forbidden {
        role: &'static str,
        method: String,
        path: String,
        allowance: &'static str,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "{sent} is not the path Contabo's API spells this call with; send it as {canonical} \
         (no other spelling of a path is forwarded)"
    )]
    NonCanonicalPath { sent: String, canonical: String },
    #[error(
        "method {0} is not forwarded to Contabo; use one of {ALLOWED_METHODS} (methods are \
         case-sensitive)"
    )]
    MethodNotAllowed(String),
    #[error(
        "too many calls with an unknown or missing key from this address; retry after \
         {retry_after_secs} s with a valid team key"
    )]
    AuthThrottled { retry_after_secs: u64 },
    #[error("the request body is larger than {limited_by} ({limit} bytes); send less")]
    PayloadTooLarge {
        limit: usize,
        /// What sets the limit, e.g. the setting's name.
        limited_by: &'static str,
    },
    #[error(
        "the gateway could not use its Contabo credential: {reason}; \
         the operator must check CONTABO_CLIENT_ID, CONTABO_CLIENT_SECRET, CONTABO_API_USER \
         and CONTABO_API_PASSWORD"
    )]
    CredentialUnusable {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("upstream {0} could not be reached; retry later")]
    UpstreamUnreachable(String),
    #[error("upstream did not answer within upstream.timeout_secs ({0} s); retry later")]
    UpstreamTimeout(u64),
    #[error("{0}")]
    BadUpstreamResponse(String),
    #[error(
        "the audit log cannot be written ({0}); mutating calls are refused until it can, retry later"
    )]
    AuditUnavailable(String),
    #[error(
        "team {team} is over its rate limit ({per_second} calls/s, burst {burst}); retry after {} s",
        crate::ratelimit::headers::whole_seconds(*retry_after).max(1)
    )]
    RateLimited {
        team: String,
        /// The team's limit as configured (what `ratelimit-policy` advertises).
        per_second: f64,
        burst: u32,
        /// Where its bucket stands: tokens left, the wait until the call's cost is there, and
        /// until the bucket is full (`ratelimit`, `retry-after`).
        remaining: u32,
        retry_after: std::time::Duration,
        reset_after: std::time::Duration,
    },
    #[error(
        "the shared Contabo credential's call budget (rate_limit.upstream_per_second) is used up \
         and the call waited its {max_wait_ms} ms; retry after {} s",
        crate::ratelimit::headers::whole_seconds(*retry_after).max(1)
    )]
    UpstreamBudgetExhausted {
        retry_after: std::time::Duration,
        max_wait_ms: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl From<ratelimit::Refusal> for GatewayError {
    fn from(refusal: ratelimit::Refusal) -> Self {
        match refusal {
            ratelimit::Refusal::TeamLimited { team, quota } => GatewayError::RateLimited {
                team,
                per_second: quota.policy.per_second,
                burst: quota.policy.burst,
                remaining: quota.decision.remaining,
                retry_after: quota.decision.retry_after,
                reset_after: quota.decision.reset_after,
            },
            ratelimit::Refusal::BudgetExhausted {
                retry_after,
                max_wait_ms,
            } => GatewayError::UpstreamBudgetExhausted {
                retry_after,
                max_wait_ms,
            },
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden { .. } => StatusCode::FORBIDDEN,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::NonCanonicalPath { .. } => StatusCode::BAD_REQUEST,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::AuthThrottled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::CredentialUnusable { .. }
            | GatewayError::UpstreamUnreachable(_)
            | GatewayError::BadUpstreamResponse(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::AuditUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimited { .. } | GatewayError::UpstreamBudgetExhausted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether upstream failed (unreachable, too slow, unreadable), as opposed to the call itself.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnreachable(_)
                | GatewayError::UpstreamTimeout(_)
                | GatewayError::BadUpstreamResponse(_)
        )
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Unauthenticated(_) => "unauthenticated",
            GatewayError::Forbidden { .. } => "forbidden",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::NonCanonicalPath { .. } => "non_canonical_path",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::AuthThrottled { .. } => "too_many_auth_failures",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::CredentialUnusable { .. } => "upstream_credential_unusable",
            GatewayError::UpstreamUnreachable(_) => "upstream_unreachable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::BadUpstreamResponse(_) => "bad_upstream_response",
            GatewayError::AuditUnavailable(_) => "audit_unavailable",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::UpstreamBudgetExhausted { .. } => "upstream_budget_exhausted",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    /// The JSON response for this error, tagged with the call's request id.
    pub fn into_response_with(self, request_id: &RequestId) -> Response {
        let body = json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id.as_str(),
        });
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(crate::request_id::HEADER, request_id.header_value());
        match &self {
            GatewayError::CredentialUnusable {
                retry_after_secs, ..
            } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(*retry_after_secs),
                );
            }
            GatewayError::RateLimited {
                per_second,
                burst,
                remaining,
                retry_after,
                reset_after,
                ..
            } => {
                let policy = ratelimit::Policy {
                    per_second: *per_second,
                    burst: *burst,
                };
                let policy = ratelimit::headers::policy_value(policy);
                ratelimit::headers::retry_after(headers, *retry_after);
                ratelimit::headers::apply(headers, &policy, *remaining, *reset_after);
            }
            GatewayError::UpstreamBudgetExhausted { retry_after, .. } => {
                ratelimit::headers::retry_after(headers, *retry_after);
            }
            GatewayError::AuthThrottled { retry_after_secs } => {
                headers.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(*retry_after_secs),
                );
            }
            GatewayError::MethodNotAllowed(_) => {
                headers.insert(
                    http::header::ALLOW,
                    HeaderValue::from_static(ALLOWED_METHODS),
                );
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_shape_and_header() {
        let id = RequestId::generate();
        let resp = GatewayError::BadRequest("fix it".into()).into_response_with(&id);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["x-request-id"], id.as_str());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"], "bad_request");
        assert_eq!(v["message"], "fix it");
        assert_eq!(v["request_id"], id.as_str());
    }

    #[test]
    fn a_team_over_its_limit_is_told_its_limit_and_when_to_retry() {
        let refused = GatewayError::RateLimited {
            team: "team-a".into(),
            per_second: 5.0,
            burst: 10,
            remaining: 0,
            retry_after: std::time::Duration::from_millis(1200),
            reset_after: std::time::Duration::from_millis(2100),
        };
        assert_eq!(
            refused.to_string(),
            "team team-a is over its rate limit (5 calls/s, burst 10); retry after 2 s"
        );
        let resp = refused.into_response_with(&RequestId::generate());
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["ratelimit-policy"], "\"team\";q=10;w=2");
        assert_eq!(resp.headers()["ratelimit"], "\"team\";r=0;t=3");
    }
}
