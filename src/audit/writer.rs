//! The single writer of the audit store: group commit. Records waiting to be written are taken
//! together into one transaction, so durability costs one commit (one fsync) per batch, not per
//! call; chain appends happen here, in order. While the store cannot be opened, every write is
//! answered with the reason and the writer retries in the background. A final record whose batch
//! failed is kept and written again with the next batch (at least once a second): the call it
//! records was answered, so it must not be lost.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

use super::record::AuditRecord;
use super::store::{Backend, ChainTail, Store, WriterClaim};

/// Most records taken into one transaction.
const MAX_BATCH: usize = 512;
/// How often a writer without a store tries to open it again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub enum Op {
    /// Insert a pending record; the reply is its id once committed.
    Begin {
        record: AuditRecord,
        reply: oneshot::Sender<Result<i64, String>>,
    },
    /// Write the final fields and append to the chain (inserting first when `record.id` is 0).
    Finish {
        record: AuditRecord,
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Replies once everything sent before it is committed.
    Flush { reply: oneshot::Sender<()> },
}

/// Whether the store can be written, and why not.
pub type Health = Arc<RwLock<Result<(), String>>>;

pub async fn run(url: String, mut ops: mpsc::Receiver<Op>, health: Health) {
    // This process's right to write a SQLite file, held for the writer's life once taken.
    let mut claim = None;
    let mut store = open(&url, &mut claim, &health).await;
    // The writer's own connection, taken from the store's pool on the first batch and kept until a
    // write fails.
    let mut conn = None;
    // The chain's tail after the last batch, when this writer may rely on it (see `write`).
    let mut tail = None;
    // Final records of failed batches, written again with the next one.
    let mut carried: Vec<Op> = Vec::new();
    let mut closed = false;
    loop {
        let first = if store.is_some() && carried.is_empty() {
            ops.recv().await
        } else {
            match tokio::time::timeout(RETRY_EVERY, ops.recv()).await {
                Ok(op) => op,
                Err(_) => {
                    if store.is_none() {
                        store = open(&url, &mut claim, &health).await;
                    }
                    if carried.is_empty() || store.is_none() {
                        continue;
                    }
                    None
                }
            }
        };
        if first.is_none() && carried.is_empty() {
            break;
        }
        closed |= first.is_none() && ops.is_closed();
        let mut batch = std::mem::take(&mut carried);
        batch.extend(first);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        if store.is_none() {
            store = open(&url, &mut claim, &health).await;
        }
        let started = std::time::Instant::now();
        // A batch of flushes alone (an audit query waiting for what came before it) has nothing
        // to write: everything before it was written with earlier batches.
        if batch.iter().all(|op| matches!(op, Op::Flush { .. })) {
            reply(batch, Ok(()));
            continue;
        }
        let assigned_ids: Vec<i64> = batch.iter().map(op_id).collect();
        let result = match &store {
            Some(s) => write(s, &mut conn, &mut tail, &mut batch)
                .await
                .map_err(|e| format!("the audit store could not be written: {e}")),
            None => Err(health
                .read()
                .expect("health lock")
                .clone()
                .err()
                .unwrap_or_default()),
        };
        tracing::debug!(
            records = batch.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "audit batch written"
        );
        crate::metrics::audit_batch(batch.len(), started.elapsed(), result.is_ok());
        if let Err(reason) = &result {
            tracing::error!(%reason, records = batch.len(), "audit write failed");
            *health.write().expect("health lock") = Err(reason.clone());
            store = None;
            conn = None;
            tail = None;
            if !closed {
                carried = keep_final_records(&mut batch, &assigned_ids);
            }
        }
        reply(batch, result);
    }
}

fn op_id(op: &Op) -> i64 {
    match op {
        Op::Begin { record, .. } | Op::Finish { record, .. } => record.id,
        Op::Flush { .. } => 0,
    }
}

/// Takes the final records nobody waits for out of a failed batch, as they were before it (no
/// chain position; no id when the batch gave them one), to be written again.
fn keep_final_records(batch: &mut Vec<Op>, ids_before: &[i64]) -> Vec<Op> {
    let mut kept = Vec::new();
    let mut index = 0;
    batch.retain_mut(|op| {
        let id_before = ids_before[index];
        index += 1;
        match op {
            Op::Finish {
                record,
                reply: None,
            } => {
                record.id = id_before;
                record.seq = None;
                record.prev_hash = None;
                record.hash = None;
                kept.push(Op::Finish {
                    record: record.clone(),
                    reply: None,
                });
                false
            }
            _ => true,
        }
    });
    if !kept.is_empty() {
        tracing::warn!(
            records = kept.len(),
            "final audit records kept to be written again once the store can be written"
        );
    }
    kept
}

