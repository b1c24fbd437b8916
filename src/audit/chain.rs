//! The hash chain as the store holds it: where it ends (the next batch continues there), walking
//! it to verify every hash, and pruning its start behind a checkpoint so the rest still verifies.

use futures_util::StreamExt;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::record::{GENESIS_HASH, now_ts};
use super::store::{COLUMNS, Store, decode};

/// Where the next batch continues: the highest id in use and the chain's last seq and hash.
#[derive(Debug, Clone)]
pub struct ChainTail {
    pub max_id: i64,
    pub seq: i64,
    pub hash: String,
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checked: u64,
    pub pending: u64,
    pub first_broken_id: Option<i64>,
    pub reason: Option<String>,
    pub checkpoint_seq: Option<i64>,
}

impl Store {
    /// In one round trip: the highest id in use (new records are numbered from it under the chain
    /// lock) and the chain's head (last seq and hash; the checkpoint after pruning; the genesis).
    pub async fn tail(conn: &mut sqlx::AnyConnection) -> Result<ChainTail, sqlx::Error> {
        let row = sqlx::query(TAIL_SQL).fetch_one(&mut *conn).await?;
        decode_tail(&row)
    }

    /// Walks the chain in order and recomputes every hash.
    pub async fn verify(&self) -> Result<VerifyReport, String> {
        let err = |e: sqlx::Error| e.to_string();
        let checkpoint = sqlx::query(
            "SELECT last_seq, last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(err)?;
        let (mut seq, mut prev) = match &checkpoint {
            Some(row) => (
                row.try_get::<i64, _>("last_seq").map_err(err)?,
                row.try_get::<String, _>("last_hash").map_err(err)?,
            ),
            None => (0, GENESIS_HASH.to_string()),
        };
        let mut report = VerifyReport {
            ok: true,
            checked: 0,
            pending: 0,
            first_broken_id: None,
            reason: None,
            checkpoint_seq: checkpoint.as_ref().map(|_| seq),
        };
        let pending = sqlx::query("SELECT COUNT(*) AS n FROM audit_records WHERE seq IS NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        report.pending = pending.try_get::<i64, _>("n").map_err(err)? as u64;
        let sql = format!("SELECT {COLUMNS} FROM audit_records WHERE seq IS NOT NULL ORDER BY seq");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&self.pool);
        while let Some(row) = rows.next().await {
            let record = decode(&row.map_err(err)?).map_err(err)?;
            let broken = if record.seq != Some(seq + 1) {
                Some(format!("sequence jumps from {seq} to {:?}", record.seq))
            } else if record.prev_hash.as_deref() != Some(prev.as_str()) {
                Some("prev_hash does not match the previous record's hash".to_string())
            } else if record.hash.as_deref() != Some(record.chain_hash(&prev).as_str()) {
                Some("the record's content does not match its hash".to_string())
            } else {
                None
            };
            if let Some(reason) = broken {
                report.ok = false;
                report.first_broken_id = Some(record.id);
                report.reason = Some(reason);
                return Ok(report);
            }
            seq += 1;
            prev = record.hash.unwrap_or_default();
            report.checked += 1;
        }
        Ok(report)
    }

    /// Deletes finalised records older than `before` (an RFC 3339 timestamp) from the start of the
    /// chain, and records a checkpoint with the last deleted record's hash so the rest verifies.
    pub async fn prune(&self, before: &str) -> Result<u64, String> {
        let err = |e: sqlx::Error| e.to_string();
        let mut conn = self.pool.acquire().await.map_err(err)?;
        let mut tx = self.begin(&mut conn).await.map_err(err)?;
        // Only a prefix of the chain can go: up to the first record that is young enough to stay.
        let stop = sqlx::query(
            "SELECT MIN(seq) AS s FROM audit_records WHERE seq IS NOT NULL AND ts >= $1",
        )
        .bind(before)
        .fetch_one(&mut *tx)
        .await
        .map_err(err)?;
        let stop: Option<i64> = stop.try_get("s").map_err(err)?;
        let last = sqlx::query(
            "SELECT seq, hash FROM audit_records WHERE seq IS NOT NULL AND ts < $1 AND ($2 IS NULL OR seq < $2) \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(before)
        .bind(stop)
        .fetch_optional(&mut *tx)
        .await
        .map_err(err)?;
        let Some(last) = last else {
            return Ok(0);
        };
        let (last_seq, last_hash): (i64, String) = (
            last.try_get("seq").map_err(err)?,
            last.try_get("hash").map_err(err)?,
        );
        let deleted = sqlx::query("DELETE FROM audit_records WHERE seq IS NOT NULL AND seq <= $1")
            .bind(last_seq)
            .execute(&mut *tx)
            .await
            .map_err(err)?
            .rows_affected();
        sqlx::query(
            "INSERT INTO audit_checkpoints (created_at, last_seq, last_hash, pruned_before, pruned_count) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ts())
        .bind(last_seq)
        .bind(&last_hash)
        .bind(before)
        .bind(deleted as i64)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(deleted)
    }
}

/// The chain's tail (see `Store::tail`).
pub(super) const TAIL_SQL: &str = "SELECT (SELECT COALESCE(MAX(id), 0) FROM audit_records) AS max_id, \
                    (SELECT seq FROM audit_records WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS seq, \
                    (SELECT hash FROM audit_records WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS hash, \
                    (SELECT last_seq FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS cp_seq, \
                    (SELECT last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS cp_hash";

pub(super) fn decode_tail(row: &AnyRow) -> Result<ChainTail, sqlx::Error> {
    let max_id: i64 = row.try_get("max_id")?;
    let head = match (
        row.try_get::<Option<i64>, _>("seq")?,
        row.try_get::<Option<String>, _>("hash")?,
    ) {
        (Some(seq), Some(hash)) => (seq, hash),
        _ => match (
            row.try_get::<Option<i64>, _>("cp_seq")?,
            row.try_get::<Option<String>, _>("cp_hash")?,
        ) {
            (Some(seq), Some(hash)) => (seq, hash),
            _ => (0, GENESIS_HASH.to_string()),
        },
    };
    Ok(ChainTail {
        max_id,
        seq: head.0,
        hash: head.1,
    })
}
