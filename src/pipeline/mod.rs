//! The request pipeline for Contabo calls (everything under /v1), stage by stage in one place
//! ([`run`]):
//!
//! request id -> [address over its 401 limit: 429] -> team identity -> route class (the path read
//! as Contabo's router reads it) -> [mutating: audit trail opened; what follows runs in a task of
//! its own that the caller leaving does not cancel] -> admission: forwarded method, path hygiene
//! and spelling, header hygiene, permission by role, team rate limit, bounded body ->
//! [cacheable read: cache lookup, coalesced miss] -> [mutating: pending audit record committed]
//! -> upstream budget (fair queue; upstream 429 pause) -> token + forward (one retry on 401) ->
//! [write: cache invalidation] -> secret adoption -> redaction for the caller's role ->
//! [mutating: finish, the record finalised as forwarded, rejected or failed] -> response with
//! x-request-id and the team's quota.
//!
//! The facts every stage needs (request id, client, route class) are gathered once in a
//! [`CallContext`]. An audited call ends in one [`finish`] phase that finalises its record from
//! how it ended (answered, refused, failed); the call's metrics are counted in [`handle`] and its
//! log line is written by the per-call wrapper, whatever path it took.
//!
//! Stages that most calls skip and whose futures are large (the cache stage, the audit trail; in
//! other modules token renewal, Redis, opening an upstream connection) are awaited boxed, so a
//! call's future stays small (bench/README.md has the sizes measured, and an A/B in which
//! unboxing them cost every scenario).

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
    let answer = match trail {
        // A write's phases and its finish run in a task of their own, which a caller that
        // disconnects does not cancel: its outcome is recorded whether or not the caller waits.
        Some(trail) => {
            let gw = gw.clone();
            let write = async move { audited(&gw, &call, &parts, body, trail).await };
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
        None => phases(gw, &call, &parts, body, None)
            .await
            .map_err(|failure| failure.error)?,
    };
    let mut response = answer.response;
    if let Some(quota) = answer.quota {
        quota.apply(response.headers_mut());
    }
    Ok(response)
}

/// What the phases give back: the answer, the body the audit keeps of it, the team's quota.
struct Answer {
    response: Response,
    captured: Option<bytes::Bytes>,
    quota: Option<Quota>,
}

/// Why a call got no answer from Contabo, and how far it went.
struct Failure {
    error: GatewayError,
    reached: Reached,
}

#[derive(Clone, Copy, PartialEq)]
enum Reached {
    /// Refused by the gateway's checks; nothing was sent upstream.
    Admission,
    /// The audit store would not take the pending record; nothing was sent upstream and no
    /// record stands for the call.
    PendingRecord,
    /// Failed while or after being forwarded.
    Upstream,
}

impl Failure {
    fn at(reached: Reached) -> impl FnOnce(GatewayError) -> Failure {
        move |error| Failure { error, reached }
    }
}

/// An audited call: its phases, then its finish.
async fn audited(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: axum::body::Body,
    mut trail: Box<AuditTrail>,
) -> Result<Answer, GatewayError> {
    let ended = phases(gw, call, parts, body, Some(&mut trail)).await;
    let how = match &ended {
        Ok(answer) => Ended::Answered {
            status: answer.response.status().as_u16(),
            body: answer.captured.as_deref().unwrap_or_default(),
            headers: answer.response.headers(),
        },
        Err(failure) => Ended::Failed(&failure.error, failure.reached),
    };
    Box::pin(finish(trail, how)).await;
    ended.map_err(|failure| failure.error)
}

/// The phases after identification, in order: admission; then a cacheable read from the cache;
/// anything else gets its pending audit record (when audited) and is forwarded.
async fn phases(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    body: axum::body::Body,
    trail: Option<&mut AuditTrail>,
) -> Result<Answer, Failure> {
    let (body, quota) = admit(gw, call, parts, body)
        .await
        .map_err(Failure::at(Reached::Admission))?;
    let cacheable = call
        .route
        .and_then(|r| r.cached_as)
        .filter(|_| parts.method == Method::GET);
    if let (Some(group), true) = (cacheable, gw.cache.enabled()) {
        let response = Box::pin(cached::read(gw, call, parts, group))
            .await
            .map_err(Failure::at(Reached::Upstream))?;
        return Ok(Answer {
            response,
            captured: None,
            quota,
        });
    }
    let audited = trail.is_some();
    if let Some(trail) = trail {
        Box::pin(trail.begin(&body, &parts.headers))
            .await
            .map_err(Failure::at(Reached::PendingRecord))?;
    }
    let upstream = forward(gw, call, parts, body)
        .await
        .map_err(Failure::at(Reached::Upstream))?;
    let (response, captured) = respond(gw, call, parts, upstream, audited)
        .await
        .map_err(Failure::at(Reached::Upstream))?;
    let response = match cacheable {
        Some(_) => cached::bypassed(response),
        None => response,
    };
    Ok(Answer {
        response,
        captured,
        quota,
    })
}

/// How an audited call ended, as its record tells it.
enum Ended<'a> {
    /// Contabo answered (any status); the body the audit keeps of the answer.
    Answered {
        status: u16,
        body: &'a [u8],
        headers: &'a http::HeaderMap,
    },
    Failed(&'a GatewayError, Reached),
}

/// The last phase of an audited call, whatever path it took: its record finalised with how the
/// call ended (answered, refused, failed). A call cut off by the gateway itself is finalised as
/// interrupted when its trail is dropped.
async fn finish(trail: Box<AuditTrail>, ended: Ended<'_>) {
    match ended {
        Ended::Answered {
            status,
            body,
            headers,
        } => trail.forwarded(status, body, headers).await,
        Ended::Failed(error, Reached::Admission) => trail.failed(error, true).await,
        Ended::Failed(error, Reached::Upstream) => trail.failed(error, false).await,
        // The store refused the pending record: there is nothing to finalise.
        Ended::Failed(_, Reached::PendingRecord) => {}
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
