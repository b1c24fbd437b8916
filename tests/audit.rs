//! The audit log, the same suite on SQLite (always) and PostgreSQL (with GATEWAY_TEST_POSTGRES_URL,
//! e.g. postgres://postgres@127.0.0.1:5432/test; .ci/run sets it). Each Postgres test works in a
//! schema of its own.

#[macro_use]
mod common;

use std::time::Duration;

use common::{
    Backend, TestGateway, announce_skip, fresh_database, http, json, start_with, wait_ready,
};
use contabo_gateway::audit::store::Store;
use contabo_gateway::sandbox::SandboxOptions;
use reqwest::Method;

async fn gateway(
    backend: Backend,
    tweak: impl FnOnce(&mut contabo_gateway::config::Config),
) -> Option<(TestGateway, String)> {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await?;
    let db = url.clone();
    let gw = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = db;
        tweak(c);
    })
    .await;
    wait_ready(&gw).await;
    std::mem::forget(dir);
    Some((gw, url))
}

async fn records(gw: &TestGateway, query: &str) -> serde_json::Value {
    common::audit_records(gw, query).await
}

async fn send(
    gw: &TestGateway,
    method: Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
    request_id: &str,
) -> u16 {
    let mut request = gw
        .request(method, path, key)
        .header("x-request-id", request_id);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

/// POST /v1/compute/instances with `key`, body {"period": n} and request id `rid(n)`.
async fn create_instance(gw: &TestGateway, key: &str, n: u32) -> u16 {
    send(
        gw,
        Method::POST,
        "/v1/compute/instances",
        key,
        Some(serde_json::json!({"period": n})),
        &rid(n),
    )
    .await
}

fn rid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

on_both_backends!(
    every_mutating_call_is_audited_with_its_client_and_request_id,
    a_follow_stream_sends_records_as_they_are_written_and_resumes_from_its_cursor,
    refused_calls_are_recorded_as_rejected,
    secrets_are_never_stored,
    secret_fields_query_parameters_and_user_data_stay_out_of_the_store_and_exports,
    a_write_whose_caller_left_still_gets_its_outcome_recorded,
    final_records_of_a_failed_batch_are_written_once_the_store_is_back,
    filters_pagination_and_formats,
    verify_passes_and_finds_a_tampered_row,
    an_unwritable_store_refuses_mutating_calls_and_recovers,
    reconcile_finds_a_change_made_around_the_gateway,
    activity_counts_calls_and_refusals_per_team_and_hour,
);

async fn every_mutating_call_is_audited_with_its_client_and_request_id(backend: Backend) {
    let Some((gw, _)) = gateway(backend, |_| {}).await else {
        return;
    };
    let user = gw.sandbox().owner_id();
    assert_eq!(
        send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.operator,
            Some(serde_json::json!({"period": 1})),
            &rid(1)
        )
        .await,
        201
    );
    assert_eq!(
        send(
            &gw,
            Method::PATCH,
            &format!("/v1/users/{user}"),
            &gw.keys.admin,
            Some(serde_json::json!({"firstName": "A"})),
            &rid(2)
        )
        .await,
        200
    );
    assert_eq!(
        send(
            &gw,
            Method::POST,
            "/v1/roles",
            &gw.keys.admin,
            Some(serde_json::json!({"name": "r", "admin": false, "accessAllResources": true})),
            &rid(3)
        )
        .await,
        201
    );
    let role_id = *gw
        .sandbox()
        .data
        .lock()
        .unwrap()
        .roles
        .keys()
        .next()
        .unwrap();
    assert_eq!(
        send(
            &gw,
            Method::PUT,
            &format!("/v1/roles/{role_id}"),
            &gw.keys.admin,
            Some(serde_json::json!({"name": "r2", "admin": false, "accessAllResources": true})),
            &rid(4)
        )
        .await,
        200
    );
    assert_eq!(
        send(
            &gw,
            Method::DELETE,
            &format!("/v1/users/{user}"),
            &gw.keys.admin,
            None,
            &rid(5)
        )
        .await,
        204
    );
    assert_eq!(
        send(
            &gw,
            Method::GET,
            "/v1/compute/instances",
            &gw.keys.admin,
            None,
            &rid(6)
        )
        .await,
        200
    );
    let all = records(&gw, "").await;
    let rows = all["records"].as_array().unwrap();
    let summary: Vec<(String, String, String, i64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().into(),
                r["client"].as_str().unwrap().into(),
                r["request_id"].as_str().unwrap().into(),
                r["status"].as_i64().unwrap(),
                r["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "POST".into(),
                "team-operator".into(),
                rid(1),
                201,
                "forwarded".into()
            ),
            (
                "PATCH".into(),
                "team-admin".into(),
                rid(2),
                200,
                "forwarded".into()
            ),
            (
                "POST".into(),
                "team-admin".into(),
                rid(3),
                201,
                "forwarded".into()
            ),
            (
                "PUT".into(),
                "team-admin".into(),
                rid(4),
                200,
                "forwarded".into()
            ),
            (
                "DELETE".into(),
                "team-admin".into(),
                rid(5),
                204,
                "forwarded".into()
            ),
        ],
        "GETs are not audited"
    );
    let first = &rows[0];
    assert_eq!(first["path"], "/v1/compute/instances");
    assert_eq!(first["role"], "operator");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(
        first["request_body"]
            .as_str()
            .unwrap()
            .contains("\"period\":1")
    );
    assert!(
        first["response_body"]
            .as_str()
            .unwrap()
            .contains("instanceId")
    );
    assert!(
        first["ts"].as_str().unwrap().ends_with('Z') && first["ts"].as_str().unwrap().len() == 24
    );
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert_eq!(first["seq"], 1);
}

