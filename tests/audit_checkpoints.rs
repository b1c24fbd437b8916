//! Signed checkpoints against someone who can write the audit database: a rewritten record with
//! the chain recomputed, a deleted tail, a deleted middle record with the rest renumbered, and a
//! deleted prefix behind a forged pruning checkpoint are each caught by `audit verify` holding only
//! the public key and the checkpoint file, on both backends; a clean (and a pruned) log verifies.

#[macro_use]
mod common;

use std::path::PathBuf;

use common::{Backend, TestGateway, cli, fresh_database, start_with, wait_ready};
use contabo_gateway::audit::error::AuditError;
use contabo_gateway::audit::record::GENESIS_HASH;
use contabo_gateway::audit::store::Store;
use contabo_gateway::sandbox::SandboxOptions;

/// A gateway that signs checkpoints (key from `keys new-signing`), with eight audited calls: a
/// checkpoint after the fourth and one after the eighth.
struct Signed {
    gw: TestGateway,
    url: String,
    store: Store,
    /// The database as someone with write access to it reaches it.
    dba: sqlx::AnyPool,
    checkpoints: PathBuf,
    public_key: String,
    _dir: tempfile::TempDir,
}

async fn signed_gateway(backend: Backend) -> Option<Signed> {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await?;
    let key_file = dir.path().join("signing.pem");
    let (ok, out, err) = cli(&["keys", "new-signing", key_file.to_str().unwrap()], &url);
    assert!(ok, "{err}");
    let public_key = out.lines().last().unwrap().to_string();
    let checkpoints = dir.path().join("checkpoints.jsonl");
    let (db, key, file) = (
        url.clone(),
        key_file.display().to_string(),
        checkpoints.display().to_string(),
    );
    let gw = start_with(SandboxOptions::default(), move |c| {
        c.audit.database_url = db;
        c.audit.signing_key_file = key;
        c.audit.checkpoint_file = file;
        // Checkpoints are signed when the test says so.
        c.audit.checkpoint_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    wait_ready(&gw).await;
    for n in 1..=8u32 {
        let status = gw
            .request(
                reqwest::Method::POST,
                "/v1/compute/instances",
                &gw.keys.operator,
            )
            .json(&serde_json::json!({"period": n}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
        // Distinct timestamps, so pruning "before record N" cuts exactly there.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        if n % 4 == 0 {
            let signed = gw.gateway.audit.checkpoint().await.unwrap();
            assert_eq!(signed.map(|c| c.seq), Some(n as i64));
        }
    }
    let store = Store::open(&url).await.unwrap();
    let dba = common::dba(&url).await;
    Some(Signed {
        gw,
        url,
        store,
        dba,
        checkpoints,
        public_key,
        _dir: dir,
    })
}

/// Where a reviewer sends a checkpoint file to be verified with `public_key`.
fn verify_url(gw: &TestGateway, public_key: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("public_key", public_key)
        .finish();
    format!("{}/_gateway/audit/verify?{query}", gw.url)
}

impl Signed {
    /// `audit verify` with only the checkpoint file and the public key: success, or its message.
    /// The console's way (the same file and key sent to `POST /_gateway/audit/verify`) must come
    /// to the same verdict for the same reason.
    async fn verify(&self) -> Result<(), String> {
        let (ok, out, err) = cli(
            &[
                "audit",
                "verify",
                "--checkpoints",
                self.checkpoints.to_str().unwrap(),
                "--public-key",
                &self.public_key,
            ],
            &self.url,
        );
        let (status, report) = self
            .verify_over_http(std::fs::read(&self.checkpoints).unwrap(), &self.public_key)
            .await;
        assert_eq!(status, if ok { 200 } else { 409 }, "{report}\n{err}");
        if ok {
            Ok(())
        } else {
            let reason = report["reason"].as_str().unwrap();
            assert!(err.contains(reason), "HTTP: {reason}\nCLI: {err}");
            Err(format!("{err}\n{out}"))
        }
    }

    /// `POST /_gateway/audit/verify?public_key=KEY` with `body` as an auditor.
    async fn verify_over_http(&self, body: Vec<u8>, public_key: &str) -> (u16, serde_json::Value) {
        let answer = common::http()
            .post(verify_url(&self.gw, public_key))
            .bearer_auth(&self.gw.keys.auditor)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        (status, common::json(answer).await)
    }

    async fn execute(&self, sql: &str) {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.dba)
            .await
            .unwrap();
    }

    /// What someone who knows the hash rule does after changing records: numbers the records
    /// 1, 2, 3, ... after the store's start and recomputes every hash, so the chain alone verifies.
    async fn recompute_chain(&self) {
        let marker: Option<(i64, String)> = sqlx::query_as(
            "SELECT last_seq, last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.dba)
        .await
        .unwrap();
        let (mut seq, mut prev) = marker.unwrap_or((0, GENESIS_HASH.to_string()));
        let mut records = self.store.page(&Default::default()).await.unwrap();
        records.sort_by_key(|r| r.seq);
        for mut record in records.into_iter().filter(|r| r.seq.is_some()) {
            seq += 1;
            record.seq = Some(seq);
            let hash = record.chain_hash(&prev);
            self.execute(&format!(
                "UPDATE audit_records SET seq = {seq}, prev_hash = '{prev}', hash = '{hash}' WHERE id = {}",
                record.id
            ))
            .await;
            prev = hash;
        }
        assert!(
            self.store.verify(None).await.unwrap().ok,
            "the chain alone verifies after it was recomputed"
        );
    }
}

async fn a_clean_log_verifies_with_the_public_key_alone(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    assert_eq!(s.verify().await, Ok(()));
    let lines = std::fs::read_to_string(&s.checkpoints).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    // Nothing changed: no new checkpoint.
    assert_eq!(s.gw.gateway.audit.checkpoint().await.unwrap(), None);
    // The database's copy is the file's.
    let stored: Vec<String> = s
        .store
        .signed_checkpoints()
        .await
        .unwrap()
        .iter()
        .map(|c| c.line())
        .collect();
    assert_eq!(stored, lines.lines().collect::<Vec<_>>());
}

async fn a_rewritten_record_with_a_recomputed_chain_is_caught(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    s.execute(
        "UPDATE audit_records SET path = '/v1/compute/instances/1/actions/stop' WHERE seq = 2",
    )
    .await;
    s.recompute_chain().await;
    let failure = s.verify().await.unwrap_err();
    assert!(
        failure.contains("(seq 4) is not the record signed checkpoint 1 covered"),
        "{failure}"
    );
}

async fn a_deleted_tail_is_caught(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    s.execute("DELETE FROM audit_records WHERE seq > 5").await;
    assert!(
        s.store.verify(None).await.unwrap().ok,
        "the chain alone verifies"
    );
    let failure = s.verify().await.unwrap_err();
    assert!(
        failure.contains("counted records up to seq 8, but the store ends at seq 5: 3 records"),
        "{failure}"
    );
    // The gateway itself refuses to sign over the cut.
    let refused = s.gw.gateway.audit.checkpoint().await.unwrap_err();
    assert!(matches!(refused, AuditError::NotSigning(_)), "{refused:?}");
    assert!(
        refused.to_string().starts_with("not signing: ")
            && refused.to_string().contains("records were deleted"),
        "{refused}"
    );
}

async fn a_deleted_middle_record_with_the_rest_renumbered_is_caught(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    s.execute("DELETE FROM audit_records WHERE seq = 6").await;
    s.recompute_chain().await;
    let failure = s.verify().await.unwrap_err();
    assert!(failure.contains("the store ends at seq 7"), "{failure}");
    // Deleted before the first checkpoint: the first checkpoint's record differs.
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    s.execute("DELETE FROM audit_records WHERE seq = 2").await;
    s.recompute_chain().await;
    let failure = s.verify().await.unwrap_err();
    assert!(
        failure.contains("is not the record signed checkpoint 1 covered"),
        "{failure}"
    );
}

async fn a_deleted_prefix_behind_a_forged_pruning_checkpoint_is_caught(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    let hash: String = sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = 3")
        .fetch_one(&s.dba)
        .await
        .unwrap();
    s.execute("DELETE FROM audit_records WHERE seq <= 3").await;
    s.execute(&format!(
        "INSERT INTO audit_checkpoints (created_at, last_seq, last_hash, pruned_before, pruned_count) \
         VALUES ('2026-01-01T00:00:00.000Z', 3, '{hash}', '2026-01-01T00:00:00.000Z', 3)"
    ))
    .await;
    assert!(
        s.store.verify(None).await.unwrap().ok,
        "the chain alone verifies"
    );
    let failure = s.verify().await.unwrap_err();
    assert!(
        failure.contains("the store starts after seq 3, but signed checkpoint 2 says only records up to seq 0 were pruned"),
        "{failure}"
    );
}

async fn retention_pruning_stays_verifiable(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    let records = s.store.page(&Default::default()).await.unwrap();
    let signer = contabo_gateway::config::AuditConfig {
        signing_key_file: s
            .checkpoints
            .with_file_name("signing.pem")
            .display()
            .to_string(),
        ..Default::default()
    }
    .checkpoint_signer()
    .unwrap();
    assert_eq!(
        s.store
            .prune(&records[5].ts, signer.as_ref())
            .await
            .unwrap(),
        5
    );
    // The signed pruning checkpoint reaches the file with the next round.
    assert_eq!(s.gw.gateway.audit.checkpoint().await.unwrap(), None);
    assert_eq!(s.verify().await, Ok(()));
    // Pruned without the key (a forged pruning): caught.
    s.store.prune(&records[7].ts, None).await.unwrap();
    let failure = s.verify().await.unwrap_err();
    assert!(failure.contains("were deleted from the start"), "{failure}");
}

async fn a_broken_checkpoint_file_or_another_key_is_caught(backend: Backend) {
    let Some(s) = signed_gateway(backend).await else {
        return;
    };
    let lines = std::fs::read_to_string(&s.checkpoints).unwrap();
    // A checkpoint edited to cover less.
    std::fs::write(&s.checkpoints, lines.replacen("\"seq\":8", "\"seq\":7", 1)).unwrap();
    let failure = s.verify().await.unwrap_err();
    assert!(
        failure.contains("checkpoint 2: its signature does not match"),
        "{failure}"
    );
    // The first checkpoint removed.
    std::fs::write(&s.checkpoints, lines.lines().nth(1).unwrap()).unwrap();
    let failure = s.verify().await.unwrap_err();
    assert!(failure.contains("checkpoint 1 is missing"), "{failure}");
    // Another key: the file does not verify with it.
    std::fs::write(&s.checkpoints, &lines).unwrap();
    let (_, other) = contabo_gateway::signed_checkpoint::new_private_key().unwrap();
    let (ok, _, err) = cli(
        &[
            "audit",
            "verify",
            "--checkpoints",
            s.checkpoints.to_str().unwrap(),
            "--public-key",
            &other,
        ],
        &s.url,
    );
    assert!(!ok && err.contains("signed by another key"), "{err}");
    let (status, report) = s.verify_over_http(lines.clone().into_bytes(), &other).await;
    assert_eq!(status, 409);
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("signed by another key"),
        "{report}"
    );
    // The gateway's own verify endpoint reads the same file.
    std::fs::write(&s.checkpoints, &lines).unwrap();
    s.execute("DELETE FROM audit_records WHERE seq = 8").await;
    let answer =
        s.gw.get("/_gateway/audit/verify", &s.gw.keys.auditor)
            .send()
            .await
            .unwrap();
    assert_eq!(answer.status(), 409);
    let report: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(report["signed_checkpoints"]["count"], 2);
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("missing from the tail"),
        "{report}"
    );
}

on_both_backends!(
    a_clean_log_verifies_with_the_public_key_alone,
    a_rewritten_record_with_a_recomputed_chain_is_caught,
    a_deleted_tail_is_caught,
    a_deleted_middle_record_with_the_rest_renumbered_is_caught,
    a_deleted_prefix_behind_a_forged_pruning_checkpoint_is_caught,
    retention_pruning_stays_verifiable,
    a_broken_checkpoint_file_or_another_key_is_caught,
);

#[test]
fn keys_new_signing_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    let (ok, out, err) = cli(
        &["keys", "new-signing", path.to_str().unwrap()],
        "sqlite://x.db",
    );
    assert!(ok, "{err}");
    let public_key = out.lines().last().unwrap();
    assert_eq!(public_key.len(), 44, "{out}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(
        !out.contains(pem.lines().nth(1).unwrap()),
        "the private key is not printed"
    );
    let (ok, _, err) = cli(
        &["keys", "new-signing", path.to_str().unwrap()],
        "sqlite://x.db",
    );
    assert!(!ok && err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), pem);
}

