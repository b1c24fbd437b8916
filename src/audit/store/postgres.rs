//! Appending a batch to PostgreSQL, where several replicas append to one chain: the transaction
//! takes the chain's advisory lock and reads the tail in one round trip, then one upsert of the
//! batch as a JSON array.

use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use super::{CHAIN_LOCK_KEY, Store, UPSERT_FINALISES};
use crate::audit::chain::{ChainTail, TAIL_SQL, TailRow};
use crate::audit::record::{AuditRecord, COLUMNS, column_list};

/// Opens a transaction and takes the chain lock: the advisory lock every append takes.
fn begin_locked_sql() -> String {
    format!("BEGIN; SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY}) IS NULL AS locked")
}

/// Opens a transaction holding the chain lock.
pub(super) async fn begin_locked(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(begin_locked_sql()))
        .execute(conn)
        .await
        .map(drop)
}

impl Store {
    /// PostgreSQL: opens the transaction that appends a batch, takes the chain lock (replicas
    /// append one at a time) and reads the chain's tail, in one round trip. In READ COMMITTED each
    /// statement of the list reads a snapshot taken when it starts, so the tail is read after the
    /// lock is held and includes every batch committed before. The caller rolls back a failure.
    pub async fn begin_append_postgres(conn: &mut PgConnection) -> Result<ChainTail, sqlx::Error> {
        let sql = format!("{}; {TAIL_SQL}", begin_locked_sql());
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_all(conn)
            .await;
        match rows?.last() {
            Some(row) => TailRow::from_row(row).map(ChainTail::from),
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    /// PostgreSQL: writes the batch's records (with their ids) in one upsert whose only parameter
    /// is the records as a JSON array, expanded by `json_to_recordset`: new records are inserted,
    /// pending ones get their final fields and chain position through their primary key. One
    /// prepared statement serves every batch size, where a multi-row VALUES list (19 parameters a
    /// row) is parsed and planned again for each batch size.
    pub async fn upsert_batch_postgres(
        conn: &mut PgConnection,
        records: &[&AuditRecord],
    ) -> Result<(), sqlx::Error> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let typed: Vec<String> = COLUMNS
                .iter()
                .map(|(name, sql_type)| format!("{name} {sql_type}"))
                .collect();
            format!(
                "INSERT INTO audit_records ({columns}) SELECT {columns} \
                 FROM json_to_recordset($1::json) AS r({typed}) {UPSERT_FINALISES}",
                columns = column_list(),
                typed = typed.join(", "),
            )
        });
        let rows = serde_json::to_string(records).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(rows)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}
