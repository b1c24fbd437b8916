//! The single writer of the audit store: group commit. Records waiting to be written are taken
//! together into one transaction, so durability costs one commit (one fsync) per batch, not per
//! call; chain appends happen here, in order. While the store cannot be opened, every write is
//! answered with the reason and the writer retries in the background. A final record whose batch
//! failed is kept and written again with the next batch (at least once a second): the call it
//! records was answered, so it must not be lost. A failed batch may still have committed (its
//! answer lost after the commit), so a kept record is first looked up in the store ([`Retry`]):
//! it is never appended to the chain twice, and a pending record whose caller was refused is
//! finalised as refused rather than left pending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::record::AuditRecord;
use super::store::{Backed, ChainTail, Connection, Store, WriterClaim};

/// Most records taken into one transaction.
const MAX_BATCH: usize = 512;
/// How often an idle writer probes its store, and how often one without a store tries to open it
/// again: /_gateway/ready follows the store within about this long plus `IDLE_PROBE_DEADLINE`.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// How long an idle store may take to answer `SELECT 1` (at most `audit.write_timeout_ms`).
const IDLE_PROBE_DEADLINE: Duration = Duration::from_millis(500);

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

/// A record to finalise again after a failed batch, whose commit may or may not have happened.
struct Retry {
    /// The record as it is to be finalised, its id as it was before the failed batch (0 when
    /// that batch was to insert it).
    record: AuditRecord,
    /// The id the failed batch gave it (0 when the batch failed before numbering it).
    attempted_id: i64,
    /// Finalise it only when the store holds it: a pending record of a refused call.
    only_if_stored: bool,
}

/// Whether the store can be written, and why not.
pub type Health = Arc<RwLock<Result<(), String>>>;

/// `ever_up` turns true once the store was first written; callers may then take a down store's
/// reason as final (before, the store is still being opened).
pub async fn run(
    url: String,
    mut ops: mpsc::Receiver<Op>,
    health: Health,
    ever_up: Arc<AtomicBool>,
    deadline: Duration,
) {
    // This process's right to write a SQLite file, held for the writer's life once taken.
    let mut claim = None;
    let mut store = open(&url, &mut claim, &health, deadline, &ever_up).await;
    // The writer's own connection, taken from the store's pool on the first batch and kept until a
    // write fails.
    let mut conn = None;
    // The chain's tail after the last batch, when this writer may rely on it (see `write`).
    let mut tail = None;
    // Final records of failed batches, written again with the next one.
    let mut carried: Vec<Retry> = Vec::new();
    let mut closed = false;
    loop {
        // Nothing to do for a second: a store that is up is probed (a frozen or stopped database
        // shows in /ready without traffic), one that is down is opened again.
        let first = match tokio::time::timeout(RETRY_EVERY, ops.recv()).await {
            Ok(op) => op,
            Err(_) => {
                match &store {
                    None => {
                        store = open(&url, &mut claim, &health, deadline, &ever_up).await;
                    }
                    Some(s) => {
                        if let Err(reason) =
                            probe(s, &mut conn, deadline.min(IDLE_PROBE_DEADLINE), false).await
                        {
                            mark_down(&health, &reason);
                            (store, conn, tail) = (None, None, None);
                        }
                    }
                }
                if carried.is_empty() || store.is_none() {
                    continue;
                }
                None
            }
        };
        if first.is_none() && carried.is_empty() {
            break;
        }
        closed |= first.is_none() && ops.is_closed();
        if closed && store.is_none() {
            for retry in carried.drain(..) {
                tracing::error!(request_id = %retry.record.request_id, "an audit record could not be finalised before the writer stopped; it stays pending");
            }
        }
        let mut batch = Vec::new();
        if !carried.is_empty()
            && let Some(s) = &store
        {
            match within(deadline, "read", look_up(s, &mut conn, &carried)).await {
                Ok(ops) => {
                    carried.clear();
                    batch = ops;
                }
                Err(reason) => {
                    mark_down(&health, &reason);
                    (store, conn, tail) = (None, None, None);
                }
            }
        }
        batch.extend(first);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // A batch of flushes alone (an audit query waiting for what came before it) has nothing
        // to write: everything before it was written with earlier batches.
        if batch.iter().all(|op| matches!(op, Op::Flush { .. })) {
            reply(batch, Ok(()), &mut carried);
            continue;
        }
        let assigned_ids: Vec<i64> = batch.iter().map(op_id).collect();
        let span = crate::telemetry::span(|| {
            tracing::info_span!("audit write (batch)", records = batch.len())
        });
        let result = match &store {
            Some(s) => {
                let written = write(s, &mut conn, &mut tail, &mut batch);
                within(
                    deadline,
                    "written",
                    tracing::Instrument::instrument(written, span),
                )
                .await
            }
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
        match &result {
            Ok(()) => mark_up(&health, &ever_up),
            Err(reason) => {
                tracing::error!(%reason, records = batch.len(), "audit write failed");
                mark_down(&health, reason);
                (store, conn, tail) = (None, None, None);
                if !closed {
                    carried.extend(keep_final_records(&mut batch, &assigned_ids));
                }
            }
        }
        reply(batch, result, &mut carried);
    }
}

/// A store operation within the deadline, its failure said as the reason the store is down
/// (`done`: what could not be done, "read" or "written").
async fn within<T>(
    deadline: Duration,
    done: &str,
    operation: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, operation).await {
        Ok(result) => result.map_err(|e| format!("the audit store could not be {done}: {e}")),
        Err(_) => Err(format!(
            "the audit store did not complete a write within audit.write_timeout_ms ({} ms)",
            deadline.as_millis()
        )),
    }
}

