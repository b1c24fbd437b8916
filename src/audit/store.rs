//! The audit store on SQLite or PostgreSQL through sqlx's `Any` driver: one set of SQL (with `$N`
//! placeholders, which both accept), migrations per backend, the hash chain appended under a lock
//! (the single writer on SQLite; an advisory lock on PostgreSQL, so several replicas keep one
//! chain), queries, verification and retention pruning.

use std::path::Path;
use std::sync::Once;

use futures_util::{Stream, StreamExt};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, Row};

use super::record::{AuditRecord, GENESIS_HASH, Outcome, now_ts};

/// The PostgreSQL advisory lock key that serialises chain appends across replicas.
const CHAIN_LOCK_KEY: i64 = 0x636f_6e74_6162_6f00; // "contabo\0"

pub use crate::config::{DatabaseBackend as Backend, database_backend as backend_of};

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

const COLUMNS: &str = "id, ts, client, role, method, path, query, request_id, trace_id, client_ip, \
     request_body, status, outcome, response_body, duration_ms, upstream_ms, seq, prev_hash, hash";

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
    /// Opens the store (creating the SQLite file and its directory) and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, String> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = backend_of(url)?;
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(std::time::Duration::from_secs(3));
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA busy_timeout = 5000",
                        // A multi-row upsert keeps a statement journal: in memory, not a temp
                        // file created and deleted per batch.
                        "PRAGMA temp_store = MEMORY",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options
            .connect(&url)
            .await
            .map_err(|e| format!("cannot open the audit store: {e}"))?;
        let store = Self { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), String> {
        let result = match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await,
        };
        result.map_err(|e| format!("cannot migrate the audit store: {e}"))
    }

    /// A connection held by one writer for its whole life: on SQLite its page cache then stays
    /// valid from one batch to the next (a pooled connection another one wrote through would have
    /// to read the pages again).
    pub async fn writer_connection(&self) -> Result<PoolConnection<sqlx::Any>, sqlx::Error> {
        self.pool.acquire().await
    }

    /// Proves the store answers: `SELECT 1`, or with `write` on SQLite a real write (the
    /// database header's user_version moved on; a full disk fails it).
    pub async fn probe(
        &self,
        conn: &mut sqlx::AnyConnection,
        write: bool,
    ) -> Result<(), sqlx::Error> {
        if write && self.backend == Backend::Sqlite {
            let version: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut *conn)
                .await?;
            let next = (version + 1) % 1_000_000;
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {next}")))
                .execute(&mut *conn)
                .await?;
            return Ok(());
        }
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    }

    /// A transaction that changes the chain (pruning its start): on PostgreSQL under the same
    /// advisory lock as the writers' appends.
    pub async fn begin<'c>(
        &self,
        conn: &'c mut sqlx::AnyConnection,
    ) -> Result<sqlx::Transaction<'c, sqlx::Any>, sqlx::Error> {
        let mut tx = sqlx::Connection::begin(conn).await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CHAIN_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// In one round trip: the highest id in use (new records are numbered from it under the chain
    /// lock) and the chain's head (last seq and hash; the checkpoint after pruning; the genesis).
    pub async fn tail(conn: &mut sqlx::AnyConnection) -> Result<ChainTail, sqlx::Error> {
        let row = sqlx::query(TAIL_SQL).fetch_one(&mut *conn).await?;
        decode_tail(&row)
    }

    /// PostgreSQL: opens the transaction that appends a batch, takes the chain lock (replicas
    /// append one at a time) and reads the chain's tail, in one round trip. In READ COMMITTED each
    /// statement of the list reads a snapshot taken when it starts, so the tail is read after the
    /// lock is held and includes every batch committed before. Rolled back when it fails.
    pub async fn begin_append_postgres(
        conn: &mut sqlx::AnyConnection,
    ) -> Result<ChainTail, sqlx::Error> {
        let sql = format!(
            "BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}) IS NULL AS locked; {TAIL_SQL}"
        );
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await;
        let tail = match rows {
            Ok(rows) => match rows.last() {
                Some(row) => decode_tail(row),
                None => Err(sqlx::Error::RowNotFound),
            },
            Err(error) => Err(error),
        };
        if tail.is_err() {
            Self::rollback(conn).await;
        }
        tail
    }

    /// Ends a transaction opened by `begin_append_postgres`: commits, or rolls back on failure.
    pub async fn commit(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        let result = sqlx::query("COMMIT").execute(&mut *conn).await;
        if result.is_err() {
            Self::rollback(conn).await;
        }
        result.map(|_| ())
    }

    /// Rolls back whatever transaction is open; fails harmlessly when there is none.
    pub async fn rollback(conn: &mut sqlx::AnyConnection) {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }

    /// Waits until no earlier append is still in progress: a batch whose answer never came (its
    /// connection given up at the write deadline) may still commit, and does so while it holds the
    /// chain lock (PostgreSQL) or the file's write lock (SQLite). Taking that lock once means the
    /// earlier batch has either committed or rolled back, so what the store holds is final.
    pub async fn settle(&self, conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
        let sql = match self.backend {
            Backend::Postgres => {
                format!("BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}) IS NULL; COMMIT")
            }
            Backend::Sqlite => "BEGIN IMMEDIATE; COMMIT".to_string(),
        };
        let result = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await;
        if result.is_err() {
            Self::rollback(conn).await;
        }
        result.map(|_| ())
    }

    /// Whether the record with this id is the call's (same request id and time) and, if so, its
    /// chain position: `None` when the store does not hold it, `Some(None)` while it is pending.
    pub async fn stored_position(
        conn: &mut sqlx::AnyConnection,
        id: i64,
        record: &AuditRecord,
    ) -> Result<Option<Option<i64>>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT seq FROM audit_records WHERE id = $1 AND request_id = $2 AND ts = $3",
        )
        .bind(id)
        .bind(record.request_id.as_str())
        .bind(record.ts.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|row| row.try_get::<Option<i64>, _>("seq"))
            .transpose()
    }

    /// PostgreSQL: writes the batch's records (with their ids) in one upsert whose only parameter
    /// is the records as a JSON array, expanded by `json_to_recordset`: new records are inserted,
    /// pending ones get their final fields and chain position through their primary key. One
    /// prepared statement serves every batch size; a multi-row VALUES list (19 parameters a row)
    /// was parsed and planned again for each batch, 4.5 ms for 60 records.
    pub async fn upsert_batch_postgres(
        &self,
        tx: &mut sqlx::AnyConnection,
        records: &[&AuditRecord],
    ) -> Result<(), sqlx::Error> {
        const SQL: &str = "INSERT INTO audit_records (id, ts, client, role, method, path, query, \
             request_id, trace_id, client_ip, request_body, status, outcome, response_body, \
             duration_ms, upstream_ms, seq, prev_hash, hash) \
             SELECT id, ts, client, role, method, path, query, request_id, trace_id, client_ip, \
             request_body, status, outcome, response_body, duration_ms, upstream_ms, seq, \
             prev_hash, hash \
             FROM json_to_recordset($1::json) AS r(id BIGINT, ts TEXT, client TEXT, role TEXT, \
             method TEXT, path TEXT, query TEXT, request_id TEXT, trace_id TEXT, client_ip TEXT, \
             request_body TEXT, status BIGINT, outcome TEXT, response_body TEXT, \
             duration_ms DOUBLE PRECISION, upstream_ms DOUBLE PRECISION, seq BIGINT, \
             prev_hash TEXT, hash TEXT) ";
        let rows = serde_json::to_string(records).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("{SQL}{UPSERT_FINALISES}")))
            .bind(rows)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// SQLite: the whole batch as one transaction in one round trip to the connection's thread
    /// (`BEGIN IMMEDIATE`, the upserts, `COMMIT` in one statement list), a cached prepared
    /// statement per batch size. A failure rolls the transaction back before it returns.
    pub async fn commit_batch_sqlite(
        &self,
        conn: &mut sqlx::AnyConnection,
        records: &[&AuditRecord],
    ) -> Result<(), sqlx::Error> {
        let mut sql = String::from("BEGIN IMMEDIATE; ");
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            sql.push_str(&upsert_sql_sqlite(chunk.len()));
            sql.push_str("; ");
        }
        sql.push_str("COMMIT");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(true);
        for r in records {
            query = bind_record(query, r);
        }
        if let Err(error) = query.execute(&mut *conn).await {
            // Fails harmlessly when the failure already ended the transaction.
            Self::rollback(conn).await;
            return Err(error);
        }
        Ok(())
    }

    /// Records matching `filter`, oldest first, streamed.
    pub fn query<'a>(
        &'a self,
        filter: &'a super::query::Filter,
    ) -> impl Stream<Item = Result<AuditRecord, String>> + 'a {
        let (sql, binds) = filter.to_sql(COLUMNS);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                super::query::Bind::Text(t) => query.bind(t),
                super::query::Bind::Int(i) => query.bind(i),
            };
        }
        query.fetch(&self.pool).map(|row| {
            row.map_err(|e| e.to_string())
                .and_then(|r| decode(&r).map_err(|e| e.to_string()))
        })
    }

    /// One page of records matching `filter` (its limit plus one, to tell if more follow).
    pub async fn page(&self, filter: &super::query::Filter) -> Result<Vec<AuditRecord>, String> {
        let mut rows = std::pin::pin!(self.query(filter));
        let mut records = Vec::new();
        while let Some(row) = rows.next().await {
            records.push(row?);
        }
        Ok(records)
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

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// The chain's tail (see `Store::tail`).
const TAIL_SQL: &str = "SELECT (SELECT COALESCE(MAX(id), 0) FROM audit_records) AS max_id, \
                    (SELECT seq FROM audit_records WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS seq, \
                    (SELECT hash FROM audit_records WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS hash, \
                    (SELECT last_seq FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS cp_seq, \
                    (SELECT last_hash FROM audit_checkpoints ORDER BY id DESC LIMIT 1) AS cp_hash";

fn decode_tail(row: &AnyRow) -> Result<ChainTail, sqlx::Error> {
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

/// Rows per SQLite multi-row statement (19 values a row stays far below SQLite's 32766).
const ROWS_PER_STATEMENT: usize = 128;

/// What an upsert does to a record that is already there (pending): its final fields and chain
/// position.
const UPSERT_FINALISES: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
     outcome = excluded.outcome, response_body = excluded.response_body, \
     duration_ms = excluded.duration_ms, upstream_ms = excluded.upstream_ms, seq = excluded.seq, \
     prev_hash = excluded.prev_hash, hash = excluded.hash";

/// SQLite: a multi-row upsert of `rows` records with anonymous `?` placeholders (sqlx looks every
/// named one up by name, which is quadratic in a multi-row statement).
fn upsert_sql_sqlite(rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_records ({COLUMNS}) VALUES ");
    let row = format!("({})", ["?"; 19].join(", "));
    sql.push_str(&vec![row; rows].join(", "));
    sql.push_str(UPSERT_FINALISES);
    sql
}

/// Binds one record's values in `COLUMNS` order.
fn bind_record<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    r: &AuditRecord,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(r.id)
        .bind(r.ts.clone())
        .bind(r.client.clone())
        .bind(r.role.clone())
        .bind(r.method.clone())
        .bind(r.path.clone())
        .bind(r.query.clone())
        .bind(r.request_id.clone())
        .bind(r.trace_id.clone())
        .bind(r.client_ip.clone())
        .bind(r.request_body.clone())
        .bind(r.status)
        .bind(r.outcome.as_str())
        .bind(r.response_body.clone())
        .bind(r.duration_ms)
        .bind(r.upstream_ms)
        .bind(r.seq)
        .bind(r.prev_hash.clone())
        .bind(r.hash.clone())
}

fn decode(row: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    let outcome: String = row.try_get("outcome")?;
    Ok(AuditRecord {
        id: row.try_get("id")?,
        ts: row.try_get("ts")?,
        client: row.try_get("client")?,
        role: row.try_get("role")?,
        method: row.try_get("method")?,
        path: row.try_get("path")?,
        query: row.try_get("query")?,
        request_id: row.try_get("request_id")?,
        trace_id: row.try_get("trace_id")?,
        client_ip: row.try_get("client_ip")?,
        request_body: row.try_get("request_body")?,
        status: row.try_get("status")?,
        outcome: Outcome::parse(&outcome).unwrap_or(Outcome::GatewayError),
        response_body: row.try_get("response_body")?,
        duration_ms: row.try_get("duration_ms")?,
        upstream_ms: row.try_get("upstream_ms")?,
        seq: row.try_get("seq")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// `sqlite://PATH` with the file and its directory created on first start.
/// The SQLite file a URL names (its directory created), and the URL's part after the scheme.
fn sqlite_file(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return Err(
            "audit.database_url must name a SQLite file, e.g. sqlite://data/audit.db".into(),
        );
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the audit directory {}: {e}", dir.display()))?;
    }
    Ok((path, rest))
}

fn sqlite_url(url: &str) -> Result<String, String> {
    let (_, rest) = sqlite_file(url)?;
    let separator = if rest.contains('?') { '&' } else { '?' };
    Ok(format!("sqlite://{rest}{separator}mode=rwc"))
}

/// The right to write a SQLite audit file, held by one gateway process at a time: an exclusive
/// lock on `<file>.writer-lock`, released when the writer stops (or the process dies). A second
/// process writing the same file would number records from its own idea of the chain's tail and
/// break the chain; it is refused instead, and takes over once the first one is gone. PostgreSQL
/// needs no claim: replicas append under an advisory lock.
pub struct WriterClaim {
    _lock: Option<std::fs::File>,
}

impl WriterClaim {
    pub fn take(url: &str) -> Result<Self, String> {
        if backend_of(url)? == Backend::Postgres {
            return Ok(Self { _lock: None });
        }
        let (path, _) = sqlite_file(url)?;
        let lock_path = format!("{path}.writer-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open the audit writer lock {lock_path}: {e}"))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _lock: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "the audit file {path} is written by another gateway process (it holds \
                 {lock_path}); give every process its own file, or use PostgreSQL for several \
                 replicas"
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(format!(
                "cannot lock the audit writer lock {lock_path}: {e}"
            )),
        }
    }
}