/// The shipped binary signs on its own: every `audit.checkpoint_secs` while calls come in, and
/// once more at shutdown; each checkpoint is a structured log line too.
#[tokio::test]
async fn the_serving_binary_signs_checkpoints_on_a_timer_and_at_shutdown() {
    use contabo_gateway::sandbox::Sandbox;
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/audit.db", dir.path().display());
    let key_file = dir.path().join("signing.pem");
    let (ok, out, err) = cli(&["keys", "new-signing", key_file.to_str().unwrap()], &db);
    assert!(ok, "{err}");
    let public_key = out.lines().last().unwrap().to_string();
    let file = dir.path().join("checkpoints.jsonl");
    let (key, block) = common::admin_client_block("platform");
    let config = format!(
        "{block}\n[audit]\nsigning_key_file = {:?}\ncheckpoint_file = {:?}\ncheckpoint_secs = 1\n",
        key_file.display(),
        file.display()
    );
    let mut gateway = common::spawn_gateway_process(&sandbox, &config, dir.path(), Some(&db));
    let post = || {
        common::http()
            .post(format!("{}/v1/compute/instances", gateway.url))
            .bearer_auth(&key)
            .json(&serde_json::json!({"period": 1}))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 201);
    let lines = |file: &PathBuf| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|l| contabo_gateway::signed_checkpoint::Checkpoint::parse(l).unwrap())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lines(&file).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(lines(&file).iter().map(|c| c.seq).collect::<Vec<_>>(), [1]);
    // A call just before the stop is covered by the shutdown checkpoint.
    assert_eq!(post().await.unwrap().status(), 201);
    assert!(gateway.signal_and_wait("-TERM").success());
    let signed = lines(&file);
    assert_eq!(
        signed.last().map(|c| (c.seq, c.count)),
        Some((2, 2)),
        "{signed:?}"
    );
    let log = gateway.log();
    assert!(log.contains("audit checkpoint signed"), "{log}");
    let (ok, _, err) = cli(
        &[
            "audit",
            "verify",
            "--checkpoints",
            file.to_str().unwrap(),
            "--public-key",
            &public_key,
        ],
        &db,
    );
    assert!(ok, "{err}");
}

