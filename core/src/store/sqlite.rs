//! The SQLite backend (rusqlite with its bundled SQLite).
//!
//! - WAL journal and `synchronous=FULL`: a committed batch survives a crash
//!   or a power loss.
//! - A busy timeout of 5 s for readers inside this process.
//! - One process at a time: an exclusive lock on `<path>-lock` is taken on
//!   open and held until the backend is dropped (the OS releases it if the
//!   process dies). A second opener gets [`StoreError::Locked`] at once.
//! - A versioned schema (`PRAGMA user_version`) with migrations applied in
//!   one transaction; a newer schema is refused.

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Backend, Row, StoreError, Table, Write};

/// The schema version this release writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 1] = ["
    CREATE TABLE meta     (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE identity (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE prekeys  (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE sessions (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"];

/// A store in one SQLite database file.
pub struct SqliteBackend {
    connection: Mutex<Connection>,
    path: PathBuf,
    /// Held for the backend's lifetime: the process-level exclusive lock.
    _lock: File,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (or creates) the database at `path`, locks it for this process,
    /// and migrates its schema.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another handle has it open,
    /// [`StoreError::SchemaTooNew`], or an I/O or SQLite error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push("-lock");
        let lock = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked),
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::Io(e)),
        }
        let mut connection = Connection::open(&path)?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut connection)?;
        Ok(Self { connection: Mutex::new(connection), path, _lock: lock })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite rolls back an unfinished transaction itself, so a poisoned
        // lock leaves a consistent database.
        self.connection.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let found: u32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    for (version, migration) in (1..=SCHEMA_VERSION).zip(MIGRATIONS.iter()).skip(found as usize) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", version)?;
    }
    tx.commit()?;
    Ok(())
}

impl Backend for SqliteBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let connection = self.connection();
        let sql = format!("SELECT value FROM {} WHERE key = ?1", table.name());
        Ok(connection.prepare_cached(&sql)?.query_row(params![key], |row| row.get(0)).optional()?)
    }

    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        let connection = self.connection();
        let sql = format!("SELECT key, value FROM {} ORDER BY key", table.name());
        let mut statement = connection.prepare_cached(&sql)?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for write in writes {
            match &write.value {
                Some(value) => {
                    let sql = format!("INSERT OR REPLACE INTO {} (key, value) VALUES (?1, ?2)", write.table.name());
                    tx.prepare_cached(&sql)?.execute(params![write.key, value])?;
                }
                None => {
                    let sql = format!("DELETE FROM {} WHERE key = ?1", write.table.name());
                    tx.prepare_cached(&sql)?.execute(params![write.key])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_atomic_durable_and_locked() {
        let dir = std::env::temp_dir().join(format!("samizdat-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        {
            let db = SqliteBackend::open(&path).unwrap();
            assert!(matches!(SqliteBackend::open(&path), Err(StoreError::Locked)));
            db.apply(&[
                Write { table: Table::Sessions, key: b"a".to_vec(), value: Some(b"1".to_vec()) },
                Write { table: Table::Sessions, key: b"b".to_vec(), value: Some(b"2".to_vec()) },
            ])
            .unwrap();
            // A batch with a bad write applies nothing: a NOT NULL violation
            // cannot be expressed through `Write`, so drop the table under it.
            db.connection().execute_batch("ALTER TABLE prekeys RENAME TO gone").unwrap();
            let result = db.apply(&[
                Write { table: Table::Sessions, key: b"a".to_vec(), value: None },
                Write { table: Table::PreKeys, key: b"p".to_vec(), value: Some(b"x".to_vec()) },
            ]);
            assert!(matches!(result, Err(StoreError::Sqlite(_))));
            assert_eq!(db.get(Table::Sessions, b"a").unwrap(), Some(b"1".to_vec()));
            db.connection().execute_batch("ALTER TABLE gone RENAME TO prekeys").unwrap();
        }
        let db = SqliteBackend::open(&path).unwrap();
        assert_eq!(db.scan(Table::Sessions).unwrap().len(), 2);
        db.connection().pragma_update(None, "user_version", 9).unwrap();
        drop(db);
        assert!(matches!(SqliteBackend::open(&path), Err(StoreError::SchemaTooNew { found: 9, supported: 1 })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
