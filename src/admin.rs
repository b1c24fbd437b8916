//! The gateway's own endpoints under /_gateway: liveness, readiness and status.
//!
//! Health and readiness need no key (probes call them); status is for admins.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::json;

use crate::app::Gateway;
use crate::clients::Role;
use crate::error::GatewayError;
use crate::pipeline::identify;
use crate::request_id::RequestId;

/// Liveness: the process answers.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 once a Contabo token can be had, 503 with the reason otherwise.
pub async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.upstream.tokens.bearer().await {
        Ok(_) => Json(json!({"ready": true, "checks": {"token": "ok"}})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "checks": {"token": e.to_string()}})),
        )
            .into_response(),
    }
}

/// The refusal for a caller who is not an admin; `None` lets an admin through.
fn refuse_unless_admin(
    gw: &Gateway,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Response> {
    let (request_id, _) = RequestId::from_headers(headers);
    let error = match identify(gw, headers) {
        Ok(client) if client.role == Role::Admin => return None,
        Ok(client) => GatewayError::Forbidden {
            role: client.role.as_str(),
            method: method.to_string(),
            path: uri.path().to_string(),
            allowance: client.role.allowance(),
        },
        Err(error) => error,
    };
    Some(error.into_response_with(&request_id))
}

/// Admin status: calls in flight, token life and grant counts, number of teams.
pub async fn status(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_unless_admin(&gw, &method, &uri, &headers) {
        return refused;
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "in_flight": gw.in_flight.load(Ordering::SeqCst),
        "clients": gw.clients().len(),
        "token": gw.upstream.tokens.status(),
    }))
    .into_response()
}

/// Admin: entries, bytes, hits, misses and evictions of the response cache.
pub async fn cache_stats(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_unless_admin(&gw, &method, &uri, &headers) {
        return refused;
    }
    Json(gw.cache.stats().await).into_response()
}

/// Admin: drops every cached entry (on every replica when Redis is configured).
pub async fn cache_purge(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_unless_admin(&gw, &method, &uri, &headers) {
        return refused;
    }
    gw.cache.purge().await;
    Json(json!({"purged": true})).into_response()
}

/// A panic in a handler becomes a JSON 500 instead of a dropped connection.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    GatewayError::Internal("the gateway failed on this call; it has been logged".into())
        .into_response_with(&RequestId::generate())
}
