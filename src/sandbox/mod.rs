//! A built-in Contabo sandbox upstream: `serve --sandbox` and the fixture of the integration tests.
//!
//! It runs in-process on a loopback port and behaves like Contabo where the gateway depends on it:
//! the Keycloak token endpoint (JWT access tokens naming the account's user), the whole Users API
//! (stateful), roles, compute instances, DNS zones and records, a domain's auth code, and
//! Contabo's own checks (401 without a valid token, 400 without a valid x-request-id). Tests read
//! what it received and switch faults on through [`SandboxState`].

mod auth;
mod compute;
mod dns;
pub mod state;
mod users;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::serve::ListenerExt;
use axum::{Json, body::Bytes};
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::config::Credentials;
pub use state::{SandboxOptions, SandboxState};

/// A running sandbox.
pub struct Sandbox {
    pub addr: SocketAddr,
    pub state: Arc<SandboxState>,
    task: tokio::task::JoinHandle<()>,
}

impl Sandbox {
    /// Starts a sandbox on 127.0.0.1 with a free port.
    pub async fn start(options: SandboxOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SandboxState::new(options));
        let app = router(state.clone());
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn auth_url(&self) -> String {
        format!("http://{}{}", self.addr, auth::TOKEN_PATH)
    }

    /// The credential the sandbox accepts, as the gateway holds it.
    pub fn credentials(&self) -> Credentials {
        let c = self.state.credential();
        Credentials {
            client_id: c.client_id,
            client_secret: c.client_secret.into(),
            username: c.username,
            password: c.password.into(),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn router(state: Arc<SandboxState>) -> Router {
    let v1 = Router::new()
        .route("/v1/users", get(users::list_users).post(users::create_user))
        .route("/v1/users/client", get(users::get_client))
        .route("/v1/users/client/secret", put(users::rotate_client_secret))
        .route("/v1/users/is-password-set", get(users::is_password_set))
        .route("/v1/users/audits", get(users::list_user_audits))
        .route(
            "/v1/users/{user_id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route("/v1/users/{user_id}/{action}", post(users::user_action))
        .route(
            "/v1/users/{user_id}/object-storages/credentials",
            get(users::list_s3_credentials),
        )
        .route(
            "/v1/users/{user_id}/object-storages/{object_storage_id}/credentials/{credential_id}",
            get(users::get_s3_credential).patch(users::regenerate_s3_credential),
        )
        .route("/v1/roles", get(users::list_roles).post(users::create_role))
        .route(
            "/v1/roles/{role_id}",
            get(users::get_role)
                .put(users::update_role)
                .delete(users::delete_role),
        )
        .route(
            "/v1/compute/instances",
            get(compute::list_instances).post(compute::create_instance),
        )
        .route(
            "/v1/compute/instances/{instance_id}",
            get(compute::get_instance),
        )
        .route("/v1/dns/zones", get(dns::list_zones).post(dns::create_zone))
        .route(
            "/v1/dns/zones/{zone}",
            get(dns::get_zone).delete(dns::delete_zone),
        )
        .route(
            "/v1/dns/zones/{zone}/records",
            get(dns::list_records).post(dns::create_record),
        )
        .route(
            "/v1/dns/zones/{zone}/records/{record_id}",
            patch(dns::update_record).delete(dns::delete_record),
        )
        .route(
            "/v1/domains/{domain}/generate-auth-code",
            post(dns::generate_auth_code),
        )
        .fallback(|| async { contabo_error(StatusCode::NOT_FOUND, "Not Found") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            contabo_checks,
        ));
    Router::new()
        .route(auth::TOKEN_PATH, post(auth::token))
        .merge(v1)
        .with_state(state)
}

/// Contabo's own checks on every /v1 call, plus recording and the faults tests switch on.
async fn contabo_checks(
    State(state): State<Arc<SandboxState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return contabo_error(StatusCode::BAD_REQUEST, "body could not be read"),
    };
    state.record(state::Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string()),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let delay = state.faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let forced_reject = state
        .faults
        .reject_next_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if forced_reject || !state.access_token_valid(token) {
        state.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        return contabo_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let request_id_ok = parts
        .headers
        .get("x-request-id")
        .is_some_and(|v| crate::request_id::matches_contabo_pattern(v.as_bytes()));
    if !request_id_ok {
        return contabo_error(
            StatusCode::BAD_REQUEST,
            "x-request-id must be a UUID (version 4 recommended)",
        );
    }
    state.counters.api_calls.fetch_add(1, Ordering::SeqCst);
    let forced_failure = state
        .faults
        .fail_next_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if forced_failure {
        return contabo_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    }
    let throttled = state
        .faults
        .throttle_next_calls
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if throttled {
        let mut response = contabo_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        let retry_after = state
            .faults
            .throttle_retry_after_secs
            .load(Ordering::SeqCst);
        if retry_after > 0 {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after.into());
        }
        return response;
    }
    next.run(Request::from_parts(parts, body.into())).await
}

/// Contabo's error shape.
pub fn contabo_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"statusCode": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// The JSON of a request body; `None` when it is not JSON (answer with [`invalid_json`]).
fn parse_json_body(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

fn invalid_json() -> Response {
    contabo_error(StatusCode::BAD_REQUEST, "body must be valid JSON")
}

/// One page of `items` in Contabo's list shape (`page` from 1, `size` default 100).
fn page_of(items: Vec<Value>, query: &HashMap<String, String>, path: &str) -> Response {
    let number = |key: &str, default: usize| {
        query
            .get(key)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let (page, size) = (number("page", 1), number("size", 100));
    let total = items.len();
    let pages = total.div_ceil(size).max(1);
    let data: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * size)
        .take(size)
        .collect();
    let link = |p: usize| format!("{path}?page={p}&size={size}");
    let mut links = json!({"self": link(page), "first": link(1), "last": link(pages)});
    if page > 1 {
        links["previous"] = json!(link(page - 1));
    }
    if page < pages {
        links["next"] = json!(link(page + 1));
    }
    Json(json!({
        "_pagination": {"size": size, "totalElements": total, "totalPages": pages, "page": page},
        "data": data,
        "_links": links,
    }))
    .into_response()
}
