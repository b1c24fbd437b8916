//! The request pipeline for Contabo calls (everything under /v1), stage by stage in one place
//! ([`run`]):
//!
//! request id -> [address over its 401 limit: 429] -> team identity -> route class (the path read
//! as Contabo's router reads it) -> [mutating: audit trail opened] -> forwarded method, path
//! hygiene and spelling, header hygiene, permission by role, team rate limit, bounded body (a
//! refusal is audited as rejected) -> [cacheable read: cache lookup, coalesced miss] ->
//! [mutating, in a task of its own that the caller leaving does not cancel: pending audit record
//! committed] -> upstream budget (fair queue; upstream 429 pause) -> token + forward (one retry on
//! 401) -> [write: cache invalidation] -> secret adoption -> redaction for the caller's role ->
//! [mutating: audit record finalised] -> response with x-request-id and the team's quota.
//!
//! The facts every stage needs (request id, client, route class) are gathered once in a
//! [`CallContext`].
//!
//! Stages that most calls skip and whose futures are large (the cache stage, the audit trail; in
//! other modules token renewal, Redis, opening an upstream connection) are awaited boxed, and so
//! is the upstream exchange: an async fn's future is as large as everything it may await, and each
//! layer's future is copied whole into the layer above as it is set up (`-Zprint-type-sizes`:
//! 20 KB at first; 6.9 KB with the rare stages boxed; 3.2 KB with the trail and the exchange boxed
//! too and the request head borrowed instead of moved).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

mod cached;
mod checks;
mod forward;

use axum::extract::Request;
use axum::response::Response;
use http::Method;
use http::request::Parts;

pub use checks::{check_path, identify};

use crate::audit::{AuditTrail, Caller};
use crate::clients::Client;
use crate::error::GatewayError;
use crate::gateway::{ClientCertificate, Gateway};
use crate::metrics;
use crate::ratelimit::Quota;
use crate::request_id::RequestId;
use crate::routes::Operation;
use checks::{authorize, check_header_values, check_method, read_body};
use forward::{forward, respond};

/// What the gateway knows about one call once the caller is identified.
pub struct CallContext {
    pub request_id: RequestId,
    pub client: Arc<Client>,
    pub route: Option<&'static Operation>,
    /// Rate-limit tokens the call costs (`[rate_limit.route_costs]`, else 1).
    pub cost: u32,
    /// When the gateway took the call: the upstream budget's `max_wait_ms` counts from here.
    pub started: Instant,
    /// The path as Contabo's spec spells it, when the caller spelt it otherwise (the call is then
    /// refused, so that every check sees the operation upstream would execute).
    pub respell: Option<String>,
    /// The caller's address (the audit records it).
    pub peer: Option<SocketAddr>,
    /// Whether the call changes something upstream, decided once: the operation's class from the
    /// route table, or for a path outside it every method but GET, HEAD and OPTIONS (an unknown
    /// method is a write until proven otherwise). The audit trail, the retry after a 429 and the
    /// cache invalidation all go by it.
    pub mutates: bool,
}

impl CallContext {
    /// The label of the call's operation in metrics and logs.
    pub fn route_label(&self) -> &'static str {
        self.route.map_or("unknown", |op| op.operation_id)
    }
}

/// Whether a call of `method` on `route` (None: outside the route table) changes something.
fn mutates(method: &Method, route: Option<&'static Operation>) -> bool {
    match route {
        Some(operation) => operation.mutates && method != Method::HEAD,
        None => ![Method::GET, Method::HEAD, Method::OPTIONS].contains(method),
    }
}