async fn refused_calls_are_recorded_as_rejected(backend: Backend) {
    let Some((gw, _)) = gateway(backend, |c| c.server.max_body_bytes = 512).await else {
        return;
    };
    assert_eq!(
        send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.readonly,
            Some(serde_json::json!({"period": 1})),
            &rid(1)
        )
        .await,
        403
    );
    let big = serde_json::json!({"userData": "x".repeat(600)});
    assert_eq!(
        send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.operator,
            Some(big),
            &rid(2)
        )
        .await,
        413
    );
    assert_eq!(
        send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            "unknown-key",
            None,
            &rid(3)
        )
        .await,
        401
    );
    assert!(gw.sandbox().recorded().is_empty());
    let rows = records(&gw, "outcome=rejected").await;
    let rows = rows["records"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the unidentified caller is not audited: {rows:?}"
    );
    assert_eq!(
        (rows[0]["client"].as_str(), rows[0]["status"].as_i64()),
        (Some("team-readonly"), Some(403))
    );
    assert!(
        rows[0]["response_body"]
            .as_str()
            .unwrap()
            .contains("forbidden")
    );
    assert_eq!(
        (rows[1]["client"].as_str(), rows[1]["status"].as_i64()),
        (Some("team-operator"), Some(413))
    );
    assert_eq!(rows[1]["upstream_ms"], serde_json::Value::Null);
}

async fn secrets_are_never_stored(backend: Backend) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    let body = serde_json::json!({"email": "a@example.com", "enabled": true, "totp": false, "locale": "en",
        "Password": "hunter2-secret", "nested": [{"rootPassword": "root-pw-secret", "token": "tok-secret"}]});
    send(
        &gw,
        Method::POST,
        "/v1/users",
        &gw.keys.admin,
        Some(body),
        &rid(1),
    )
    .await;
    let rotated = gw
        .request(Method::PUT, "/v1/users/client/secret", &gw.keys.admin)
        .send()
        .await
        .unwrap();
    let new_secret = json(rotated).await["data"][0]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    gw.gateway.audit.flush().await;
    let store = Store::open(&url).await.unwrap();
    let dump: Vec<String> = store
        .page(&Default::default())
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    assert_eq!(dump.len(), 2);
    let dump = dump.join("\n");
    for secret in [
        "hunter2-secret",
        "root-pw-secret",
        "tok-secret",
        new_secret.as_str(),
        gw.keys.admin.as_str(),
    ] {
        assert!(!dump.contains(secret), "{secret} was stored");
    }
    assert!(dump.contains("[REDACTED]"));
}

async fn secret_fields_query_parameters_and_user_data_stay_out_of_the_store_and_exports(
    backend: Backend,
) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    // A Secrets API value: `value` is a secret field of the route table, not in redact_keys.
    send(
        &gw,
        Method::POST,
        "/v1/secrets",
        &gw.keys.admin,
        Some(serde_json::json!({"name": "db", "type": "password", "value": "stored-value-77"})),
        &rid(1),
    )
    .await;
    // Secrets in the query string, and cloud-init with a password in it.
    let cloud_init = "#cloud-config\nchpasswd:\n  list: root:userdata-pw-88\n";
    send(
        &gw,
        Method::POST,
        "/v1/compute/instances?password=query-pw-99&Token=query-token-11&period=1",
        &gw.keys.admin,
        Some(serde_json::json!({"imageId": "i", "productId": "V45", "userData": cloud_init})),
        &rid(2),
    )
    .await;
    // A refused call is audited too: a readonly key plants a formula in the query.
    let planted = send(
        &gw,
        Method::POST,
        "/v1/compute/instances?=HYPERLINK(\"http://example.invalid\")",
        &gw.keys.readonly,
        Some(serde_json::json!({"displayName": "@SUM(1+1)"})),
        &rid(3),
    )
    .await;
    assert_eq!(planted, 403);
    gw.gateway.audit.flush().await;
    let store = Store::open(&url).await.unwrap();
    let stored: Vec<String> = store
        .page(&Default::default())
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    assert_eq!(stored.len(), 3);
    let mut everything = stored.join("\n");
    for format in ["json", "csv", "ndjson"] {
        let export = http()
            .get(format!("{}/_gateway/audit?format={format}", gw.url))
            .bearer_auth(&gw.keys.auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(export.status(), 200);
        everything.push_str(&export.text().await.unwrap());
    }
    for secret in [
        "stored-value-77",
        "query-pw-99",
        "query-token-11",
        "userdata-pw-88",
    ] {
        assert!(
            !everything.contains(secret),
            "{secret} was stored or exported"
        );
    }
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        cloud_init.as_bytes(),
    ));
    assert!(everything.contains(&digest), "userData digest missing");
    assert!(everything.contains("password=[REDACTED]&Token=[REDACTED]&period=1"));

    // CSV: a cell a spreadsheet would run as a formula opens as text.
    let csv_text = http()
        .get(format!("{}/_gateway/audit?format=csv", gw.url))
        .bearer_auth(&gw.keys.auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let query_column = headers.iter().position(|h| h == "query").unwrap();
    let mut planted_cells = 0;
    for row in reader.records() {
        let row = row.unwrap();
        for cell in row.iter() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a formula-like cell: {cell:?}"
            );
        }
        if row[query_column].contains("HYPERLINK") {
            assert!(
                row[query_column].starts_with("'="),
                "{:?}",
                &row[query_column]
            );
            planted_cells += 1;
        }
    }
    assert_eq!(planted_cells, 1);
}

