//! The caller's address behind a load balancer: from a trusted proxy the forwarded address is the
//! caller for the audit record and the per-address 401 throttle; from anyone else the forwarding
//! headers change nothing.

mod common;

use common::start_with;
use contabo_gateway::sandbox::SandboxOptions;

async fn audited_address(
    gw: &common::TestGateway,
    forwarded_for: &str,
    request_id: &str,
) -> String {
    let created = gw
        .request(
            reqwest::Method::POST,
            "/v1/compute/instances",
            &gw.keys.operator,
        )
        .header("x-request-id", request_id)
        .header("x-forwarded-for", forwarded_for)
        .json(&serde_json::json!({"imageId": "x", "productId": "V45"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let audit = common::audit_records(gw, &format!("request_id={request_id}")).await;
    audit["records"][0]["client_ip"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_caller() {
    let gw = start_with(SandboxOptions::default(), |config| {
        config.server.trusted_proxies = vec!["127.0.0.1".into()];
        config.server.auth_failures_per_minute = 2;
    })
    .await;
    let address = audited_address(
        &gw,
        "6.6.6.6, 203.0.113.5, 127.0.0.1",
        "04e0f898-37b4-48bc-a794-1a57abe6aa01",
    )
    .await;
    assert_eq!(address, "203.0.113.5");

    // The 401 throttle counts per forwarded caller: one caller's guesses do not block another.
    let guess = |from: &'static str| {
        gw.get("/v1/users", "a-guessed-key")
            .header("x-forwarded-for", from)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(guess("198.51.100.1").await.unwrap().status(), 401);
    }
    assert_eq!(guess("198.51.100.1").await.unwrap().status(), 429);
    assert_eq!(guess("198.51.100.2").await.unwrap().status(), 401);
}

#[tokio::test]
async fn from_an_untrusted_peer_the_forwarding_headers_are_ignored() {
    let gw = start_with(SandboxOptions::default(), |_| {}).await;
    let address = audited_address(&gw, "203.0.113.5", "04e0f898-37b4-48bc-a794-1a57abe6aa02").await;
    assert_eq!(address, "127.0.0.1");
}
