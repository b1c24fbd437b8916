//! The request-id policy: valid ids kept, missing ones generated, malformed ones replaced; the
//! response echoes exactly what upstream received; x-trace-id passes through.

mod common;

use common::{VALID_REQUEST_ID, json, start};
use contabo_gateway::request_id::matches_contabo_pattern;

async fn call(gw: &common::TestGateway, request_id: Option<&str>) -> (String, String) {
    let mut request = gw
        .get("/v1/compute/instances", &gw.keys.readonly)
        .header("x-trace-id", "trace-1");
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let seen = gw.sandbox().last_recorded().unwrap();
    assert_eq!(seen.headers["x-trace-id"], "trace-1");
    assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
    (
        echoed,
        seen.headers["x-request-id"].to_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_valid_id_is_kept() {
    let gw = start().await;
    let (echoed, upstream) = call(&gw, Some(VALID_REQUEST_ID)).await;
    assert_eq!(upstream, VALID_REQUEST_ID);
    assert_eq!(echoed, VALID_REQUEST_ID);
    let upper = "04E0F898-37B4-48BC-A794-1A57ABE6AA31";
    let (echoed, upstream) = call(&gw, Some(upper)).await;
    assert_eq!((echoed.as_str(), upstream.as_str()), (upper, upper));
}

#[tokio::test]
async fn a_missing_id_is_generated() {
    let gw = start().await;
    let (echoed, upstream) = call(&gw, None).await;
    assert!(matches_contabo_pattern(upstream.as_bytes()));
    assert_eq!(echoed, upstream);
    let (second, _) = call(&gw, None).await;
    assert_ne!(second, echoed, "ids are fresh per call");
}

#[tokio::test]
async fn a_malformed_id_is_replaced() {
    let gw = start().await;
    for bad in [
        "abc",
        "04e0f898-37b4-68bc-a794-1a57abe6aa31",
        "04e0f898-37b4-48bc-c794-1a57abe6aa31",
        "",
    ] {
        let (echoed, upstream) = call(&gw, Some(bad)).await;
        assert_ne!(upstream, bad);
        assert!(matches_contabo_pattern(upstream.as_bytes()));
        assert_eq!(echoed, upstream);
    }
}

#[tokio::test]
async fn gateway_errors_carry_the_request_id() {
    let gw = start().await;
    let response = common::http()
        .get(format!("{}/v1/compute/instances", gw.url))
        .header("x-request-id", VALID_REQUEST_ID)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], VALID_REQUEST_ID);
    assert_eq!(json(response).await["request_id"], VALID_REQUEST_ID);
}

/// The gateway's own endpoints get the same per-call treatment as Contabo calls: the caller's
/// valid request id is kept, echoed, and is the one an error names.
#[tokio::test]
async fn gateway_endpoints_keep_and_echo_the_calls_request_id() {
    let gw = start().await;
    for (path, key, status) in [
        ("/_gateway/health", None, 200),
        ("/_gateway/status", Some("not-a-key"), 401),
        ("/_gateway/status", Some(gw.keys.readonly.as_str()), 403),
        ("/elsewhere", None, 404),
    ] {
        let mut request = common::http()
            .get(format!("{}{path}", gw.url))
            .header("x-request-id", VALID_REQUEST_ID);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()["x-request-id"],
            VALID_REQUEST_ID,
            "{path}"
        );
        if status != 200 {
            let body = json(response).await;
            assert_eq!(body["request_id"], VALID_REQUEST_ID, "{path}: {body}");
        }
    }
}
