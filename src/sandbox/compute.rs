//! The sandbox's compute instances: list, create and get one, in Contabo's shapes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use http::StatusCode;
use serde_json::{Value, json};

use super::state::{CUSTOMER_ID, SandboxState, TENANT_ID, now_rfc3339};
use super::{contabo_error, invalid_json, page_of, parse_json_body};

fn instance(id: i64, request: &Value) -> Value {
    let text = |key: &str, default: &str| {
        request
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    json!({
        "tenantId": TENANT_ID,
        "customerId": CUSTOMER_ID,
        "additionalIps": [],
        "name": format!("vmi{id}"),
        "displayName": text("displayName", ""),
        "instanceId": id,
        "dataCenter": "European Union 1",
        "region": text("region", "EU"),
        "regionName": "European Union",
        "productId": text("productId", "V45"),
        "imageId": text("imageId", "afecbb85-e2fc-46f0-9684-b46b1faf00bb"),
        "ipConfig": {
            "v4": {"ip": "192.0.2.10", "gateway": "192.0.2.1", "netmaskCidr": 24, "broadcast": "192.0.2.255", "net": "192.0.2.0"},
            "v6": {"ip": "2001:db8::10", "netmaskCidr": 64, "gateway": "fe80::1"},
        },
        "macAddress": "00:50:56:00:00:01",
        "ramMb": 8192,
        "cpuCores": 4,
        "osType": "Linux",
        "diskMb": 204800,
        "sshKeys": request.get("sshKeys").cloned().unwrap_or(json!([])),
        "createdDate": now_rfc3339(),
        "cancelDate": "",
        "status": "provisioning",
        "vHostId": 1,
        "vHostNumber": 1,
        "vHostName": "vh1",
        "addOns": [],
        "productType": "ssd",
        "productName": "VPS 1 SSD",
        "defaultUser": text("defaultUser", "root"),
    })
}

pub async fn list_instances(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let instances: Vec<Value> = state
        .data
        .lock()
        .unwrap()
        .instances
        .values()
        .cloned()
        .collect();
    page_of(instances, &query, "/v1/compute/instances")
}

pub async fn get_instance(
    State(state): State<Arc<SandboxState>>,
    Path(id): Path<String>,
) -> Response {
    let found = id
        .parse::<i64>()
        .ok()
        .and_then(|id| state.data.lock().unwrap().instances.get(&id).cloned());
    match found {
        Some(instance) => Json(
            json!({"data": [instance], "_links": {"self": format!("/v1/compute/instances/{id}")}}),
        )
        .into_response(),
        None => contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry Instance not found by instanceId {id}"),
        ),
    }
}

pub async fn create_instance(State(state): State<Arc<SandboxState>>, body: Bytes) -> Response {
    let Some(request) = parse_json_body(&body) else {
        return invalid_json();
    };
    let mut data = state.data.lock().unwrap();
    let id = 100_000 + data.next_id();
    let created = instance(id, &request);
    data.instances.insert(id, created.clone());
    let fields = [
        "tenantId",
        "customerId",
        "instanceId",
        "createdDate",
        "imageId",
        "productId",
        "region",
        "addOns",
        "osType",
        "status",
        "sshKeys",
    ];
    let summary: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| (f.to_string(), created[*f].clone()))
        .collect();
    (
        StatusCode::CREATED,
        Json(json!({"data": [summary], "_links": {"self": format!("/v1/compute/instances/{id}")}})),
    )
        .into_response()
}
