//! The gateway's own endpoints under /_gateway: liveness, readiness and status.
//!
//! Health and readiness need no key (probes call them); status is for admins.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::StatusCode;
use http::request::Parts;
use serde_json::json;

use crate::audit::chain::{Anchors, VerifyReport};
use crate::audit::error::AuditError;
use crate::audit::query::{self, Filter, Format, csv_line};
use crate::audit::reconcile;
use crate::audit::record::AuditRecord;
use crate::audit::store::Store;
use crate::clients::{Client, Role};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::pipeline::identify;
use crate::request_id::RequestId;
use crate::signed_checkpoint;

/// Liveness: the process answers.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness means "send me traffic": 200 while the gateway can serve, i.e. its audit store can be
/// written (or `audit.fail_open` lets writes go on without it). Contabo's auth being down does not
/// make a replica unready (every replica would be, and even cache hits and audit reads would stop):
/// the token's state is in the body and in the metrics. `?strict=true` also requires a Contabo
/// token now (getting one if needed), the earlier meaning, for those who want it.
pub async fn ready(
    State(gw): State<Arc<Gateway>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let strict = params
        .get("strict")
        .is_some_and(|v| v == "true" || v == "1");
    let token = if strict {
        gw.upstream
            .tokens
            .bearer()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        match gw.upstream.tokens.status() {
            status if status.last_failure.is_some() => Err(format!(
                "{} (reported, not a readiness condition; /_gateway/ready?strict=true makes it one)",
                status.last_failure.unwrap_or_default()
            )),
            status if !status.has_token => {
                Err("no token yet (one is granted at the first call)".into())
            }
            _ => Ok(()),
        }
    };
    let audit = gw.audit.health();
    let serves_writes = audit.is_ok() || gw.config.audit.fail_open;
    let ready = serves_writes && (token.is_ok() || !strict);
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(reason) => reason.clone(),
    };
    let mut checks = json!({"token": describe(&token), "audit": describe(&audit)});
    if let Some(bus) = gw.cache.bus() {
        // Informational: without Redis a replica keeps serving with a short cache TTL.
        checks["redis"] = json!(if bus.is_connected() {
            "ok"
        } else {
            "unreachable (serving with the short cache TTL)"
        });
    }
    // Informational too: without Redis each replica keeps its share of the limits.
    match gw.limits.backend() {
        crate::ratelimit::Backend::Redis => checks["rate_limit_redis"] = json!("ok"),
        crate::ratelimit::Backend::LocalFallback => {
            checks["rate_limit_redis"] =
                json!("unreachable (each replica enforces limits / rate_limit.replicas)")
        }
        crate::ratelimit::Backend::Local | crate::ratelimit::Backend::Off => {}
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "checks": checks}))).into_response()
}

/// An admin caller: extracting it refuses every other caller (401/403 JSON).
pub struct Admin {
    request_id: RequestId,
    client: Arc<Client>,
}

/// A caller who may read the audit log (auditor or admin), with the request id of the call.
pub struct AuditReader {
    request_id: RequestId,
    client: Arc<Client>,
}

/// Why a caller may not use a gateway endpoint, answered as the usual JSON error.
pub struct Refusal(GatewayError, RequestId);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.0.into_response_with(&self.1)
    }
}

impl FromRequestParts<Arc<Gateway>> for Admin {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Self, Refusal> {
        permit(parts, gw, &[Role::Admin]).map(|(request_id, client)| Admin { request_id, client })
    }
}

impl FromRequestParts<Arc<Gateway>> for AuditReader {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, gw: &Arc<Gateway>) -> Result<Self, Refusal> {
        permit(parts, gw, &[Role::Auditor, Role::Admin])
            .map(|(request_id, client)| AuditReader { request_id, client })
    }
}

