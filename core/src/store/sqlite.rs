//! The SQLite backend (rusqlite with its bundled SQLite).
//!
//! - WAL journal and `synchronous=FULL`: a committed batch survives a crash
//!   or a power loss. (`synchronous=NORMAL` would be cheaper, but a power
//!   loss could then roll back the latest commits, and a ratchet rolled back
//!   re-encrypts under keys it already used.)
//! - A busy timeout of 5 s for readers inside this process.
//! - Forward secrecy at rest: a rewritten row must not leave its previous
//!   sealed value in any file, or the storage key of a seized phone opens the
//!   keys the protocol deleted. Every write re-seals a whole row, so SQLite
//!   would keep the old value in two places: the WAL (until a checkpoint
//!   copies it back and the log restarts, and past that in the log's tail)
//!   and the freed page or cell in the database file. Measured
//!   (TOOLCHAIN.md 8: 2,000 rewrites, every 32-byte window of every
//!   superseded value searched for), the cheapest setting that leaves none,
//!   with the connection open or closed, is
//!   - `secure_delete=ON`: freed cells and pages are overwritten with zeros;
//!   - `wal_autocheckpoint=1`: every commit checkpoints its frames into the
//!     database at once (a passive checkpoint, which never waits for or
//!     blocks another writer), so the next write restarts the log;
//!   - `journal_size_limit=0`: a restarted log is truncated, so no old frame
//!     survives in its tail.
//!
//!   It costs about 2.9x a bare write (a truncating checkpoint after every
//!   transaction costs 4.4x and can starve a second writer; a rollback
//!   journal 5-6x). On open a truncating checkpoint empties a log that a
//!   crash left behind (with a short busy timeout: if another handle is
//!   reading, the log is left to that handle's checkpoints).
//!   What no setting reaches: blocks that the file system freed, flash
//!   wear-levelling and file-system snapshots keep whatever was written. The
//!   robust answer there is to seal under a storage key that rotates, the old
//!   one destroyed in the platform keystore (PROTOCOL.md 16.6).
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

use super::{Backend, Expected, Row, StoreError, Table, Write};

/// The schema version this release writes.
pub const SCHEMA_VERSION: u32 = 1;

/// How long a call waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
        connection.busy_timeout(BUSY_TIMEOUT)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.pragma_update(None, "wal_autocheckpoint", 1)?;
        connection.pragma_update(None, "journal_size_limit", 0)?;
        migrate(&mut connection)?;
        truncate_wal(&connection)?;
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

/// How long the checkpoint on open waits for another handle's readers.
const OPEN_CHECKPOINT_TIMEOUT: Duration = Duration::from_millis(50);

/// Copies the whole WAL into the database and truncates it to zero bytes;
/// returns whether it did (`false`: another connection is reading, and the
/// log stays for the checkpoints of later commits).
fn truncate_wal(connection: &Connection) -> Result<bool, StoreError> {
    connection.busy_timeout(OPEN_CHECKPOINT_TIMEOUT)?;
    // (busy, frames in the log, frames checkpointed). Blocked by a reader,
    // SQLite reports busy = 1 in the row, not as an error.
    let result = connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0));
    connection.busy_timeout(BUSY_TIMEOUT)?;
    match result {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => Ok(false),
        Err(e) => Err(e.into()),
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
        // `BEGIN IMMEDIATE` takes the database's write lock first, so the rows
        // read here cannot change before the commit, whoever else writes.
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for write in writes {
            if write.expected == Expected::Any {
                continue;
            }
            let sql = format!("SELECT value FROM {} WHERE key = ?1", write.table.name());
            let current: Option<Vec<u8>> =
                tx.prepare_cached(&sql)?.query_row(params![write.key], |row| row.get(0)).optional()?;
            if !write.expected.holds(current.as_deref()) {
                // Dropping the transaction rolls it back: nothing was written.
                return Err(StoreError::Conflict { table: write.table });
            }
        }
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

    fn wal_len(path: &Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_checkpoint_on_open_reports_a_reader_and_truncates_without_one() {
        let dir = std::env::temp_dir().join(format!("samizdat-sqlite-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let db = SqliteBackend::open(&path).unwrap();
        let put = |value: &[u8]| Write {
            table: Table::Sessions,
            key: b"a".to_vec(),
            value: Some(value.to_vec()),
            expected: Expected::Any,
        };
        db.apply(&[put(b"1")]).unwrap();
        // Another connection in a read transaction: the log cannot be emptied.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0)).unwrap();
        db.apply(&[put(b"2")]).unwrap();
        assert!(!truncate_wal(&db.connection()).unwrap(), "a reader holds the log");
        assert!(wal_len(&path) > 0);
        reader.execute_batch("COMMIT").unwrap();
        assert!(truncate_wal(&db.connection()).unwrap());
        assert_eq!(wal_len(&path), 0, "the log is truncated");
        assert_eq!(db.get(Table::Sessions, b"a").unwrap(), Some(b"2".to_vec()));
        drop((db, reader));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
                Write {
                    table: Table::Sessions,
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec()),
                    expected: Expected::Absent,
                },
                Write {
                    table: Table::Sessions,
                    key: b"b".to_vec(),
                    value: Some(b"2".to_vec()),
                    expected: Expected::Any,
                },
            ])
            .unwrap();
            // A batch with a bad write applies nothing: a NOT NULL violation
            // cannot be expressed through `Write`, so drop the table under it.
            db.connection().execute_batch("ALTER TABLE prekeys RENAME TO gone").unwrap();
            let result = db.apply(&[
                Write { table: Table::Sessions, key: b"a".to_vec(), value: None, expected: Expected::Any },
                Write {
                    table: Table::PreKeys,
                    key: b"p".to_vec(),
                    value: Some(b"x".to_vec()),
                    expected: Expected::Any,
                },
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
