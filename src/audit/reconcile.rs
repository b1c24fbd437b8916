//! Contabo's own audit, read through the gateway's credential: reconciliation (changes Contabo
//! recorded whose request id has no gateway record, i.e. changes made around the gateway) and the
//! rows of one request id (the console's "follow this request id"). Contabo's audit endpoints are
//! every `GET /v1/**/audits` operation of the spec.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Serialize;

use super::error::AuditError;
use super::query::Filter;
use super::store::Store;
use crate::error::GatewayError;
use crate::request_id::RequestId;
use crate::routes::OPERATIONS;
use crate::upstream::{OutgoingCall, Upstream};

const PAGE_SIZE: u32 = 100;
/// Pages read per endpoint at most (a bound against a runaway listing).
const MAX_PAGES: u32 = 1000;

#[derive(Debug, Serialize)]
pub struct Unmatched {
    pub endpoint: String,
    pub timestamp: String,
    pub action: String,
    pub request_id: String,
    pub changed_by: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checked: u64,
    pub unmatched: Vec<Unmatched>,
    /// Endpoints that could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Why Contabo's audit could not be compared: a call to Contabo that failed, an answer that is not
/// JSON, or the gateway's own store.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{endpoint}: {error}")]
    Path {
        endpoint: String,
        #[source]
        error: http::uri::InvalidUri,
    },
    #[error(transparent)]
    Upstream(#[from] GatewayError),
    #[error("{endpoint}: the answer is not JSON: {error}")]
    NotJson {
        endpoint: String,
        #[source]
        error: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] AuditError),
}

/// Contabo's audit rows of one request id, each with the endpoint that listed it.
#[derive(Debug, Default, Serialize)]
pub struct RequestTrail {
    pub request_id: String,
    pub entries: Vec<serde_json::Value>,
    /// Endpoints that could not be read, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Runs before each call to Contabo: the gateway waits for its upstream budget there; an error
/// ends that endpoint's listing as unreadable (named under `skipped`).
pub type Pace = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// No waiting: the CLI reads Contabo beside the gateway, not through its budget.
pub fn unpaced() -> Pace {
    Box::new(|| Box::pin(async { Ok(()) }))
}

pub fn audit_endpoints() -> Vec<&'static str> {
    OPERATIONS
        .iter()
        .filter(|o| o.method == "GET" && o.path.ends_with("/audits") && !o.path.contains('{'))
        .map(|o| o.path)
        .collect()
}

/// What one audit endpoint gave: its rows, or why it could not be read (Contabo answered an
/// error status; the endpoint is reported as skipped, the others are still read).
enum Listing {
    Rows(Vec<serde_json::Value>),
    Unreadable(String),
}

/// Every row of `endpoint` for `query` (without paging parameters), page by page, `pace` before
/// each call. A transport failure or a non-JSON answer is an error.
async fn list(
    upstream: &Upstream,
    endpoint: &str,
    query: &str,
    pace: &mut Pace,
) -> Result<Listing, ReconcileError> {
    let mut rows = Vec::new();
    let mut page = 1;
    loop {
        if let Err(reason) = pace().await {
            return Ok(Listing::Unreadable(reason));
        }
        let path = format!("{endpoint}?page={page}&size={PAGE_SIZE}&{query}");
        let response = upstream
            .send(&OutgoingCall {
                method: &Method::GET,
                path_and_query: http::uri::PathAndQuery::try_from(path).map_err(|error| {
                    ReconcileError::Path {
                        endpoint: endpoint.to_string(),
                        error,
                    }
                })?,
                caller_headers: &HeaderMap::new(),
                request_id: RequestId::generate().header_value(),
                read_whole: false,
                body: Bytes::new(),
            })
            .await?;
        let status = response.status();
        if !status.is_success() {
            return Ok(Listing::Unreadable(format!("upstream answered {status}")));
        }
        let body = upstream.read_body(response.into_body()).await?;
        let mut body: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| ReconcileError::NotJson {
                endpoint: endpoint.to_string(),
                error,
            })?;
        if let Some(data) = body["data"].as_array_mut() {
            rows.append(data);
        }
        let pages = body["_pagination"]["totalPages"].as_u64().unwrap_or(1) as u32;
        if page >= pages || page >= MAX_PAGES {
            return Ok(Listing::Rows(rows));
        }
        page += 1;
    }
}

/// `since` is a normalised RFC 3339 timestamp (see `query::parse_time`).
pub async fn reconcile(
    upstream: &Upstream,
    store: &Store,
    since: &str,
    mut pace: Pace,
) -> Result<Report, ReconcileError> {
    let filter = Filter {
        since: Some(since.to_string()),
        ..Filter::default()
    };
    let ours: HashSet<String> = store
        .page(&filter)
        .await?
        .into_iter()
        .map(|r| r.request_id.to_ascii_lowercase())
        .collect();
    let query = format!("startDate={}", &since[..10]);
    let mut report = Report::default();
    for endpoint in audit_endpoints() {
        let rows = match list(upstream, endpoint, &query, &mut pace).await? {
            Listing::Rows(rows) => rows,
            Listing::Unreadable(reason) => {
                report.skipped.push((endpoint.to_string(), reason));
                continue;
            }
        };
        for entry in rows {
            let text = |key: &str| entry[key].as_str().unwrap_or("").to_string();
            if text("timestamp").as_str() < since {
                continue;
            }
            report.checked += 1;
            let request_id = text("requestId");
            if !ours.contains(&request_id.to_ascii_lowercase()) {
                report.unmatched.push(Unmatched {
                    endpoint: endpoint.to_string(),
                    timestamp: text("timestamp"),
                    action: text("action"),
                    request_id,
                    changed_by: text("changedBy"),
                });
            }
        }
    }
    Ok(report)
}

/// The rows Contabo's audit endpoints hold for `request_id` (their `requestId` filter), each
/// with an `endpoint` field naming where it was listed.
pub async fn request_trail(
    upstream: &Upstream,
    request_id: &str,
    mut pace: Pace,
) -> Result<RequestTrail, ReconcileError> {
    let query = format!(
        "requestId={}",
        form_urlencoded::byte_serialize(request_id.as_bytes()).collect::<String>()
    );
    let mut trail = RequestTrail {
        request_id: request_id.to_string(),
        ..RequestTrail::default()
    };
    for endpoint in audit_endpoints() {
        match list(upstream, endpoint, &query, &mut pace).await? {
            Listing::Rows(rows) => trail.entries.extend(rows.into_iter().map(|mut row| {
                row["endpoint"] = serde_json::Value::from(endpoint);
                row
            })),
            Listing::Unreadable(reason) => trail.skipped.push((endpoint.to_string(), reason)),
        }
    }
    Ok(trail)
}
