//! The sandbox's Keycloak token endpoint: password and refresh_token grants, as Contabo's
//! auth server answers them (401 invalid_client for a wrong client secret, 400 invalid_grant for a
//! wrong user credential or a dead refresh token).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use http::StatusCode;
use serde_json::json;

use super::state::SandboxState;

pub const TOKEN_PATH: &str = "/auth/realms/contabo/protocol/openid-connect/token";

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

pub async fn token(
    State(state): State<Arc<SandboxState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if state.faults.auth_down.load(Ordering::SeqCst) {
        state
            .counters
            .unavailable_grants
            .fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, "auth server unavailable").into_response();
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let credential = state.credential();
    let refuse = |status, error, description| {
        state.counters.refused_grants.fetch_add(1, Ordering::SeqCst);
        oauth_error(status, error, description)
    };
    if field("client_id") != credential.client_id
        || field("client_secret") != credential.client_secret
    {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Invalid client or Invalid client credentials",
        );
    }
    match field("grant_type") {
        "password" => {
            if field("username") != credential.username || field("password") != credential.password
            {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "invalid_grant",
                    "Invalid user credentials",
                );
            }
            state
                .counters
                .password_grants
                .fetch_add(1, Ordering::SeqCst);
        }
        "refresh_token" => {
            if !state.take_refresh_token(field("refresh_token")) {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "Token is not active",
                );
            }
            state.counters.refresh_grants.fetch_add(1, Ordering::SeqCst);
        }
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant_type",
            );
        }
    }
    let (access, refresh) = state.issue_tokens();
    Json(json!({
        "access_token": access,
        "expires_in": state.options.access_token_secs,
        "refresh_expires_in": state.options.refresh_token_secs,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": "profile email",
    }))
    .into_response()
}
