//! The audit store on SQLite or PostgreSQL through sqlx's `Any` driver: opening it (the SQLite
//! file's URL, migrations per backend), the connection the writer holds, probes, transactions
//! under the chain lock, and reading records back. Appending a batch is per backend
//! (`sqlite.rs`, `postgres.rs`); the chain's tail, verification and pruning are in `audit/chain.rs`,
//! the SQLite writer's claim in `audit/lock.rs`.

mod postgres;
mod sqlite;

use std::path::Path;
use std::sync::Once;

use futures_util::{Stream, StreamExt};
use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolConnection;
use sqlx::{AnyPool, FromRow, Row};

use super::record::{AuditRecord, column_list};

/// The PostgreSQL advisory lock key that serialises chain appends across replicas.
pub(super) const CHAIN_LOCK_KEY: i64 = 0x636f_6e74_6162_6f00; // "contabo\0"

pub use super::chain::{Anchors, ChainTail, SignedStatus, VerifyReport};
pub use super::lock::WriterClaim;
pub use crate::config::{DatabaseBackend as Backend, database_backend as backend_of};

#[derive(Clone)]
pub struct Store {
    pub(super) pool: AnyPool,
    pub(super) backend: Backend,
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

    /// Ends a transaction opened by `begin_append_postgres` or `lock_chain`: commits, or rolls
    /// back on failure.
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
        self.lock_chain(conn).await?;
        Self::commit(conn).await
    }

    /// Opens a transaction that changes the chain and takes the chain lock: PostgreSQL's advisory
    /// lock (the one the writers' appends take), SQLite's write lock from the start (a deferred
    /// transaction could not take it after reading if a writer committed meanwhile).
    pub(in crate::audit) async fn lock_chain(
        &self,
        conn: &mut sqlx::AnyConnection,
    ) -> Result<(), sqlx::Error> {
        let sql = match self.backend {
            Backend::Postgres => {
                format!("BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}) IS NULL")
            }
            Backend::Sqlite => "BEGIN IMMEDIATE".to_string(),
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

    /// Records matching `filter`, oldest first, streamed.
    pub fn query<'a>(
        &'a self,
        filter: &'a super::query::Filter,
    ) -> impl Stream<Item = Result<AuditRecord, String>> + 'a {
        let (sql, binds) = filter.to_sql(column_list());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            query = match bind {
                super::query::Bind::Text(t) => query.bind(t),
                super::query::Bind::Int(i) => query.bind(i),
            };
        }
        query.fetch(&self.pool).map(|row| {
            row.map_err(|e| e.to_string())
                .and_then(|r| AuditRecord::from_row(&r).map_err(|e| e.to_string()))
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

    /// Calls and refusals (outcome `rejected`) per team and UTC hour over the last `hours`, the
    /// current one included: the console's activity chart.
    pub async fn activity(&self, hours: i64) -> Result<super::query::Activity, String> {
        let mut chart = super::query::Activity::empty(chrono::Utc::now(), hours);
        let rows = sqlx::query(
            "SELECT client, substr(ts, 1, 13) AS hour, COUNT(*) AS calls, \
             CAST(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END) AS BIGINT) AS refusals \
             FROM audit_records WHERE ts >= $1 GROUP BY client, substr(ts, 1, 13) \
             ORDER BY client, hour",
        )
        .bind(chart.since())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        for row in &rows {
            chart.add(super::query::HourlyActivity::from_row(row).map_err(|e| e.to_string())?);
        }
        Ok(chart)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// What an upsert does to a record that is already there (pending): its final fields and chain
/// position.
pub(super) const UPSERT_FINALISES: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
     outcome = excluded.outcome, response_body = excluded.response_body, \
     duration_ms = excluded.duration_ms, upstream_ms = excluded.upstream_ms, seq = excluded.seq, \
     prev_hash = excluded.prev_hash, hash = excluded.hash";

/// Binds one record's values in column order (`record::COLUMNS`).
pub(super) fn bind_record<'q>(
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

/// The SQLite file a URL names (its directory created), and the URL's part after the scheme.
pub(super) fn sqlite_file(url: &str) -> Result<(&str, &str), String> {
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
