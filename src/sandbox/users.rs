//! The sandbox's Users API (the seed documents), roles and S3 credentials, stateful and in
//! Contabo's response shapes, so the real `pfruck-contabo` client parses them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Bytes};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::state::{
    CUSTOMER_ID, SandboxState, TENANT_ID, User, UserAudit, now_rfc3339, random_token,
};
use super::{contabo_error, invalid_json, page_of, parse_json_body};

const LOCALES: [&str; 4] = ["de-DE", "de", "en-US", "en"];

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn audit(
    state: &SandboxState,
    headers: &HeaderMap,
    action: &'static str,
    user_id: &str,
    changes: Value,
) {
    let mut data = state.data.lock().unwrap();
    let id = data.next_id();
    data.user_audits.push(UserAudit {
        id,
        action,
        timestamp: now_rfc3339(),
        tenant_id: TENANT_ID.into(),
        customer_id: CUSTOMER_ID.into(),
        changed_by: state.credential().username,
        username: state.credential().username,
        request_id: header(headers, "x-request-id"),
        trace_id: header(headers, "x-trace-id"),
        user_id: user_id.into(),
        changes,
    });
}

pub async fn list_users(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let users: Vec<Value> = {
        let data = state.data.lock().unwrap();
        data.users
            .values()
            .filter(|u| query.get("email").is_none_or(|e| &u.email == e))
            .filter(|u| {
                query
                    .get("enabled")
                    .is_none_or(|e| u.enabled.to_string() == *e)
            })
            .filter(|u| query.get("owner").is_none_or(|o| u.owner.to_string() == *o))
            .map(|u| serde_json::to_value(u).unwrap())
            .collect()
    };
    page_of(users, &query, "/v1/users")
}

pub async fn get_user(State(state): State<Arc<SandboxState>>, Path(id): Path<String>) -> Response {
    let data = state.data.lock().unwrap();
    match data.users.get(&id) {
        Some(user) => Json(json!({"data": [user], "_links": {"self": format!("/v1/users/{id}")}}))
            .into_response(),
        None => contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry User not found by userId {id}"),
        ),
    }
}

/// Applies the fields of a create/update body; the error names the field to fix.
fn apply_user_fields(user: &mut User, body: &Value) -> Result<(), String> {
    for (key, value) in body.as_object().ok_or("body must be a JSON object")? {
        match key.as_str() {
            "firstName" | "lastName" | "email" | "locale" => {
                let s = value
                    .as_str()
                    .ok_or(format!("{key} must be a string"))?
                    .to_string();
                match key.as_str() {
                    "firstName" => user.first_name = s,
                    "lastName" => user.last_name = s,
                    "email" if s.contains('@') => user.email = s,
                    "email" => return Err("email must be an email address".into()),
                    _ if LOCALES.contains(&s.as_str()) => user.locale = s,
                    _ => return Err(format!("locale must be one of {LOCALES:?}")),
                }
            }
            "enabled" | "totp" => {
                let b = value.as_bool().ok_or(format!("{key} must be a boolean"))?;
                if key == "enabled" {
                    user.enabled = b;
                } else {
                    user.totp = b;
                }
            }
            "roles" => {
                let ids = value
                    .as_array()
                    .ok_or("roles must be an array of role ids")?;
                user.roles = ids.iter().filter_map(Value::as_i64).map(|id| json!({"roleId": id, "name": format!("role-{id}"), "admin": false, "accessAllResources": false, "type": "custom", "tenantId": TENANT_ID, "customerId": CUSTOMER_ID})).collect();
            }
            _ => return Err(format!("property {key} should not exist")),
        }
    }
    Ok(())
}

pub async fn create_user(
    State(state): State<Arc<SandboxState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(body) = parse_json_body(&body) else {
        return invalid_json();
    };
    for required in ["email", "enabled", "locale", "totp"] {
        if body.get(required).is_none() {
            return contabo_error(
                StatusCode::BAD_REQUEST,
                &format!("{required} should not be empty"),
            );
        }
    }
    let mut user = User {
        tenant_id: TENANT_ID.into(),
        customer_id: CUSTOMER_ID.into(),
        user_id: uuid::Uuid::new_v4().to_string(),
        first_name: String::new(),
        last_name: String::new(),
        email: String::new(),
        email_verified: false,
        enabled: false,
        totp: false,
        locale: "en".into(),
        roles: vec![],
        owner: false,
    };
    if let Err(message) = apply_user_fields(&mut user, &body) {
        return contabo_error(StatusCode::BAD_REQUEST, &message);
    }
    let id = user.user_id.clone();
    state.data.lock().unwrap().users.insert(id.clone(), user);
    audit(&state, &headers, "CREATED", &id, body);
    (
        StatusCode::CREATED,
        Json(json!({
            "data": [{"tenantId": TENANT_ID, "customerId": CUSTOMER_ID, "userId": id}],
            "_links": {"self": format!("/v1/users/{id}")},
        })),
    )
        .into_response()
}