/// Bad uploads to `POST /_gateway/audit/verify` are refused naming what to fix; only auditors and
/// admins may send one.
#[tokio::test]
async fn a_bad_checkpoint_upload_is_refused_naming_what_to_fix() {
    let Some(s) = signed_gateway(Backend::Sqlite).await else {
        return;
    };
    let lines = std::fs::read(&s.checkpoints).unwrap();
    let mut broken = lines.clone();
    broken.extend_from_slice(b"{not json\n");
    let too_big = vec![b' '; contabo_gateway::admin::MAX_CHECKPOINT_UPLOAD + 1];
    for (body, key, status, mentions) in [
        (lines.clone(), "", 400, "public_key"),
        (Vec::new(), s.public_key.as_str(), 400, "the body is empty"),
        (broken, s.public_key.as_str(), 400, "line 3"),
        (vec![0xff, 0xfe], s.public_key.as_str(), 400, "not UTF-8"),
        (
            too_big,
            s.public_key.as_str(),
            413,
            "the checkpoint upload limit",
        ),
    ] {
        let (got, body) = s.verify_over_http(body, key).await;
        assert_eq!(got, status, "{mentions}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{message}");
        assert!(body["request_id"].is_string());
    }
    let refused = common::http()
        .post(verify_url(&s.gw, &s.public_key))
        .bearer_auth(&s.gw.keys.operator)
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}