async fn a_write_whose_caller_left_still_gets_its_outcome_recorded(backend: Backend) {
    let Some((gw, _)) = gateway(backend, |_| {}).await else {
        return;
    };
    let before = gw.sandbox().data.lock().unwrap().instances.len();
    gw.sandbox()
        .faults
        .delay_ms
        .store(1500, std::sync::atomic::Ordering::SeqCst);
    // Callers that give up after half a second: each call is still made upstream.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    for n in 1..=5 {
        let gave_up = impatient
            .post(format!("{}/v1/compute/instances", gw.url))
            .bearer_auth(&gw.keys.admin)
            .header("x-request-id", rid(n))
            .json(&serde_json::json!({"period": n}))
            .send()
            .await;
        assert!(gave_up.is_err(), "the caller was meant to give up");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gw.sandbox()
        .faults
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        gw.sandbox().data.lock().unwrap().instances.len(),
        before + 5
    );
    let page = records(&gw, "").await;
    let page = page["records"].as_array().unwrap();
    assert_eq!(page.len(), 5, "{page:?}");
    for record in page {
        assert_eq!(record["outcome"], "forwarded", "{record}");
        assert_eq!(record["status"], 201, "{record}");
    }
}

async fn final_records_of_a_failed_batch_are_written_once_the_store_is_back(backend: Backend) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    let dba = common::dba(&url).await;
    gw.sandbox()
        .faults
        .delay_ms
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    let in_flight = {
        let request = gw
            .request(Method::POST, "/v1/compute/instances", &gw.keys.admin)
            .header("x-request-id", rid(1))
            .json(&serde_json::json!({"period": 1}))
            .send();
        tokio::spawn(request)
    };
    // The pending record is committed; then the table goes away until the answer is in.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sqlx::query("ALTER TABLE audit_records RENAME TO audit_records_away")
        .execute(&dba)
        .await
        .unwrap();
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status(), 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("ALTER TABLE audit_records_away RENAME TO audit_records")
        .execute(&dba)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let store = Store::open(&url).await.unwrap();
        let stored = store.page(&Default::default()).await.unwrap();
        assert_eq!(stored.len(), 1);
        if stored[0].outcome.as_str() == "forwarded" {
            assert_eq!(stored[0].status, Some(201));
            assert_eq!(store.verify(None).await.unwrap().first_broken_id, None);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the final record was dropped: {:?}",
            stored[0]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn filters_pagination_and_formats(backend: Backend) {
    let Some((gw, _)) = gateway(backend, |_| {}).await else {
        return;
    };
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    for n in 1..=5 {
        let key = if n % 2 == 0 {
            &gw.keys.admin
        } else {
            &gw.keys.operator
        };
        create_instance(&gw, key, n).await;
    }
    send(
        &gw,
        Method::PATCH,
        &format!("/v1/users/{}", gw.sandbox().owner_id()),
        &gw.keys.admin,
        Some(serde_json::json!({"firstName": "Z"})),
        &rid(6),
    )
    .await;
    send(
        &gw,
        Method::PATCH,
        "/v1/users/nobody",
        &gw.keys.admin,
        Some(serde_json::json!({"firstName": "Z"})),
        &rid(7),
    )
    .await;
    let count = |v: serde_json::Value| v["records"].as_array().unwrap().len();
    assert_eq!(count(records(&gw, "client=team-operator").await), 3);
    assert_eq!(count(records(&gw, "method=patch").await), 2);
    assert_eq!(count(records(&gw, "path_prefix=/v1/users").await), 2);
    assert_eq!(count(records(&gw, "status=404").await), 1);
    assert_eq!(count(records(&gw, "outcome=forwarded").await), 7);
    assert_eq!(
        count(records(&gw, &format!("request_id={}", rid(3))).await),
        1
    );
    let since = before.timestamp();
    assert_eq!(count(records(&gw, &format!("since={since}")).await), 7);
    assert_eq!(count(records(&gw, &format!("until={since}")).await), 0);
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        count(records(&gw, &format!("since={}", later.replace('+', "%2B"))).await),
        0
    );

    // Cursor pagination walks everything exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = records(
            &gw,
            &format!(
                "limit=3{}",
                cursor
                    .as_ref()
                    .map(|c| format!("&cursor={c}"))
                    .unwrap_or_default()
            ),
        )
        .await;
        seen.extend(
            page["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let csv = http()
        .get(format!(
            "{}/_gateway/audit?format=csv&client=team-admin",
            gw.url
        ))
        .bearer_auth(&gw.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv");
    let text = csv.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap().get(0), Some("id"));
    assert_eq!(reader.records().count(), 4);
    let nd = http()
        .get(format!("{}/_gateway/audit?format=ndjson", gw.url))
        .bearer_auth(&gw.keys.auditor)
        .send()
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = nd
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);

    for (query, needle) in [
        ("since=yesterday", "RFC 3339"),
        ("limit=0", "1 to 1000"),
        ("format=xml", "json, csv or ndjson"),
        ("status=x", "HTTP status"),
    ] {
        let response = http()
            .get(format!("{}/_gateway/audit?{query}", gw.url))
            .bearer_auth(&gw.keys.auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body = json(response).await;
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    let forbidden = http()
        .get(format!("{}/_gateway/audit", gw.url))
        .bearer_auth(&gw.keys.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
}

async fn verify_passes_and_finds_a_tampered_row(backend: Backend) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    for n in 1..=4 {
        create_instance(&gw, &gw.keys.operator, n).await;
    }
    gw.gateway.audit.flush().await;
    let verify = || {
        http()
            .get(format!("{}/_gateway/audit/verify", gw.url))
            .bearer_auth(&gw.keys.auditor)
            .send()
    };
    let ok = verify().await.unwrap();
    assert_eq!(ok.status(), 200);
    let report = json(ok).await;
    assert_eq!(
        (report["ok"].as_bool(), report["checked"].as_u64()),
        (Some(true), Some(4))
    );
    let store = Store::open(&url).await.unwrap();
    let third = store.page(&Default::default()).await.unwrap()[2].id;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE audit_records SET status = 299 WHERE id = {third}"
    )))
    .execute(&common::dba(&url).await)
    .await
    .unwrap();
    let broken = verify().await.unwrap();
    assert_eq!(broken.status(), 409);
    let report = json(broken).await;
    assert_eq!(report["first_broken_id"], third);
    assert_eq!(report["ok"], false);
}