/// The call's request id and the caller's team when its role is one of `roles`, the refusal
/// otherwise.
fn permit(
    parts: &Parts,
    gw: &Gateway,
    roles: &[Role],
) -> Result<(RequestId, Arc<Client>), Refusal> {
    let request_id = RequestId::of_call(&parts.extensions, &parts.headers);
    let address = parts
        .extensions
        .get::<crate::gateway::ClientAddr>()
        .map(|a| a.0.ip());
    let certificate = parts.extensions.get::<crate::gateway::ClientCertificate>();
    let error = match identify(gw, &parts.headers, address, certificate) {
        Ok(client) if roles.contains(&client.role) => return Ok((request_id, client)),
        Ok(client) => GatewayError::Forbidden {
            role: client.role.as_str(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            allowance: client.role.allowance(),
        },
        Err(error) => error,
    };
    Err(Refusal(error, request_id))
}

/// Admin status: calls in flight, token life and grant counts, number of teams.
pub async fn status(State(gw): State<Arc<Gateway>>, _: Admin) -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "in_flight": gw.in_flight.load(Ordering::SeqCst),
        "clients": gw.clients().len(),
        "token": gw.upstream.tokens.status(),
        "rate_limit": gw.limits.status(),
    }))
    .into_response()
}

/// Prometheus metrics (text format). Like the probes it needs no key: scrapers rarely carry one.
/// It names teams but carries no secret; keep the port off the public network.
pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    let cache = gw.cache.stats().await;
    let token = gw.upstream.tokens.status();
    let text = crate::metrics::render(&crate::metrics::Levels {
        cache_hits: cache.hits,
        cache_stale_hits: cache.stale_hits,
        cache_misses: cache.misses,
        cache_evictions: cache.evictions,
        cache_bytes: cache.bytes,
        cache_entries: cache.entries,
        token_password_grants: token.password_grants,
        token_refresh_grants: token.refresh_grants,
        token_failures: token.failures,
        token_remaining_secs: token.expires_in_secs.unwrap_or(0.0),
        upstream_queue_depth: gw.limits.budget().queued(),
        upstream_paused_secs: gw
            .limits
            .budget()
            .paused_for()
            .unwrap_or_default()
            .as_secs_f64(),
        audit_queue_depth: gw.audit.queue_depth(),
        audit_store_up: gw.audit.health().is_ok(),
        calls_in_flight: gw.in_flight.load(Ordering::Relaxed),
    });
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Admin: entries, bytes, hits, misses and evictions of the response cache.
pub async fn cache_stats(State(gw): State<Arc<Gateway>>, _: Admin) -> Response {
    Json(gw.cache.stats().await).into_response()
}

/// Admin: drops every cached entry (on every replica when Redis is configured).
pub async fn cache_purge(State(gw): State<Arc<Gateway>>, _: Admin) -> Response {
    gw.cache.purge().await;
    Json(json!({"purged": true})).into_response()
}

/// The audit store as it stands after every call answered so far (read your writes: a call's
/// final record is queued, not awaited), or the 503 that says why it cannot be read.
async fn settled_store(gw: &Gateway, request_id: &RequestId) -> Result<Store, Response> {
    gw.audit.flush().await;
    match gw.audit.reader().await {
        Ok(store) => Ok(store.clone()),
        Err(reason) => {
            Err(GatewayError::AuditUnavailable(reason.to_string()).into_response_with(request_id))
        }
    }
}

