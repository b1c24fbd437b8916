//! The gateway's OAuth token endpoint, at the path of Contabo's Keycloak, so a tool that insists on
//! a password grant (`cntb`, Contabo's Terraform and Pulumi providers) works with only its URLs and
//! credentials changed: the client id is the team's name, the client secret its team key.
//!
//! Client authentication by HTTP Basic (each part URL-decoded after base64, as Go's x/oauth2 sends
//! it) or by `client_id`/`client_secret` in the form. Grants `password` (user name and password
//! required, as Keycloak requires them, and otherwise unused), `refresh_token` (one this gateway
//! issued to the same team; not single-use, so concurrent runs sharing a cached token keep
//! working) and `client_credentials`. Answers and errors in Keycloak's shape and types. Failed
//! attempts count toward the per-address authentication throttle.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use crate::clients::Client;
use crate::error::GatewayError;
use crate::gateway::{ClientAddr, Gateway};
use crate::request_id::{self, RequestId};
use crate::team_token::{Grant, TokenSigner, Use};

/// The path of Contabo's Keycloak token endpoint.
pub const TOKEN_PATH: &str = "/auth/realms/contabo/protocol/openid-connect/token";
/// A token request is a short form; anything longer is not one.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// An OAuth error answer (RFC 6749 section 5.2, as Keycloak words it).
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    fn invalid_client(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    /// Whether the attempt counts as a failed authentication (against key guessing).
    fn is_failed_authentication(&self) -> bool {
        matches!(self.error, "invalid_client" | "invalid_grant")
    }

    fn into_response(self, request_id: &RequestId) -> Response {
        let body = json!({
            "error": self.error,
            "error_description": self.description,
            "request_id": request_id.as_str(),
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        finish_headers(response.headers_mut(), request_id);
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"contabo\""),
            );
        }
        response
    }
}

/// POST on the token path.
pub async fn token(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let request_id = RequestId::of_call(request.extensions(), request.headers());
    let Some(signer) = &gw.team_tokens else {
        return GatewayError::NotFound(
            "the gateway's token endpoint is off: set auth.token_signing_key_file (or \
             GATEWAY_TOKEN_SIGNING_KEY) to a key of at least 32 bytes that every replica shares, \
             or send the team key as `Authorization: Bearer <key>`"
                .into(),
        )
        .into_response_with(&request_id);
    };
    let address = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
    if let Err(throttled) = gw.auth_throttle.check(address) {
        return throttled.into_response_with(&request_id);
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return OAuthError::invalid_request(format!(
                "the token request must be a form of at most {MAX_FORM_BYTES} bytes"
            ))
            .into_response(&request_id);
        }
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    match grant(&gw, signer, &parts.headers, &form).await {
        Ok(answer) => {
            let mut response = (StatusCode::OK, axum::Json(answer)).into_response();
            finish_headers(response.headers_mut(), &request_id);
            response
        }
        Err(refusal) => {
            if refusal.is_failed_authentication() {
                gw.auth_throttle.failed(address);
            }
            tracing::info!(
                error = refusal.error,
                status = refusal.status.as_u16(),
                "token request refused"
            );
            refusal.into_response(&request_id)
        }
    }
}

/// Token answers are never stored by caches (RFC 6749 section 5.1).
fn finish_headers(headers: &mut HeaderMap, request_id: &RequestId) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(request_id::HEADER, request_id.header_value());
}