async fn an_unwritable_store_refuses_mutating_calls_and_recovers(backend: Backend) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    let dba = common::dba(&url).await;
    let (block, unblock): (&[&str], &[&str]) = match backend {
        Backend::Sqlite => (
            &[
                "CREATE TRIGGER block_audit BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'store unwritable'); END",
            ],
            &["DROP TRIGGER block_audit"],
        ),
        Backend::Postgres => (
            &[
                "CREATE FUNCTION block_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'store unwritable'; END $$ LANGUAGE plpgsql",
                "CREATE TRIGGER block_audit BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION block_audit()",
            ],
            &["DROP TRIGGER block_audit ON audit_records"],
        ),
    };
    for sql in block {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&dba)
            .await
            .unwrap();
    }
    let response = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .json(&serde_json::json!({"period": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = json(response).await;
    assert_eq!(body["error"], "audit_unavailable");
    assert!(
        gw.sandbox().recorded().is_empty(),
        "a call that could not be audited reached upstream"
    );
    let ready = http()
        .get(format!("{}/_gateway/ready", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        json(ready).await["checks"]["audit"]
            .as_str()
            .unwrap()
            .contains("audit")
    );
    // Reads are still served.
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );

    for sql in unblock {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&dba)
            .await
            .unwrap();
    }
    let mut recovered = false;
    for _ in 0..60 {
        let status = send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.operator,
            Some(serde_json::json!({"period": 1})),
            &rid(9),
        )
        .await;
        if status == 201 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "mutating calls work again once the store is writable"
    );
    assert_eq!(
        http()
            .get(format!("{}/_gateway/ready", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

async fn reconcile_finds_a_change_made_around_the_gateway(backend: Backend) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    let since = contabo_gateway::audit::record::now_ts();
    let user = gw.sandbox().owner_id();
    send(
        &gw,
        Method::PATCH,
        &format!("/v1/users/{user}"),
        &gw.keys.admin,
        Some(serde_json::json!({"firstName": "ViaGateway"})),
        &rid(1),
    )
    .await;
    common::change_around_the_gateway(&gw, &rid(2), "AroundTheGateway").await;
    gw.gateway.audit.flush().await;
    let store = Store::open(&url).await.unwrap();
    let report = contabo_gateway::audit::reconcile::reconcile(
        &gw.gateway.upstream,
        &store,
        &since,
        contabo_gateway::audit::reconcile::unpaced(),
    )
    .await
    .unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.unmatched.len(), 1, "{report:?}");
    assert_eq!(report.unmatched[0].request_id, rid(2));
    assert_eq!(report.unmatched[0].action, "UPDATED");
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_keeps_reads_working_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "a file where the audit directory should be").unwrap();
    let url = format!("sqlite://{}/audit.db", blocker.display());
    let gw = start_with(SandboxOptions::default(), |c| c.audit.database_url = url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = http()
        .get(format!("{}/_gateway/ready", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let reason = json(ready).await["checks"]["audit"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("audit"), "{reason}");
    assert_eq!(
        gw.get_status("/v1/compute/instances", &gw.keys.readonly)
            .await,
        200
    );
    let post = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .json(&serde_json::json!({"period": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 503);
    assert!(gw.sandbox().recorded().iter().all(|r| r.method == "GET"));

    std::fs::remove_file(&blocker).unwrap();
    let mut ready = false;
    for _ in 0..50 {
        if http()
            .get(format!("{}/_gateway/ready", gw.url))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness recovers once the store can be opened");
    let post = gw
        .request(Method::POST, "/v1/compute/instances", &gw.keys.operator)
        .json(&serde_json::json!({"period": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 201);
}

#[tokio::test]
async fn two_gateways_on_one_postgres_keep_one_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let Some(url) = fresh_database(Backend::Postgres, dir.path()).await else {
        return;
    };
    let (a_url, b_url) = (url.clone(), url.clone());
    let a = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = a_url
    })
    .await;
    let b = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = b_url
    })
    .await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let ids: Vec<String> = (0..40u32).map(rid).collect();
    let calls = ids.iter().enumerate().map(|(n, id)| {
        let gw = if n % 2 == 0 { &a } else { &b };
        send(
            gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.operator,
            Some(serde_json::json!({"period": n})),
            id,
        )
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 201));
    a.gateway.audit.flush().await;
    b.gateway.audit.flush().await;
    let report = Store::open(&url).await.unwrap().verify(None).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.checked, report.pending), (40, 0));
}

#[tokio::test]
async fn retention_pruning_leaves_a_chain_that_still_verifies() {
    let Some((gw, url)) = gateway(Backend::Sqlite, |_| {}).await else {
        return;
    };
    for n in 1..=5 {
        create_instance(&gw, &gw.keys.operator, n).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.gateway.audit.flush().await;
    let store = Store::open(&url).await.unwrap();
    let before = store.page(&Default::default()).await.unwrap();
    // Prune everything older than the third record.
    assert_eq!(store.prune(&before[2].ts, None).await.unwrap(), 2);
    let after = store.page(&Default::default()).await.unwrap();
    assert_eq!(
        after.iter().map(|r| r.id).collect::<Vec<_>>(),
        before[2..].iter().map(|r| r.id).collect::<Vec<_>>()
    );
    let report = store.verify(None).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.checked, report.checkpoint_seq), (3, Some(2)));
    // The chain goes on from the checkpoint.
    send(
        &gw,
        Method::POST,
        "/v1/compute/instances",
        &gw.keys.operator,
        Some(serde_json::json!({"period": 9})),
        &rid(9),
    )
    .await;
    gw.gateway.audit.flush().await;
    let report = store.verify(None).await.unwrap();
    assert!(report.ok && report.checked == 4, "{report:?}");
    // Tampering with what remains is still found.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE audit_records SET path = '/v1/other' WHERE id = {}",
        before[3].id
    )))
    .execute(&common::dba(&url).await)
    .await
    .unwrap();
    assert_eq!(
        store.verify(None).await.unwrap().first_broken_id,
        Some(before[3].id)
    );
}