pub async fn update_user(
    State(state): State<Arc<SandboxState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(body) = parse_json_body(&body) else {
        return invalid_json();
    };
    let result = {
        let mut data = state.data.lock().unwrap();
        match data.users.get_mut(&id) {
            None => Err(contabo_error(
                StatusCode::NOT_FOUND,
                &format!("Entry User not found by userId {id}"),
            )),
            Some(user) => {
                let mut updated = user.clone();
                match apply_user_fields(&mut updated, &body) {
                    Ok(()) => {
                        *user = updated;
                        Ok(())
                    }
                    Err(m) => Err(contabo_error(StatusCode::BAD_REQUEST, &m)),
                }
            }
        }
    };
    if let Err(response) = result {
        return response;
    }
    audit(&state, &headers, "UPDATED", &id, body);
    Json(json!({"_links": {"self": format!("/v1/users/{id}")}})).into_response()
}

pub async fn delete_user(
    State(state): State<Arc<SandboxState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if state.data.lock().unwrap().users.remove(&id).is_none() {
        return contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry User not found by userId {id}"),
        );
    }
    audit(&state, &headers, "DELETED", &id, json!({}));
    StatusCode::NO_CONTENT.into_response()
}

/// reset-password and resend-email-verification: 204 for a known user.
pub async fn user_action(
    State(state): State<Arc<SandboxState>>,
    Path((id, _action)): Path<(String, String)>,
) -> Response {
    if state.data.lock().unwrap().users.contains_key(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry User not found by userId {id}"),
        )
    }
}

pub async fn get_client(State(state): State<Arc<SandboxState>>) -> Response {
    let credential = state.credential();
    Json(json!({
        "data": [{
            "tenantId": TENANT_ID,
            "customerId": CUSTOMER_ID,
            "id": "6cdf5968-f9fe-4192-97c2-f349e813c5e8",
            "clientId": credential.client_id,
            "secret": credential.client_secret,
        }],
        "_links": {"self": "/v1/users/client"},
    }))
    .into_response()
}

/// Rotates the client secret: from now on only the new one works for token grants.
pub async fn rotate_client_secret(State(state): State<Arc<SandboxState>>) -> Response {
    let secret = random_token();
    state.credential.lock().unwrap().client_secret = secret.clone();
    Json(json!({
        "data": [{"tenantId": TENANT_ID, "customerId": CUSTOMER_ID, "secret": secret}],
        "_links": {"self": "/v1/users/client/secret"},
    }))
    .into_response()
}

pub async fn is_password_set(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let data = state.data.lock().unwrap();
    let known = query
        .get("userId")
        .is_none_or(|id| data.users.contains_key(id));
    Json(json!({
        "data": [{"tenantId": TENANT_ID, "customerId": CUSTOMER_ID, "isPasswordSet": known}],
        "_links": {"self": "/v1/users/is-password-set"},
    }))
    .into_response()
}

pub async fn list_user_audits(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let audits: Vec<Value> = {
        let data = state.data.lock().unwrap();
        data.user_audits
            .iter()
            .filter(|a| query.get("userId").is_none_or(|id| &a.user_id == id))
            .filter(|a| query.get("requestId").is_none_or(|id| &a.request_id == id))
            .filter(|a| {
                query
                    .get("startDate")
                    .is_none_or(|d| a.timestamp.as_str() >= d.as_str())
            })
            .map(|a| serde_json::to_value(a).unwrap())
            .collect()
    };
    page_of(audits, &query, "/v1/users/audits")
}

fn s3_credential(
    user_id: &str,
    object_storage_id: &str,
    credential_id: i64,
    secret: &str,
) -> Value {
    json!({
        "tenantId": TENANT_ID,
        "customerId": CUSTOMER_ID,
        "accessKey": format!("AK{credential_id:010}"),
        "secretKey": secret,
        "objectStorageId": object_storage_id,
        "displayName": format!("credential of {user_id}"),
        "region": "EU",
        "credentialId": credential_id,
    })
}

/// The user's S3 secret, created on first sight so every user has one credential (id 1).
fn s3_secret(state: &SandboxState, user_id: &str) -> Option<String> {
    let mut data = state.data.lock().unwrap();
    if !data.users.contains_key(user_id) {
        return None;
    }
    Some(
        data.s3_secrets
            .entry((user_id.to_string(), 1))
            .or_insert_with(random_token)
            .clone(),
    )
}