async fn grant(
    gw: &Gateway,
    signer: &TokenSigner,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<serde_json::Value, OAuthError> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let team = authenticate(gw, headers, form)?;
    let fingerprint = team.key_fingerprint();
    let (username, session) = match field("grant_type") {
        "password" => {
            for name in ["username", "password"] {
                if field(name).is_empty() {
                    return Err(OAuthError::invalid_grant(format!(
                        "Missing parameter: {name} (the password grant needs a user name and a \
                         password; the gateway does not check them, any non-empty value works)"
                    )));
                }
            }
            (
                field("username").to_string(),
                uuid::Uuid::new_v4().to_string(),
            )
        }
        "client_credentials" => (
            format!("service-account-{}", team.name),
            uuid::Uuid::new_v4().to_string(),
        ),
        "refresh_token" => {
            let presented = field("refresh_token");
            if presented.is_empty() {
                return Err(OAuthError::invalid_request(
                    "Missing parameter: refresh_token",
                ));
            }
            let claims = signer.verify(presented, Use::Refresh).map_err(|refused| {
                OAuthError::invalid_grant(format!("Invalid refresh token: {refused}"))
            })?;
            if claims.azp != *team.name {
                return Err(OAuthError::invalid_grant(
                    "Invalid refresh token: it was issued to another client",
                ));
            }
            if claims.kfp != fingerprint {
                return Err(OAuthError::invalid_grant(
                    "Invalid refresh token: the team's key was rotated since; sign in again",
                ));
            }
            (claims.preferred_username, claims.sid)
        }
        "" => {
            return Err(OAuthError::invalid_request(
                "Missing form parameter: grant_type (password, refresh_token or client_credentials)",
            ));
        }
        other => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                    "Unsupported grant_type {other:?}: use password, refresh_token or \
                     client_credentials"
                ),
            ));
        }
    };
    let subject = account_user_id(gw).await?;
    let auth = &gw.config.auth;
    let grant = |lifetime_secs| Grant {
        team: &team.name,
        key_fingerprint: &fingerprint,
        username: &username,
        subject: subject.as_deref(),
        session: &session,
        lifetime_secs,
    };
    let access = signer.issue(&grant(auth.token_lifetime.as_secs()), Use::Access);
    let refresh = signer.issue(&grant(auth.refresh_token_lifetime.as_secs()), Use::Refresh);
    tracing::info!(team = %team.name, grant = field("grant_type"), "token issued");
    Ok(json!({
        "access_token": access,
        "expires_in": auth.token_lifetime.as_secs(),
        "refresh_expires_in": auth.refresh_token_lifetime.as_secs(),
        "refresh_token": refresh,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "session_state": session,
        "scope": "profile email",
    }))
}

/// The team whose name and key the request presents, by HTTP Basic or in the form.
fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Arc<Client>, OAuthError> {
    let (name, key) = match headers.get(header::AUTHORIZATION) {
        Some(value) => basic_credentials(value).ok_or_else(|| {
            OAuthError::invalid_client(
                "the Authorization header must be `Basic base64(team:key)`, the team's name and \
                 its key",
            )
        })?,
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                (id.clone(), secret.clone())
            }
            _ => {
                return Err(OAuthError::invalid_client(
                    "no client credentials: send the team's name as client_id and its key as \
                     client_secret, by HTTP Basic or in the form",
                ));
            }
        },
    };
    gw.clients()
        .identify(&key)
        .filter(|team| *team.name == *name)
        .ok_or_else(|| OAuthError::invalid_client("Invalid client or Invalid client credentials"))
}

/// `Basic base64(id:secret)`, each part URL-decoded (RFC 6749 section 2.3.1).
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let (scheme, encoded) = value.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |part: &str| -> String {
        form_urlencoded::parse(format!("v={part}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// The user id of the company's Contabo credential, which tokens carry as `sub` (Terraform's
/// provider reads it). Known once the gateway holds a Contabo token; a token is got for it if
/// none was yet. When Contabo's token carries no `sub`, tokens go without one.
async fn account_user_id(gw: &Gateway) -> Result<Option<String>, OAuthError> {
    if let Some(subject) = gw.upstream.tokens.subject() {
        return Ok(Some(subject));
    }
    match gw.upstream.tokens.bearer().await {
        Ok(_) => Ok(gw.upstream.tokens.subject()),
        Err(error) => Err(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            format!(
                "the gateway needs Contabo's token to learn the account's user id and cannot get \
                 one now ({error}); try again shortly"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_parts_are_url_decoded() {
        let encode = |s: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        assert_eq!(
            basic_credentials(&encode("team%20a:k%3Ay+z")),
            Some(("team a".into(), "k:y z".into()))
        );
        assert_eq!(
            basic_credentials(&encode("team:key-_A")),
            Some(("team".into(), "key-_A".into()))
        );
        assert_eq!(basic_credentials(&encode("no-colon")), None);
        assert_eq!(
            basic_credentials(&HeaderValue::from_static("Bearer x")),
            None
        );
    }
}