async fn ready(gw: &TestGateway) -> (u16, serde_json::Value) {
    let response = http()
        .get(format!("{}/_gateway/ready", gw.url))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json(response).await)
}

/// Polls /ready until its status is `want`; how long that took.
async fn ready_becomes(gw: &TestGateway, want: u16, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = ready(gw).await;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/ready stayed {status} for {within:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gateway whose audit store is a private PostgreSQL the test may freeze; None (announced as
/// `what` skipped) where one cannot be started.
async fn on_private_postgres(
    what: &str,
    tweak: impl FnOnce(&mut contabo_gateway::config::Config) + Send + 'static,
) -> Option<(common::PrivatePostgres, TestGateway)> {
    let postgres = match common::PrivatePostgres::start() {
        Ok(postgres) => postgres,
        Err(why) => {
            announce_skip(what, &why);
            return None;
        }
    };
    let url = postgres.url();
    let gw = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = url;
        tweak(c);
    })
    .await;
    wait_ready(&gw).await;
    Some((postgres, gw))
}

#[tokio::test]
async fn a_frozen_postgres_is_answered_503_within_the_deadline_and_ready_follows_it() {
    let Some((postgres, gw)) = on_private_postgres("the frozen PostgreSQL audit test", |c| {
        c.audit.write_timeout = Duration::from_millis(1000);
    })
    .await
    else {
        return;
    };
    assert_eq!(create_instance(&gw, &gw.keys.admin, 1).await, 201);
    // The first call's final record may still be in flight when the store freezes: its batch then
    // times out, may commit after the thaw, and must not be appended a second time.

    // Every PostgreSQL process stopped: the next write is answered 503 within the deadline.
    postgres.signal("-STOP");
    let started = std::time::Instant::now();
    let refused = create_instance(&gw, &gw.keys.admin, 2).await;
    let took = started.elapsed();
    assert_eq!(refused, 503);
    assert!(
        took < Duration::from_millis(1600),
        "answered after {took:?}"
    );
    let (status, body) = ready(&gw).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["audit"]
            .as_str()
            .unwrap()
            .contains("write_timeout_ms")
    );
    // Known down: refused at once.
    let started = std::time::Instant::now();
    assert_eq!(create_instance(&gw, &gw.keys.admin, 3).await, 503);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(
        gw.api_calls(),
        1,
        "nothing was forwarded while the store was frozen"
    );

    // Thawed: /ready recovers without traffic, and writes work again.
    postgres.signal("-CONT");
    let recovered = ready_becomes(&gw, 200, Duration::from_secs(8)).await;
    eprintln!("/ready back {recovered:?} after the thaw");
    assert_eq!(create_instance(&gw, &gw.keys.admin, 4).await, 201);
    let store = Store::open(&postgres.url()).await.unwrap();
    let report = store.verify(None).await.unwrap();
    assert_eq!(report.first_broken_id, None, "{report:?}");
    drop(gw);
}

#[tokio::test]
async fn a_store_frozen_without_traffic_turns_ready_503_within_seconds() {
    let Some((postgres, gw)) =
        on_private_postgres("the idle frozen PostgreSQL audit test", |_| {}).await
    else {
        return;
    };
    assert_eq!(ready(&gw).await.0, 200);
    postgres.signal("-STOP");
    // An idle store is probed every 500 ms, each probe answered within 500 ms.
    let noticed = ready_becomes(&gw, 503, Duration::from_millis(1600)).await;
    postgres.signal("-CONT");
    let recovered = ready_becomes(&gw, 200, Duration::from_secs(3)).await;
    eprintln!(
        "without traffic, /ready said 503 {noticed:?} after the freeze and 200 {recovered:?} after the thaw"
    );
}