/// Whether a path is a Contabo call (/v1 and /v1/**), served by the pipeline.
pub fn is_contabo_call(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// A Contabo call, inside the per-call wrapper (request id, span, in-flight count, panic answer
/// and log line are the wrapper's, in `app`): runs the pipeline, answers a refusal or failure as
/// JSON with the call's request id, and counts the call in the metrics of its team and route.
pub async fn handle(
    gw: &Arc<Gateway>,
    request: Request,
    request_id: RequestId,
    peer: Option<SocketAddr>,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let mut labels = CallLabels::default();
    let call = run(gw, request, request_id.clone(), started, peer, &mut labels);
    let response = match call.await {
        Ok(response) => response,
        Err(error) => error.into_response_with(&request_id),
    };
    if let Some(client) = &labels.client {
        let status = response.status().as_u16();
        metrics::call_finished(
            labels.route,
            &method,
            status,
            &client.name,
            started.elapsed(),
        );
    }
    response
}

/// What the call's metrics are labelled with, learnt as the pipeline goes (an unidentified
/// caller has no client and is not counted per team).
#[derive(Default)]
struct CallLabels {
    client: Option<Arc<Client>>,
    route: &'static str,
}

async fn run(
    gw: &Arc<Gateway>,
    request: Request,
    request_id: RequestId,
    started: Instant,
    peer: Option<SocketAddr>,
    labels: &mut CallLabels,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    let client = identify(
        gw,
        &parts.headers,
        peer.map(|p| p.ip()),
        parts.extensions.get::<ClientCertificate>(),
    )?;
    let classified = gw.routes.classify(&parts.method, parts.uri.path());
    let route = classified.operation;
    let call = CallContext {
        request_id,
        client,
        route,
        cost: gw.limits.cost(route),
        started,
        respell: classified.canonical,
        peer,
        mutates: mutates(&parts.method, route),
    };
    let span = tracing::Span::current();
    span.record("client", &*call.client.name);
    labels.route = call.route_label();
    span.record("route", labels.route);
    labels.client = Some(call.client.clone());
    // Boxed: a call's future holds the trail across every await, most calls have none.
    let caller = Caller {
        request_id: &call.request_id,
        team: &call.client.name,
        role: call.client.role.as_str(),
        peer: call.peer,
        mutates: call.mutates,
    };
    let trail = gw.audit.trail(&caller, &parts).map(Box::new);
    let (body, quota) = match admit(gw, &call, &parts, body).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            if let Some(trail) = trail {
                Box::pin(trail.failed(&refusal, true)).await;
            }
            return Err(refusal);
        }
    };
    let mut response = match trail {
        // A write's outcome is recorded whether or not its caller waits for it: its exchange runs
        // in a task of its own, which a caller that disconnects does not cancel.
        Some(trail) => {
            let gw = gw.clone();
            let write = async move { proceed(&gw, &call, &parts, body, Some(trail)).await };
            tokio::spawn(tracing::Instrument::instrument(
                write,
                tracing::Span::current(),
            ))
            .await
            .unwrap_or_else(|_| {
                Err(GatewayError::Internal(
                    "the call failed inside the gateway; its audit record says interrupted".into(),
                ))
            })?
        }
        None => proceed(gw, &call, &parts, body, None).await?,
    };
    if let Some(quota) = quota {
        quota.apply(response.headers_mut());
    }
    Ok(response)
}

/// An admitted call: from the cache, or forwarded with its audit trail.
async fn proceed(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: bytes::Bytes,
    mut trail: Option<Box<AuditTrail>>,
) -> Result<Response, GatewayError> {
    let cacheable = call
        .route
        .and_then(|r| r.cached_as)
        .filter(|_| parts.method == Method::GET);
    if let (Some(group), true) = (cacheable, gw.cache.enabled()) {
        return Box::pin(cached::read(gw, call, parts, group)).await;
    }
    if let Some(trail) = &mut trail {
        Box::pin(trail.begin(&body, &parts.headers)).await?;
    }
    let forwarded = match forward(gw, call, parts, body).await {
        Ok(upstream) => respond(gw, call, parts, upstream, trail.is_some()).await,
        Err(error) => Err(error),
    };
    match (forwarded, trail) {
        (Ok((response, captured)), Some(trail)) => {
            let body = captured.unwrap_or_default();
            Box::pin(trail.forwarded(response.status().as_u16(), &body, response.headers())).await;
            Ok(response)
        }
        (Ok((response, _)), None) => Ok(match cacheable {
            Some(_) => cached::bypassed(response),
            None => response,
        }),
        (Err(error), Some(trail)) => {
            Box::pin(trail.failed(&error, false)).await;
            Err(error)
        }
        (Err(error), None) => Err(error),
    }
}

/// The checks a call must pass before anything is sent upstream: a forwarded method, path and
/// header hygiene (one spelling per operation), permission by role, the team's rate limit, the bounded body. Gives the body and the quota the
/// team has left (None with limits off).
async fn admit(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: axum::body::Body,
) -> Result<(bytes::Bytes, Option<Quota>), GatewayError> {
    check_method(&parts.method)?;
    check_path(parts.uri.path())?;
    if let Some(canonical) = &call.respell {
        return Err(GatewayError::NonCanonicalPath {
            sent: parts.uri.path().to_string(),
            canonical: canonical.clone(),
        });
    }
    check_header_values(&parts.headers)?;
    authorize(call, parts)?;
    let quota = gw
        .limits
        .admit(&call.client.name, &call.client.limit, call.cost)
        .await?;
    let body = read_body(body, &parts.headers, gw.config.server.max_body_bytes).await?;
    Ok((body, quota))
}

/// 400 or 404 for paths outside /v1 and /_gateway, never forwarded.
pub async fn not_found(request: Request) -> Response {
    let request_id = RequestId::of_call(request.extensions(), request.headers());
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
    use crate::routes::RouteTable;

    #[test]
    fn whether_a_call_mutates_is_decided_by_its_operation_or_its_method() {
        let table = RouteTable::default();
        let decide =
            |method: Method, path: &str| mutates(&method, table.classify(&method, path).operation);
        assert!(decide(Method::POST, "/v1/compute/instances"));
        assert!(decide(Method::POST, "/v1/dns/zones"));
        assert!(!decide(Method::GET, "/v1/compute/instances"));
        assert!(!decide(Method::HEAD, "/v1/users/client"));
        assert!(!decide(Method::OPTIONS, "/v1/users"));
        assert!(decide(Method::POST, "/v1/not-in-the-spec"));
        assert!(decide(Method::from_bytes(b"post").unwrap(), "/v1/users"));
        assert!(!decide(Method::GET, "/v1/not-in-the-spec"));
    }
}
