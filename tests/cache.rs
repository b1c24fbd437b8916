//! The response cache for user and client reads, in one gateway.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestGateway, json, start, start_with};
use contabo_gateway::redact::REDACTED;
use contabo_gateway::sandbox::SandboxOptions;
use reqwest::Method;

fn cache_status(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn get(gw: &TestGateway, path: &str) -> (String, serde_json::Value) {
    let response = gw.get(path, &gw.keys.admin).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    (cache_status(&response), json(response).await)
}

/// Reads the list and one user twice: both are entries afterwards.
async fn warm(gw: &TestGateway, user_path: &str) {
    get(gw, "/v1/users").await;
    get(gw, user_path).await;
    assert_eq!(get(gw, "/v1/users").await.0, "contabo-gateway; hit");
    assert_eq!(get(gw, user_path).await.0, "contabo-gateway; hit");
}

#[tokio::test]
async fn a_second_read_is_a_hit_with_its_own_request_id() {
    let gw = start().await;
    let first = gw.get("/v1/users", &gw.keys.readonly).send().await.unwrap();
    assert_eq!(cache_status(&first), "contabo-gateway; fwd=miss; stored");
    let first_body = first.bytes().await.unwrap();
    let second = gw
        .get("/v1/users", &gw.keys.readonly)
        .header("x-request-id", common::VALID_REQUEST_ID)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&second), "contabo-gateway; hit");
    assert_eq!(second.headers()["age"], "0");
    assert_eq!(second.headers()["x-request-id"], common::VALID_REQUEST_ID);
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(gw.api_calls(), 1);
    let id = gw.sandbox().owner_id();
    let (status, _) = get(&gw, &format!("/v1/users/{id}")).await;
    assert!(status.contains("fwd=miss"));
    let (status, user) = get(&gw, &format!("/v1/users/{id}")).await;
    assert_eq!(status, "contabo-gateway; hit");
    assert_eq!(user["data"][0]["userId"], id.as_str());
    assert_eq!(gw.api_calls(), 2);
}

#[tokio::test]
async fn query_variants_are_separate_entries_and_parameter_order_does_not_matter() {
    let gw = start().await;
    assert!(
        get(&gw, "/v1/users?page=1&size=5")
            .await
            .0
            .contains("fwd=miss")
    );
    assert_eq!(
        get(&gw, "/v1/users?size=5&page=1").await.0,
        "contabo-gateway; hit"
    );
    assert!(
        get(&gw, "/v1/users?page=2&size=5")
            .await
            .0
            .contains("fwd=miss")
    );
    assert!(get(&gw, "/v1/users").await.0.contains("fwd=miss"));
    assert!(
        get(&gw, "/v1/users?orderBy=email:asc&orderBy=firstName:asc")
            .await
            .0
            .contains("fwd=miss")
    );
    assert!(
        get(&gw, "/v1/users?orderBy=firstName:asc&orderBy=email:asc")
            .await
            .0
            .contains("fwd=miss")
    );
    assert_eq!(gw.api_calls(), 5);
}

