//! Enforcement against the request as Contabo's router reads it. Contabo's API runs on an
//! Express-style router that matches paths without regard to case, ignores a trailing slash and
//! decodes escapes; `tests/common/express.rs` is such an upstream, as generous as can be. Every
//! operation of the route table, in every spelling, by every role: no clear secret reaches a
//! non-admin, no identity change by a non-admin reaches upstream, and every forwarded write has an
//! audit record naming the operation upstream executed.

mod common;

use std::collections::HashMap;

use common::express::{ExpressUpstream, SECRET_MARK};
use common::{TestGateway, http, json, start_with};
use contabo_gateway::routes::{OPERATIONS, RouteTable};
use contabo_gateway::sandbox::SandboxOptions;
use futures_util::StreamExt;
use reqwest::Method;

async fn gateway_before(upstream: &ExpressUpstream) -> TestGateway {
    let api_url = upstream.url.clone();
    start_with(SandboxOptions::default(), move |c| {
        c.upstream.api_url = api_url;
    })
    .await
}

/// A concrete path of a spec template: each {parameter} becomes a value of its own.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .enumerate()
        .map(|(i, s)| {
            if s.starts_with('{') {
                format!("Id{i}")
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The ways a router like Express reads as the same path.
fn spellings(template: &str) -> Vec<(&'static str, String)> {
    let path = concrete(template);
    let literal_upper = template
        .split('/')
        .enumerate()
        .map(|(i, s)| {
            if s.starts_with('{') {
                format!("Id{i}")
            } else if s == "v1" {
                s.to_string()
            } else {
                s.to_uppercase()
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    // The first letter of the last literal segment as %XX.
    let last_literal = template
        .split('/')
        .collect::<Vec<_>>()
        .iter()
        .rposition(|s| !s.is_empty() && !s.starts_with('{') && *s != "v1")
        .unwrap_or(1);
    let escaped = path
        .split('/')
        .enumerate()
        .map(|(i, s)| {
            if i == last_literal {
                let mut chars = s.chars();
                let first = chars.next().unwrap();
                format!("%{:02X}{}", first as u32, chars.as_str())
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    vec![
        ("canonical", path.clone()),
        ("case", literal_upper.clone()),
        ("trailing slash", format!("{path}/")),
        ("escape", escaped),
        (";params", format!("{path};x")),
        ("case + slash", format!("{literal_upper}/")),
    ]
}

#[tokio::test]
async fn every_operation_in_every_spelling_by_every_role_keeps_secrets_identity_and_audit() {
    let upstream = ExpressUpstream::start().await;
    let gw = gateway_before(&upstream).await;
    let roles = [
        ("admin", gw.keys.admin.clone()),
        ("operator", gw.keys.operator.clone()),
        ("readonly", gw.keys.readonly.clone()),
        ("auditor", gw.keys.auditor.clone()),
    ];
    let mut calls = Vec::new();
    for op in OPERATIONS {
        for (spelling, path) in spellings(op.path) {
            for (role, key) in &roles {
                calls.push((op, spelling, path.clone(), *role, key.clone(), false));
                if !op.mutates && (op.carries_secrets() || op.cached_as.is_some()) {
                    // A byte range of a secret-bearing document.
                    calls.push((op, spelling, path.clone(), *role, key.clone(), true));
                }
            }
        }
    }
    let total = calls.len();
    let results: Vec<_> = futures_util::stream::iter(calls)
        .map(|(op, spelling, path, role, key, ranged)| {
            let gw = &gw;
            async move {
                let request_id = uuid::Uuid::new_v4().to_string();
                let method: Method = op.method.parse().unwrap();
                let mut request = gw
                    .request(method.clone(), &path, &key)
                    .header("x-request-id", &request_id);
                if ranged {
                    request = request.header("range", "bytes=10-60");
                }
                if op.mutates {
                    request = request.json(&serde_json::json!({"name": "n"}));
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap();
                (op, spelling, path, role, request_id, status, body)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(results.len(), total);
    let mut role_of = HashMap::new();
    let mut respelled = 0;
    for (op, spelling, path, role, request_id, status, body) in &results {
        role_of.insert(request_id.clone(), *role);
        if *role != "admin" {
            assert!(
                !body.contains(SECRET_MARK),
                "{role} {} {path} ({spelling}) got a clear secret: {status} {body}",
                op.method
            );
        }
        if *spelling != "canonical" {
            assert_eq!(
                *status, 400,
                "{role} {} {path} ({spelling}) was not refused: {body}",
                op.method
            );
            assert!(body.contains("non_canonical_path"), "{body}");
            respelled += 1;
        }
    }
    assert!(respelled > 1000, "{respelled}");

    // What reached upstream: canonical spellings only, no identity change by a non-admin, no
    // byte range of a document the gateway reads.
    let table = RouteTable::default();
    let received = upstream.received();
    assert!(!received.is_empty());
    gw.gateway.audit.flush().await;
    let audited = http()
        .get(format!(
            "{}/_gateway/audit?outcome=forwarded&limit=1000",
            gw.url
        ))
        .bearer_auth(&gw.keys.auditor)
        .send()
        .await
        .unwrap();
    let audited = json(audited).await;
    let records: HashMap<String, serde_json::Value> = audited["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["request_id"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    for call in &received {
        let method: Method = call.method.parse().unwrap();
        let classified = table.classify(&method, &call.path);
        assert_eq!(
            classified.canonical, None,
            "{} {} reached upstream in another spelling",
            call.method, call.path
        );
        let op = classified.operation.expect("a spec operation");
        let role = role_of[&call.request_id];
        let identity = call.path.starts_with("/v1/users") || call.path.starts_with("/v1/roles");
        if op.mutates && identity {
            assert_eq!(
                role, "admin",
                "{role} changed identities: {} {}",
                call.method, call.path
            );
        }
        if op.needs_readable_body() {
            assert_eq!(call.range, None, "a range reached upstream: {call:?}");
        }
        if op.mutates {
            let record = records
                .get(&call.request_id)
                .unwrap_or_else(|| panic!("no audit record for {call:?}"));
            assert_eq!(record["path"], call.path.as_str());
            assert_eq!(record["method"], call.method.as_str());
            assert_eq!(record["outcome"], "forwarded");
        }
    }
}

#[tokio::test]
async fn a_secret_bearing_answer_that_is_not_one_whole_json_document_is_refused_to_non_admins() {
    let upstream = ExpressUpstream::start().await;
    let gw = gateway_before(&upstream).await;
    for path in [
        "/v1/users/client?partial=1",
        "/v1/users/client?as=text",
        "/v1/secrets/7?partial=1",
        "/v1/secrets/7?as=text",
        "/v1/users/u1/object-storages/o1/credentials/3?partial=1",
    ] {
        for key in [&gw.keys.readonly, &gw.keys.operator] {
            let response = gw.get(path, key).send().await.unwrap();
            assert_eq!(response.status(), 502, "{path}");
            let body = json(response).await;
            assert_eq!(body["error"], "bad_upstream_response", "{path}");
            assert!(!body.to_string().contains(SECRET_MARK));
        }
        // Admins see secrets anyway: the answer goes to them as it came.
        let admin = gw.get(path, &gw.keys.admin).send().await.unwrap();
        assert!(admin.status().is_success(), "{path}");
    }
    // A range asked by a readonly caller does not reach upstream; the whole document, redacted,
    // comes back.
    let ranged = gw
        .get("/v1/users/client", &gw.keys.readonly)
        .header("range", "bytes=20-60")
        .header("if-range", "\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 200);
    let body = json(ranged).await;
    assert_eq!(body["data"][0]["secret"], "[REDACTED]");
}

#[tokio::test]
async fn methods_outside_the_spec_get_405_are_never_forwarded_and_are_audited() {
    let upstream = ExpressUpstream::start().await;
    let gw = gateway_before(&upstream).await;
    for method in ["post", "FOO", "TRACE", "Delete"] {
        let response = gw
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                "/v1/users",
                &gw.keys.admin,
            )
            .header("x-request-id", uuid::Uuid::new_v4().to_string())
            .json(&serde_json::json!({"email": "e@example.com", "password": "pw-in-clear-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(
            response.headers()["allow"],
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        );
        let body = json(response).await;
        assert_eq!(body["error"], "method_not_allowed");
        assert!(body["message"].as_str().unwrap().contains(method));
    }
    // CONNECT cannot even be spelt with a /v1 path; whatever the answer, nothing goes upstream.
    let raw = common::raw_request(
        &gw.url,
        format!(
            "CONNECT /v1/users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            gw.keys.admin
        )
        .as_bytes(),
    )
    .await;
    assert!(!raw.starts_with("HTTP/1.1 2"), "CONNECT was answered {raw}");
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
    gw.gateway.audit.flush().await;
    let records = json(
        http()
            .get(format!("{}/_gateway/audit", gw.url))
            .bearer_auth(&gw.keys.auditor)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let records = records["records"].as_array().unwrap();
    let methods: Vec<&str> = records
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    for method in ["post", "FOO", "TRACE", "Delete"] {
        assert!(
            methods.contains(&method),
            "{method} not audited: {methods:?}"
        );
    }
    for record in records {
        assert_eq!(record["outcome"], "rejected");
        assert_eq!(record["status"], 405);
        assert!(!record.to_string().contains("pw-in-clear-1"));
    }
}
