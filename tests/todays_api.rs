//! Contabo's API as it is today, beyond the spec `cntb` v1.5.5 ships: DNS zones and records through
//! the gateway (roles, audit with the operation's name), a domain's auth code redacted for
//! non-admins, and the new audit endpoints in reconciliation.

mod common;

use common::{http, json, start};
use contabo_gateway::audit::reconcile::audit_endpoints;
use serde_json::json;

async fn audit_rows(gw: &common::TestGateway, query: &str) -> Vec<serde_json::Value> {
    common::audit_records(gw, query).await["records"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_team_creates_lists_and_deletes_a_dns_record_through_the_gateway() {
    let gw = start().await;
    let post = |path: &str, key: &str, body: serde_json::Value| {
        gw.request(reqwest::Method::POST, path, key)
            .json(&body)
            .send()
    };
    let refused = post(
        "/v1/dns/zones",
        &gw.keys.readonly,
        json!({"zoneName": "example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 403, "readonly teams do not create zones");
    let zone = post(
        "/v1/dns/zones",
        &gw.keys.operator,
        json!({"zoneName": "example.com"}),
    )
    .await
    .unwrap();
    assert_eq!(zone.status(), 201);
    let record = post(
        "/v1/dns/zones/example.com/records",
        &gw.keys.operator,
        json!({"name": "www", "type": "A", "ttl": 3600, "prio": 0, "data": "192.0.2.7"}),
    )
    .await
    .unwrap();
    assert_eq!(record.status(), 201);
    let record = json(record).await;
    let id = record["data"][0]["recordId"].as_i64().unwrap();

    let listed = json(
        gw.get("/v1/dns/zones/example.com/records", &gw.keys.readonly)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["data"][0]["data"], "192.0.2.7");

    let path = format!("/v1/dns/zones/example.com/records/{id}");
    let deleted = gw
        .request(reqwest::Method::DELETE, &path, &gw.keys.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let listed = json(
        gw.get("/v1/dns/zones/example.com/records", &gw.keys.readonly)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["data"], json!([]));

    let rows = audit_rows(&gw, "client=team-operator").await;
    let paths: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap(),
                r["status"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    for expected in [
        ("POST", "/v1/dns/zones", 201),
        ("POST", "/v1/dns/zones/example.com/records", 201),
        ("DELETE", path.as_str(), 204),
    ] {
        assert!(paths.contains(&expected), "{expected:?} not in {paths:?}");
    }
    // Metrics know the new operations by name.
    let metrics = http()
        .get(format!("{}/_gateway/metrics", gw.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("createDnsZoneRecord"), "{metrics}");
}

#[tokio::test]
async fn a_domains_auth_code_is_a_secret() {
    let gw = start().await;
    let path = "/v1/domains/example.com/generate-auth-code";
    let code = |key: &str| {
        let request = gw.request(reqwest::Method::POST, path, key).send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200);
            json(response).await["data"][0]["authCode"].clone()
        }
    };
    let clear = code(&gw.keys.admin).await;
    assert!(clear.as_str().is_some_and(|c| c != "[REDACTED]"), "{clear}");
    let hidden = code(&gw.keys.operator).await;
    assert_eq!(hidden, "[REDACTED]");
    // Neither answer's code is in the audit log, the admin's included.
    let rows = audit_rows(&gw, "").await;
    let stored = serde_json::to_string(&rows).unwrap();
    assert!(stored.contains("generate-auth-code"), "{stored}");
    assert!(!stored.contains(clear.as_str().unwrap()), "{stored}");
}

#[test]
fn reconciliation_reads_the_new_audit_endpoints() {
    let endpoints = audit_endpoints();
    for expected in [
        "/v1/dns/zones/audits",
        "/v1/dns/records/audits",
        "/v1/domains/audits",
        "/v1/domains/handles/audits",
        "/v1/users/audits",
    ] {
        assert!(endpoints.contains(&expected), "{expected}: {endpoints:?}");
    }
}
