//! The request pipeline for Contabo calls (everything under /v1), stage by stage in one place:
//!
//! request id -> path and header hygiene -> team identity -> route class -> permission by role ->
//! body (bounded) -> token + forward (one retry on 401) -> secret adoption -> redaction for the
//! caller's role -> response with x-request-id.
//!
//! The facts every stage needs (request id, client, route class) are gathered once in a
//! [`CallContext`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::SecretString;
use tracing::Instrument;

use crate::app::Gateway;
use crate::clients::{Client, presented_key};
use crate::error::GatewayError;
use crate::redact;
use crate::request_id::{self, Origin, RequestId};
use crate::routes::Operation;
use crate::upstream::{OutgoingCall, headers};

/// What the gateway knows about one call once the caller is identified.
pub struct CallContext {
    pub request_id: RequestId,
    pub client: Arc<Client>,
    pub route: Option<&'static Operation>,
}

/// Entry point for /v1/**: runs the pipeline inside a span carrying the request id.
pub async fn handle(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    let (request_id, origin) = RequestId::from_headers(request.headers());
    let span = tracing::info_span!(
        "call",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        client = tracing::field::Empty,
        route = tracing::field::Empty,
    );
    async move {
        if origin == Origin::ReplacedMalformed {
            tracing::debug!("the caller's x-request-id does not match Contabo's pattern; replaced");
        }
        let _in_flight = InFlight::enter(&gw);
        let started = Instant::now();
        let response = match run(&gw, request, request_id.clone()).await {
            Ok(response) => response,
            Err(error) => error.into_response_with(&request_id),
        };
        tracing::info!(
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "call finished"
        );
        response
    }
    .instrument(span)
    .await
}

async fn run(
    gw: &Gateway,
    request: Request,
    request_id: RequestId,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    check_path(parts.uri.path())?;
    check_header_values(&parts.headers)?;
    let client = identify(gw, &parts.headers)?;
    let route = gw.routes.find(&parts.method, parts.uri.path());
    let span = tracing::Span::current();
    span.record("client", client.name.as_str());
    span.record("route", route.map_or("unknown", |r| r.operation_id));
    let call = CallContext {
        request_id,
        client,
        route,
    };
    authorize(&call, &parts)?;
    let body = read_body(body, &parts.headers, gw.config.server.max_body_bytes).await?;
    let upstream_response = forward(gw, &call, &parts, body).await?;
    respond(gw, &call, upstream_response).await
}

/// Refuses paths that could mean something else after normalisation: dot segments, encoded
/// slashes and backslashes, empty segments.
pub fn check_path(path: &str) -> Result<(), GatewayError> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return Err(GatewayError::BadRequest(
            "the path contains an encoded slash or a backslash; send plain path segments".into(),
        ));
    }
    let dot_segment = lower
        .split('/')
        .any(|s| matches!(s.replace("%2e", ".").as_str(), "." | ".."));
    if dot_segment {
        return Err(GatewayError::BadRequest(
            "the path contains a dot segment (. or ..); send the resolved path".into(),
        ));
    }
    if path.len() > 1 && path[1..].split('/').any(str::is_empty) && !path.ends_with('/') {
        return Err(GatewayError::BadRequest(
            "the path contains an empty segment (//); send the path without it".into(),
        ));
    }
    Ok(())
}

/// Header values must be visible ASCII: anything else cannot be forwarded faithfully.
fn check_header_values(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.iter().find(|(_, v)| v.to_str().is_err()) {
        Some((name, _)) => Err(GatewayError::BadRequest(format!(
            "header {name} has a value with characters outside visible ASCII; send it ASCII-only"
        ))),
        None => Ok(()),
    }
}

/// The calling team, from its key.
pub fn identify(gw: &Gateway, headers: &HeaderMap) -> Result<Arc<Client>, GatewayError> {
    let key = presented_key(headers).map_err(|p| GatewayError::Unauthenticated(p.message()))?;
    gw.clients()
        .identify(key)
        .ok_or(GatewayError::Unauthenticated(
            crate::clients::KeyProblem::Unknown.message(),
        ))
}

