//! The audit log with the real binary: a crash mid-call leaves a pending record, SIGTERM lets the
//! call finish and its record be finalised, and the `migrate` and `audit` commands.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{GatewayProcess, admin_client_block, cli, http, spawn_gateway_process};
use contabo_gateway::audit::store::Store;
use contabo_gateway::sandbox::{Sandbox, SandboxOptions};

async fn post(url: &str, key: &str, request_id: &str) -> reqwest::Response {
    http()
        .post(format!("{url}/v1/compute/instances"))
        .bearer_auth(key)
        .header("x-request-id", request_id)
        .json(&serde_json::json!({"period": 1}))
        .send()
        .await
        .unwrap()
}

/// A sandbox and a gateway process with one admin team (`key`; its config in `block`) writing
/// the SQLite audit file `<dir>/audit.db`.
struct SqliteGateway {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
    db: String,
    key: String,
    block: String,
    gateway: GatewayProcess,
}

async fn gateway_on_sqlite(team: &str) -> SqliteGateway {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/audit.db", dir.path().display());
    let (key, block) = admin_client_block(team);
    let gateway = spawn_gateway_process(&sandbox, &block, dir.path(), Some(&db));
    SqliteGateway {
        sandbox,
        dir,
        db,
        key,
        block,
        gateway,
    }
}

#[tokio::test]
async fn a_crash_mid_call_leaves_a_pending_record() {
    let SqliteGateway {
        sandbox,
        db,
        key,
        dir: _dir,
        mut gateway,
        ..
    } = gateway_on_sqlite("crash-test").await;
    assert_eq!(
        post(&gateway.url, &key, "00000000-0000-4000-8000-000000000001")
            .await
            .status(),
        201
    );
    sandbox.state.faults.delay_ms.store(3000, Ordering::SeqCst);
    let url = gateway.url.clone();
    let in_flight =
        tokio::spawn(async move { post(&url, &key, "00000000-0000-4000-8000-000000000002").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    gateway.signal_and_wait("-KILL");
    assert!(
        in_flight.await.is_err(),
        "the killed gateway never answered the call in flight"
    );
    let records = Store::open(&db)
        .await
        .unwrap()
        .page(&Default::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].outcome.as_str(), "forwarded");
    assert_eq!(
        records[1].outcome.as_str(),
        "pending",
        "the interrupted call is visible"
    );
    assert_eq!(
        records[1].request_id,
        "00000000-0000-4000-8000-000000000002"
    );
    assert!(records[1].seq.is_none());
    let (ok, stdout, _) = cli(&["audit", "verify"], &db);
    assert!(ok, "a pending record does not break the chain: {stdout}");
    assert!(stdout.contains("\"pending\": 1"), "{stdout}");
}

#[tokio::test]
async fn sigterm_lets_the_call_finish_and_finalises_its_record() {
    let SqliteGateway {
        sandbox,
        db,
        key,
        dir: _dir,
        mut gateway,
        ..
    } = gateway_on_sqlite("drain-test").await;
    assert_eq!(
        http()
            .get(format!("{}/v1/compute/instances", gateway.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sandbox.state.faults.delay_ms.store(1000, Ordering::SeqCst);
    let url = gateway.url.clone();
    let in_flight =
        tokio::spawn(async move { post(&url, &key, "00000000-0000-4000-8000-000000000003").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || gateway.signal_and_wait("-TERM"))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(in_flight.await.unwrap().status(), 201);
    let records = Store::open(&db)
        .await
        .unwrap()
        .page(&Default::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].outcome.as_str(), records[0].status),
        ("forwarded", Some(201))
    );
    assert_eq!(records[0].seq, Some(1));
}

#[tokio::test]
async fn migrate_query_and_verify_commands() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/nested/dir/audit.db", dir.path().display());
    let (ok, stdout, stderr) = cli(&["migrate"], &db);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("migrated"));
    assert!(
        dir.path().join("nested/dir/audit.db").exists(),
        "the file and its directory are created"
    );

    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let (key, block) = admin_client_block("cli-test");
    let gateway = spawn_gateway_process(&sandbox, &block, dir.path(), Some(&db));
    for n in 1..=3 {
        post(
            &gateway.url,
            &key,
            &format!("00000000-0000-4000-8000-00000000000{n}"),
        )
        .await;
    }
    drop(gateway);

    let (ok, table, _) = cli(&["audit", "query", "--client", "cli-test"], &db);
    assert!(ok);
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three records: {table}"
    );
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[..6],
        ["id", "time", "client", "method", "path", "status"],
        "{table}"
    );
    assert!(table.contains("/v1/compute/instances") && table.contains("forwarded"));
    let (ok, help, _) = cli(&["audit", "query", "--help"], &db);
    assert!(ok);
    for accepted in [
        "rejected",
        "interrupted",
        "1-1000",
        "RFC 3339",
        "table | json | csv",
    ] {
        assert!(
            help.contains(accepted),
            "{accepted} not in the help: {help}"
        );
    }
    let (ok, csv, _) = cli(
        &[
            "audit",
            "query",
            "--format",
            "csv",
            "--request-id",
            "00000000-0000-4000-8000-000000000002",
        ],
        &db,
    );
    assert!(ok);
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let (ok, json, stderr) = cli(&["audit", "query", "--format", "json", "--limit", "2"], &db);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(stderr.contains("--cursor"), "{stderr}");
    let (ok, _, stderr) = cli(&["audit", "query", "--since", "last tuesday"], &db);
    assert!(!ok && stderr.contains("RFC 3339"), "{stderr}");

    let (ok, _, _) = cli(&["audit", "verify"], &db);
    assert!(ok);
    sqlx::query("UPDATE audit_records SET client = 'someone-else' WHERE id = 2")
        .execute(&common::dba(&db).await)
        .await
        .unwrap();
    let (ok, _, stderr) = cli(&["audit", "verify"], &db);
    assert!(!ok, "a tampered chain fails verification");
    assert!(stderr.contains("broken at record 2"), "{stderr}");
}