async fn open(url: &str, claim: &mut Option<WriterClaim>, health: &Health) -> Option<Store> {
    let opened = match claim {
        Some(_) => Store::open(url).await,
        None => match WriterClaim::take(url) {
            Ok(taken) => {
                *claim = Some(taken);
                Store::open(url).await
            }
            Err(reason) => Err(reason),
        },
    };
    match opened {
        Ok(store) => {
            let was_down = health.read().expect("health lock").is_err();
            *health.write().expect("health lock") = Ok(());
            if was_down {
                tracing::info!("the audit store is writable again");
            }
            Some(store)
        }
        Err(reason) => {
            let mut current = health.write().expect("health lock");
            if current.as_ref().err() != Some(&reason) {
                tracing::error!(%reason, "the audit store cannot be opened; mutating calls are refused (fail closed) until it can");
            }
            *current = Err(reason);
            None
        }
    }
}

/// Writes the batch in one transaction: ids and chain positions are assigned here, in order, then
/// every record goes in with multi-row upserts (new ones inserted, pending ones finalised).
///
/// On SQLite one gateway process owns the file, so the chain's tail read once stays right: it is
/// kept in `tail` between batches (and dropped when a write fails) and the batch is one round trip.
/// On PostgreSQL several replicas append, so the tail is read under the advisory lock every time.
async fn write(
    store: &Store,
    conn: &mut Option<PoolConnection<sqlx::Any>>,
    tail: &mut Option<ChainTail>,
    batch: &mut [Op],
) -> Result<(), sqlx::Error> {
    if conn.is_none() {
        *conn = Some(store.writer_connection().await?);
    }
    let conn = conn
        .as_mut()
        .expect("the writer's connection was just taken");
    match store.backend() {
        Backend::Sqlite => {
            let start = match tail.take() {
                Some(known) => known,
                None => Store::tail(conn).await?,
            };
            let end = place_in_chain(batch, start);
            store.commit_batch_sqlite(conn, &records(batch)).await?;
            *tail = Some(end);
            Ok(())
        }
        Backend::Postgres => {
            let start = Store::begin_append_postgres(conn).await?;
            place_in_chain(batch, start);
            if let Err(error) = store.upsert_batch_postgres(conn, &records(batch)).await {
                Store::rollback(conn).await;
                return Err(error);
            }
            Store::commit(conn).await
        }
    }
}

/// Numbers the batch's new records and appends its finalised ones to the chain after `tail`;
/// returns the chain's new tail.
fn place_in_chain(batch: &mut [Op], tail: ChainTail) -> ChainTail {
    let ChainTail {
        mut max_id,
        mut seq,
        hash: mut prev,
    } = tail;
    for op in batch.iter_mut() {
        let (record, finishing) = match op {
            Op::Begin { record, .. } => (record, false),
            Op::Finish { record, .. } => (record, true),
            Op::Flush { .. } => continue,
        };
        // A Begin is new (pending); a Finish without an id (a refusal) is new and final at once.
        if record.id == 0 {
            max_id += 1;
            record.id = max_id;
        }
        if finishing {
            seq += 1;
            record.seq = Some(seq);
            let hash = record.chain_hash(&prev);
            record.prev_hash = Some(std::mem::replace(&mut prev, hash.clone()));
            record.hash = Some(hash);
        }
    }
    ChainTail {
        max_id,
        seq,
        hash: prev,
    }
}

fn records(batch: &[Op]) -> Vec<&AuditRecord> {
    batch
        .iter()
        .filter_map(|op| match op {
            Op::Begin { record, .. } | Op::Finish { record, .. } => Some(record),
            Op::Flush { .. } => None,
        })
        .collect()
}

fn reply(batch: Vec<Op>, result: Result<(), String>) {
    for op in batch {
        match op {
            Op::Begin { record, reply } => {
                let _ = reply.send(result.clone().map(|_| record.id));
            }
            Op::Finish {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(result.clone());
            }
            Op::Finish {
                reply: None,
                record,
            } => {
                if result.is_err() {
                    tracing::error!(request_id = %record.request_id, "an audit record could not be finalised before the writer stopped; it stays pending");
                }
            }
            Op::Flush { reply } => {
                let _ = reply.send(());
            }
        }
    }
}
