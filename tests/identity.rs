//! Team identity, the role matrix and redaction of secrets by role. A refused call never reaches
//! upstream.

mod common;

use common::{json, start};
use contabo_gateway::redact::REDACTED;
use reqwest::Method;

#[tokio::test]
async fn missing_unknown_and_malformed_keys_get_401_json() {
    let gw = start().await;
    let url = format!("{}/v1/users", gw.url);
    let cases = [
        (None, "no team key"),
        (
            Some(("authorization", "Bearer not-a-known-key")),
            "not known",
        ),
        (Some(("x-api-key", "not-a-known-key")), "not known"),
        (
            Some(("authorization", "Basic dXNlcjpwYXNz")),
            "Bearer <key>",
        ),
    ];
    for (header, expected) in cases {
        let mut request = common::http().get(&url);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{header:?}");
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body = json(response).await;
        assert_eq!(body["error"], "unauthenticated");
        assert_eq!(body["request_id"], id.as_str());
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{body}"
        );
        assert!(
            !body.to_string().contains("not-a-known-key"),
            "the key is echoed: {body}"
        );
    }
    assert!(
        gw.sandbox().recorded().is_empty(),
        "a refused call reached upstream"
    );
}

#[tokio::test]
async fn the_role_matrix_holds_and_refused_calls_never_reach_upstream() {
    let gw = start().await;
    let user_id = gw.sandbox().owner_id();
    let calls: Vec<(Method, String)> = vec![
        (Method::GET, "/v1/users/is-password-set".into()),
        (Method::GET, "/v1/compute/instances".into()),
        (Method::HEAD, "/v1/compute/instances".into()),
        (Method::POST, "/v1/compute/instances".into()),
        (Method::PATCH, format!("/v1/users/{user_id}")),
        (Method::POST, "/v1/roles".into()),
        (Method::POST, format!("/v1/users/{user_id}/reset-password")),
    ];
    //              GET users, GET inst, HEAD, POST inst, PATCH user, POST role, reset-pw
    let matrix = [
        (
            &gw.keys.admin,
            "admin",
            [true, true, true, true, true, true, true],
        ),
        (
            &gw.keys.operator,
            "operator",
            [true, true, true, true, false, false, false],
        ),
        (
            &gw.keys.readonly,
            "readonly",
            [true, true, true, false, false, false, false],
        ),
        (
            &gw.keys.auditor,
            "auditor",
            [false, false, false, false, false, false, false],
        ),
    ];
    for (key, role, allowed) in matrix {
        for ((method, path), allowed) in calls.iter().zip(allowed) {
            let before = gw.sandbox().recorded().len();
            let body = match path.as_str() {
                "/v1/roles" => {
                    serde_json::json!({"name": "r", "admin": false, "accessAllResources": true})
                }
                "/v1/compute/instances" => serde_json::json!({"period": 1}),
                _ => serde_json::json!({"firstName": "X"}),
            };
            let mut request = gw.request(method.clone(), path, key);
            if method != Method::GET && method != Method::HEAD {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let reached = gw.sandbox().recorded().len() - before;
            if allowed {
                assert!(
                    response.status().is_success(),
                    "{role} {method} {path}: {}",
                    response.status()
                );
                assert_eq!(reached, 1);
            } else {
                assert_eq!(response.status(), 403, "{role} {method} {path}");
                assert_eq!(reached, 0, "{role} {method} {path} reached upstream");
                if method != Method::HEAD {
                    let body = json(response).await;
                    assert_eq!(body["error"], "forbidden");
                    let message = body["message"].as_str().unwrap();
                    assert!(
                        message.contains(role) && message.contains("may make"),
                        "{message}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_client_secret_is_redacted_for_every_role_but_admin() {
    let gw = start().await;
    let real_secret = gw.sandbox().credential().client_secret;
    let admin = json(
        gw.get("/v1/users/client", &gw.keys.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(admin["data"][0]["secret"], real_secret.as_str());
    for key in [&gw.keys.operator, &gw.keys.readonly] {
        let response = gw.get("/v1/users/client", key).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(!text.contains(&real_secret), "secret leaked: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["data"][0]["secret"], REDACTED);
        assert_eq!(
            body["data"][0]["clientId"], "sandbox-client",
            "the rest is untouched"
        );
    }
}

#[tokio::test]
async fn s3_secret_keys_are_redacted_for_non_admins() {
    let gw = start().await;
    let user_id = gw.sandbox().owner_id();
    let list = format!("/v1/users/{user_id}/object-storages/credentials");
    let one = format!("/v1/users/{user_id}/object-storages/os-1/credentials/1");
    let admin_view = json(gw.get(&list, &gw.keys.admin).send().await.unwrap()).await;
    let secret = admin_view["data"][0]["secretKey"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(secret, REDACTED);
    for path in [&list, &one] {
        let response = gw
            .get(path, &gw.keys.readonly)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = json(response).await;
        assert_eq!(body["data"][0]["secretKey"], REDACTED, "{path}");
        assert!(
            body["data"][0]["accessKey"]
                .as_str()
                .unwrap()
                .starts_with("AK")
        );
        // The body had to be readable to redact it: compression was not asked for.
        let seen = gw.sandbox().last_recorded().unwrap();
        assert!(!seen.headers.contains_key("accept-encoding"));
    }
}

#[tokio::test]
async fn gateway_status_is_for_admins_only() {
    let gw = start().await;
    let status = |key: &str| {
        common::http()
            .get(format!("{}/_gateway/status", gw.url))
            .bearer_auth(key.to_string())
            .send()
    };
    assert_eq!(status(&gw.keys.admin).await.unwrap().status(), 200);
    assert_eq!(status(&gw.keys.readonly).await.unwrap().status(), 403);
    assert_eq!(status("nope").await.unwrap().status(), 401);
    let health = common::http()
        .get(format!("{}/_gateway/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = common::http()
        .get(format!("{}/_gateway/ready", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