/// A small tmpfs of its own (root only), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !mounted.status.success() {
            return Err(format!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Fills what is left of the disk; the filler file's path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn sqlite_on_a_full_disk_stays_unready_until_space_is_back_then_recovers() {
    let disk = match SmallDisk::mount("4m") {
        Ok(disk) => disk,
        Err(why) => {
            announce_skip("the full-disk SQLite audit test", &why);
            return;
        }
    };
    let url = format!("sqlite://{}/audit.db", disk.path().display());
    let db = url.clone();
    let gw = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = db;
    })
    .await;
    wait_ready(&gw).await;
    assert_eq!(create_instance(&gw, &gw.keys.admin, 1).await, 201);
    let filler = disk.fill();
    // Writes until the disk refuses one (each record carries a few KiB of body).
    let mut refused = false;
    for n in 2..200 {
        let status = send(
            &gw,
            Method::POST,
            "/v1/compute/instances",
            &gw.keys.admin,
            Some(serde_json::json!({"period": 1, "displayName": "x".repeat(8000), "n": n})),
            &rid(n),
        )
        .await;
        if status == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the full disk never refused a write");
    // Not ready, and it stays so while the disk is full and writes keep coming (no reopen makes
    // it flap).
    let mut answers = Vec::new();
    for n in 300..330 {
        let status = create_instance(&gw, &gw.keys.admin, n).await;
        assert_eq!(status, 503);
        answers.push(ready(&gw).await.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
    std::fs::remove_file(filler).unwrap();
    let back = ready_becomes(&gw, 200, Duration::from_secs(8)).await;
    eprintln!("/ready back {back:?} after space was freed");
    assert_eq!(create_instance(&gw, &gw.keys.admin, 500).await, 201);
    gw.gateway.audit.flush().await;
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.verify(None).await.unwrap().first_broken_id, None);
    let stored = store.page(&Default::default()).await.unwrap();
    assert!(
        stored.iter().all(|r| r.outcome.as_str() != "pending"),
        "a call the client saw answered stayed pending"
    );
    drop(store);
    drop(gw);
}

/// A TCP relay to the test PostgreSQL that can lose the answer to a COMMIT, as a network does when
/// it fails after the server committed: once armed, the `lose_after + 1`-th COMMIT answered (the
/// server's CommandComplete "COMMIT") is not passed on, and that connection gets nothing more.
struct CommitAnswerLoss {
    port: u16,
    /// COMMIT answers still to pass before one is lost; negative: not armed.
    pass: std::sync::Arc<std::sync::atomic::AtomicI64>,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CommitAnswerLoss {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pass = std::sync::Arc::new(AtomicI64::new(-1));
        let lost = std::sync::Arc::new(AtomicBool::new(false));
        let (relay_pass, relay_lost) = (pass.clone(), lost.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let (pass, lost) = (relay_pass.clone(), relay_lost.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut silent = false;
                    loop {
                        let n = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buffer[..n];
                        if !silent && chunk.windows(7).any(|w| w == b"COMMIT\0") {
                            let left = pass.load(Ordering::SeqCst);
                            if left == 0 {
                                pass.store(-1, Ordering::SeqCst);
                                lost.store(true, Ordering::SeqCst);
                                silent = true;
                            } else if left > 0 {
                                pass.store(left - 1, Ordering::SeqCst);
                            }
                        }
                        if silent {
                            continue;
                        }
                        if client_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    // The client's half stays open, as a connection whose packets are lost does.
                    std::future::pending::<()>().await;
                    drop(client_write);
                });
            }
        });
        Self { port, pass, lost }
    }

    /// Loses the answer to the COMMIT after the next `pass` ones.
    fn arm(&self, pass: i64) {
        self.pass.store(pass, std::sync::atomic::Ordering::SeqCst);
    }

    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A gateway whose PostgreSQL audit store is reached through a `CommitAnswerLoss`; the store's
/// direct URL for checking it.
async fn behind_commit_answer_loss(what: &str) -> Option<(CommitAnswerLoss, TestGateway, String)> {
    let direct = fresh_database(Backend::Postgres, std::path::Path::new("/tmp")).await;
    let Some(direct) = direct else {
        announce_skip(what, "GATEWAY_TEST_POSTGRES_URL is not set");
        return None;
    };
    let parsed = reqwest::Url::parse(&direct).unwrap();
    let upstream = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let relay = CommitAnswerLoss::start(upstream.clone()).await;
    let relayed = direct.replacen(&upstream, &format!("127.0.0.1:{}", relay.port), 1);
    assert_ne!(relayed, direct, "the relay's address is in the store's URL");
    let gw = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = relayed;
        c.audit.write_timeout = Duration::from_millis(1000);
    })
    .await;
    wait_ready(&gw).await;
    Some((relay, gw, direct))
}

