//! The hash chain as the store holds it: where it ends (the next batch continues there), walking
//! it to verify every hash (and against signed checkpoints), signing its head, and pruning its
//! start behind a checkpoint so the rest still verifies.

use futures_util::StreamExt;

use super::error::AuditError;
use super::record::{AuditRecord, column_list};
use super::record::{GENESIS_HASH, now_ts};
use super::store::{Backed, Connection, Store, fetch_records, on_backend};
use crate::signed_checkpoint::{Checkpoint, Signer, check_sequence, parse_lines};

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
    /// Where retention pruning cut the chain's start (its last pruned seq).
    pub checkpoint_seq: Option<i64>,
    /// What the signed checkpoints vouched for, when verified against them.
    pub signed_checkpoints: Option<SignedStatus>,
}

/// The signed checkpoints a verification held the store against.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignedStatus {
    /// Where they came from: the checkpoint file, or the database's copy.
    pub source: String,
    pub public_key: String,
    pub count: usize,
    /// The newest one: its number, the seq it covers and when it was signed.
    pub latest: Option<i64>,
    pub latest_seq: Option<i64>,
    pub latest_ts: Option<String>,
}

/// Signed checkpoints from outside the store and the public key they must verify with.
pub struct Anchors {
    pub checkpoints: Vec<Checkpoint>,
    pub public_key: String,
    pub source: String,
}

impl Store {
    /// In one round trip: the highest id in use (new records are numbered from it under the chain
    /// lock) and the chain's head (last seq and hash; the checkpoint after pruning; the genesis).
    pub async fn tail(conn: &mut Connection) -> Result<ChainTail, sqlx::Error> {
        let row: TailRow = on_backend!(conn, c => {
            sqlx::query_as(TAIL_SQL).fetch_one(&mut **c).await
        })?;
        Ok(row.into())
    }

    /// Walks the chain in order and recomputes every hash; with `anchors`, also holds the store
    /// against signed checkpoints: every record they cover still has the hash they signed, none
    /// they counted is gone from the start, the middle or the tail.
    pub async fn verify(&self, anchors: Option<&Anchors>) -> Result<VerifyReport, AuditError> {
        let mut conn = self.connection().await?;
        let pruned = pruned_start(&mut conn).await?;
        let (mut seq, mut prev) = pruned.clone().unwrap_or((0, GENESIS_HASH.to_string()));
        let mut report = VerifyReport {
            ok: true,
            checked: 0,
            pending: 0,
            first_broken_id: None,
            reason: None,
            checkpoint_seq: pruned.as_ref().map(|(seq, _)| *seq),
            signed_checkpoints: anchors.map(|a| SignedStatus {
                source: a.source.clone(),
                public_key: a.public_key.clone(),
                count: a.checkpoints.len(),
                latest: a.checkpoints.last().map(|c| c.checkpoint),
                latest_seq: a.checkpoints.last().map(|c| c.seq),
                latest_ts: a.checkpoints.last().map(|c| c.ts.clone()),
            }),
        };
        let fail = |mut report: VerifyReport, id: Option<i64>, reason: String| {
            report.ok = false;
            report.first_broken_id = id;
            report.reason = Some(reason);
            Ok(report)
        };
        let pending: i64 = on_backend!(&mut conn, c => {
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE seq IS NULL")
                .fetch_one(&mut **c)
                .await
        })?;
        report.pending = pending as u64;
        let latest = anchors.and_then(|a| a.checkpoints.last());
        if let Some(anchors) = anchors {
            if let Err(reason) = check_sequence(&anchors.checkpoints, &anchors.public_key) {
                return fail(report, None, reason.to_string());
            }
            if let Some(latest) = latest
                && let Some(reason) = start_differs(latest, seq, &prev)
            {
                return fail(report, None, reason);
            }
        }
        let covered = |seq: i64| {
            anchors
                .into_iter()
                .flat_map(|a| a.checkpoints.iter())
                .filter(move |c| c.seq == seq)
        };
        let sql = format!(
            "SELECT {} FROM audit_records WHERE seq IS NOT NULL ORDER BY seq",
            column_list()
        );
        let mut rows = match &mut conn {
            Backed::Sqlite(c) => fetch_records!(&mut **c, sql).left_stream(),
            Backed::Postgres(c) => fetch_records!(&mut **c, sql).right_stream(),
        };
        while let Some(record) = rows.next().await {
            let record: AuditRecord = record?;
            let broken = if record.seq != Some(seq + 1) {
                Some(format!("sequence jumps from {seq} to {:?}", record.seq))
            } else if record.prev_hash.as_deref() != Some(prev.as_str()) {
                Some("prev_hash does not match the previous record's hash".to_string())
            } else if record.hash.as_deref() != Some(record.chain_hash(&prev).as_str()) {
                Some("the record's content does not match its hash".to_string())
            } else {
                covered(seq + 1)
                    .find(|c| record.hash.as_deref() != Some(c.hash.as_str()))
                    .map(|c| {
                        format!(
                            "record {} (seq {}) is not the record signed checkpoint {} covered \
                             (its hash differs): it was changed, or records before it were \
                             deleted or inserted, and the chain recomputed",
                            record.id,
                            seq + 1,
                            c.checkpoint
                        )
                    })
            };
            if let Some(reason) = broken {
                return fail(report, Some(record.id), reason);
            }
            seq += 1;
            prev = record.hash.unwrap_or_default();
            report.checked += 1;
        }
        if let Some(latest) = latest
            && latest.seq > seq
        {
            let missing = latest.seq - seq;
            return fail(
                report,
                None,
                format!(
                    "signed checkpoint {} ({}) counted records up to seq {}, but the store ends at \
                     seq {seq}: {missing} records are missing from the tail",
                    latest.checkpoint, latest.ts, latest.seq
                ),
            );
        }
        Ok(report)
    }

