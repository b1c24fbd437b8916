//! The sandbox's DNS zones and records, and a domain's auth code, in Contabo's shapes: enough for a
//! client to create a zone, create, list, change and delete its records, and for the gateway's
//! redaction of a domain transfer's auth code to be seen working.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use http::StatusCode;
use serde_json::{Value, json};

use super::state::{CUSTOMER_ID, SandboxState, TENANT_ID, random_token};
use super::{contabo_error, invalid_json, page_of, parse_json_body};

const RECORD_TYPES: [&str; 7] = ["A", "AAAA", "CAA", "CNAME", "MX", "SRV", "TXT"];

fn zone(name: &str) -> Value {
    json!({"tenantId": TENANT_ID, "customerId": CUSTOMER_ID, "zoneName": name})
}

fn created(item: Value, path: String) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({"data": [item], "_links": {"self": path}})),
    )
        .into_response()
}

fn no_zone(name: &str) -> Response {
    contabo_error(StatusCode::NOT_FOUND, &format!("zone {name} not found"))
}

pub async fn list_zones(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let zones: Vec<Value> = state
        .data
        .lock()
        .unwrap()
        .dns_zones
        .keys()
        .map(|name| zone(name))
        .collect();
    page_of(zones, &query, "/v1/dns/zones")
}

pub async fn create_zone(State(state): State<Arc<SandboxState>>, body: Bytes) -> Response {
    let Some(request) = parse_json_body(&body) else {
        return invalid_json();
    };
    let Some(name) = request["zoneName"].as_str().filter(|n| !n.is_empty()) else {
        return contabo_error(
            StatusCode::BAD_REQUEST,
            "zoneName must be a non-empty string",
        );
    };
    let mut data = state.data.lock().unwrap();
    if data.dns_zones.contains_key(name) {
        return contabo_error(StatusCode::CONFLICT, &format!("zone {name} exists"));
    }
    data.dns_zones.insert(name.to_string(), Vec::new());
    created(zone(name), format!("/v1/dns/zones/{name}"))
}

pub async fn get_zone(
    State(state): State<Arc<SandboxState>>,
    Path(name): Path<String>,
) -> Response {
    if !state.data.lock().unwrap().dns_zones.contains_key(&name) {
        return no_zone(&name);
    }
    Json(json!({"data": [zone(&name)], "_links": {"self": format!("/v1/dns/zones/{name}")}}))
        .into_response()
}

pub async fn delete_zone(
    State(state): State<Arc<SandboxState>>,
    Path(name): Path<String>,
) -> Response {
    match state.data.lock().unwrap().dns_zones.remove(&name) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => no_zone(&name),
    }
}

pub async fn list_records(
    State(state): State<Arc<SandboxState>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let records = state.data.lock().unwrap().dns_zones.get(&name).cloned();
    match records {
        Some(records) => page_of(records, &query, &format!("/v1/dns/zones/{name}/records")),
        None => no_zone(&name),
    }
}

pub async fn create_record(
    State(state): State<Arc<SandboxState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(request) = parse_json_body(&body) else {
        return invalid_json();
    };
    let record_type = request["type"].as_str().unwrap_or("");
    if !RECORD_TYPES.contains(&record_type) {
        return contabo_error(
            StatusCode::BAD_REQUEST,
            &format!("type must be one of {}", RECORD_TYPES.join(", ")),
        );
    }
    let Some(record_data) = request["data"].as_str().filter(|d| !d.is_empty()) else {
        return contabo_error(StatusCode::BAD_REQUEST, "data must be a non-empty string");
    };
    let (Some(ttl), Some(prio)) = (request["ttl"].as_f64(), request["prio"].as_f64()) else {
        return contabo_error(StatusCode::BAD_REQUEST, "ttl and prio must be numbers");
    };
    let mut data = state.data.lock().unwrap();
    let id = data.next_id();
    let Some(records) = data.dns_zones.get_mut(&name) else {
        return no_zone(&name);
    };
    let record = json!({
        "tenantId": TENANT_ID,
        "customerId": CUSTOMER_ID,
        "recordId": id,
        "name": request["name"].as_str().filter(|n| !n.is_empty()).unwrap_or(&name),
        "type": record_type,
        "ttl": ttl,
        "prio": prio,
        "data": record_data,
        "port": request["port"].as_f64().unwrap_or(0.0),
        "weight": request["weight"].as_f64().unwrap_or(0.0),
        "flag": request["flag"].as_f64().unwrap_or(0.0),
        "tag": request["tag"].as_str().unwrap_or(""),
    });
    records.push(record.clone());
    created(record, format!("/v1/dns/zones/{name}/records/{id}"))
}

pub async fn update_record(
    State(state): State<Arc<SandboxState>>,
    Path((name, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(Value::Object(changes)) = parse_json_body(&body) else {
        return invalid_json();
    };
    let mut data = state.data.lock().unwrap();
    let Some(records) = data.dns_zones.get_mut(&name) else {
        return no_zone(&name);
    };
    let Some(record) = records.iter_mut().find(|r| is_record(r, &id)) else {
        return contabo_error(StatusCode::NOT_FOUND, &format!("record {id} not found"));
    };
    for (key, value) in changes {
        if key != "recordId" {
            record[key] = value;
        }
    }
    Json(json!({"data": [record.clone()], "_links": {"self": format!("/v1/dns/zones/{name}/records/{id}")}}))
        .into_response()
}

pub async fn delete_record(
    State(state): State<Arc<SandboxState>>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let mut data = state.data.lock().unwrap();
    let Some(records) = data.dns_zones.get_mut(&name) else {
        return no_zone(&name);
    };
    let before = records.len();
    records.retain(|r| !is_record(r, &id));
    if records.len() == before {
        return contabo_error(StatusCode::NOT_FOUND, &format!("record {id} not found"));
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Whether `record` has the id a path names.
fn is_record(record: &Value, id: &str) -> bool {
    id.parse::<i64>()
        .is_ok_and(|id| record["recordId"].as_i64() == Some(id))
}

/// A fresh transfer auth code for a domain (a secret: only admins see it through the gateway).
pub async fn generate_auth_code(Path(domain): Path<String>) -> Response {
    Json(json!({
        "data": [{
            "tenantId": TENANT_ID,
            "customerId": CUSTOMER_ID,
            "domain": domain,
            "status": "active",
            "authCode": random_token(),
            "authCodeChanged": true,
        }],
        "_links": {"self": format!("/v1/domains/{domain}/generate-auth-code")},
    }))
    .into_response()
}
