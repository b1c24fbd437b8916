//! The audit store on SQLite or PostgreSQL, each through its own sqlx driver: opening it (the
//! SQLite file created with its pragmas, migrations per backend), the connection the writer holds,
//! probes, transactions under the chain lock, and reading records back. Appending a batch is per
//! backend (`sqlite.rs`, `postgres.rs`); the chain's tail, verification and pruning are in
//! `audit/chain.rs`, the SQLite writer's claim in `audit/lock.rs`.
//!
//! A statement both backends run alike is written once and compiled for each driver with
//! [`on_backend!`]; where they differ (appends, the chain lock, the probe write) the code matches
//! on the backend's own connection type.

mod postgres;
mod sqlite;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, Sqlite};

use super::error::AuditError;
use super::record::{AuditRecord, column_list};

/// The PostgreSQL advisory lock key that serialises chain appends across replicas.
pub(super) const CHAIN_LOCK_KEY: i64 = 0x636f_6e74_6162_6f00; // "contabo\0"

pub use super::chain::{Anchors, ChainTail, SignedStatus, VerifyReport};
pub use super::lock::WriterClaim;
pub use crate::config::{DatabaseBackend as Backend, database_backend as backend_of};

/// A value of one backend's own driver: a pool, a connection.
#[derive(Clone)]
pub enum Backed<S, P> {
    Sqlite(S),
    Postgres(P),
}

/// The store's connection pool, of its backend's driver.
pub type Pool = Backed<SqlitePool, PgPool>;
/// One connection of the store's backend (the writer holds one for its life).
pub type Connection = Backed<PoolConnection<Sqlite>, PoolConnection<Postgres>>;

/// Runs `$body` with `$value` bound to its backend's own pool or connection: a statement both
/// backends run alike, written once and compiled for each driver.
macro_rules! on_backend {
    ($backed:expr, $value:ident => $body:expr) => {
        match $backed {
            $crate::audit::store::Backed::Sqlite($value) => $body,
            $crate::audit::store::Backed::Postgres($value) => $body,
        }
    };
}
pub(in crate::audit) use on_backend;

/// Records read by `sql` with `binds`, decoded by name, streamed from `$executor` (a pool or a
/// connection of either backend).
macro_rules! fetch_records {
    ($executor:expr, $sql:expr) => {
        fetch_records!(
            $executor,
            $sql,
            std::iter::empty::<$crate::audit::query::Bind>()
        )
    };
    ($executor:expr, $sql:expr, $binds:expr) => {{
        let mut query = sqlx::query(sqlx::AssertSqlSafe($sql));
        for bind in $binds {
            query = match bind {
                $crate::audit::query::Bind::Text(t) => query.bind(t),
                $crate::audit::query::Bind::Int(i) => query.bind(i),
            };
        }
        query
            .fetch($executor)
            .map(|row| row.and_then(|row| <AuditRecord as sqlx::FromRow<_>>::from_row(&row)))
    }};
}
pub(in crate::audit) use fetch_records;

#[derive(Clone)]
pub struct Store {
    pub(super) pool: Pool,
}

