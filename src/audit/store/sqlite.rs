//! Appending a batch to SQLite: the whole batch as one transaction in one round trip to the
//! connection's thread, multi-row upserts with anonymous placeholders.

use super::{Store, UPSERT_FINALISES, bind_record};
use crate::audit::record::{AuditRecord, COLUMNS, column_list};

impl Store {
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
