//! The cache stage for cacheable reads: answer from the cache when fresh, otherwise one coalesced
//! upstream fetch for every concurrent caller, stored when it is a 200; an entry within
//! `stale_if_error_secs` answers when upstream fails. Hits need no token and no upstream budget.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, header};

use super::CallContext;
use super::forward::{forward, redacted};
use crate::cache::{CachedResponse, Lookup, NonAdminBody, cache_key, wants_fresh};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::request_id;
use crate::routes::CacheGroup;
use crate::upstream::headers;

const CACHE_STATUS: &str = "cache-status";

pub async fn read(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
    group: CacheGroup,
) -> Result<Response, GatewayError> {
    let cache = &gw.cache;
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |pq| pq.as_str());
    let key = cache_key(target);
    let refetch = wants_fresh(&parts.headers);
    let stale = if refetch {
        None
    } else {
        match cache.lookup(&key).await {
            Lookup::Fresh(entry) => {
                cache.count_hit(false);
                return serve(call, &entry, "contabo-gateway; hit", true);
            }
            Lookup::Miss { stale } => stale,
        }
    };
    let fetched = cache
        .fetch_coalesced(&key, group, fetch(gw, call, parts))
        .await;
    let upstream_failed = match &fetched.result {
        Ok(response) => response.status.is_server_error(),
        Err(error) => error.is_upstream_failure(),
    };
    if let (true, Some(stale)) = (upstream_failed, &stale) {
        cache.count_hit(true);
        return serve(call, stale, "contabo-gateway; hit; stale", true);
    }
    let response = fetched.result?;
    let status = match (refetch, fetched.stored) {
        (false, true) => "contabo-gateway; fwd=miss; stored",
        (false, false) => "contabo-gateway; fwd=miss",
        (true, true) => "contabo-gateway; fwd=request; stored",
        (true, false) => "contabo-gateway; fwd=request",
    };
    serve(call, &response, status, false)
}

/// One upstream fetch, read whole so its answer can be shared and stored.
async fn fetch(
    gw: &Gateway,
    call: &CallContext,
    parts: &Parts,
) -> Result<CachedResponse, GatewayError> {
    let upstream = forward(gw, call, parts, Bytes::new()).await?;
    let status = upstream.status();
    let (head, body) = upstream.into_parts();
    let mut headers = headers::for_caller(head.headers);
    headers.remove(header::CONTENT_LENGTH);
    let body = gw.upstream.read_body(body).await?;
    let non_admin_body = match call.route.filter(|r| r.carries_secrets()) {
        None => NonAdminBody::Same,
        Some(route) => match redacted(status, &headers, &body, route, route.secret_fields) {
            Ok(redacted) => NonAdminBody::Redacted(redacted),
            Err(error) => NonAdminBody::Unreadable(error),
        },
    };
    Ok(CachedResponse::new(status, headers, body, non_admin_body))
}

/// Serves a cached or fetched answer to this caller: its own request id, its role's view.
fn serve(
    call: &CallContext,
    entry: &CachedResponse,
    cache_status: &'static str,
    with_age: bool,
) -> Result<Response, GatewayError> {
    let route_fields = call.route.map_or(&[][..], |r| r.secret_fields);
    let hidden = call.client.hidden_fields(route_fields);
    let body = match (&entry.non_admin_body, call.route) {
        _ if hidden.is_empty() => entry.body.clone(),
        (NonAdminBody::Same, _) => entry.body.clone(),
        (NonAdminBody::Unreadable(error), _) => return Err(error.clone()),
        (NonAdminBody::Redacted(body), _) if hidden.len() == route_fields.len() => body.clone(),
        // A team that may see some of the route's secrets (`reveal`) but not all of them.
        (NonAdminBody::Redacted(_), Some(route)) => {
            redacted(entry.status, &entry.headers, &entry.body, route, &hidden)?
        }
        (NonAdminBody::Redacted(body), None) => body.clone(),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = entry.status;
    let headers = response.headers_mut();
    // Sized for the stored headers and the three added here, so nothing regrows.
    headers.reserve(entry.headers.len() + 3);
    headers.extend(entry.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
    headers.insert(request_id::HEADER, call.request_id.header_value());
    headers.insert(CACHE_STATUS, HeaderValue::from_static(cache_status));
    if with_age {
        headers.insert(header::AGE, HeaderValue::from(entry.age().as_secs()));
    }
    Ok(response)
}

/// The header a cacheable read gets when the cache is turned off.
pub fn bypassed(mut response: Response) -> Response {
    response.headers_mut().insert(
        CACHE_STATUS,
        HeaderValue::from_static("contabo-gateway; fwd=bypass"),
    );
    response
}
