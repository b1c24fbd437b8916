//! The SQLite writer's claim on its file: one gateway process writes a SQLite audit file at a
//! time, so its idea of the chain's tail stays true.

use super::error::AuditError;
use super::store::{Backend, backend_of, sqlite_file};

/// The right to write a SQLite audit file, held by one gateway process at a time: an exclusive
/// lock on `<file>.writer-lock`, released when the writer stops (or the process dies). A second
/// process writing the same file would number records from its own idea of the chain's tail and
/// break the chain; it is refused instead, and takes over once the first one is gone. PostgreSQL
/// needs no claim: replicas append under an advisory lock.
pub struct WriterClaim {
    _lock: Option<std::fs::File>,
}

impl WriterClaim {
    pub fn take(url: &str) -> Result<Self, AuditError> {
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
            .map_err(|source| AuditError::WriterLock {
                action: "open",
                lock: lock_path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _lock: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::WrittenElsewhere {
                file: path.to_string(),
                lock: lock_path,
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(AuditError::WriterLock {
                action: "lock",
                lock: lock_path,
                source,
            }),
        }
    }
}
