//! Forwarding a call to Contabo and turning the answer into the caller's response: streamed
//! unchanged, or read whole when it carries secrets (to adopt a rotated client secret and to redact
//! for non-admins). A successful write drops the cached reads it changes before the answer goes back.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use std::time::Instant;

use http::{HeaderMap, StatusCode, header};
use secrecy::SecretString;

use super::CallContext;
use crate::clients::Client;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metrics;
use crate::ratelimit;
use crate::redact;
use crate::request_id;
use crate::routes::{CacheGroup, Operation};
use crate::upstream::{OutgoingCall, UpstreamResponse, headers};

/// Sends the call upstream with the gateway's token and the call's request id, once the upstream
/// budget pays for it. After an upstream 429 every upstream call pauses; an idempotent read is
/// sent once more after the pause when that still fits in `max_wait_ms`, a write never is.
pub async fn forward(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: Bytes,
) -> Result<UpstreamResponse, GatewayError> {
    let budget = gw.limits.budget();
    let mut retried = false;
    loop {
        gw.limits
            .upstream_permit(&call.client.name, call.cost, call.started)
            .await?;
        // Boxed: the exchange's future is the largest part of a call's, and every layer above it
        // would otherwise be that much larger and be copied that much more as it is set up.
        let mut response = Box::pin(send(gw, call, parts, body.clone())).await?;
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            budget.upstream_answered();
            return Ok(response);
        }
        let asked = ratelimit::headers::upstream_retry_after(response.headers());
        let pause = Box::pin(budget.upstream_limited(asked)).await;
        let fits = Instant::now() + pause < call.started + gw.limits.max_wait();
        if !call.mutates && !retried && fits {
            retried = true;
            continue;
        }
        if asked.is_none() {
            ratelimit::headers::retry_after(response.headers_mut(), pause);
        }
        return Ok(response);
    }
}

/// One exchange with upstream.
async fn send(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: Bytes,
) -> Result<UpstreamResponse, GatewayError> {
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let started = Instant::now();
    let response = gw
        .upstream
        .send(&OutgoingCall {
            method: &parts.method,
            path_and_query,
            caller_headers: &parts.headers,
            request_id: call.request_id.header_value(),
            // The gateway reads this answer (to redact or to cache it): ask for all of it.
            read_whole: call.route.is_some_and(Operation::needs_readable_body),
            body,
        })
        .await?;
    metrics::upstream_answered(
        call.route_label(),
        &parts.method,
        response.status().as_u16(),
        started.elapsed(),
    );
    Ok(response)
}

/// The caller's response to a forwarded (not cached) call, and the body when `capture` asks for it
/// (the audit of a mutating call stores it; such bodies are read whole, the rest are streamed).
pub async fn respond(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    upstream: UpstreamResponse,
    capture: bool,
) -> Result<(Response, Option<Bytes>), GatewayError> {
    let status = upstream.status();
    if status.is_success() {
        let groups = invalidated_groups(call, parts.uri.path());
        if !groups.is_empty() {
            Box::pin(gw.cache.invalidate(groups)).await;
        }
    }
    let (head, body) = upstream.into_parts();
    let mut headers = headers::for_caller(head.headers);
    headers.insert(request_id::HEADER, call.request_id.header_value());
    let secret_route = call.route.filter(|r| r.carries_secrets());
    if secret_route.is_none() && !capture {
        let mut response = Response::new(gw.upstream.stream_body(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok((response, None));
    }
    let bytes = Box::pin(gw.upstream.read_body(body)).await?;
    let body = match secret_route {
        None => Body::from(bytes.clone()),
        Some(route) => {
            if route.operation_id == "generateClientSecret" && status.is_success() {
                adopt_rotated_secret(gw, &call.client, &bytes);
            }
            let hidden = call.client.hidden_fields(route.secret_fields);
            if hidden.is_empty() {
                Body::from(bytes.clone())
            } else {
                headers.remove(header::CONTENT_LENGTH);
                Body::from(redacted(status, &headers, &bytes, route, &hidden)?)
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok((response, capture.then_some(bytes)))
}

/// The cached reads a successful write changes: from the spec's route class, or for a route the
/// spec does not know, every users entry when it writes under /v1/users or /v1/roles.
fn invalidated_groups(call: &CallContext, path: &str) -> &'static [CacheGroup] {
    match call.route {
        Some(route) => route.invalidates,
        None if call.mutates && crate::clients::touches_identity(path) => &[CacheGroup::Users],
        None => &[],
    }
}

/// The body with `fields` (secret fields of the route) redacted, or an error when it is not one whole JSON
/// object or array (a 206 slice, another media type, an encoding the gateway does not read): such
/// an answer cannot be shown free of secrets and is never passed on.
pub fn redacted(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    route: &Operation,
    fields: &[&str],
) -> Result<Bytes, GatewayError> {
    let refuse = || {
        GatewayError::BadUpstreamResponse(format!(
            "upstream's answer to {} may carry secrets and could not be read to redact them; \
             an admin key can make this call",
            route.operation_id
        ))
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
    let whole_document = body.is_empty()
        || matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        );
    if status == StatusCode::PARTIAL_CONTENT
        || headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
        || !whole_document
        || (!body.is_empty() && !json_type)
    {
        return Err(refuse());
    }
    redact::redact_json_body(body, fields)
        .map(Bytes::from)
        .ok_or_else(refuse)
}

/// After a successful PUT /v1/users/client/secret the old secret no longer works for grants: adopt
/// the new one so the gateway keeps working, and tell the operator to store it.
fn adopt_rotated_secret(gw: &Gateway, client: &Client, body: &[u8]) {
    let secret = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["data"][0]["secret"].as_str().map(str::to_owned));
    match secret {
        Some(secret) => {
            gw.upstream
                .tokens
                .adopt_client_secret(SecretString::from(secret));
            tracing::warn!(
                rotated_by = %client.name,
                "the Contabo client secret was rotated through the gateway; the gateway now uses \
                 the new secret, update CONTABO_CLIENT_SECRET in the stored configuration before \
                 the next restart"
            );
        }
        None => tracing::error!(
            "the client secret was rotated but the answer holds no data[0].secret; later token \
             grants will fail until CONTABO_CLIENT_SECRET is updated"
        ),
    }
}