fn authorize(call: &CallContext, parts: &Parts) -> Result<(), GatewayError> {
    let role = call.client.role;
    if role.may_call_v1(&parts.method, parts.uri.path()) {
        return Ok(());
    }
    Err(GatewayError::Forbidden {
        role: role.as_str(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        allowance: role.allowance(),
    })
}

/// Reads the whole body, refusing more than `limit` bytes: up front when Content-Length says so,
/// otherwise as soon as the limit is crossed. Buffering makes the retry after a 401 possible.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(GatewayError::PayloadTooLarge { limit }),
        Err(_) => Err(GatewayError::BadRequest(
            "the request body could not be read completely; send it again".into(),
        )),
    }
}

async fn forward(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: Bytes,
) -> Result<reqwest::Response, GatewayError> {
    let mut headers = headers::for_upstream(&parts.headers);
    headers.insert(request_id::HEADER, call.request_id.header_value());
    if call.route.is_some_and(Operation::carries_secrets) {
        // The body must be readable to redact it: ask for it uncompressed.
        headers.remove(header::ACCEPT_ENCODING);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    gw.upstream
        .send(&OutgoingCall {
            method: &parts.method,
            path_and_query,
            headers,
            body,
        })
        .await
}

/// Builds the caller's response: streamed unchanged, unless the route carries secrets, in which
/// case the body is read to adopt a rotated client secret and to redact it for non-admins.
async fn respond(
    gw: &Gateway,
    call: &CallContext,
    upstream: reqwest::Response,
) -> Result<Response, GatewayError> {
    let status = upstream.status();
    let mut headers = headers::for_caller(upstream.headers());
    headers.insert(request_id::HEADER, call.request_id.header_value());
    let route = call.route.filter(|r| r.carries_secrets());
    let body = match route {
        None => Body::from_stream(upstream.bytes_stream()),
        Some(route) => {
            let bytes = upstream
                .bytes()
                .await
                .map_err(|e| gw.upstream.transport_error(&e))?;
            if route.operation_id == "generateClientSecret" && status.is_success() {
                adopt_rotated_secret(gw, &call.client, &bytes);
            }
            if call.client.role.sees_secrets() {
                Body::from(bytes)
            } else {
                headers.remove(header::CONTENT_LENGTH);
                Body::from(redacted(&headers, &bytes, route)?)
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn redacted(headers: &HeaderMap, body: &[u8], route: &Operation) -> Result<Vec<u8>, GatewayError> {
    let refuse = || {
        GatewayError::BadUpstreamResponse(format!(
            "upstream's answer to {} may carry secrets and could not be read to redact them; \
             an admin key can make this call",
            route.operation_id
        ))
    };
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Err(refuse());
    }
    redact::redact_json_body(body, route.secret_fields).ok_or_else(refuse)
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

/// Counts calls in flight; the count drops even when a caller disconnects and the call is dropped.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(gw: &'a Gateway) -> Self {
        gw.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(&gw.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// 400 or 404 for paths outside /v1 and /_gateway, never forwarded.
pub async fn not_found(request: Request) -> Response {
    let (request_id, _) = RequestId::from_headers(request.headers());
    let error = match check_path(request.uri().path()) {
        Err(e) => e,
        Ok(()) => GatewayError::NotFound(format!(
            "{} is not served here: Contabo calls go under /v1/, gateway endpoints under /_gateway/",
            request.uri().path()
        )),
    };
    error.into_response_with(&request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        for bad in [
            "/v1/users/..",
            "/v1/./users",
            "/v1/users/%2e%2E/roles",
            "/v1/users/.%2e",
            "/v1/users%2Fclient",
            "/v1/users%5cclient",
            "/v1//users",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for ok in [
            "/v1/users",
            "/v1/users/abc",
            "/v1/users/a.b",
            "/v1/users/..x",
        ] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
    }
}
