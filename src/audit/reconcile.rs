//! Reconciliation with Contabo's own audit: lists changes Contabo recorded whose request id has no
//! gateway record, i.e. changes made around the gateway. Contabo's audit endpoints are every
//! `GET /v1/**/audits` operation of the spec.

use std::collections::HashSet;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Serialize;

use super::query::Filter;
use super::store::Store;
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

pub fn audit_endpoints() -> Vec<&'static str> {
    OPERATIONS
        .iter()
        .filter(|o| o.method == "GET" && o.path.ends_with("/audits") && !o.path.contains('{'))
        .map(|o| o.path)
        .collect()
}

/// `since` is a normalised RFC 3339 timestamp (see `query::parse_time`).
pub async fn reconcile(upstream: &Upstream, store: &Store, since: &str) -> Result<Report, String> {
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
    let start_date = &since[..10];
    let mut report = Report::default();
    for endpoint in audit_endpoints() {
        let mut page = 1;
        loop {
            let path = format!("{endpoint}?page={page}&size={PAGE_SIZE}&startDate={start_date}");
            let response = upstream
                .send(&OutgoingCall {
                    method: &Method::GET,
                    path_and_query: http::uri::PathAndQuery::try_from(path)
                        .map_err(|e| format!("{endpoint}: {e}"))?,
                    caller_headers: &HeaderMap::new(),
                    request_id: RequestId::generate().header_value(),
                    read_whole: false,
                    body: Bytes::new(),
                })
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            if !status.is_success() {
                report
                    .skipped
                    .push((endpoint.to_string(), format!("upstream answered {status}")));
                break;
            }
            let body = upstream
                .read_body(response.into_body())
                .await
                .map_err(|e| e.to_string())?;
            let body: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("{endpoint}: the answer is not JSON: {e}"))?;
            for entry in body["data"].as_array().into_iter().flatten() {
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
            let pages = body["_pagination"]["totalPages"].as_u64().unwrap_or(1) as u32;
            if page >= pages || page >= MAX_PAGES {
                break;
            }
            page += 1;
        }
    }
    Ok(report)
}