/// The store can be written: say so (once, when it was down after having been up).
fn mark_up(health: &Health, ever_up: &AtomicBool) {
    let was_down = health.read().expect("health lock").is_err();
    if was_down {
        *health.write().expect("health lock") = Ok(());
        if ever_up.load(Ordering::SeqCst) {
            tracing::info!("the audit store is writable again");
        }
    }
    ever_up.store(true, Ordering::SeqCst);
}

fn mark_down(health: &Health, reason: &str) {
    let mut current = health.write().expect("health lock");
    if current.as_ref().err().map(String::as_str) != Some(reason) {
        *current = Err(reason.to_string());
    }
}

/// One probe of the store within the deadline: a write while it is coming back (so readiness
/// means a write succeeded, not only that a connection opened), a read while it is up.
async fn probe(
    store: &Store,
    conn: &mut Option<Connection>,
    deadline: Duration,
    write: bool,
) -> Result<(), String> {
    let attempt = async {
        let conn = held(store, conn).await?;
        Store::probe(conn, write).await
    };
    match tokio::time::timeout(deadline, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the audit store failed a probe: {e}")),
        Err(_) => Err(format!(
            "the audit store did not answer a probe within audit.write_timeout_ms ({} ms)",
            deadline.as_millis()
        )),
    }
}

fn op_id(op: &Op) -> i64 {
    match op {
        Op::Begin { record, .. } | Op::Finish { record, .. } => record.id,
        Op::Flush { .. } => 0,
    }
}

/// What a failed batch leaves to write again: its final records nobody waits for (taken out of
/// the batch, as they were before it), and for each pending record it numbered, that record
/// finalised as refused (its caller is answered 503 and nothing is forwarded), in case the batch
/// committed after all.
fn keep_final_records(batch: &mut Vec<Op>, ids_before: &[i64]) -> Vec<Retry> {
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
                let attempted_id = record.id;
                let mut record = record.clone();
                record.id = id_before;
                record.seq = None;
                record.prev_hash = None;
                record.hash = None;
                kept.push(Retry {
                    record,
                    attempted_id,
                    only_if_stored: false,
                });
                false
            }
            Op::Begin { record, .. } if record.id != 0 => {
                kept.push(refused(record.clone()));
                true
            }
            _ => true,
        }
    });
    if !kept.is_empty() {
        tracing::warn!(
            records = kept.len(),
            "audit records kept to be written again once the store can be written"
        );
    }
    kept
}

/// A pending record whose call was refused because its commit was not confirmed in time.
fn refused(mut record: AuditRecord) -> Retry {
    record.outcome = super::record::Outcome::Rejected;
    record.status = Some(503);
    record.response_body = serde_json::json!({
        "error": "audit_unavailable",
        "message": "the audit store did not confirm the pending record within \
                    audit.write_timeout_ms; the call was refused"
    })
    .to_string();
    Retry {
        attempted_id: record.id,
        record,
        only_if_stored: true,
    }
}

/// Looks the kept records up once every earlier append has ended: those a failed batch did
/// commit after all are dropped (never appended twice), the rest become the next batch's first
/// final records.
async fn look_up(
    store: &Store,
    conn: &mut Option<Connection>,
    kept: &[Retry],
) -> Result<Vec<Op>, sqlx::Error> {
    let conn = held(store, conn).await?;
    Store::settle(conn).await?;
    let mut ops = Vec::with_capacity(kept.len());
    for retry in kept {
        let stored = match retry.attempted_id {
            0 => None,
            id => Store::stored_position(conn, id, &retry.record).await?,
        };
        let mut record = retry.record.clone();
        match stored {
            Some(Some(_)) => {
                tracing::info!(request_id = %record.request_id, "an audit record whose commit was not confirmed had been committed; it is not written again");
                continue;
            }
            Some(None) => record.id = retry.attempted_id,
            None if retry.only_if_stored => continue,
            None => {}
        }
        ops.push(Op::Finish {
            record,
            reply: None,
        });
    }
    Ok(ops)
}