    /// The signed checkpoints the database holds, oldest first.
    pub async fn signed_checkpoints(&self) -> Result<Vec<Checkpoint>, AuditError> {
        let lines: Vec<String> = on_backend!(&self.pool, pool => {
            sqlx::query_scalar("SELECT line FROM audit_signed_checkpoints ORDER BY checkpoint")
                .fetch_all(pool)
                .await
        })?;
        Ok(parse_lines(&lines.join("\n"))?)
    }

    /// The database's signed checkpoints after number `after`, as lines (for the checkpoint file).
    pub async fn signed_lines_after(&self, after: i64) -> Result<Vec<String>, AuditError> {
        on_backend!(&self.pool, pool => {
            sqlx::query_scalar(
                "SELECT line FROM audit_signed_checkpoints WHERE checkpoint > $1 ORDER BY checkpoint",
            )
            .bind(after)
            .fetch_all(pool)
            .await
        })
        .map_err(AuditError::from)
    }

    /// Signs the chain's head under the chain lock (replicas share one sequence), unless nothing
    /// changed since the last checkpoint. Refuses, naming why, to sign a chain that no longer
    /// holds what the last checkpoint signed.
    pub async fn sign_checkpoint(&self, signer: &Signer) -> Result<Option<Checkpoint>, AuditError> {
        let mut conn = self.connection().await?;
        Self::lock_chain(&mut conn).await?;
        match checkpoint_head(&mut conn, signer).await {
            Ok(checkpoint) => {
                Self::commit(&mut conn).await?;
                Ok(checkpoint)
            }
            Err(reason) => {
                Self::rollback(&mut conn).await;
                Err(reason)
            }
        }
    }

