//! What can go wrong opening, reading, signing or pruning the audit store, each variant said as
//! the operator or reviewer acts on it. The writer's "store is down" reasons stay text: one reason
//! is shared by every caller waiting on a batch and by readiness.

use crate::config::ConfigError;
use crate::signed_checkpoint::CheckpointError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log is turned off (audit.enabled = false)")]
    Disabled,
    /// `audit.database_url` names no backend the store knows.
    #[error(transparent)]
    Url(#[from] ConfigError),
    #[error("audit.database_url must name a SQLite file, e.g. sqlite://data/audit.db")]
    NotAFile,
    #[error("audit.database_url is not a SQLite URL: {0}")]
    SqliteUrl(#[source] sqlx::Error),
    #[error("cannot create the audit directory {dir}: {source}")]
    Directory { dir: String, source: std::io::Error },
    #[error("cannot open the audit store: {0}")]
    Open(#[source] sqlx::Error),
    #[error("cannot migrate the audit store: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A statement failed.
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The chain no longer holds what the last signed checkpoint signed: nothing is signed.
    #[error("not signing: {0}")]
    NotSigning(String),
    /// The writer lock file could not be opened or locked (`action`).
    #[error("cannot {action} the audit writer lock {lock}: {source}")]
    WriterLock {
        action: &'static str,
        lock: String,
        source: std::io::Error,
    },
    #[error(
        "the audit file {file} is written by another gateway process (it holds {lock}); give \
         every process its own file, or use PostgreSQL for several replicas"
    )]
    WrittenElsewhere { file: String, lock: String },
}