impl Store {
    /// Opens the store (creating the SQLite file and its directory) and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, AuditError> {
        let opened = match backend_of(url)? {
            Backend::Sqlite => {
                let (_, rest) = sqlite_file(url)?;
                let options = SqliteConnectOptions::from_str(&format!("sqlite://{rest}"))
                    .map_err(AuditError::SqliteUrl)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    // A multi-row upsert keeps a statement journal: in memory, not a temp file
                    // created and deleted per batch.
                    .pragma("temp_store", "MEMORY");
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_with(options)
                    .await
                    .map(Backed::Sqlite)
            }
            Backend::Postgres => PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(3))
                .connect(url)
                .await
                .map(Backed::Postgres),
        };
        let pool = opened.map_err(AuditError::Open)?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), AuditError> {
        let result = match &self.pool {
            Backed::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await,
            Backed::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await,
        };
        result.map_err(AuditError::Migrate)
    }

    /// A connection held by one writer for its whole life: on SQLite its page cache then stays
    /// valid from one batch to the next (a pooled connection another one wrote through would have
    /// to read the pages again).
    pub async fn connection(&self) -> Result<Connection, sqlx::Error> {
        Ok(match &self.pool {
            Backed::Sqlite(pool) => Backed::Sqlite(pool.acquire().await?),
            Backed::Postgres(pool) => Backed::Postgres(pool.acquire().await?),
        })
    }

    /// Proves the store answers: `SELECT 1`, or with `write` on SQLite a real write (the
    /// database header's user_version moved on; a full disk fails it).
    pub async fn probe(conn: &mut Connection, write: bool) -> Result<(), sqlx::Error> {
        if write && let Backed::Sqlite(conn) = conn {
            let version: i64 = sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut **conn)
                .await?;
            let next = (version + 1) % 1_000_000;
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {next}")))
                .execute(&mut **conn)
                .await?;
            return Ok(());
        }
        on_backend!(conn, c => sqlx::raw_sql("SELECT 1").execute(&mut **c).await.map(drop))
    }

    /// Ends a transaction opened by `lock_chain` or an append: commits, or rolls back on failure.
    pub async fn commit(conn: &mut Connection) -> Result<(), sqlx::Error> {
        let result = on_backend!(&mut *conn, c => {
            sqlx::raw_sql("COMMIT").execute(&mut **c).await.map(drop)
        });
        if result.is_err() {
            Self::rollback(conn).await;
        }
        result
    }

    /// Rolls back whatever transaction is open; fails harmlessly when there is none.
    pub async fn rollback(conn: &mut Connection) {
        let _ = on_backend!(conn, c => sqlx::raw_sql("ROLLBACK").execute(&mut **c).await.map(drop));
    }

    /// Waits until no earlier append is still in progress: a batch whose answer never came (its
    /// connection given up at the write deadline) may still commit, and does so while it holds the
    /// chain lock (PostgreSQL) or the file's write lock (SQLite). Taking that lock once means the
    /// earlier batch has either committed or rolled back, so what the store holds is final.
    pub async fn settle(conn: &mut Connection) -> Result<(), sqlx::Error> {
        Self::lock_chain(conn).await?;
        Self::commit(conn).await
    }

    /// Opens a transaction that changes the chain and takes the chain lock: PostgreSQL's advisory
    /// lock (the one the writers' appends take), SQLite's write lock from the start (a deferred
    /// transaction could not take it after reading if a writer committed meanwhile).
    pub(in crate::audit) async fn lock_chain(conn: &mut Connection) -> Result<(), sqlx::Error> {
        let result = match conn {
            Backed::Postgres(c) => postgres::begin_locked(c).await,
            Backed::Sqlite(c) => sqlx::raw_sql("BEGIN IMMEDIATE")
                .execute(&mut **c)
                .await
                .map(drop),
        };
        if result.is_err() {
            Self::rollback(conn).await;
        }
        result
    }

    /// Whether the record with this id is the call's (same request id and time) and, if so, its
    /// chain position: `None` when the store does not hold it, `Some(None)` while it is pending.
    pub async fn stored_position(
        conn: &mut Connection,
        id: i64,
        record: &AuditRecord,
    ) -> Result<Option<Option<i64>>, sqlx::Error> {
        on_backend!(conn, c => {
            sqlx::query_scalar(
                "SELECT seq FROM audit_records WHERE id = $1 AND request_id = $2 AND ts = $3",
            )
            .bind(id)
            .bind(record.request_id.as_str())
            .bind(record.ts.as_str())
            .fetch_optional(&mut **c)
            .await
        })
    }

    /// Records matching `filter`, oldest first, streamed.
    pub fn query<'a>(
        &'a self,
        filter: &'a super::query::Filter,
    ) -> impl Stream<Item = Result<AuditRecord, AuditError>> + 'a {
        let (sql, binds) = filter.to_sql(column_list());
        let records = match &self.pool {
            Backed::Sqlite(pool) => fetch_records!(pool, sql, binds).left_stream(),
            Backed::Postgres(pool) => fetch_records!(pool, sql, binds).right_stream(),
        };
        records.map(|record| record.map_err(AuditError::from))
    }

    /// One page of records matching `filter` (its limit plus one, to tell if more follow).
    pub async fn page(
        &self,
        filter: &super::query::Filter,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let mut rows = std::pin::pin!(self.query(filter));
        let mut records = Vec::new();
        while let Some(row) = rows.next().await {
            records.push(row?);
        }
        Ok(records)
    }

    /// Calls and refusals (outcome `rejected`) per team and UTC hour over the last `hours`, the
    /// current one included: the console's activity chart.
    pub async fn activity(&self, hours: i64) -> Result<super::query::Activity, AuditError> {
        let mut chart = super::query::Activity::empty(chrono::Utc::now(), hours);
        let rows: Vec<super::query::HourlyActivity> = on_backend!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT client, substr(ts, 1, 13) AS hour, COUNT(*) AS calls, \
                 CAST(SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END) AS BIGINT) AS refusals \
                 FROM audit_records WHERE ts >= $1 GROUP BY client, substr(ts, 1, 13) \
                 ORDER BY client, hour",
            )
            .bind(chart.since())
            .fetch_all(pool)
            .await
        })?;
        for row in rows {
            chart.add(row);
        }
        Ok(chart)
    }
}

/// What an upsert does to a record that is already there (pending): its final fields and chain
/// position.
pub(super) const UPSERT_FINALISES: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
     outcome = excluded.outcome, response_body = excluded.response_body, \
     duration_ms = excluded.duration_ms, upstream_ms = excluded.upstream_ms, seq = excluded.seq, \
     prev_hash = excluded.prev_hash, hash = excluded.hash";

/// The SQLite file a URL names (its directory created), and the URL's part after the scheme.
pub(super) fn sqlite_file(url: &str) -> Result<(&str, &str), AuditError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return Err(AuditError::NotAFile);
    }
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Directory {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    Ok((path, rest))
}
