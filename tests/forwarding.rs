//! Forwarding: method, path, query and body unchanged; hop-by-hop headers dropped; the caller's key
//! replaced by the gateway's token; upstream's answer returned unchanged.

mod common;

use common::{json, start};
use reqwest::Method;

#[tokio::test]
async fn get_goes_upstream_with_path_and_query_unchanged() {
    let gw = start().await;
    let response = gw
        .get(
            "/v1/users?size=1&page=1&orderBy=email:asc&orderBy=firstName:desc",
            &gw.keys.readonly,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json(response).await;
    assert_eq!(body["_pagination"]["size"], 1);
    let seen = gw.sandbox().last_recorded().unwrap();
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.path_and_query,
        "/v1/users?size=1&page=1&orderBy=email:asc&orderBy=firstName:desc"
    );
}

#[tokio::test]
async fn one_mebibyte_post_body_arrives_byte_identical() {
    let gw = start().await;
    let filler: String = (0..1024 * 1024 - 64)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = format!(r#"{{"displayName":"big","period":1,"userData":"{filler}"}}"#);
    assert!(body.len() >= 1024 * 1024 - 32);
    let response = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created = json(response).await;
    assert!(created["data"][0]["instanceId"].as_i64().unwrap() > 0);
    let seen = gw.sandbox().last_recorded().unwrap();
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body.as_bytes(), "the body changed on the way");
    assert_eq!(seen.headers["content-type"], "application/json");
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_end_to_end_kept() {
    let gw = start().await;
    let response = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .header("connection", "keep-alive, x-hop-named")
        .header("x-hop-named", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "websocket")
        .header("trailer", "x-checksum")
        .header("x-trace-id", "trace-123")
        .header("x-team-note", "kept")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = gw.sandbox().last_recorded().unwrap();
    for dropped in [
        "x-hop-named",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(
            !seen.headers.contains_key(dropped),
            "{dropped} reached upstream"
        );
    }
    let connection = seen
        .headers
        .get("connection")
        .map(|v| v.to_str().unwrap().to_string());
    assert!(connection.is_none_or(|c| !c.contains("x-hop-named")));
    assert_eq!(seen.headers["x-trace-id"], "trace-123");
    assert_eq!(seen.headers["x-team-note"], "kept");
    assert_eq!(seen.headers["accept"], "application/json");
}

#[tokio::test]
async fn the_callers_key_never_reaches_upstream() {
    let gw = start().await;
    for (header, value) in [
        ("authorization", format!("Bearer {}", gw.keys.readonly)),
        ("x-api-key", gw.keys.readonly.clone()),
    ] {
        let response = common::http()
            .get(format!("{}/v1/users", gw.url))
            .header(header, &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = gw.sandbox().last_recorded().unwrap();
        assert!(!seen.headers.contains_key("x-api-key"));
        let auth = seen.headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with("Bearer ") && !auth.contains(&gw.keys.readonly));
        assert!(
            gw.sandbox()
                .access_token_valid(auth.trim_start_matches("Bearer "))
        );
        for (_, v) in &seen.headers {
            assert!(!v.to_str().unwrap_or("").contains(&gw.keys.readonly));
        }
    }
}

#[tokio::test]
async fn upstream_status_headers_and_body_come_back_unchanged() {
    let gw = start().await;
    let response = gw
        .get("/v1/users/no-such-user", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json(response).await;
    assert_eq!(body["statusCode"], 404);
    assert_eq!(
        body["message"],
        "Entry User not found by userId no-such-user"
    );

    // A route the spec does not know is still forwarded: upstream decides.
    let response = gw
        .get("/v1/not-in-spec", &gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(json(response).await["statusCode"], 404);
    assert_eq!(
        gw.sandbox().last_recorded().unwrap().path_and_query,
        "/v1/not-in-spec"
    );
}

#[tokio::test]
async fn users_api_round_trip_through_the_gateway() {
    let gw = start().await;
    let admin = &gw.keys.admin;
    let created = gw
        .request(Method::POST, "/v1/users", admin)
        .json(&serde_json::json!({"firstName": "Ada", "lastName": "L", "email": "ada@example.com", "enabled": true, "totp": false, "locale": "en"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = json(created).await["data"][0]["userId"]
        .as_str()
        .unwrap()
        .to_string();
    let patched = gw
        .request(Method::PATCH, &format!("/v1/users/{id}"), admin)
        .json(&serde_json::json!({"firstName": "Grace"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let user = json(
        gw.get(&format!("/v1/users/{id}"), admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(user["data"][0]["firstName"], "Grace");
    let deleted = gw
        .request(Method::DELETE, &format!("/v1/users/{id}"), admin)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = gw
        .get(&format!("/v1/users/{id}"), admin)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}