    /// Deletes finalised records older than `before` (an RFC 3339 timestamp) from the start of the
    /// chain, and records a checkpoint with the last deleted record's hash so the rest verifies;
    /// with a `signer`, a signed checkpoint in the same transaction says where the cut is.
    pub async fn prune(&self, before: &str, signer: Option<&Signer>) -> Result<u64, AuditError> {
        let mut conn = self.connection().await?;
        Self::lock_chain(&mut conn).await?;
        match prune_locked(&mut conn, before, signer).await {
            Ok(deleted) => {
                Self::commit(&mut conn).await?;
                Ok(deleted)
            }
            Err(reason) => {
                Self::rollback(&mut conn).await;
                Err(reason)
            }
        }
    }
}

/// Why the store's start is not where the latest signed checkpoint says pruning cut the chain.
fn start_differs(latest: &Checkpoint, start_seq: i64, start_hash: &str) -> Option<String> {
    let n = latest.checkpoint;
    if start_seq > latest.pruned_through {
        Some(format!(
            "the store starts after seq {start_seq}, but signed checkpoint {n} says only records up \
             to seq {} were pruned: records were deleted from the start (and a pruning checkpoint \
             forged)",
            latest.pruned_through
        ))
    } else if start_seq < latest.pruned_through {
        Some(format!(
            "the store starts after seq {start_seq}, but signed checkpoint {n} says pruning cut the \
             chain after seq {}: the store is not the one the checkpoints describe",
            latest.pruned_through
        ))
    } else if start_hash != latest.pruned_hash {
        Some(format!(
            "the store's pruning checkpoint at seq {start_seq} does not carry the hash signed \
             checkpoint {n} signed: it was forged"
        ))
    } else {
        None
    }
}