/// Opens the store (within the deadline) and proves it writable with a probe write; only then is
/// it reported up.
async fn open(
    url: &str,
    claim: &mut Option<WriterClaim>,
    health: &Health,
    deadline: Duration,
    ever_up: &AtomicBool,
) -> Option<Store> {
    let opened = match claim {
        Some(_) => open_within(url, deadline).await,
        None => match WriterClaim::take(url) {
            Ok(taken) => {
                *claim = Some(taken);
                open_within(url, deadline).await
            }
            Err(reason) => Err(reason.to_string()),
        },
    };
    let opened = match opened {
        Ok(store) => {
            let mut conn = None;
            probe(&store, &mut conn, deadline, true)
                .await
                .map(|()| store)
        }
        Err(reason) => Err(reason),
    };
    match opened {
        Ok(store) => {
            mark_up(health, ever_up);
            Some(store)
        }
        Err(reason) => {
            let unchanged = health.read().expect("health lock").as_ref().err() == Some(&reason);
            if !unchanged {
                tracing::error!(%reason, "the audit store cannot be written; mutating calls are refused (fail closed) until it can");
            }
            mark_down(health, &reason);
            None
        }
    }
}

async fn open_within(url: &str, deadline: Duration) -> Result<Store, String> {
    tokio::time::timeout(deadline, Store::open(url))
        .await
        .map(|opened| opened.map_err(|e| e.to_string()))
        .unwrap_or_else(|_| {
            Err(format!(
                "the audit store could not be opened within audit.write_timeout_ms ({} ms)",
                deadline.as_millis()
            ))
        })
}

/// Writes the batch in one transaction: ids and chain positions are assigned here, in order, then
/// every record goes in with multi-row upserts (new ones inserted, pending ones finalised).
///
/// On SQLite one gateway process owns the file, so the chain's tail read once stays right: it is
/// kept in `tail` between batches (and dropped when a write fails) and the batch is one round trip.
/// On PostgreSQL several replicas append, so the tail is read under the advisory lock every time.
async fn write(
    store: &Store,
    conn: &mut Option<Connection>,
    tail: &mut Option<ChainTail>,
    batch: &mut [Op],
) -> Result<(), sqlx::Error> {
    let conn = held(store, conn).await?;
    let known = match (&conn, tail.take()) {
        (Backed::Sqlite(_), None) => Some(Store::tail(conn).await?),
        (_, known) => known,
    };
    // SQLite commits the batch in its own round trip and says where the chain now ends;
    // PostgreSQL leaves the transaction open for the commit below.
    let appended = match &mut *conn {
        Backed::Sqlite(sqlite) => {
            let start = known.expect("a SQLite writer knows the chain's tail");
            let end = place_in_chain(batch, start);
            let committed = Store::commit_batch_sqlite(sqlite, &records(batch)).await;
            committed.map(|()| Some(end))
        }
        Backed::Postgres(pg) => {
            async {
                let start = Store::begin_append_postgres(pg).await?;
                place_in_chain(batch, start);
                Store::upsert_batch_postgres(pg, &records(batch)).await?;
                Ok(None)
            }
            .await
        }
    };
    match appended {
        Err(error) => {
            // Fails harmlessly when the failure already ended the transaction.
            Store::rollback(conn).await;
            Err(error)
        }
        Ok(Some(end)) => {
            *tail = Some(end);
            Ok(())
        }
        Ok(None) => Store::commit(conn).await,
    }
}

/// The writer's connection, opened when it has none (at the start, or after a failure dropped it).
async fn held<'c>(
    store: &Store,
    conn: &'c mut Option<Connection>,
) -> Result<&'c mut Connection, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(store.connection().await?);
    }
    Ok(conn
        .as_mut()
        .expect("the writer's connection was just taken"))
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

/// Answers every op of a written (or failed) batch. A pending record committed for a caller that
/// stopped waiting (its write deadline passed) is finalised as refused: that call was answered
/// 503 and never forwarded.
fn reply(batch: Vec<Op>, result: Result<(), String>, carried: &mut Vec<Retry>) {
    for op in batch {
        match op {
            Op::Begin { record, reply } => {
                let id = record.id;
                if reply.send(result.clone().map(|_| id)).is_err() && result.is_ok() {
                    carried.push(refused(record));
                }
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