#[tokio::test]
async fn writes_to_users_and_roles_invalidate_the_users_entries_before_answering() {
    let gw = start().await;
    let admin = &gw.keys.admin;
    let id = gw.sandbox().owner_id();
    let user_path = format!("/v1/users/{id}");

    warm(&gw, &user_path).await;
    let patch = gw
        .request(Method::PATCH, &user_path, admin)
        .json(&serde_json::json!({"firstName": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 200);
    let (status, user) = get(&gw, &user_path).await;
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(user["data"][0]["firstName"], "Renamed", "read-your-write");
    assert_eq!(
        get(&gw, "/v1/users").await.1["data"][0]["firstName"],
        "Renamed"
    );

    warm(&gw, &user_path).await;
    let created = gw
        .request(Method::POST, "/v1/users", admin)
        .json(&serde_json::json!({"email": "new@example.com", "enabled": true, "totp": false, "locale": "en"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let new_id = json(created).await["data"][0]["userId"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, list) = get(&gw, "/v1/users").await;
    assert!(status.contains("fwd=miss"));
    assert_eq!(list["_pagination"]["totalElements"], 2);

    warm(&gw, &user_path).await;
    let deleted = gw
        .request(Method::DELETE, &format!("/v1/users/{new_id}"), admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let (status, list) = get(&gw, "/v1/users").await;
    assert!(status.contains("fwd=miss"));
    assert_eq!(list["_pagination"]["totalElements"], 1);

    let role = gw
        .request(Method::POST, "/v1/roles", admin)
        .json(&serde_json::json!({"name": "ops", "admin": false, "accessAllResources": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(role.status(), 201);
    let role_id = json(role).await["data"][0]["roleId"].as_i64().unwrap();
    warm(&gw, &user_path).await;
    let updated = gw
        .request(Method::PUT, &format!("/v1/roles/{role_id}"), admin)
        .json(&serde_json::json!({"name": "ops2", "admin": false, "accessAllResources": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    assert!(
        get(&gw, "/v1/users").await.0.contains("fwd=miss"),
        "a role change drops user entries"
    );
    assert!(get(&gw, &user_path).await.0.contains("fwd=miss"));

    // A write that failed changes nothing: entries stay.
    warm(&gw, &user_path).await;
    let failed = gw
        .request(Method::PATCH, "/v1/users/no-such-user", admin)
        .json(&serde_json::json!({"firstName": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 404);
    assert_eq!(get(&gw, "/v1/users").await.0, "contabo-gateway; hit");
}

#[tokio::test]
async fn rotating_the_client_secret_drops_the_client_entry() {
    let gw = start().await;
    let (status, before) = get(&gw, "/v1/users/client").await;
    assert!(status.contains("stored"));
    assert_eq!(get(&gw, "/v1/users/client").await.0, "contabo-gateway; hit");
    let rotated = gw
        .request(Method::PUT, "/v1/users/client/secret", &gw.keys.admin)
        .send()
        .await
        .unwrap();
    let new_secret = json(rotated).await["data"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, after) = get(&gw, "/v1/users/client").await;
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(after["data"][0]["secret"], new_secret.as_str());
    assert_ne!(before["data"][0]["secret"], after["data"][0]["secret"]);
}

#[tokio::test]
async fn fifty_concurrent_cold_reads_cause_one_upstream_call() {
    let gw = start().await;
    // Warm the token on another route so only the cached route's calls are counted.
    gw.get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    gw.sandbox().faults.delay_ms.store(300, Ordering::SeqCst);
    let calls = (0..50).map(|_| gw.get("/v1/users?size=7", &gw.keys.readonly).send());
    let responses = futures_util::future::join_all(calls).await;
    let mut bodies = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        assert!(cache_status(&response).contains("fwd=miss"));
        bodies.insert(response.bytes().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "every waiter got the same answer");
    assert_eq!(
        gw.api_calls(),
        2,
        "one call for the warm-up, one for all fifty reads"
    );
    assert_eq!(get(&gw, "/v1/users?size=7").await.0, "contabo-gateway; hit");
}

#[tokio::test]
async fn an_upstream_error_goes_to_every_waiter_and_is_not_stored() {
    let gw = start().await;
    gw.get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    gw.sandbox().faults.delay_ms.store(300, Ordering::SeqCst);
    gw.sandbox()
        .faults
        .fail_next_calls
        .store(1, Ordering::SeqCst);
    let calls = (0..10).map(|_| gw.get("/v1/users", &gw.keys.readonly).send());
    for response in futures_util::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(cache_status(&response), "contabo-gateway; fwd=miss");
    }
    assert_eq!(gw.api_calls(), 2);
    gw.sandbox().faults.delay_ms.store(0, Ordering::SeqCst);
    let (status, _) = get(&gw, "/v1/users").await;
    assert_eq!(status, "contabo-gateway; fwd=miss; stored");
}

#[tokio::test]
async fn not_found_is_not_stored_and_s3_credentials_are_never_cached() {
    let gw = start().await;
    for _ in 0..2 {
        let response = gw
            .get("/v1/users/nobody", &gw.keys.readonly)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(cache_status(&response), "contabo-gateway; fwd=miss");
    }
    assert_eq!(gw.api_calls(), 2);
    let id = gw.sandbox().owner_id();
    for path in [
        format!("/v1/users/{id}/object-storages/credentials"),
        format!("/v1/users/{id}/object-storages/os-1/credentials/1"),
        "/v1/users/is-password-set".to_string(),
        "/v1/users/audits".to_string(),
    ] {
        for _ in 0..2 {
            let response = gw.get(&path, &gw.keys.admin).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            assert!(!response.headers().contains_key("cache-status"), "{path}");
        }
    }
    assert_eq!(gw.api_calls(), 2 + 8);
}

#[tokio::test]
async fn one_entry_serves_the_clear_secret_to_admins_and_the_redacted_one_to_others() {
    let gw = start().await;
    let secret = gw.sandbox().credential().client_secret;
    let admin = json(
        gw.get("/v1/users/client", &gw.keys.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(admin["data"][0]["secret"], secret.as_str());
    for key in [&gw.keys.readonly, &gw.keys.operator] {
        let response = gw.get("/v1/users/client", key).send().await.unwrap();
        assert_eq!(cache_status(&response), "contabo-gateway; hit");
        let text = response.text().await.unwrap();
        assert!(!text.contains(&secret));
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["data"][0]["secret"], REDACTED);
    }
    let again = gw
        .get("/v1/users/client", &gw.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&again), "contabo-gateway; hit");
    assert_eq!(json(again).await["data"][0]["secret"], secret.as_str());
    assert_eq!(gw.api_calls(), 1);

    // Cold, a non-admin's miss is redacted too.
    let gw = start().await;
    let body = json(
        gw.get("/v1/users/client", &gw.keys.readonly)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["data"][0]["secret"], REDACTED);
}

#[tokio::test]
async fn no_cache_refetches_and_stores() {
    let gw = start().await;
    let id = gw.sandbox().owner_id();
    let path = format!("/v1/users/{id}");
    get(&gw, &path).await;
    // Changed behind the gateway's back (as by another tool).
    gw.sandbox()
        .data
        .lock()
        .unwrap()
        .users
        .get_mut(&id)
        .unwrap()
        .last_name = "Changed".into();
    assert_eq!(
        get(&gw, &path).await.1["data"][0]["lastName"],
        "Owner",
        "still the cached value"
    );
    let fresh = gw
        .get(&path, &gw.keys.admin)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&fresh), "contabo-gateway; fwd=request; stored");
    assert_eq!(json(fresh).await["data"][0]["lastName"], "Changed");
    let (status, after) = get(&gw, &path).await;
    assert_eq!(status, "contabo-gateway; hit");
    assert_eq!(after["data"][0]["lastName"], "Changed");
}

#[tokio::test]
async fn the_byte_bound_evicts() {
    let gw = start_with(SandboxOptions::default(), |c| c.cache.max_bytes = 4096).await;
    for page in 1..=40 {
        get(&gw, &format!("/v1/users?page=1&size={page}")).await;
    }
    let stats = json(
        common::http()
            .get(format!("{}/_gateway/cache", gw.url))
            .bearer_auth(&gw.keys.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(stats["bytes"].as_u64().unwrap() <= 4096, "{stats}");
    assert!(stats["evictions"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["entries"].as_u64().unwrap() < 40, "{stats}");
}

#[tokio::test]
async fn stale_if_error_serves_an_expired_entry_when_upstream_fails() {
    let gw = start_with(SandboxOptions::default(), |c| {
        c.cache.ttl = Duration::from_secs(1);
        c.cache.stale_if_error = Duration::from_secs(30);
    })
    .await;
    get(&gw, "/v1/users").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.sandbox()
        .faults
        .fail_next_calls
        .store(1, Ordering::SeqCst);
    let response = gw.get("/v1/users", &gw.keys.readonly).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(cache_status(&response), "contabo-gateway; hit; stale");
    assert!(
        response.headers()["age"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Upstream healthy again: refetched and stored.
    assert_eq!(
        get(&gw, "/v1/users").await.0,
        "contabo-gateway; fwd=miss; stored"
    );

    // Without stale-if-error, the failure passes through.
    let gw = start_with(SandboxOptions::default(), |c| {
        c.cache.ttl = Duration::from_secs(1)
    })
    .await;
    get(&gw, "/v1/users").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.sandbox()
        .faults
        .fail_next_calls
        .store(1, Ordering::SeqCst);
    let response = gw.get("/v1/users", &gw.keys.readonly).send().await.unwrap();
    assert_eq!(response.status(), 500);
}

#[tokio::test]
async fn hits_need_no_token() {
    let options = SandboxOptions::lifetimes(1.0, 1.0);
    let gw = start_with(options, |_| {}).await;
    get(&gw, "/v1/users").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.sandbox().faults.auth_down.store(true, Ordering::SeqCst);
    assert_eq!(get(&gw, "/v1/users").await.0, "contabo-gateway; hit");
    let uncached = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(
        uncached.status(),
        502,
        "an uncached call needs the (now unobtainable) token"
    );
}

#[tokio::test]
async fn admin_cache_endpoints() {
    let gw = start().await;
    get(&gw, "/v1/users").await;
    get(&gw, "/v1/users").await;
    let url = format!("{}/_gateway/cache", gw.url);
    let forbidden = common::http()
        .get(&url)
        .bearer_auth(&gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let stats = json(
        common::http()
            .get(&url)
            .bearer_auth(&gw.keys.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["entries"], 1);
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 1);
    assert!(stats["bytes"].as_u64().unwrap() > 100);
    let purged = common::http()
        .delete(&url)
        .bearer_auth(&gw.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert!(get(&gw, "/v1/users").await.0.contains("fwd=miss"));
}

#[tokio::test]
async fn a_disabled_cache_bypasses() {
    let gw = start_with(SandboxOptions::default(), |c| c.cache.enabled = false).await;
    for _ in 0..2 {
        assert_eq!(get(&gw, "/v1/users").await.0, "contabo-gateway; fwd=bypass");
    }
    assert_eq!(gw.api_calls(), 2);
}