/// The last pruned seq and its hash, when retention pruning has cut the chain.
async fn pruned_start(conn: &mut Connection) -> Result<Option<(i64, String)>, sqlx::Error> {
    on_backend!(conn, c => {
        sqlx::query_as("SELECT last_seq, last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **c)
            .await
    })
}

/// Signs the chain's head inside a transaction holding the chain lock (see `sign_checkpoint`).
async fn checkpoint_head(
    conn: &mut Connection,
    signer: &Signer,
) -> Result<Option<Checkpoint>, AuditError> {
    let last: Option<String> = on_backend!(&mut *conn, c => {
        sqlx::query_scalar("SELECT line FROM audit_signed_checkpoints ORDER BY checkpoint DESC LIMIT 1")
            .fetch_optional(&mut **c)
            .await
    })?;
    let last = last.map(|line| Checkpoint::parse(&line)).transpose()?;
    let tail = Store::tail(conn).await?;
    let (pruned_through, pruned_hash) = pruned_start(conn)
        .await?
        .unwrap_or((0, GENESIS_HASH.to_string()));
    match &last {
        None if tail.seq == 0 => return Ok(None),
        None => {}
        Some(last) => {
            if tail.seq < last.seq {
                return Err(AuditError::NotSigning(format!(
                    "the chain ends at seq {}, before signed checkpoint {} (seq {}); records were \
                     deleted from the store",
                    tail.seq, last.checkpoint, last.seq
                )));
            }
            if last.seq > pruned_through {
                let hash: Option<Option<String>> = on_backend!(&mut *conn, c => {
                    sqlx::query_scalar("SELECT hash FROM audit_records WHERE seq = $1")
                        .bind(last.seq)
                        .fetch_optional(&mut **c)
                        .await
                })?;
                let hash = hash.flatten();
                if hash.as_deref() != Some(last.hash.as_str()) {
                    return Err(AuditError::NotSigning(format!(
                        "the record at seq {} no longer has the hash signed checkpoint {} \
                         covered; the chain was rewritten",
                        last.seq, last.checkpoint
                    )));
                }
            }
            if tail.seq == last.seq && pruned_through == last.pruned_through {
                return Ok(None);
            }
        }
    }
    let count: i64 = on_backend!(&mut *conn, c => {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_records WHERE seq IS NOT NULL AND seq <= $1")
            .bind(tail.seq)
            .fetch_one(&mut **c)
            .await
    })?;
    let checkpoint = signer.sign(Checkpoint {
        checkpoint: last.as_ref().map_or(1, |l| l.checkpoint + 1),
        seq: tail.seq,
        hash: tail.hash,
        count,
        pruned_through,
        pruned_hash,
        ts: now_ts(),
        previous: last
            .as_ref()
            .map_or_else(|| GENESIS_HASH.to_string(), Checkpoint::digest),
        key: String::new(),
        signature: String::new(),
    });
    on_backend!(conn, c => {
        sqlx::query("INSERT INTO audit_signed_checkpoints (checkpoint, line) VALUES ($1, $2)")
            .bind(checkpoint.checkpoint)
            .bind(checkpoint.line())
            .execute(&mut **c)
            .await
            .map(drop)
    })?;
    Ok(Some(checkpoint))
}

/// Prunes inside a transaction holding the chain lock (see `Store::prune`).
async fn prune_locked(
    conn: &mut Connection,
    before: &str,
    signer: Option<&Signer>,
) -> Result<u64, AuditError> {
    // Only a prefix of the chain can go: up to the first record that is young enough to stay.
    let stop: Option<i64> = on_backend!(&mut *conn, c => {
        sqlx::query_scalar("SELECT MIN(seq) FROM audit_records WHERE seq IS NOT NULL AND ts >= $1")
            .bind(before)
            .fetch_one(&mut **c)
            .await
    })?;
    let last: Option<(i64, String)> = on_backend!(&mut *conn, c => {
        sqlx::query_as(
            "SELECT seq, hash FROM audit_records WHERE seq IS NOT NULL AND ts < $1 \
             AND ($2 IS NULL OR seq < $2) ORDER BY seq DESC LIMIT 1",
        )
        .bind(before)
        .bind(stop)
        .fetch_optional(&mut **c)
        .await
    })?;
    let Some((last_seq, last_hash)) = last else {
        return Ok(0);
    };
    let deleted = on_backend!(&mut *conn, c => {
        sqlx::query("DELETE FROM audit_records WHERE seq IS NOT NULL AND seq <= $1")
            .bind(last_seq)
            .execute(&mut **c)
            .await
            .map(|done| done.rows_affected())
    })?;
    on_backend!(&mut *conn, c => {
        sqlx::query(
            "INSERT INTO audit_checkpoints (created_at, last_seq, last_hash, pruned_before, \
             pruned_count) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(now_ts())
        .bind(last_seq)
        .bind(&last_hash)
        .bind(before)
        .bind(deleted as i64)
        .execute(&mut **c)
        .await
        .map(drop)
    })?;
    if let Some(signer) = signer {
        checkpoint_head(conn, signer).await?;
    }
    Ok(deleted)
}

/// The chain's tail (see `Store::tail`).
pub(super) const TAIL_SQL: &str = "SELECT (SELECT COALESCE(MAX(id), 0) FROM audit_records) AS max_id, \
                    (SELECT seq FROM audit_records WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS seq, \
                    (SELECT hash FROM audit_records WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS hash, \
                    (SELECT last_seq FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS cp_seq, \
                    (SELECT last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS cp_hash";

/// The row `TAIL_SQL` reads: the chain's last record, and the pruning checkpoint it continues
/// from when pruning left no record.
#[derive(sqlx::FromRow)]
pub(super) struct TailRow {
    max_id: i64,
    seq: Option<i64>,
    hash: Option<String>,
    cp_seq: Option<i64>,
    cp_hash: Option<String>,
}

impl From<TailRow> for ChainTail {
    fn from(row: TailRow) -> Self {
        let (seq, hash) = match (row.seq, row.hash, row.cp_seq, row.cp_hash) {
            (Some(seq), Some(hash), _, _) | (_, _, Some(seq), Some(hash)) => (seq, hash),
            _ => (0, GENESIS_HASH.to_string()),
        };
        ChainTail {
            max_id: row.max_id,
            seq,
            hash,
        }
    }
}
