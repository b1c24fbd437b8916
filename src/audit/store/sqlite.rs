//! Appending a batch to SQLite: the whole batch as one transaction in one round trip to the
//! connection's thread, multi-row upserts with anonymous placeholders.

use sqlx::Sqlite;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};

use super::{Store, UPSERT_FINALISES};
use crate::audit::record::{AuditRecord, COLUMNS, column_list};

impl Store {
    /// SQLite: the whole batch as one transaction in one round trip to the connection's thread
    /// (`BEGIN IMMEDIATE`, the upserts, `COMMIT` in one statement list), a cached prepared
    /// statement per batch size. A failure leaves the transaction for the caller to roll back.
    pub async fn commit_batch_sqlite(
        conn: &mut SqliteConnection,
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
        query.execute(conn).await.map(drop)
    }
}

/// Rows per SQLite multi-row statement (19 values a row stays far below SQLite's 32766).
const ROWS_PER_STATEMENT: usize = 128;

/// SQLite: a multi-row upsert of `rows` records with anonymous `?` placeholders (sqlx looks every
/// named one up by name, which is quadratic in a multi-row statement).
fn upsert_sql_sqlite(rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_records ({}) VALUES ", column_list());
    let row = format!("({})", ["?"; COLUMNS.len()].join(", "));
    sql.push_str(&vec![row; rows].join(", "));
    sql.push_str(UPSERT_FINALISES);
    sql
}

/// Binds one record's values in column order (`record::COLUMNS`).
fn bind_record<'q>(
    query: Query<'q, Sqlite, SqliteArguments>,
    r: &AuditRecord,
) -> Query<'q, Sqlite, SqliteArguments> {
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