pub async fn list_s3_credentials(
    State(state): State<Arc<SandboxState>>,
    Path(user_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match s3_secret(&state, &user_id) {
        Some(secret) => page_of(
            vec![s3_credential(&user_id, "os-1", 1, &secret)],
            &query,
            &format!("/v1/users/{user_id}/object-storages/credentials"),
        ),
        None => contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry User not found by userId {user_id}"),
        ),
    }
}

pub async fn get_s3_credential(
    State(state): State<Arc<SandboxState>>,
    Path((user_id, object_storage_id, credential_id)): Path<(String, String, i64)>,
) -> Response {
    match s3_secret(&state, &user_id) {
        Some(secret) if credential_id == 1 => Json(json!({
            "data": [s3_credential(&user_id, &object_storage_id, 1, &secret)],
            "_links": {"self": format!("/v1/users/{user_id}/object-storages/{object_storage_id}/credentials/1")},
        }))
        .into_response(),
        _ => contabo_error(StatusCode::NOT_FOUND, "Entry Credential not found"),
    }
}

pub async fn regenerate_s3_credential(
    State(state): State<Arc<SandboxState>>,
    Path((user_id, object_storage_id, credential_id)): Path<(String, String, i64)>,
) -> Response {
    if s3_secret(&state, &user_id).is_none() || credential_id != 1 {
        return contabo_error(StatusCode::NOT_FOUND, "Entry Credential not found");
    }
    let secret = random_token();
    state
        .data
        .lock()
        .unwrap()
        .s3_secrets
        .insert((user_id.clone(), 1), secret.clone());
    Json(json!({
        "data": [s3_credential(&user_id, &object_storage_id, 1, &secret)],
        "_links": {"self": format!("/v1/users/{user_id}/object-storages/{object_storage_id}/credentials/1")},
    }))
    .into_response()
}

fn role_from_body(role_id: i64, body: &Value) -> Result<Value, String> {
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or("name should not be empty")?;
    let admin = body
        .get("admin")
        .and_then(Value::as_bool)
        .ok_or("admin must be a boolean")?;
    let all = body
        .get("accessAllResources")
        .and_then(Value::as_bool)
        .ok_or("accessAllResources must be a boolean")?;
    Ok(json!({
        "roleId": role_id, "tenantId": TENANT_ID, "customerId": CUSTOMER_ID, "name": name,
        "admin": admin, "accessAllResources": all, "type": "custom",
        "permissions": body.get("permissions").cloned().unwrap_or(json!([])),
    }))
}

pub async fn list_roles(
    State(state): State<Arc<SandboxState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let roles: Vec<Value> = state.data.lock().unwrap().roles.values().cloned().collect();
    page_of(roles, &query, "/v1/roles")
}

pub async fn get_role(State(state): State<Arc<SandboxState>>, Path(id): Path<i64>) -> Response {
    match state.data.lock().unwrap().roles.get(&id) {
        Some(role) => Json(json!({"data": [role], "_links": {"self": format!("/v1/roles/{id}")}}))
            .into_response(),
        None => contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry Role not found by roleId {id}"),
        ),
    }
}

pub async fn create_role(State(state): State<Arc<SandboxState>>, body: Bytes) -> Response {
    let Some(body) = parse_json_body(&body) else {
        return invalid_json();
    };
    let mut data = state.data.lock().unwrap();
    let id = data.next_id();
    match role_from_body(id, &body) {
        Ok(role) => {
            data.roles.insert(id, role);
            (
                StatusCode::CREATED,
                Json(json!({"data": [{"tenantId": TENANT_ID, "customerId": CUSTOMER_ID, "roleId": id}], "_links": {"self": format!("/v1/roles/{id}")}})),
            )
                .into_response()
        }
        Err(m) => contabo_error(StatusCode::BAD_REQUEST, &m),
    }
}

pub async fn update_role(
    State(state): State<Arc<SandboxState>>,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let Some(body) = parse_json_body(&body) else {
        return invalid_json();
    };
    let mut data = state.data.lock().unwrap();
    if !data.roles.contains_key(&id) {
        return contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry Role not found by roleId {id}"),
        );
    }
    match role_from_body(id, &body) {
        Ok(role) => {
            data.roles.insert(id, role);
            Json(json!({"_links": {"self": format!("/v1/roles/{id}")}})).into_response()
        }
        Err(m) => contabo_error(StatusCode::BAD_REQUEST, &m),
    }
}

pub async fn delete_role(State(state): State<Arc<SandboxState>>, Path(id): Path<i64>) -> Response {
    match state.data.lock().unwrap().roles.remove(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => contabo_error(
            StatusCode::NOT_FOUND,
            &format!("Entry Role not found by roleId {id}"),
        ),
    }
}