/// Calls until one is answered `want` (the store comes back after a failed write).
async fn create_until(gw: &TestGateway, n: u32, want: u16) {
    let started = std::time::Instant::now();
    loop {
        let status = create_instance(gw, &gw.keys.admin, n).await;
        if status == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {status} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_final_record_whose_commit_answer_was_lost_is_not_appended_twice() {
    let Some((relay, gw, direct)) =
        behind_commit_answer_loss("the lost COMMIT answer audit test").await
    else {
        return;
    };
    // The call's pending record commits; the answer to its final record's COMMIT is lost, so the
    // writer cannot know the record is in the chain and writes it again once the store is back.
    relay.arm(1);
    assert_eq!(create_instance(&gw, &gw.keys.admin, 1).await, 201);
    let started = std::time::Instant::now();
    while !relay.lost() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no COMMIT answer was lost"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The write times out (1 s), the store is opened again and the kept record retried.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    create_until(&gw, 2, 201).await;
    gw.gateway.audit.flush().await;

    let store = Store::open(&direct).await.unwrap();
    let report = store.verify(None).await.unwrap();
    assert!(report.ok && report.first_broken_id.is_none(), "{report:?}");
    let listed = records(&gw, "").await;
    let ids: Vec<_> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_string(),
                r["seq"].clone(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 2, "one record per call: {ids:?}");
    assert_eq!(report.checked, 2, "{report:?}");
}

#[tokio::test]
async fn a_pending_record_whose_commit_answer_was_lost_is_finalised_as_refused() {
    let Some((relay, gw, direct)) =
        behind_commit_answer_loss("the lost pending COMMIT answer audit test").await
    else {
        return;
    };
    // The pending record's COMMIT answer is lost: the caller is refused 503 (nothing forwarded),
    // yet the record is in the store.
    relay.arm(0);
    assert_eq!(create_instance(&gw, &gw.keys.admin, 1).await, 503);
    assert!(relay.lost());
    assert_eq!(gw.api_calls(), 0, "a refused call is not forwarded");
    create_until(&gw, 2, 201).await;
    gw.gateway.audit.flush().await;

    let store = Store::open(&direct).await.unwrap();
    let report = store.verify(None).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.pending, 0, "no record stays pending: {report:?}");
    let refused = records(&gw, &format!("request_id={}", rid(1))).await;
    let refused = &refused["records"][0];
    assert_eq!(refused["outcome"], "rejected", "{refused}");
    assert_eq!(refused["status"], 503, "{refused}");
}

/// Reads NDJSON records from a follow stream until `count` have arrived (at most 5 s).
async fn follow_records(stream: &mut reqwest::Response, count: usize) -> Vec<serde_json::Value> {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while text.lines().count() < count {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the follow stream sent the records within 5 s")
            .unwrap()
            .expect("the follow stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn a_follow_stream_sends_records_as_they_are_written_and_resumes_from_its_cursor(
    backend: Backend,
) {
    let Some((mut gw, _url)) = gateway(backend, |_| {}).await else {
        return;
    };
    for n in 1..=2 {
        create_instance(&gw, &gw.keys.operator, n).await;
    }
    let follow = |query: &str| {
        gw.get(
            &format!("/_gateway/audit?format=ndjson&follow=true{query}"),
            &gw.keys.auditor,
        )
        .send()
    };
    let mut stream = follow("").await.unwrap();
    assert_eq!(stream.status(), 200);
    let seqs = |records: &[serde_json::Value]| {
        records
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&follow_records(&mut stream, 2).await), [1, 2]);
    // Written after the stream connected: they arrive on it.
    for n in 3..=4 {
        create_instance(&gw, &gw.keys.operator, n).await;
    }
    let records = follow_records(&mut stream, 2).await;
    assert_eq!(seqs(&records), [3, 4]);
    assert_eq!(records[1]["request_id"], rid(4));
    // Resumed from the last seq received.
    let mut resumed = follow("&cursor=3").await.unwrap();
    assert_eq!(seqs(&follow_records(&mut resumed, 1).await), [4]);
    // Only NDJSON follows.
    let refused = follow("&format=json").await.unwrap();
    assert_eq!(refused.status(), 400);
    let body = json(refused).await;
    assert!(
        body["message"].as_str().unwrap().contains("format=ndjson"),
        "{body}"
    );
    // The gateway stopping ends the stream instead of holding its drain up.
    let started = std::time::Instant::now();
    let server = gw.stop();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the follow stream ended at shutdown");
    server.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Moves the record of `request_id` to `ts` (as a DBA could; the activity chart reads `ts` only).
async fn move_record(url: &str, request_id: &str, ts: chrono::DateTime<chrono::Utc>) {
    sqlx::query("UPDATE audit_records SET ts = $1 WHERE request_id = $2")
        .bind(ts.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .bind(request_id.to_string())
        .execute(&common::dba(url).await)
        .await
        .unwrap();
}

async fn activity(gw: &TestGateway, query: &str, key: &str) -> (u16, serde_json::Value) {
    get_json(gw, &format!("/_gateway/audit/activity{query}"), key).await
}

async fn activity_counts_calls_and_refusals_per_team_and_hour(backend: Backend) {
    let Some((gw, url)) = gateway(backend, |_| {}).await else {
        return;
    };
    for n in 1..=3 {
        assert_eq!(create_instance(&gw, &gw.keys.operator, n).await, 201);
    }
    assert_eq!(create_instance(&gw, &gw.keys.readonly, 4).await, 403);
    assert_eq!(create_instance(&gw, &gw.keys.admin, 5).await, 201);
    gw.gateway.audit.flush().await;
    let three_hours_ago = chrono::Utc::now() - chrono::Duration::hours(3);
    move_record(&url, &rid(1), three_hours_ago).await;
    move_record(
        &url,
        &rid(2),
        chrono::Utc::now() - chrono::Duration::hours(30),
    )
    .await;

    let (status, day) = activity(&gw, "", &gw.keys.auditor).await;
    assert_eq!(status, 200, "{day}");
    let hours: Vec<&str> = day["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(hours.len(), 24);
    let at = |label: chrono::DateTime<chrono::Utc>| {
        let label = label.format("%Y-%m-%dT%H").to_string();
        hours.iter().position(|h| *h == label).unwrap()
    };
    let team = |day: &serde_json::Value, name: &str| {
        day["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["client"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {day}"))
    };
    let counts = |team: &serde_json::Value, field: &str| -> Vec<i64> {
        team[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let operator = team(&day, "team-operator");
    let calls = counts(&operator, "calls");
    assert_eq!(
        calls.iter().sum::<i64>(),
        2,
        "the 30-hour-old call is outside: {day}"
    );
    assert_eq!(calls[at(three_hours_ago)], 1, "{day}");
    assert_eq!(counts(&operator, "refusals").iter().sum::<i64>(), 0);
    let readonly = team(&day, "team-readonly");
    assert_eq!(counts(&readonly, "calls").iter().sum::<i64>(), 1);
    assert_eq!(counts(&readonly, "refusals").iter().sum::<i64>(), 1);
    assert_eq!(
        counts(&team(&day, "team-admin"), "calls")
            .iter()
            .sum::<i64>(),
        1
    );
    assert_eq!(day["teams"].as_array().unwrap().len(), 3);

    let (status, two_days) = activity(&gw, "?hours=48", &gw.keys.admin).await;
    assert_eq!(status, 200);
    assert_eq!(two_days["hours"].as_array().unwrap().len(), 48);
    let operator = team(&two_days, "team-operator");
    assert_eq!(counts(&operator, "calls").iter().sum::<i64>(), 3);

    for (query, mentions) in [
        ("?hours=0", "hours"),
        ("?hours=169", "from 1 to 168"),
        ("?hours=day", "hours"),
        ("?team=x", "the only parameter is hours"),
    ] {
        let (status, body) = activity(&gw, query, &gw.keys.auditor).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body["message"].as_str().unwrap().contains(mentions),
            "{body}"
        );
        assert!(body["request_id"].is_string());
    }
    assert_eq!(activity(&gw, "", &gw.keys.operator).await.0, 403);
    assert_eq!(activity(&gw, "", "not-a-key").await.0, 401);
}

async fn get_json(gw: &TestGateway, path: &str, key: &str) -> (u16, serde_json::Value) {
    let response = http()
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), json(response).await)
}

/// A call to Contabo that fails while its audit is read is answered as the same failure of a /v1
/// call is (it was once always "upstream unreachable", a timeout included).
#[tokio::test]
async fn reading_contabos_audit_answers_an_upstream_failure_as_a_v1_call_does() {
    let Some((gw, _)) = gateway(Backend::Sqlite, |c| {
        c.upstream.timeout = std::time::Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    gw.sandbox()
        .faults
        .delay_ms
        .store(2500, std::sync::atomic::Ordering::SeqCst);
    let (status, call) = get_json(&gw, "/v1/users", &gw.keys.admin).await;
    assert_eq!(status, 504, "{call}");
    for path in [
        "/_gateway/audit/contabo?request_id=0b3f5a52-1c6e-4a7e-9a7d-2f0f4b8f9e11",
        "/_gateway/audit/reconcile?since=1",
    ] {
        let (status, body) = get_json(&gw, path, &gw.keys.admin).await;
        assert_eq!(status, 504, "{path}: {body}");
        assert_eq!(body["error"], call["error"], "{path}: {body}");
        assert!(body["request_id"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn admins_read_contabos_audit_of_a_request_id_and_reconcile_over_http() {
    let Some((gw, _)) = gateway(Backend::Sqlite, |_| {}).await else {
        return;
    };
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let user = gw.sandbox().owner_id();
    let path = format!("/v1/users/{user}");
    let body = serde_json::json!({"firstName": "Followed"});
    assert_eq!(
        send(
            &gw,
            Method::PATCH,
            &path,
            &gw.keys.admin,
            Some(body),
            &rid(1)
        )
        .await,
        200
    );
    common::change_around_the_gateway(&gw, &rid(2), "Around").await;

    // Contabo's rows of one request id, from every audit endpoint it answers.
    let lookup = format!("/_gateway/audit/contabo?request_id={}", rid(1));
    let (status, trail) = get_json(&gw, &lookup, &gw.keys.admin).await;
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{trail}");
    assert_eq!(entries[0]["endpoint"], "/v1/users/audits");
    assert_eq!(entries[0]["requestId"], rid(1));
    assert_eq!(entries[0]["action"], "UPDATED");
    // The sandbox serves only the users' audit; every other endpoint is named, not hidden.
    let skipped = trail["skipped"].as_array().unwrap();
    assert_eq!(
        skipped.len() + 1,
        contabo_gateway::audit::reconcile::audit_endpoints().len()
    );
    assert!(
        skipped
            .iter()
            .all(|s| s[1].as_str().unwrap().starts_with("upstream answered 4")),
        "{trail}"
    );

    // Reconcile, as `audit reconcile` does.
    let (status, report) = get_json(
        &gw,
        &format!(
            "/_gateway/audit/reconcile?since={}",
            since.replace('+', "%2B")
        ),
        &gw.keys.admin,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["checked"], 2);
    let unmatched = report["unmatched"].as_array().unwrap();
    assert_eq!(unmatched.len(), 1, "{report}");
    assert_eq!(unmatched[0]["request_id"], rid(2));

    // Admins only; bad input is named.
    assert_eq!(get_json(&gw, &lookup, &gw.keys.auditor).await.0, 403);
    assert_eq!(
        get_json(&gw, "/_gateway/audit/reconcile?since=1", &gw.keys.auditor)
            .await
            .0,
        403
    );
    for (path, mentions) in [
        ("/_gateway/audit/contabo", "request_id"),
        ("/_gateway/audit/contabo?request_id=", "request_id"),
        (
            "/_gateway/audit/contabo?request_id=a&b=c",
            "exactly one parameter",
        ),
        ("/_gateway/audit/reconcile", "since"),
        ("/_gateway/audit/reconcile?since=yesterday", "RFC 3339"),
    ] {
        let (status, body) = get_json(&gw, path, &gw.keys.admin).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(mentions),
            "{path}: {body}"
        );
    }
    let (status, who) = get_json(&gw, "/_gateway/audit/whoami", &gw.keys.auditor).await;
    assert_eq!(status, 200);
    assert_eq!(
        who,
        serde_json::json!({"client": "team-auditor", "role": "auditor"})
    );
    assert_eq!(
        get_json(&gw, "/_gateway/audit/whoami", &gw.keys.operator)
            .await
            .0,
        403
    );
}