/// Auditors and admins: audit records matching the filters, as JSON (paginated), CSV or NDJSON
/// (streamed when no limit is given).
pub async fn audit_query(
    State(gw): State<Arc<Gateway>>,
    AuditReader { request_id, .. }: AuditReader,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (filter, format) = match Filter::from_params(&params, true) {
        Ok(parsed) if parsed.1 != Format::Table => parsed,
        Ok(_) => {
            return GatewayError::BadRequest("format must be json, csv or ndjson".into())
                .into_response_with(&request_id);
        }
        Err(bad) => {
            return GatewayError::BadRequest(bad.to_string()).into_response_with(&request_id);
        }
    };
    let store = match settled_store(&gw, &request_id).await {
        Ok(store) => store,
        Err(refusal) => return refusal,
    };
    if filter.follow {
        let stopping = gw.stopping.subscribe();
        let body = axum::body::Body::from_stream(follow(store, filter, stopping));
        return ([(http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response();
    }
    match filter.limit {
        Some(limit) => {
            let mut records = match store.page(&filter).await {
                Ok(records) => records,
                Err(e) => {
                    return GatewayError::AuditUnavailable(e.to_string())
                        .into_response_with(&request_id);
                }
            };
            let next_cursor = (records.len() as i64 > limit)
                .then(|| {
                    records.truncate(limit as usize);
                    records.last().map(|r| r.id.to_string())
                })
                .flatten();
            let mut response = match format {
                Format::Json => {
                    Json(json!({"records": records, "next_cursor": next_cursor})).into_response()
                }
                Format::Csv => (
                    [(http::header::CONTENT_TYPE, "text/csv")],
                    csv_line(&records, true),
                )
                    .into_response(),
                _ => (
                    [(http::header::CONTENT_TYPE, "application/x-ndjson")],
                    ndjson(&records),
                )
                    .into_response(),
            };
            if let Some(cursor) = next_cursor.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert("x-next-cursor", cursor);
            }
            response
        }
        None => {
            // A whole export: streamed page by page, never held in memory.
            let content_type = if format == Format::Csv {
                "text/csv"
            } else {
                "application/x-ndjson"
            };
            let body = axum::body::Body::from_stream(export(store, filter, format));
            ([(http::header::CONTENT_TYPE, content_type)], body).into_response()
        }
    }
}

/// How often a follow stream looks for newly finalised records (every replica's, on PostgreSQL).
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// `follow=true`: every finalised record after the cursor in chain order, then each one as it is
/// finalised, until the caller leaves or the gateway stops. A store failure ends the stream (the
/// caller resumes with the last `seq` it received as `cursor`).
fn follow(
    store: Store,
    filter: Filter,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(filter), move |state| {
        let store = store.clone();
        let mut stopping = stopping.clone();
        async move {
            let mut filter = state?;
            filter.limit = Some(query::MAX_LIMIT);
            loop {
                if *stopping.borrow() {
                    return None;
                }
                let mut records = match store.page(&filter).await {
                    Ok(records) => records,
                    Err(e) => return Some((Err(std::io::Error::other(e)), None)),
                };
                records.truncate(query::MAX_LIMIT as usize);
                if let Some(last) = records.last() {
                    filter.after_seq = last.seq;
                    return Some((Ok(bytes::Bytes::from(ndjson(&records))), Some(filter)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = stopping.wait_for(|stopping| *stopping) => return None,
                }
            }
        }
    })
}

fn ndjson(records: &[AuditRecord]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|r| format!("{}\n", json!(r)).into_bytes())
        .collect()
}

/// Every matching record as CSV (with its header) or NDJSON, in pages of 1000 by id.
fn export(
    store: Store,
    filter: Filter,
    format: Format,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    let header = (format == Format::Csv).then(|| Ok(bytes::Bytes::from(csv_line(&[], true))));
    let pages = futures_util::stream::unfold(Some(filter), move |state| {
        let store = store.clone();
        async move {
            let mut filter = state?;
            filter.limit = Some(query::MAX_LIMIT);
            let mut records = match store.page(&filter).await {
                Ok(records) => records,
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            };
            let more = records.len() as i64 > query::MAX_LIMIT;
            records.truncate(query::MAX_LIMIT as usize);
            filter.after_id = records.last().map(|r| r.id).or(filter.after_id);
            let chunk = match format {
                Format::Csv => csv_line(&records, false),
                _ => ndjson(&records),
            };
            Some((Ok(bytes::Bytes::from(chunk)), more.then_some(filter)))
        }
    });
    futures_util::stream::iter(header).chain(pages)
}

/// Auditors and admins: walks the hash chain and reports the first broken record; with a
/// checkpoint signing key, also holds the store against the signed checkpoints (the checkpoint
/// file when one is written, else the database's copy).
pub async fn audit_verify(
    State(gw): State<Arc<Gateway>>,
    AuditReader { request_id, .. }: AuditReader,
) -> Response {
    let store = match settled_store(&gw, &request_id).await {
        Ok(store) => store,
        Err(refusal) => return refusal,
    };
    let report = match gw.audit.anchors().await {
        Ok(anchors) => store.verify(anchors.as_ref()).await,
        Err(reason) => Err(reason),
    };
    verification(report, &request_id)
}

/// The largest checkpoint file `POST /_gateway/audit/verify` takes (about 150 000 checkpoints,
/// a hundred days of one a minute; bigger files are for `audit verify --checkpoints`).
pub const MAX_CHECKPOINT_UPLOAD: usize = 64 * 1024 * 1024;

/// Auditors and admins: holds the store against the reviewer's own copy of the checkpoints (the
/// body, as the checkpoint file holds them) and the public key they trust (`?public_key=`), as
/// `audit verify --checkpoints FILE --public-key KEY` does.
pub async fn audit_verify_against(
    State(gw): State<Arc<Gateway>>,
    AuditReader { request_id, .. }: AuditReader,
    Query(params): Query<HashMap<String, String>>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let bad = |message: String| GatewayError::BadRequest(message).into_response_with(&request_id);
    let public_key = match params.get("public_key").map(|k| k.trim()) {
        Some(key) if params.len() == 1 && !key.is_empty() => key.to_string(),
        _ => {
            return bad(
                "give exactly one parameter, public_key (the signing key's public key, \
                 base64, as `keys new-signing` printed it), and the checkpoint file as the body"
                    .into(),
            );
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return GatewayError::PayloadTooLarge {
                limit: MAX_CHECKPOINT_UPLOAD,
                limited_by: "the checkpoint upload limit (`audit verify --checkpoints` reads \
                             any size)",
            }
            .into_response_with(&request_id);
        }
        Err(rejection) => return bad(format!("cannot read the body: {}", rejection.body_text())),
    };
    let checkpoints = match std::str::from_utf8(&body) {
        Ok(text) if !text.trim().is_empty() => signed_checkpoint::parse_lines(text),
        Ok(_) => {
            return bad(
                "the checkpoint file: the body is empty: send the checkpoint file (one \
                        JSON line each)"
                    .into(),
            );
        }
        Err(_) => {
            return bad(
                "the checkpoint file: the body is not UTF-8 text: send the checkpoint \
                        file as it is"
                    .into(),
            );
        }
    };
    let checkpoints = match checkpoints {
        Ok(checkpoints) => checkpoints,
        Err(e) => return bad(format!("the checkpoint file: {e}")),
    };
    let anchors = Anchors {
        checkpoints,
        public_key,
        source: "the checkpoint file sent".into(),
    };
    let store = match settled_store(&gw, &request_id).await {
        Ok(store) => store,
        Err(refusal) => return refusal,
    };
    verification(store.verify(Some(&anchors)).await, &request_id)
}

/// A verification's answer: 200 when the log verifies, 409 with the report naming the problem
/// when not, 503 when the store could not be read.
fn verification(report: Result<VerifyReport, AuditError>, request_id: &RequestId) -> Response {
    match report {
        Ok(report) => {
            let status = if report.ok {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (status, Json(report)).into_response()
        }
        Err(reason) => {
            GatewayError::AuditUnavailable(reason.to_string()).into_response_with(request_id)
        }
    }
}

/// Auditors and admins: whose key this is (the console shows it, and offers admins Contabo's side
/// of a request id).
pub async fn audit_whoami(AuditReader { client, .. }: AuditReader) -> Response {
    Json(json!({"client": &*client.name, "role": client.role.as_str()})).into_response()
}

/// Hours the activity chart may span at most (a week).
const MAX_ACTIVITY_HOURS: i64 = 168;

/// Auditors and admins: audited calls and refusals per team and UTC hour over the last `hours`
/// (default 24, the current hour included), zeros filled in:
/// `{"hours": ["2026-12-03T10", ...], "teams": [{"client", "calls": [..], "refusals": [..]}]}`.
pub async fn audit_activity(
    State(gw): State<Arc<Gateway>>,
    AuditReader { request_id, .. }: AuditReader,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut hours = 24;
    for (name, value) in &params {
        match name.as_str() {
            "hours" => match value.parse::<i64>() {
                Ok(h) if (1..=MAX_ACTIVITY_HOURS).contains(&h) => hours = h,
                _ => {
                    return GatewayError::BadRequest(format!(
                        "hours = {value:?} must be a number from 1 to {MAX_ACTIVITY_HOURS}"
                    ))
                    .into_response_with(&request_id);
                }
            },
            other => {
                return GatewayError::BadRequest(format!(
                    "unknown parameter {other:?}; the only parameter is hours"
                ))
                .into_response_with(&request_id);
            }
        }
    }
    let chart = match settled_store(&gw, &request_id).await {
        Ok(store) => store.activity(hours).await,
        Err(refusal) => return refusal,
    };
    match chart {
        Ok(chart) => Json(chart).into_response(),
        Err(reason) => {
            GatewayError::AuditUnavailable(reason.to_string()).into_response_with(&request_id)
        }
    }
}

/// How long an admin's look into Contabo's audit waits for the upstream budget per call.
const CONTABO_AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for one call's worth of the upstream budget in `team`'s lane: Contabo's audit is read
/// with the shared credential, so it counts against the same limit as every team's calls.
fn paced(gw: &Gateway, team: Arc<str>) -> reconcile::Pace {
    let budget = gw.limits.budget().clone();
    Box::new(move || {
        let budget = budget.clone();
        let team = team.clone();
        Box::pin(async move {
            budget
                .acquire(&team, 1, std::time::Instant::now() + CONTABO_AUDIT_WAIT)
                .await
                .map_err(|wait| {
                    format!(
                        "the upstream budget is spent; try again in {:.0} s",
                        wait.as_secs_f64().ceil()
                    )
                })
        })
    })
}

/// Admins: the rows of Contabo's own audit for one request id (`?request_id=`), read through
/// every audit endpoint of the spec; endpoints Contabo would not list are named in `skipped`.
pub async fn audit_contabo(
    State(gw): State<Arc<Gateway>>,
    Admin { request_id, client }: Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let wanted = match params.get("request_id").map(|v| v.trim()) {
        Some(id) if params.len() == 1 && !id.is_empty() && id.len() <= 200 => id.to_string(),
        _ => {
            return GatewayError::BadRequest(
                "give exactly one parameter, request_id (the x-request-id to look up), e.g. \
                 ?request_id=0b3f5a52-1c6e-4a7e-9a7d-2f0f4b8f9e11"
                    .into(),
            )
            .into_response_with(&request_id);
        }
    };
    let pace = paced(&gw, client.name.clone());
    match reconcile::request_trail(&gw.upstream, &wanted, pace).await {
        Ok(trail) => Json(trail).into_response(),
        Err(failure) => reconcile_failed(failure, &request_id),
    }
}

/// Admins: `audit reconcile` over HTTP: changes in Contabo's audit since `?since=` (RFC 3339 or
/// epoch seconds) whose request id has no gateway record.
pub async fn audit_reconcile(
    State(gw): State<Arc<Gateway>>,
    Admin { request_id, client }: Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let since = match params.get("since") {
        Some(since) if params.len() == 1 => {
            query::parse_time("since", since.trim()).map_err(|bad| bad.to_string())
        }
        _ => Err(
            "give exactly one parameter, since (RFC 3339 or epoch seconds), e.g. \
             ?since=2026-12-01T00:00:00Z"
                .into(),
        ),
    };
    let since = match since {
        Ok(since) => since,
        Err(message) => return GatewayError::BadRequest(message).into_response_with(&request_id),
    };
    let store = match settled_store(&gw, &request_id).await {
        Ok(store) => store,
        Err(refusal) => return refusal,
    };
    let pace = paced(&gw, client.name.clone());
    match reconcile::reconcile(&gw.upstream, &store, &since, pace).await {
        Ok(report) => Json(report).into_response(),
        Err(failure) => reconcile_failed(failure, &request_id),
    }
}

/// A failed read of Contabo's audit: Contabo's failure as the gateway answers it elsewhere, the
/// gateway's own store as unavailable, anything else as Contabo unreachable.
fn reconcile_failed(failure: reconcile::ReconcileError, request_id: &RequestId) -> Response {
    let error = match failure {
        reconcile::ReconcileError::Upstream(error) => error,
        reconcile::ReconcileError::Store(error) => {
            GatewayError::AuditUnavailable(error.to_string())
        }
        other => GatewayError::UpstreamUnreachable(other.to_string()),
    };
    error.into_response_with(request_id)
}