/// The audit check of /_gateway/ready ("ok", or why the store cannot be written).
async fn audit_readiness(url: &str) -> String {
    let ready = http()
        .get(format!("{url}/_gateway/ready"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = ready.json().await.unwrap();
    body["checks"]["audit"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_second_gateway_on_the_same_sqlite_file_is_refused_until_the_first_stops() {
    let SqliteGateway {
        sandbox,
        dir,
        db,
        key,
        block,
        gateway: mut first,
    } = gateway_on_sqlite("one-writer").await;
    let created = post(&first.url, &key, "00000000-0000-4000-8000-000000000011").await;
    assert_eq!(created.status(), 201);

    let second = spawn_gateway_process(&sandbox, &block, dir.path(), Some(&db));
    let mut reason = String::new();
    for _ in 0..50 {
        reason = audit_readiness(&second.url).await;
        if reason != "ok" && !reason.contains("being opened") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reason.contains("another gateway process"), "{reason}");
    let refused = post(&second.url, &key, "00000000-0000-4000-8000-000000000012").await;
    assert_eq!(refused.status(), 503);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "audit_unavailable");
    let posts = |sandbox: &Sandbox| {
        sandbox
            .state
            .recorded()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    };
    assert_eq!(posts(&sandbox), 1, "the refused call was not forwarded");

    // Once the first process is gone, the second takes the file over.
    first.signal_and_wait("-TERM");
    for _ in 0..50 {
        if audit_readiness(&second.url).await == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = post(&second.url, &key, "00000000-0000-4000-8000-000000000013").await;
    assert_eq!(created.status(), 201);
    assert_eq!(posts(&sandbox), 2);
    let (ok, stdout, stderr) = cli(&["audit", "verify"], &db);
    assert!(ok, "{stdout}{stderr}");
    let records = Store::open(&db)
        .await
        .unwrap()
        .page(&Default::default())
        .await
        .unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "00000000-0000-4000-8000-000000000011",
            "00000000-0000-4000-8000-000000000013"
        ]
    );
}

#[tokio::test]
async fn a_call_cut_at_shutdown_gets_a_final_record_saying_interrupted() {
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/audit.db", dir.path().display());
    let (key, block) = admin_client_block("cut-test");
    let config = format!("[server]\nshutdown_timeout_secs = 1\n\n{block}");
    let mut gateway = spawn_gateway_process(&sandbox, &config, dir.path(), Some(&db));
    // Upstream takes longer than the drain allows.
    sandbox.state.faults.delay_ms.store(4000, Ordering::SeqCst);
    let url = gateway.url.clone();
    // The caller's answer does not matter (the connection is cut): only the record does.
    let in_flight =
        tokio::spawn(async move { post(&url, &key, "00000000-0000-4000-8000-000000000009").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || gateway.signal_and_wait("-TERM"))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = in_flight.await;
    let records = Store::open(&db)
        .await
        .unwrap()
        .page(&Default::default())
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].outcome.as_str(), "interrupted");
    assert_eq!(
        records[0].request_id,
        "00000000-0000-4000-8000-000000000009"
    );
    assert!(records[0].hash.is_some(), "the record is in the chain");
}
